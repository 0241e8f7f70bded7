"""PROXY v1: spec vectors, every rejection, round trips and the incremental-parsing contract."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normalizer.proxy_headers import proxy_v1
from normalizer.proxy_headers.base import HeaderError, NeedMore, ProxyHeader

from .streamcheck import check_prefixes, outcome

APP = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"


def parse_ok(line: bytes) -> ProxyHeader:
    h = proxy_v1.parse(line)
    assert isinstance(h, ProxyHeader)
    return h


# -- known-good vectors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "family", "src", "dst", "sport", "dport"),
    [
        # The spec's own examples.
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
         "TCP4", "192.168.0.1", "192.168.0.11", 56324, 443),
        (b"PROXY TCP6 ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".replace(
            b"f...f", b"ffff:ffff:ffff:ffff:ffff:ffff"),
         "TCP6", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
         "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, 65535),
        # A typical line for a loopback connection, and the extremes of addresses and ports.
        (b"PROXY TCP4 127.0.0.1 127.0.0.1 60902 18401\r\n",
         "TCP4", "127.0.0.1", "127.0.0.1", 60902, 18401),
        (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
         "TCP4", "0.0.0.0", "255.255.255.255", 0, 65535),
        # IPv6 in any valid spelling is accepted and reported canonically.
        (b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::ffff:192.0.2.1 1 2\r\n",
         "TCP6", "2001:db8::1", "::ffff:c000:201", 1, 2),
        (b"PROXY TCP6 :: ::1 10 20\r\n", "TCP6", "::", "::1", 10, 20),
    ],
)  # fmt: skip
def test_known_good(line: bytes, family: str, src: str, dst: str, sport: int, dport: int) -> None:
    h = parse_ok(line + APP)
    assert h == ProxyHeader("proxy-v1", len(line), "PROXY", family, src, dst, sport, dport)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        b"PROXY UNKNOWN \x00\xff whatever \t\r\n",
        b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n",  # exactly 107 bytes
    ],
)
def test_unknown_ignores_rest_of_line(line: bytes) -> None:
    h = parse_ok(line + APP)
    assert h == ProxyHeader("proxy-v1", len(line), "PROXY", "UNKNOWN")
    assert h.src_addr is None and h.dst_port is None


def test_header_followed_by_data_has_header_length() -> None:
    line = b"PROXY TCP4 203.0.113.7 198.51.100.1 51000 80\r\n"
    assert parse_ok(line + APP).length == len(line) == 46
    assert parse_ok(line + b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n").length == len(line)


# -- incomplete input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    [
        b"", b"P", b"PROXY", b"PROXY ", b"PROXY T", b"PROXY UNK", b"PROXY UNKNOWN",
        b"PROXY UNKNOWN junk", b"PROXY TCP4 ", b"PROXY TCP4 1", b"PROXY TCP4 1.2.3.",
        b"PROXY TCP6 ::ffff:1.2.", b"PROXY TCP6 1:2:3:4:5:6:7", b"PROXY TCP6 fe80:",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 6553", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 0",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",
    ],
)  # fmt: skip
def test_valid_prefix_needs_more(prefix: bytes) -> None:
    assert proxy_v1.parse(prefix) == NeedMore(len(prefix) + 1)


# -- rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buf", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "signature"),
        (b"proxy ", "signature"),
        (b"PROXX", "signature"),
        (b"PROXY\r\n", "signature"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF"),
        (b"PROXY UNKNOWN\n", "bare LF"),
        (b"PROXY UNKNOWN a\nb\r\n", "bare LF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "CR not followed by LF"),
        (b"PROXY UNKNOWN a\rb\r\n", "CR not followed by LF"),
        (b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", "no CRLF within 107"),  # 108 bytes
        (b"PROXY UNKNOWN " + b"x" * 92 + b"\r", "no CRLF within 107"),  # CR at 106
        (b"PROXY UNKNOWN " + b"x" * 93, "no CRLF within 107"),
        (b"PROXY X", "unknown protocol"),
        (b"PROXY TCP5", "unknown protocol"),
        (b"PROXY tcp4", "unknown protocol"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY UNKNOWNX\r\n", "unknown protocol"),
        (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY TCP4\tx", "unknown protocol"),
        (b"PROXY \r\n", "unknown protocol"),
        (b"PROXY TCP4\r\n", "without addresses"),
        (b"PROXY TCP4 \r\n", "empty field"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected 4 fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3", "expected 4 fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "empty field"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ", "expected 4 fields"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "empty field"),
        (b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", "invalid IPv4 source"),
        (b"PROXY TCP4 01.2.3.4", "cannot become a valid address"),
        (b"PROXY TCP4 1.2.3.256", "cannot become a valid address"),
        (b"PROXY TCP4 1.2.3.4.", "cannot become a valid address"),
        (b"PROXY TCP4 1..", "cannot become a valid address"),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "invalid IPv4 source"),
        (b"PROXY TCP4 ::1 ::2 1 2\r\n", "invalid character in source"),
        (b"PROXY TCP4 1.2.3.4 0x1.2.3.4 1 2\r\n", "invalid character in destination"),
        (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "invalid IPv6 source"),
        (b"PROXY TCP6 1::2::3", "cannot become a valid address"),
        (b"PROXY TCP6 :1", "cannot become a valid address"),
        (b"PROXY TCP6 12345", "cannot become a valid address"),
        (b"PROXY TCP6 1:2:3:4:5:6:7:8:", "cannot become a valid address"),
        (b"PROXY TCP6 fe80::1%eth0", "invalid character"),
        (b"PROXY TCP6 ::1 ::2 1 2\xc2\xa0\r\n", "is not a decimal number"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1", "is not a decimal number"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1", "is not a decimal number"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1  ", "empty field"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01", "leading zero"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 00", "leading zero"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536", "above 65535"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "above 65535"),
    ],
)
def test_rejected(buf: bytes, reason: str) -> None:
    with pytest.raises(HeaderError, match=reason):
        proxy_v1.parse(buf)


def test_rejects_early_once_prefix_cannot_become_valid() -> None:
    # 7 bytes are enough to know "PROXY X" is not a header: no need to wait for the CRLF.
    with pytest.raises(HeaderError):
        proxy_v1.parse(b"PROXY X")
    assert isinstance(outcome(proxy_v1.parse, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"), NeedMore)
    with pytest.raises(HeaderError):  # the line before a final CR is checked in full already
        proxy_v1.parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r")


# -- encoder ---------------------------------------------------------------------------------


def test_build() -> None:
    assert proxy_v1.build("1.2.3.4", "5.6.7.8", 1, 2) == b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
    assert proxy_v1.build("2001:DB8::0:1", "::2", 3, 4, "TCP6") == (
        b"PROXY TCP6 2001:db8::1 ::2 3 4\r\n"
    )
    assert proxy_v1.build(None, None, None, None) == b"PROXY UNKNOWN\r\n"
    assert proxy_v1.build("1.2.3.4", "5.6.7.8", 1, 2, "UNKNOWN") == b"PROXY UNKNOWN\r\n"


@pytest.mark.parametrize(
    "args",
    [
        ("1.2.3.4", "::1", 1, 2, None),
        ("1.2.3.4", "5.6.7.8", 1, 2, "TCP6"),
        ("1.2.3.4", None, 1, 2, None),
        ("1.2.3.4", "5.6.7.8", None, 2, None),
        ("1.2.3.4", "5.6.7.8", 1, 65536, None),
        ("1.2.3.4", "5.6.7.8", -1, 2, None),
        ("1.2.3.4", "5.6.7.8", 1, 2, "UDP4"),
        ("not-an-ip", "5.6.7.8", 1, 2, None),
    ],
)
def test_build_rejects(
    args: tuple[str | None, str | None, int | None, int | None, str | None],
) -> None:
    with pytest.raises(ValueError):
        proxy_v1.build(*args)


# -- properties ------------------------------------------------------------------------------

ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6)
v6_text = st.one_of(
    v6.map(str),
    v6.map(lambda a: a.exploded),
    v6.map(lambda a: a.exploded.upper()),
    v4.map(lambda a: "::ffff:" + a),  # IPv4-mapped, dotted
    st.tuples(v6, v4).map(lambda t: ":".join(t[0].exploded.split(":")[:6]) + ":" + t[1]),
)
endpoints = st.one_of(st.tuples(v4, v4), st.tuples(v6_text, v6_text))


@given(endpoints, ports, ports, st.binary(max_size=40))
def test_round_trip(addrs: tuple[str, str], sport: int, dport: int, tail: bytes) -> None:
    src, dst = addrs
    line = proxy_v1.build(src, dst, sport, dport)
    h = check_prefixes(proxy_v1.parse, line + tail)
    assert isinstance(h, ProxyHeader)
    version = ipaddress.ip_address(src).version
    assert h == ProxyHeader(
        "proxy-v1", len(line), "PROXY", f"TCP{version}",
        str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), sport, dport,
    )  # fmt: skip


@given(st.sampled_from(["::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]), v6_text, ports, ports)
def test_non_canonical_v6_text_parses(a: str, b: str, sport: int, dport: int) -> None:
    line = f"PROXY TCP6 {a} {b} {sport} {dport}\r\n".encode()
    h = check_prefixes(proxy_v1.parse, line)
    if len(line) > proxy_v1.MAX_LEN:  # long dotted spellings can overflow the line limit
        assert isinstance(h, HeaderError)
    else:
        assert isinstance(h, ProxyHeader) and h.dst_addr == str(ipaddress.IPv6Address(b))


def _completable(text: str, v6: bool) -> bool:
    """Oracle: does some completion of up to 7 characters make ``text`` a valid address?

    Zeros, colons and dots suffice to finish any prefix of a valid address, and no shortest
    completion is longer than "0.0.0.0", so this small search is exact for our purpose.
    """
    ip = ipaddress.IPv6Address if v6 else ipaddress.IPv4Address
    frontier = [text]
    for _ in range(8):
        for cand in frontier:
            try:
                ip(cand)
                return True
            except ValueError:
                pass
        frontier = [c + x for c in frontier for x in ("0", ":", ".")]
    return False


@settings(max_examples=200, deadline=None)
@given(st.booleans(), st.text(alphabet="01f9:.", max_size=12))
def test_address_prefix_rejected_exactly_when_not_completable(v6: bool, text: str) -> None:
    if not v6:
        text = text.replace(":", "").replace("f", "")
    buf = f"PROXY TCP{6 if v6 else 4} {text}".encode()
    assert isinstance(outcome(proxy_v1.parse, buf), NeedMore) == _completable(text, v6)


# Bytes that matter to the grammar, so mutations reach deep states often.
_ALPHABET = b"PROXY TCP46UNKW0123456789abcdefABCDEF:.\r\n+-%\x00\xff"
noise = st.lists(st.sampled_from(_ALPHABET), max_size=120).map(bytes)


@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes:
    src, dst = draw(endpoints)
    line = bytearray(proxy_v1.build(src, dst, draw(ports), draw(ports)) + draw(noise))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(line)))
        op = draw(st.sampled_from(["set", "insert", "delete"]))
        c = draw(st.sampled_from(_ALPHABET))
        if op == "insert":
            line.insert(i, c)
        elif i < len(line):
            if op == "set":
                line[i] = c
            else:
                del line[i]
    return bytes(line)


@given(
    st.one_of(st.binary(max_size=150), noise, noise.map(lambda b: b"PROXY " + b), mutated_lines())
)
def test_contract_on_arbitrary_bytes(data: bytes) -> None:
    check_prefixes(proxy_v1.parse, data)


@given(st.one_of(noise.map(lambda b: b"PROXY " + b), mutated_lines()), st.binary(max_size=30))
def test_header_independent_of_trailing_data(data: bytes, extra: bytes) -> None:
    first = outcome(proxy_v1.parse, data)
    if isinstance(first, ProxyHeader):
        assert proxy_v1.parse(data + extra) == first
