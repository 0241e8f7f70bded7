"""The reference gateway's pure part: endpoints, options, and header bytes our decoders accept."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from normalizer.cli import main
from normalizer.commands.reference_gateway.options import (
    HeaderSpec,
    UsageError,
    encode_header,
    header_addresses,
    parse_endpoint,
    parse_tlv,
)
from normalizer.proxy_headers.base import ProxyHeader, Tlv
from normalizer.proxy_headers.detect import HeaderKind, parse_header

TAIL = b"GET / HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("192.0.2.2:80", ("192.0.2.2", 80)),
        ("[::]:0", ("::", 0)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_endpoint(text: str, want: tuple[str, int]) -> None:
    assert parse_endpoint("--listen", text) == want


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("8080", "not ADDR:PORT"),
        (":8080", "not ADDR:PORT"),
        ("::1:80", "in brackets"),
        ("[::1]80", r"not \[IPV6\]:PORT"),
        ("[1.2.3.4]:80", "not an IPv6 address"),
        ("1.2.3.4:65536", "0 to 65535"),
        ("1.2.3.4:-1", "0 to 65535"),
        ("1.2.3.4:http", "0 to 65535"),
    ],
)
def test_parse_endpoint_rejects(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why) as e:
        parse_endpoint("--backend", text)
    assert str(e.value).startswith("--backend: ")


def test_parse_tlv() -> None:
    assert parse_tlv("--tlv", "1:74656e616e74") == Tlv(1, b"tenant")
    assert parse_tlv("--tlv", "0xe0:") == Tlv(0xE0, b"")
    for bad in ("1", "x:00", "1:0g", "256:00", "-1:00"):
        with pytest.raises(UsageError, match=r"^--tlv: "):
            parse_tlv("--tlv", bad)


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"kind": "proxy-v3"}, "not one of"),
        ({"kind": "custom", "authority": "x"}, "only for --header proxy-v2"),
        ({"kind": "proxy-v1", "crc32c": True}, "only for --header proxy-v2"),
        ({"kind": "proxy-v1", "tlvs": (Tlv(1, b""),)}, "carries no TLVs"),
        ({"kind": "none", "tlvs": (Tlv(1, b""),)}, "carries no TLVs"),
        ({"magic": b"\x8aGW1"}, "8 bytes"),
        ({"magic": b"PROXY v9"}, "not starting with"),
    ],
)
def test_header_spec_rejects(kwargs: dict[str, object], why: str) -> None:
    with pytest.raises(UsageError, match=why):
        HeaderSpec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("client", "target", "want"),
    [
        ("203.0.113.7", "198.51.100.1", ("203.0.113.7", "198.51.100.1")),
        # a dual-stack listener's IPv4 clients: written as plain IPv4
        ("::ffff:203.0.113.7", "::ffff:198.51.100.1", ("203.0.113.7", "198.51.100.1")),
        ("fe80::7%eth0", "fe80::1%eth0", ("fe80::7", "fe80::1")),
        # families that still differ: IPv6 header, the IPv4 side mapped
        ("2001:db8::7", "198.51.100.1", ("2001:db8::7", "::ffff:c633:6401")),
    ],
)
def test_header_addresses(client: str, target: str, want: tuple[str, str]) -> None:
    assert header_addresses((client, 1), (target, 2)) == want


def test_custom_header_is_the_documented_vector() -> None:
    spec = HeaderSpec("custom", tlvs=(Tlv(1, b"tenant-42"),))
    got = encode_header(spec, ("203.0.113.7", 51000), ("198.51.100.1", 443))
    assert got == bytes.fromhex(
        "8a 47 57 31 0d 0a 1a 0a 01 04 00 24 cb 00 71 07 c7 38 c6 33 64 01 01 bb"
        "01 00 09 74 65 6e 61 6e 74 2d 34 32"
    )


def test_proxy_v1_line() -> None:
    spec = HeaderSpec("proxy-v1")
    got = encode_header(spec, ("::ffff:203.0.113.7", 51000), ("::ffff:198.51.100.1", 80))
    assert got == b"PROXY TCP4 203.0.113.7 198.51.100.1 51000 80\r\n"


def test_proxy_v2_authority_and_crc() -> None:
    spec = HeaderSpec("proxy-v2", authority="gw.lab.example", crc32c=True)
    h = parse_header(encode_header(spec, ("2001:db8::7", 51000), ("2001:db8:1::1", 443)) + TAIL)
    assert isinstance(h, ProxyHeader)
    assert (h.kind, h.family, h.src_addr, h.dst_addr) == (
        "proxy-v2",
        "TCP6",
        "2001:db8::7",
        "2001:db8:1::1",
    )
    assert h.fields["authority"] == "gw.lab.example" and "crc32c" in h.fields


def test_no_header() -> None:
    assert encode_header(HeaderSpec("none"), ("192.0.2.9", 1), ("192.0.2.1", 2)) == b""


v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
port = st.integers(0, 0xFFFF)
# Types whose value the decoder checks (CRC32C: 4 bytes that must match, SSL: a structure) are
# left out: arbitrary bytes there are rightly refused; the gateway writes CRC32C via --crc32c.
_CHECKED = {0x03, 0x20}
tlvs = st.lists(
    st.builds(Tlv, st.integers(0, 255).filter(lambda t: t not in _CHECKED), st.binary(max_size=40)),
    max_size=3,
)


@given(
    st.sampled_from(["custom", "proxy-v1", "proxy-v2"]),
    st.one_of(st.tuples(v4, v4), st.tuples(v6, v6), st.tuples(v4, v6), st.tuples(v6, v4)),
    port,
    port,
    tlvs,
    st.binary(min_size=8, max_size=8).filter(lambda m: m[:1] not in (b"\r", b"P")),
)
def test_encoded_header_decodes_to_the_connection(
    kind: str,
    addrs: tuple[str, str],
    sport: int,
    dport: int,
    extensions: list[Tlv],
    magic: bytes,
) -> None:
    """What the gateway writes, our stripping decoder reads back as the same client and target
    (IPv4-mapped addresses come back as IPv4 when both sides are IPv4)."""
    spec = HeaderSpec(kind, magic, () if kind == "proxy-v1" else tuple(extensions))
    wire = encode_header(spec, (addrs[0], sport), (addrs[1], dport))
    h = parse_header(wire + TAIL, frozenset({HeaderKind(kind)}), magic)
    assert isinstance(h, ProxyHeader) and h.length == len(wire)
    assert [unmapped(h.src_addr), unmapped(h.dst_addr)] == [unmapped(a) for a in addrs]
    assert (h.src_port, h.dst_port) == (sport, dport)
    if kind != "proxy-v1":
        assert h.tlvs == spec.tlvs


def unmapped(addr: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(addr or "")
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def test_cli_usage_errors_name_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["reference-gateway", "--listen", "127.0.0.1:0", "--backend", "127.0.0.1:9"]
    cases = [
        (["reference-gateway", "--listen", "nope", "--backend", "127.0.0.1:9"], "--listen"),
        ([*base, "--custom-magic", "zz"], "--custom-magic"),
        ([*base, "--custom-magic", "0d" * 8], "--custom-magic"),
        ([*base, "--authority", "x"], "--authority"),
        ([*base, "--max-connections", "0"], "--max-connections"),
        ([*base, "--connect-timeout", "-1"], "--connect-timeout"),
        ([*base, "--connect-timeout", "0"], "--connect-timeout"),
        ([*base, "--grace", "nan"], "--grace"),
        ([*base, "--header", "proxy-v1", "--tlv", "1:00"], "--tlv"),
    ]
    for argv, option in cases:
        assert main(argv) == 2, argv
        assert f"reference-gateway: {option}" in capsys.readouterr().err
