"""PROXY v2: hand-written and captured vectors, every rejection, TLVs, CRC32C, round trips."""

from __future__ import annotations

import ipaddress
import json
import struct
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normalizer.proxy_headers import proxy_v2
from normalizer.proxy_headers.base import HeaderError, NeedMore, ProxyHeader, Tlv

from .streamcheck import check_prefixes, outcome

SIG = "0d0a0d0a000d0a515549540a"
APP = b"GET / HTTP/1.1\r\n\r\n"


def hx(text: str) -> bytes:
    """Hex with spaces and comments (after '#') allowed, so vectors can be annotated."""
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


def parse_ok(buf: bytes) -> ProxyHeader:
    h = proxy_v2.parse(buf)
    assert isinstance(h, ProxyHeader)
    return h


def crc32c_bitwise(data: bytes) -> int:
    """Independent oracle: the bit-at-a-time form of CRC-32C, no table."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


# -- CRC32C ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        (b"123456789", 0xE3069283),  # the standard check value
        (b"", 0),
        (bytes(32), 0x8A9136AA),  # RFC 3720 B.4 (iSCSI) vectors
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
    ],
)
def test_crc32c_vectors(data: bytes, crc: int) -> None:
    assert proxy_v2.crc32c(data) == crc


@given(st.binary(max_size=300))
def test_crc32c_matches_bitwise_oracle(data: bytes) -> None:
    assert proxy_v2.crc32c(data) == crc32c_bitwise(data)


# -- known-good vectors ----------------------------------------------------------------------

TCP4_BY_HAND = hx(f"""
    {SIG}
    21          # version 2, command PROXY
    11          # AF_INET, STREAM
    000c        # 12 bytes follow
    c0000201    # src 192.0.2.1
    c6336401    # dst 198.51.100.1
    c738 0050   # sport 51000, dport 80
""")

TCP6_BY_HAND = hx(f"""
    {SIG} 21 21 0024
    20010db8000000000000000000000001    # src 2001:db8::1
    20010db8000000000000000000000002    # dst 2001:db8::2
    01bb 1f90                           # 443, 8080
""")

# Captured from HAProxy 2.6.12 (send-proxy-v2 proxy-v2-options crc32c,unique-id[,ssl,...]).
HAPROXY_TCP4 = hx(f"""
    {SIG} 21 11 0028
    7f000001 7f000001 ede6 47e1        # 127.0.0.1:60902 -> 127.0.0.1:18401
    03 0004 e19a2bd5                   # CRC32C
    05 0012 6c61622d756e697175652d69642d30303031   # UNIQUE_ID "lab-unique-id-0001"
""")
HAPROXY_TCP6 = hx(f"""
    {SIG} 21 21 0040
    00000000000000000000000000000001 00000000000000000000000000000001 c7aa 47e1
    03 0004 a509def5
    05 0012 6c61622d756e697175652d69642d30303031
""")
HAPROXY_TLS = hx(f"""
    {SIG} 21 11 0081
    7f000001 7f000001 b932 47e2
    03 0004 d598750c                                   # CRC32C
    01 0002 6832                                       # ALPN "h2"
    02 000f 7777772e6578616d706c652e636f6d             # AUTHORITY "www.example.com"
    05 0012 6c61622d756e697175652d69642d30303032       # UNIQUE_ID
    20 003f 01 00000000                                # SSL: client=1 (TLS), verify=0
        21 0007 544c5376312e33                         #   VERSION "TLSv1.3"
        25 0007 525341323034 38                        #   KEY_ALG "RSA2048"
        24 000a 5253412d534841323536                   #   SIG_ALG "RSA-SHA256"
        23 0016 544c535f4145535f3235365f47434d5f534841333834   # CIPHER
""")
# A health check (server ... check) with crc32c: LOCAL, UNSPEC, still carrying a CRC TLV.
HAPROXY_LOCAL_CHECK = hx(f"{SIG} 20 00 0007 03 0004 a9b87e8f")


def test_hand_written_tcp4() -> None:
    h = parse_ok(TCP4_BY_HAND + APP)
    assert h == ProxyHeader("proxy-v2", 28, "PROXY", "TCP4", "192.0.2.1", "198.51.100.1", 51000, 80)
    built = proxy_v2.build(src="192.0.2.1", dst="198.51.100.1", sport=51000, dport=80)
    assert built == TCP4_BY_HAND


def test_hand_written_tcp6() -> None:
    h = parse_ok(TCP6_BY_HAND + APP)
    assert h == ProxyHeader(
        "proxy-v2", 52, "PROXY", "TCP6", "2001:db8::1", "2001:db8::2", 443, 8080
    )


def test_haproxy_tcp4_with_crc_and_unique_id() -> None:
    h = parse_ok(HAPROXY_TCP4 + APP)
    assert h.length == 56 and h.family == "TCP4" and h.src_addr == "127.0.0.1"
    assert (h.src_port, h.dst_port) == (60902, 18401)
    assert h.fields == {"crc32c": 0xE19A2BD5, "unique_id": b"lab-unique-id-0001".hex()}
    assert [t.type for t in h.tlvs] == [0x03, 0x05]


def test_haproxy_tcp6() -> None:
    h = parse_ok(HAPROXY_TCP6)
    assert (h.length, h.family, h.src_addr, h.dst_addr) == (80, "TCP6", "::1", "::1")
    assert h.fields["crc32c"] == 0xA509DEF5


def test_haproxy_tls_tlvs() -> None:
    h = parse_ok(HAPROXY_TLS + APP)
    assert h.length == len(HAPROXY_TLS) == 145
    assert h.fields == {
        "crc32c": 0xD598750C,
        "alpn": "h2",
        "authority": "www.example.com",
        "unique_id": b"lab-unique-id-0002".hex(),
        "ssl": {
            "client": 1,
            "verify": 0,
            "version": "TLSv1.3",
            "key_alg": "RSA2048",
            "sig_alg": "RSA-SHA256",
            "cipher": "TLS_AES_256_GCM_SHA384",
        },
    }
    assert [t.type for t in h.tlvs] == [0x03, 0x01, 0x02, 0x05, 0x20]
    json.dumps(h.fields)


def test_haproxy_local_health_check_tlvs_checked() -> None:
    h = parse_ok(HAPROXY_LOCAL_CHECK + APP)
    assert (h.length, h.command, h.family, h.src_addr) == (23, "LOCAL", "UNSPEC", None)
    assert h.tlvs == (Tlv(0x03, bytes.fromhex("a9b87e8f")),)
    assert h.fields == {"crc32c": 0xA9B87E8F}


@pytest.mark.parametrize("i", range(17, 23))  # not 16: another type removes the check
def test_local_health_check_with_a_wrong_crc_is_rejected(i: int) -> None:
    """Regression: LOCAL returned before its TLVs were decoded, so a bad CRC32C passed.

    The spec says the receiver MUST treat such a connection as invalid; HAProxy 3.5 does.
    """
    bad = bytearray(HAPROXY_LOCAL_CHECK)
    bad[i] ^= 0x40
    with pytest.raises(HeaderError):
        proxy_v2.parse(bytes(bad) + APP)


@pytest.mark.parametrize(
    ("ver_cmd", "fam", "addr"),
    [(0x20, 0x00, b""), (0x21, 0x00, b""), (0x20, 0x11, bytes(12)), (0x20, 0x21, bytes(36))],
    ids=["local-unspec", "proxy-unspec", "local-tcp4", "local-tcp6"],
)
def test_tlv_checks_apply_without_addresses(ver_cmd: int, fam: int, addr: bytes) -> None:
    """CRC32C, UNIQUE_ID and tiling are checked for LOCAL and UNSPEC like for PROXY."""
    tlv = b"\x05\x00\x03abc"
    good = v2(ver_cmd, fam, addr + tlv + b"\x03\x00\x04" + bytes(4))
    good = good[:-4] + struct.pack("!I", proxy_v2.crc32c(good))
    h = check_prefixes(proxy_v2.parse, good + APP)
    assert isinstance(h, ProxyHeader) and h.length == len(good) and h.src_addr is None
    assert h.fields == {"unique_id": b"abc".hex(), "crc32c": struct.unpack("!I", good[-4:])[0]}
    wrong_crc = good[:-1] + bytes([good[-1] ^ 1])
    for bad in (
        wrong_crc,
        v2(ver_cmd, fam, addr + b"\x05\x00\x81" + bytes(129)),  # UNIQUE_ID > 128
        v2(ver_cmd, fam, addr + tlv + b"\x01"),  # trailing byte that is no TLV
        v2(ver_cmd, fam, addr + b"\x02\x00\x09abc"),  # TLV runs past the header
        v2(ver_cmd, fam, addr + b"\x20\x00\x02\x01\x00"),  # SSL TLV too short
    ):
        assert isinstance(check_prefixes(proxy_v2.parse, bad + APP), HeaderError)


@pytest.mark.parametrize("vector", [HAPROXY_TCP4, HAPROXY_TCP6, HAPROXY_TLS])
def test_flipped_bits_in_a_crc_protected_header_are_caught(vector: bytes) -> None:
    crc_type_at = 16 + (12 if vector[13] == 0x11 else 36)  # HAProxy writes the CRC TLV first
    assert vector[crc_type_at] == 0x03
    for i in range(16, len(vector)):
        if i == crc_type_at:  # changing the type removes the check itself
            continue
        for bit in (0x01, 0x80):
            bad = bytearray(vector)
            bad[i] ^= bit
            with pytest.raises(HeaderError):
                proxy_v2.parse(bytes(bad))


@pytest.mark.parametrize(
    ("fam", "family"), [(0x11, "TCP4"), (0x12, "UDP4"), (0x21, "TCP6"), (0x22, "UDP6")]
)
def test_families(fam: int, family: str) -> None:
    size = 4 if family.endswith("4") else 16
    body = bytes(range(1, 1 + 2 * size)) + b"\x00\x07\xff\xff"
    h = parse_ok(bytes.fromhex(SIG) + struct.pack("!BBH", 0x21, fam, len(body)) + body)
    assert h.family == family and (h.src_port, h.dst_port) == (7, 65535)
    assert h.src_addr == str(ipaddress.ip_address(bytes(range(1, 1 + size))))


@pytest.mark.parametrize("fam", [0x31, 0x32])
def test_unix_paths(fam: int) -> None:
    body = b"/run/a.sock".ljust(108, b"\x00") + b"\x00abstract\xff".ljust(108, b"\x00")
    h = parse_ok(bytes.fromhex(SIG) + struct.pack("!BBH", 0x21, fam, 216) + body)
    assert (h.family, h.src_addr, h.src_port) == ("UNIX", "/run/a.sock", None)
    assert h.dst_addr == "\x00abstract\udcff"  # trailing NULs stripped, bad UTF-8 escaped


def test_local_and_unspec_honour_length_and_report_no_addresses() -> None:
    noop = b"\x04\x00\x02\xff\xff"  # TLVs start right after the 16 fixed bytes here
    for vc, fam in ((0x20, 0x11), (0x20, 0x00), (0x21, 0x00), (0x20, 0x31)):
        buf = bytes.fromhex(SIG) + bytes([vc, fam, 0, 5]) + noop
        h = parse_ok(buf + APP)
        assert h.length == 21 and h.src_addr is None and h.tlvs == (Tlv(4, b"\xff\xff"),)
        with pytest.raises(HeaderError):  # the same length, but no TLV: not skipped unread
            proxy_v2.parse(bytes.fromhex(SIG) + bytes([vc, fam, 0, 5]) + b"\xff" * 5)
    # LOCAL with a full address block: the block is skipped, the TLVs after it decoded.
    h = parse_ok(v2(0x20, 0x11, bytes(range(12)) + b"\x02\x00\x01x"))
    assert (h.src_addr, h.fields) == (None, {"authority": "x"})
    assert parse_ok(proxy_v2.build("LOCAL", "UNSPEC")).length == 16


def test_tlv_decoding() -> None:
    hdr = proxy_v2.build(
        src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2,
        tlvs=[
            Tlv(0x04, b"\x00" * 3),  # NOOP
            Tlv(0x01, b"http/1.1\xff"),
            Tlv(0x01, b"h2"),  # repeated: the first one wins in fields
            Tlv(0x30, b"blue"),
            Tlv(0xEA, b"\x01vpce-0123456789abcdef"),
            Tlv(0xEA, b"\x02other"),
            Tlv(0xEA, b""),
            Tlv(0x05, b"\xab" * 128),
            Tlv(0x20, b"\x07\x00\x00\x00\x01" + b"\x22\x00\x02cn" + b"\x99\x00\x00"),
            Tlv(0xE0, b"custom"), Tlv(0xF0, b"exp"), Tlv(0x99, b""),
        ],
    )  # fmt: skip
    h = parse_ok(hdr)
    assert h.fields == {
        "alpn": "http/1.1\\xff",
        "netns": "blue",
        "aws_vpce_id": "vpce-0123456789abcdef",
        "unique_id": "ab" * 128,
        "ssl": {"client": 7, "verify": 1, "cn": "cn"},
    }
    assert [t.type for t in h.tlvs] == [4, 1, 1, 0x30, 0xEA, 0xEA, 0xEA, 5, 0x20, 0xE0, 0xF0, 0x99]
    assert h.tlvs[-3] == Tlv(0xE0, b"custom")
    json.dumps(h.fields)


# -- incomplete input ------------------------------------------------------------------------


def test_need_more() -> None:
    sig = bytes.fromhex(SIG)
    for n in range(16):
        assert proxy_v2.parse(TCP4_BY_HAND[:n]) == NeedMore(16)
    for n in range(16, 28):
        assert proxy_v2.parse(TCP4_BY_HAND[:n]) == NeedMore(28)
    assert proxy_v2.parse(sig + b"\x20\x00\xff\xff") == NeedMore(16 + 0xFFFF)  # LOCAL too


# -- rejections ------------------------------------------------------------------------------


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return bytes.fromhex(SIG) + struct.pack("!BBH", ver_cmd, fam, n) + body


ADDR4 = bytes(12)


@pytest.mark.parametrize(
    ("buf", "reason"),
    [
        (b"\r\n\r\n\x00\r\nQUIT!", "signature"),
        (b"\r\r", "signature"),
        (b"PROXY TCP4", "signature"),
        (bytes.fromhex(SIG) + b"\x11", "version 1"),  # rejected from the 13th byte on
        (bytes.fromhex(SIG) + b"\x31", "version 3"),
        (bytes.fromhex(SIG) + b"\x22", "command 2"),
        (bytes.fromhex(SIG) + b"\x2f", "command 15"),
        (bytes.fromhex(SIG) + b"\x21\x13", "family/transport byte 0x13"),
        (bytes.fromhex(SIG) + b"\x20\x01", "family/transport byte 0x01"),
        (bytes.fromhex(SIG) + b"\x21\x41", "family/transport byte 0x41"),
        (v2(0x21, 0x11, b"", 11), "too short for the TCP4"),
        (v2(0x21, 0x22, b"", 35), "too short for the UDP6"),
        (v2(0x21, 0x31, b"", 215), "too short for the UNIX"),
        (v2(0x21, 0x11, ADDR4 + b"\x01"), "truncated TLV"),
        (v2(0x21, 0x11, ADDR4 + b"\x01\x00"), "truncated TLV"),
        (v2(0x21, 0x11, ADDR4 + b"\x01\x00\x02h"), "runs past the end"),
        (v2(0x21, 0x11, ADDR4 + b"\x03\x00\x04\x00\x00\x00\x00"), "CRC32C mismatch"),
        (v2(0x21, 0x11, ADDR4 + b"\x03\x00\x03\x00\x00\x00"), "CRC32C TLV has length 3"),
        (v2(0x21, 0x11, ADDR4 + b"\x05\x00\x81" + bytes(129)), "UNIQUE_ID of 129"),
        (v2(0x21, 0x11, ADDR4 + b"\x20\x00\x04\x01\x00\x00\x00"), "SSL TLV of 4 bytes"),
        (v2(0x21, 0x11, ADDR4 + b"\x20\x00\x07\x01\x00\x00\x00\x00\x21\x00"), "SSL sub-TLV"),
        (v2(0x21, 0x11, ADDR4 + b"\x20\x00\x08\x01\x00\x00\x00\x00\x21\x00\x01"), "SSL sub-TLV"),
    ],
)
def test_rejected(buf: bytes, reason: str) -> None:
    with pytest.raises(HeaderError, match=reason):
        proxy_v2.parse(buf)


def test_duplicate_crc_rejected() -> None:
    once = proxy_v2.build(src="1.2.3.4", dst="5.6.7.8", with_crc32c=True)
    twice = proxy_v2.build(src="1.2.3.4", dst="5.6.7.8", tlvs=[Tlv(3, once[-4:])], with_crc32c=True)
    with pytest.raises(HeaderError):
        proxy_v2.parse(twice)


def test_crc_covers_whole_header_including_length_and_addresses() -> None:
    hdr = bytearray(
        proxy_v2.build(src="1.2.3.4", dst="5.6.7.8", tlvs=[Tlv(0xE1, b"x")], with_crc32c=True)
    )
    parse_ok(bytes(hdr))
    hdr[13 + 4] ^= 1  # first address byte
    with pytest.raises(HeaderError, match="CRC32C mismatch"):
        proxy_v2.parse(bytes(hdr))


# -- encoder ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"command": "BOGUS"},
        {"family": "TCP5", "src": "1.2.3.4", "dst": "1.2.3.4"},
        {"family": "TCP4"},  # PROXY needs addresses
        {"family": "UNSPEC", "src": "1.2.3.4", "dst": "1.2.3.4"},
        {"family": "TCP4", "src": "1.2.3.4"},
        {"family": "TCP4", "src": "::1", "dst": "::2"},
        {"family": "TCP6", "src": "1.2.3.4", "dst": "::2"},
        {"family": "TCP4", "src": "1.2.3.4", "dst": "1.2.3.4", "sport": 70000},
        {"family": "UNIX", "src": "x" * 109, "dst": "/y"},
        {"family": "TCP4", "src": "1.2.3.4", "dst": "1.2.3.4", "tlvs": [Tlv(256, b"")]},
        {"family": "TCP4", "src": "1.2.3.4", "dst": "1.2.3.4", "tlvs": [Tlv(1, bytes(65536))]},
        {"family": "TCP4", "src": "1.2.3.4", "dst": "1.2.3.4", "tlvs": [Tlv(1, bytes(65000))] * 2},
    ],
)
def test_build_rejects(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        proxy_v2.build(**kwargs)  # type: ignore[arg-type]


# -- properties ------------------------------------------------------------------------------

ports = st.integers(0, 65535)
text_bytes = st.binary(max_size=40)
known_tlvs = st.one_of(
    st.builds(Tlv, st.sampled_from([0x01, 0x02, 0x04, 0x30]), text_bytes),
    st.builds(Tlv, st.just(0x05), st.binary(max_size=128)),
    st.builds(Tlv, st.just(0xEA), st.binary(max_size=30)),
    st.builds(
        lambda client, verify, subs: Tlv(
            0x20,
            struct.pack("!BI", client, verify)
            + b"".join(struct.pack("!BH", t, len(v)) + v for t, v in subs),
        ),
        st.integers(0, 255),
        st.integers(0, 2**32 - 1),
        st.lists(st.tuples(st.integers(0, 255), text_bytes), max_size=4),
    ),
)
other_tlvs = st.builds(
    Tlv, st.integers(0, 255).filter(lambda t: t not in (0x03, 0x05, 0x20)), text_bytes
)
tlv_lists = st.lists(st.one_of(known_tlvs, other_tlvs), max_size=6)


class Built(NamedTuple):
    """A header from build() and the arguments it was built from."""

    hdr: bytes
    family: str
    src: str
    dst: str
    sport: int
    dport: int
    tlvs: list[Tlv]
    crc: bool


@st.composite
def headers(draw: st.DrawFn) -> Built:
    family = draw(st.sampled_from(["TCP4", "UDP4", "TCP6", "UDP6", "UNIX", "UNIX_DGRAM"]))
    if family.startswith("UNIX"):
        path = st.binary(max_size=108).map(
            lambda b: b.rstrip(b"\x00").decode("utf-8", "surrogateescape")
        )
        src, dst = draw(path), draw(path)
    else:
        v = st.ip_addresses(v=4 if family.endswith("4") else 6).map(str)
        src, dst = draw(v), draw(v)
    sport, dport, tlvs, crc = draw(ports), draw(ports), draw(tlv_lists), draw(st.booleans())
    hdr = proxy_v2.build("PROXY", family, src, dst, sport, dport, tlvs, crc)
    return Built(hdr, family, src, dst, sport, dport, tlvs, crc)


@settings(deadline=None)
@given(headers(), st.binary(max_size=20))
def test_round_trip(b: Built, tail: bytes) -> None:
    h = check_prefixes(proxy_v2.parse, b.hdr + tail)
    assert isinstance(h, ProxyHeader)
    assert (h.length, h.command, h.src_addr, h.dst_addr) == (len(b.hdr), "PROXY", b.src, b.dst)
    assert h.family == ("UNIX" if b.family == "UNIX_DGRAM" else b.family)
    if h.family != "UNIX":
        assert (h.src_port, h.dst_port) == (b.sport, b.dport)
    assert list(h.tlvs) == b.tlvs + ([Tlv(0x03, b.hdr[-4:])] if b.crc else [])
    assert ("crc32c" in h.fields) == b.crc
    authority = next((t.value for t in b.tlvs if t.type == 0x02), None)  # the first one counts
    if authority is not None:
        assert h.fields["authority"] == authority.decode("utf-8", "backslashreplace")
    json.dumps(h.fields)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    hdr = bytearray(draw(headers()).hdr + draw(st.binary(max_size=10)))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(hdr) - 1))
        hdr[i] = draw(st.integers(0, 255))
    return bytes(hdr[: draw(st.integers(0, len(hdr)))])


@settings(deadline=None)
@given(
    st.one_of(
        st.binary(max_size=80),
        st.binary(max_size=80).map(lambda b: bytes.fromhex(SIG) + b),
        mutated(),
    )
)
def test_contract_on_arbitrary_bytes(data: bytes) -> None:
    check_prefixes(proxy_v2.parse, data)


@settings(deadline=None)
@given(mutated(), st.binary(min_size=1, max_size=30))
def test_header_independent_of_trailing_data(data: bytes, extra: bytes) -> None:
    first = outcome(proxy_v2.parse, data)
    if isinstance(first, ProxyHeader):
        assert proxy_v2.parse(data + extra) == first


def test_ssl_sub_tlvs_of_the_2025_2026_revisions() -> None:
    """0x26 group and 0x27 signature scheme are strings; 0x28 (client certificate) stays raw."""
    cert = bytes(range(40))
    ssl = (
        b"\x05\x00\x00\x00\x00"
        + b"\x26\x00\x09secp256r1"
        + b"\x27\x00\x13rsa_pss_rsae_sha256"
        + b"\x28" + struct.pack("!H", len(cert)) + cert
    )  # fmt: skip
    h = parse_ok(proxy_v2.build(src="10.0.0.1", dst="10.0.0.2", tlvs=[Tlv(0x20, ssl)]))
    assert h.fields["ssl"] == {
        "client": 5,
        "verify": 0,
        "group": "secp256r1",
        "sig_scheme": "rsa_pss_rsae_sha256",
    }
    assert h.tlvs == (Tlv(0x20, ssl),)
