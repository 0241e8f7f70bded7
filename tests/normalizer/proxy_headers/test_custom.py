"""The gateway header: the vectors of docs/custom-header.md, every rejection, round trips."""

from __future__ import annotations

import ipaddress
import json
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normalizer.proxy_headers import custom, proxy_v2
from normalizer.proxy_headers.base import HeaderError, NeedMore, ProxyHeader, Tlv

from .streamcheck import check_prefixes, outcome

APP = b"SSH-2.0-OpenSSH_9.2\r\n"

# The examples of docs/custom-header.md, written out by hand.
DOC_V4 = bytes.fromhex(
    "8a 47 57 31 0d 0a 1a 0a"  # magic
    "01 04 00 18"  # version 1, IPv4, 24 bytes
    "cb 00 71 07 c7 38"  # peer 203.0.113.7:51000
    "c6 33 64 01 01 bb"  # target 198.51.100.1:443
)
DOC_V6 = bytes.fromhex(
    "8a 47 57 31 0d 0a 1a 0a 01 06 00 30"
    "20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 07 c7 38"  # [2001:db8::7]:51000
    "20 01 0d b8 00 01 00 00 00 00 00 00 00 00 00 01 01 bb"  # [2001:db8:1::1]:443
)
DOC_EXT = bytes.fromhex(
    "8a 47 57 31 0d 0a 1a 0a 01 04 00 24 cb 00 71 07 c7 38 c6 33 64 01 01 bb"
    "01 00 09 74 65 6e 61 6e 74 2d 34 32"  # extension 1, "tenant-42"
)


def doc_examples() -> list[bytes]:
    """The hex blocks of docs/custom-header.md, annotations after the hex dropped."""
    text = (Path(__file__).parents[3] / "docs" / "custom-header.md").read_text()
    # Untagged fences only: the ```sh blocks are command lines, not vectors.
    fences = re.findall(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)
    blocks = [body for tag, body in fences if not tag]
    leading_hex = re.compile(r"(?:[0-9a-f]{2}(?: |$))*")
    return [
        bytes.fromhex(" ".join(m.group() for ln in b.splitlines() if (m := leading_hex.match(ln))))
        for b in blocks
    ]


def test_doc_examples_are_the_tested_vectors() -> None:
    assert doc_examples() == [DOC_V4, DOC_V6, DOC_EXT]


def parse_ok(buf: bytes, magic: bytes = custom.DEFAULT_MAGIC) -> ProxyHeader:
    h = custom.parse(buf, magic)
    assert isinstance(h, ProxyHeader)
    return h


def test_magic_is_distinct_from_text_and_proxy_signatures() -> None:
    m = custom.DEFAULT_MAGIC
    assert len(m) == 8 and m[0] >= 0x80
    assert not m.startswith(proxy_v2.SIGNATURE[:1]) and not m.startswith(b"P")


def test_doc_ipv4() -> None:
    h = parse_ok(DOC_V4 + APP)
    assert h == ProxyHeader(
        "custom", 24, "PROXY", "TCP4", "203.0.113.7", "198.51.100.1", 51000, 443
    )
    assert custom.build("203.0.113.7", "198.51.100.1", 51000, 443) == DOC_V4


def test_doc_ipv6() -> None:
    h = parse_ok(DOC_V6 + APP)
    assert h == ProxyHeader(
        "custom", 48, "PROXY", "TCP6", "2001:db8::7", "2001:db8:1::1", 51000, 443
    )
    assert custom.build("2001:db8::7", "2001:db8:1::1", 51000, 443) == DOC_V6


def test_doc_extension() -> None:
    h = parse_ok(DOC_EXT + APP)
    assert h.length == 36 and h.src_addr == "203.0.113.7"
    assert h.tlvs == (Tlv(1, b"tenant-42"),)
    assert h.fields == {"extensions": [{"type": 1, "value": b"tenant-42".hex()}]}
    json.dumps(h.fields)
    ext = [Tlv(1, b"tenant-42")]
    assert custom.build("203.0.113.7", "198.51.100.1", 51000, 443, extensions=ext) == DOC_EXT


def test_empty_extensions_are_kept() -> None:
    hdr = custom.build("1.2.3.4", "5.6.7.8", 1, 2, extensions=[Tlv(0xFF, b""), Tlv(0, b"")])
    assert parse_ok(hdr).tlvs == (Tlv(0xFF, b""), Tlv(0, b""))


def test_configured_magic() -> None:
    magic = b"\xf0GATEWAY"
    hdr = custom.build("1.2.3.4", "5.6.7.8", 1, 2, magic=magic)
    assert hdr[:8] == magic and parse_ok(hdr, magic).src_addr == "1.2.3.4"
    with pytest.raises(HeaderError, match="magic mismatch"):
        custom.parse(hdr)
    with pytest.raises(HeaderError, match="magic mismatch"):
        custom.parse(DOC_V4, magic)


def test_need_more() -> None:
    for n in range(12):
        assert custom.parse(DOC_EXT[:n]) == NeedMore(12)
    for n in range(12, 36):
        assert custom.parse(DOC_EXT[:n]) == NeedMore(36)
    big = custom.DEFAULT_MAGIC + bytes([1, 6, 0xFF, 0xFF])
    assert custom.parse(big) == NeedMore(0xFFFF)


def hdr_with(version: int = 1, family: int = 4, length: int = 24, rest: bytes = bytes(12)) -> bytes:
    return custom.DEFAULT_MAGIC + struct.pack("!BBH", version, family, length) + rest


@pytest.mark.parametrize(
    ("buf", "reason"),
    [
        (b"\x8aGW2", "magic mismatch"),
        (b"PROXY TCP4 ", "magic mismatch"),
        (b"\r\n\r\n\x00\r\nQUIT\n", "magic mismatch"),
        (custom.DEFAULT_MAGIC + b"\x00", "version 0"),  # rejected from the 9th byte on
        (custom.DEFAULT_MAGIC + b"\x02", "version 2"),
        (custom.DEFAULT_MAGIC + b"\x01\x05", "family 5"),
        (custom.DEFAULT_MAGIC + b"\x01\x00", "family 0"),
        (custom.DEFAULT_MAGIC + b"\x01\x04\x00\x17", "length 23 below the TCP4 minimum 24"),
        (custom.DEFAULT_MAGIC + b"\x01\x06\x00\x2f", "length 47 below the TCP6 minimum 48"),
        (custom.DEFAULT_MAGIC + b"\x01\x06\x00\x18", "below the TCP6 minimum"),
        (custom.DEFAULT_MAGIC + b"\x01\x04\x00\x00", "below the TCP4 minimum"),
        (hdr_with(length=25, rest=bytes(13)), "truncated extension"),
        (hdr_with(length=26, rest=bytes(14)), "truncated extension"),
        (hdr_with(length=28, rest=bytes(12) + b"\x01\x00\x02x"), "runs past end"),
        (hdr_with(length=30, rest=bytes(12) + b"\x01\x00\x00\x02\x00\x05x"), "runs past end"),
    ],
)
def test_rejected(buf: bytes, reason: str) -> None:
    with pytest.raises(HeaderError, match=reason):
        custom.parse(buf)


@pytest.mark.parametrize("magic", [b"", b"\x8aGW1\r\n\x1a", b"\x8aGW1\r\n\x1a\n\x00"])
def test_magic_length_must_be_8(magic: bytes) -> None:
    with pytest.raises(HeaderError, match="8 bytes"):
        custom.parse(DOC_V4, magic)
    with pytest.raises(ValueError):
        custom.build("1.2.3.4", "5.6.7.8", 1, 2, magic=magic)


@pytest.mark.parametrize(
    "args",
    [
        ("1.2.3.4", "::1", 1, 2),
        ("1.2.3.4", "5.6.7.8", 1, 65536),
        ("1.2.3.4", "5.6.7.8", -1, 2),
        ("bogus", "5.6.7.8", 1, 2),
    ],
)
def test_build_rejects(args: tuple[str, str, int, int]) -> None:
    with pytest.raises(ValueError):
        custom.build(*args)


@pytest.mark.parametrize(
    "ext", [[Tlv(256, b"")], [Tlv(1, bytes(65536))], [Tlv(1, bytes(65000))] * 2]
)
def test_build_rejects_extensions(ext: list[Tlv]) -> None:
    with pytest.raises(ValueError):
        custom.build("1.2.3.4", "5.6.7.8", 1, 2, extensions=ext)


# -- properties ------------------------------------------------------------------------------

ports = st.integers(0, 65535)
endpoints = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
    st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6)),
)
extensions = st.lists(st.builds(Tlv, st.integers(0, 255), st.binary(max_size=30)), max_size=5)
magics = st.one_of(st.just(custom.DEFAULT_MAGIC), st.binary(min_size=8, max_size=8))


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, bytes]:
    src, dst = draw(endpoints)
    magic = draw(magics)
    hdr = custom.build(str(src), str(dst), draw(ports), draw(ports), magic, draw(extensions))
    return hdr, magic


@settings(deadline=None)
@given(endpoints, ports, ports, magics, extensions, st.binary(max_size=20))
def test_round_trip(
    addrs: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]
    | tuple[ipaddress.IPv6Address, ipaddress.IPv6Address],
    sport: int,
    dport: int,
    magic: bytes,
    ext: list[Tlv],
    tail: bytes,
) -> None:
    src, dst = addrs
    hdr = custom.build(str(src), str(dst), sport, dport, magic, ext)
    h = check_prefixes(lambda b: custom.parse(b, magic), hdr + tail)
    assert isinstance(h, ProxyHeader)
    assert h == ProxyHeader(
        "custom", len(hdr), "PROXY", f"TCP{src.version}", str(src), str(dst), sport, dport,
        tuple(ext), {"extensions": [{"type": t.type, "value": t.value.hex()} for t in ext]}
        if ext else {},
    )  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, bytes]:
    hdr, magic = draw(headers())
    buf = bytearray(hdr + draw(st.binary(max_size=10)))
    for _ in range(draw(st.integers(0, 3))):
        buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    return bytes(buf[: draw(st.integers(0, len(buf)))]), magic


arbitrary = st.one_of(
    st.tuples(st.binary(max_size=80), magics),
    st.tuples(
        st.binary(max_size=80).map(lambda b: custom.DEFAULT_MAGIC + b),
        st.just(custom.DEFAULT_MAGIC),
    ),
    mutated(),
)


@settings(deadline=None)
@given(arbitrary)
def test_contract_on_arbitrary_bytes(case: tuple[bytes, bytes]) -> None:
    data, magic = case
    check_prefixes(lambda b: custom.parse(b, magic), data)


@settings(deadline=None)
@given(mutated(), st.binary(min_size=1, max_size=30))
def test_header_independent_of_trailing_data(case: tuple[bytes, bytes], extra: bytes) -> None:
    data, magic = case
    first = outcome(lambda b: custom.parse(b, magic), data)
    if isinstance(first, ProxyHeader):
        assert custom.parse(data + extra, magic) == first
