"""The headers the compiled core parses itself (_headers.c) against the Python codecs.

C parses PROXY v2 PROXY TCP4/TCP6 without TLVs and PROXY v1 TCP4 in canonical text; it must
never accept a header the Python codec rejects, nor give it another length or other endpoints,
and it must hand everything else to the codecs (``_on_header``). Each case runs one connection
carrying the header through both engines and compares frames, events and counters; a counting
callback shows which headers C took, so the fast path is really exercised.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normalizer.core.fastpath import CompiledNormalizer, compiled_available
from normalizer.core.options import Options
from normalizer.proxy_headers import proxy_v1, proxy_v2
from normalizer.proxy_headers.detect import ALL_KINDS, HeaderKind
from tests.normalizer.core.test_fastpath import TRUSTED, Twins
from tests.normalizer.packets import BACKEND4, PROXY4, Conv

pytestmark = pytest.mark.skipif(
    not compiled_available(), reason="normalizer.core._fastpath is not built (no C compiler?)"
)


class Counting(CompiledNormalizer):
    """Counts the headers the Python codecs completed (a header cut by a segment boundary is
    first shown to them incomplete: only they can say whether its prefix may still be one)."""

    def __init__(self, options: Options) -> None:
        self.python_parsed = 0
        super().__init__(options)

    def _on_header(self, buf: bytes) -> object:
        res = super()._on_header(buf)
        self.python_parsed += isinstance(res, tuple)
        return res


def run(header: bytes, data: bytes, options: Options) -> Counting:
    """One trusted connection whose stream is ``header + data``, in two segments, through both
    engines; returns the compiled one (Twins compared them after every step)."""
    twins = Twins(options)
    twins.c = Counting(options)
    conv = Conv(client=PROXY4, server=BACKEND4, cport=40001, cisn=1000, sisn=5000)
    stream = header + data
    cut = max(1, len(header) // 2)
    frames = [
        conv.seg(True, 0, None, flags="S"),
        conv.seg(False, 0, 0, flags="SA"),
        conv.seg(True, 0, 0),
        conv.seg(True, 0, 0, stream[:cut], "PA"),
        conv.seg(True, cut, 0, stream[cut:], "PA"),
        conv.seg(False, 0, len(stream), b"reply", "PA"),
        conv.seg(True, len(stream), 5, flags="FA"),
    ]
    for i, fr in enumerate(frames):
        twins.feed(fr, (i + 1) * 1000)
    twins.flush()
    assert isinstance(twins.c, Counting)
    return twins.c


def opts(**kw: Any) -> Options:
    return Options(proxies=TRUSTED, **kw)


def test_canonical_headers_are_parsed_in_c_with_the_codecs_results() -> None:
    v2 = proxy_v2.build(
        command="PROXY", family="TCP4", src="198.51.100.1", dst="203.0.113.1", sport=1, dport=80
    )
    v2_6 = proxy_v2.build(
        command="PROXY", family="TCP6", src="2001:db8::1", dst="2001:db8::2", sport=0, dport=443
    )
    v1 = proxy_v1.build("198.51.100.7", "203.0.113.9", 65535, 0)
    for header in (v2, v2_6, v1):
        for restore in (True, False):
            c = run(header, b"GET / HTTP/1.0\r\n\r\n", opts(restore_addresses=restore))
            assert c.python_parsed == 0, header
            assert sum(c.counters.headers_stripped.values()) == 1


def test_other_headers_go_to_the_codecs() -> None:
    others = [
        proxy_v1.build("2001:db8::7", "2001:db8::9", 1, 2),  # v1 TCP6
        b"PROXY UNKNOWN\r\n",
        proxy_v2.build(command="LOCAL", family="UNSPEC"),
        proxy_v2.build(
            command="PROXY",
            family="TCP4",
            src="198.51.100.1",
            dst="203.0.113.1",
            sport=1,
            dport=80,
            with_crc32c=True,
        ),
    ]
    for header in others:
        c = run(header, b"data", opts())
        assert c.python_parsed >= 1, header
        assert sum(c.counters.headers_stripped.values()) == 1


def test_excluded_kinds_are_not_parsed_in_c() -> None:
    v1 = proxy_v1.build("198.51.100.7", "203.0.113.9", 1, 2)
    c = run(v1, b"data", opts(header_kinds=frozenset({HeaderKind.PROXY_V2})))
    assert c.counters.header_excluded == 1 and not c.counters.headers_stripped


BAD_OCTETS = ["00", "01", "007", "256", "999", "1000", "", "-1", "+1", "1a", "0x1"]
BAD_PORTS = ["00", "080", "65536", "99999", "123456", "", "-0", "0x50", "1e3", "+1"]


@st.composite
def v1_lines(draw: st.DrawFn) -> bytes:
    """PROXY v1 TCP4 lines: canonical, or with exactly one part changed."""
    octets = [str(draw(st.integers(0, 255))) for _ in range(8)]
    ports = [str(draw(st.integers(0, 65535))) for _ in range(2)]
    seps = [" "] * 5
    proto, end, quad_len = "TCP4", "\r\n", (4, 4)
    what = draw(st.sampled_from(["none", "none", "octet", "port", "sep", "proto", "end", "quad"]))
    if what == "octet":
        octets[draw(st.integers(0, 7))] = draw(st.sampled_from(BAD_OCTETS))
    elif what == "port":
        ports[draw(st.integers(0, 1))] = draw(st.sampled_from(BAD_PORTS))
    elif what == "sep":
        seps[draw(st.integers(0, 4))] = draw(st.sampled_from(["  ", "\t", "", " \r"]))
    elif what == "proto":
        proto = draw(st.sampled_from(["TCP6", "tcp4", "TCP4 ", "TCP", "UDP4"]))
    elif what == "end":
        end = draw(st.sampled_from(["\n", "\r", "\r\r\n", " \r\n", "", "\r\n\r\n", "x\r\n"]))
    elif what == "quad":
        quad_len = (draw(st.sampled_from([3, 5])), 4)
    a = ".".join(octets[: quad_len[0]] if quad_len[0] <= 4 else [*octets[:4], "1"])
    b = ".".join(octets[4:])
    parts = [f"PROXY{seps[0]}{proto}", a, b, *ports]
    line = parts[0] + "".join(sep + p for sep, p in zip(seps[1:], parts[1:], strict=True))
    return (line + end).encode()


@st.composite
def v2_headers(draw: st.DrawFn) -> bytes:
    """PROXY v2 headers without TLVs, some with a byte of the fixed part or length changed."""
    six = draw(st.booleans())
    a, b = (
        (str(ipaddress.IPv6Address(draw(st.binary(min_size=16, max_size=16)))) for _ in "ab")
        if six
        else (str(ipaddress.IPv4Address(draw(st.binary(min_size=4, max_size=4)))) for _ in "ab")
    )
    h = bytearray(
        proxy_v2.build(
            command="PROXY",
            family="TCP6" if six else "TCP4",
            src=a,
            dst=b,
            sport=draw(st.integers(0, 65535)),
            dport=draw(st.integers(0, 65535)),
        )
    )
    for _ in range(draw(st.integers(0, 2))):
        h[draw(st.integers(0, 15))] = draw(st.integers(0, 255))
    if draw(st.integers(0, 3)) == 0:
        h = h[: draw(st.integers(0, len(h)))]
    return bytes(h)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    header=st.one_of(v1_lines(), v2_headers()),
    data=st.binary(max_size=40),
    restore=st.booleans(),
    kinds=st.sampled_from([ALL_KINDS, ALL_KINDS, frozenset({HeaderKind.PROXY_V1})]),
)
def test_c_agrees_with_the_codecs_on_near_canonical_headers(
    header: bytes, data: bytes, restore: bool, kinds: frozenset[HeaderKind]
) -> None:
    # Twins (in run) compares frames, events and counters of both engines after every step.
    run(header, data, opts(restore_addresses=restore, header_kinds=kinds))


def test_backends_past_the_bound_count_as_other_in_both_engines() -> None:
    """headers_by_backend's bound, with more decoys than it keeps (events from many flows)."""
    from normalizer.core import _fastpath  # type: ignore[attr-defined]
    from normalizer.core.counters import MAX_BACKENDS

    assert _fastpath.MAX_BACKENDS == MAX_BACKENDS
    o = opts(max_flows=10)
    twins = Twins(o)
    v2 = proxy_v2.build(
        command="PROXY", family="TCP4", src="198.51.100.1", dst="203.0.113.1", sport=1, dport=80
    )
    ts = 0
    for i in range(MAX_BACKENDS + 5):
        server = str(ipaddress.IPv4Address(0x0A000000 + i))
        conv = Conv(client=PROXY4, server=server, cport=1024 + i, cisn=1, sisn=2)
        for fr in (
            conv.seg(True, 0, None, flags="S"),
            conv.seg(False, 0, 0, flags="SA"),
            conv.seg(True, 0, 0, v2 + b"x", "PA"),
        ):
            ts += 1000
            twins.py.feed(fr, ts)
            twins.c.feed(fr, ts)
    twins.check("many backends")
    per = twins.c.counters.headers_by_backend
    assert len(per) == MAX_BACKENDS + 1 and per["other"] == 5
