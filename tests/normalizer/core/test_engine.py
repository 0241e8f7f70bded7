"""The rewriting core, driven packet by packet with hand-built conversations."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from normalizer.core.engine import Normalizer
from normalizer.core.frame import locate_tcp
from normalizer.core.options import Options
from normalizer.proxy_headers import custom, proxy_v1, proxy_v2
from normalizer.proxy_headers.base import ProxyHeader
from normalizer.proxy_headers.detect import parse_header
from tests.normalizer.packets import NS, PROXY4, Conv, assert_valid, client_stream

V1 = proxy_v1.build("203.0.113.7", "198.51.100.1", 51000, 80)
V2 = proxy_v2.build(
    command="PROXY", family="TCP4", src="203.0.113.7", dst="198.51.100.1", sport=51000, dport=80
)
REQ = b"GET /index.html HTTP/1.1\r\nHost: decoy\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def run(frames: list[bytes], **opts: object) -> tuple[list[bytes], Normalizer]:
    """Normalize with wire addresses kept (unless ``restore_addresses=True`` is passed)."""
    opts.setdefault("restore_addresses", False)
    eng = Normalizer(Options(proxies=(f"{PROXY4}/32", "2001:db8::1/128"), **opts))  # type: ignore[arg-type]
    for i, fr in enumerate(frames):
        eng.feed(fr, i * NS // 1000)
    eng.flush()
    out = [bytes(fr) for _ts, fr in eng.drain()]
    return out, eng


def seq_of(frame: bytes) -> int:
    f = locate_tcp(frame)
    assert f is not None
    return struct.unpack_from("!I", frame, f.tcp + 4)[0]


def ack_of(frame: bytes) -> int:
    f = locate_tcp(frame)
    assert f is not None
    return struct.unpack_from("!I", frame, f.tcp + 8)[0]


def conversation(c: Conv, header: bytes, coalesce: bool) -> list[bytes]:
    n = len(header)
    frames = c.handshake()
    if coalesce:
        frames.append(c.seg(True, 0, 0, header + REQ, "PA"))
    else:
        frames.append(c.seg(True, 0, 0, header, "PA"))
        frames.append(c.seg(False, 0, n))  # server acks the header
        frames.append(c.seg(True, n, 0, REQ, "PA"))
    frames.append(c.seg(False, 0, n + len(REQ), RESP, "PA"))
    frames.append(c.seg(True, n + len(REQ), len(RESP), flags="FA"))
    frames.append(c.seg(False, len(RESP), n + len(REQ) + 1, flags="FA"))
    frames.append(c.seg(True, n + len(REQ) + 1, len(RESP) + 1))
    return frames


def plain(c: Conv) -> list[bytes]:
    return conversation(c, b"", coalesce=True)


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
@pytest.mark.parametrize("coalesce", [False, True], ids=["alone", "coalesced"])
def test_strips_header_and_matches_plain_conversation(header: bytes, coalesce: bool) -> None:
    c = Conv()
    out, eng = run(conversation(c, header, coalesce))
    expected = plain(c)
    if not coalesce:
        # header-only segment dropped; the server's ack of it becomes a duplicate ack of 0
        assert eng.counters.header_only_dropped == 1
        assert len(out) == len(expected) + 1
        assert ack_of(out[3]) == c.cisn + 1
        del out[3]
    for got, want in zip(out, expected, strict=True):
        assert_valid(got)
        assert got == want
    assert client_stream(out, c) == REQ
    assert eng.counters.headers_stripped == {"proxy-v1" if header is V1 else "proxy-v2": 1}


def test_header_split_across_segments_and_out_of_order() -> None:
    c = Conv()
    stream = V2 + REQ
    frames = c.handshake()
    segs = [(0, 5), (5, 17), (17, 30), (30, len(stream))]
    pieces = [c.seg(True, a, 0, stream[a:b], "PA") for a, b in segs]
    frames += [pieces[2], pieces[0], pieces[3], pieces[1]]
    out, eng = run(frames)
    for fr in out:
        assert_valid(fr)
    assert client_stream(out, c) == REQ
    assert eng.counters.headers_stripped == {"proxy-v2": 1}


def test_retransmissions_carrying_header_bytes() -> None:
    c = Conv()
    n = len(V1)
    frames = (
        c.handshake()
        + [
            c.seg(True, 0, 0, V1, "PA"),
            c.seg(True, n, 0, REQ, "PA"),
            c.seg(True, 0, 0, V1, "PA"),  # retransmitted header: dropped
            c.seg(True, 10, 0, (V1 + REQ)[10 : n + 8], "PA"),  # overlaps header tail and data
            c.seg(False, 0, n + len(REQ), RESP, "PA"),
        ]
    )
    out, eng = run(frames)
    assert eng.counters.header_only_dropped == 2
    for fr in out:
        assert_valid(fr)
    assert client_stream(out, c) == REQ
    overlap = out[4]
    assert seq_of(overlap) == c.cisn + 1
    assert ack_of(out[-1]) == c.cisn + 1 + len(REQ)


def test_isn_wraps_around_2_32() -> None:
    c = Conv(cisn=2**32 - 7, sisn=2**32 - 1)
    out, _ = run(conversation(c, V2, coalesce=False))
    expected = plain(c)
    del out[3]
    assert out == expected


def test_sack_edges_are_shifted() -> None:
    c = Conv()
    n = len(V1)
    left = (c.cisn + 1 + n + 100) % 2**32
    right = (c.cisn + 1 + n + 200) % 2**32
    frames = c.handshake() + [
        c.seg(True, 0, 0, V1 + REQ, "PA"),
        c.seg(False, 0, n + 10, options=[("SAck", (left, right))]),
    ]
    out, _ = run(frames)
    pc = Conv()
    want = pc.seg(False, 0, 10, options=[("SAck", (left - n, right - n))])
    assert out[-1] == want
    assert_valid(out[-1])


def test_ipv6_and_qinq() -> None:
    c = Conv(client="2001:db8::1", server="2001:db8::2", vlans=(100, 200))
    out, eng = run(conversation(c, V1, coalesce=True))
    assert out == plain(c)
    assert eng.counters.headers_stripped == {"proxy-v1": 1}


def test_custom_header() -> None:
    c = Conv()
    hdr = custom.build("203.0.113.9", "198.51.100.1", 4444, 22)
    out, eng = run(conversation(c, hdr, coalesce=True))
    assert out == plain(c)
    assert eng.counters.headers_stripped == {"custom": 1}


def test_local_health_check() -> None:
    c = Conv()
    local = proxy_v2.build(command="LOCAL", family="UNSPEC")
    n = len(local)
    frames = c.handshake() + [
        c.seg(True, 0, 0, local, "PA"),
        c.seg(False, 0, n),
        c.seg(True, n, 0, flags="FA"),
        c.seg(False, 0, n + 1, flags="FA"),
    ]
    out, eng = run(frames)
    assert eng.counters.headers_local == 1
    assert len(out) == 6  # header-only segment dropped
    assert [seq_of(f) for f in out[4:]] == [c.cisn + 1, c.sisn + 1]
    assert ack_of(out[-1]) == c.cisn + 2


def test_duplicate_syn_and_port_reuse() -> None:
    c = Conv()
    frames = [c.handshake()[0], *conversation(c, V1, coalesce=True)]
    c2 = Conv(cisn=999_999)
    frames += conversation(c2, V2, coalesce=True)
    out, eng = run(frames)
    assert out == [plain(c)[0], *plain(c), *plain(c2)]
    assert eng.counters.headers_stripped == {"proxy-v1": 1, "proxy-v2": 1}


def test_untrusted_and_unproxied_traffic_is_byte_identical() -> None:
    attacker = Conv(client="198.51.100.50")  # not a configured proxy, yet sends a header
    frames = conversation(attacker, V1, coalesce=True) + plain(
        Conv(cport=40001, client="192.0.2.9")
    )
    out, eng = run(frames)
    assert out == frames
    assert eng.counters.passed_untracked == len(frames)


@pytest.mark.parametrize(
    ("payload", "counter"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "header_none"),  # no header at all, not a malformed one
        (b"PROXY TCP4 1.2.3.4\r\n", "header_malformed"),
        (b"PROXY TCP9 x\r\n", "header_malformed"),
    ],
)
def test_malformed_header_leaves_flow_untouched(payload: bytes, counter: str) -> None:
    c = Conv()
    frames = c.handshake() + [
        c.seg(True, 0, 0, payload, "PA"),
        c.seg(False, 0, len(payload), RESP, "PA"),
    ]
    out, eng = run(frames)
    assert out == frames
    problems = ("header_none", "header_malformed", "header_excluded")
    assert {k: getattr(eng.counters, k) for k in problems} == {k: k == counter for k in problems}
    assert eng.counters.passed_unparsed_flow == len(frames)


def test_connection_closed_inside_header_is_released_untouched() -> None:
    c = Conv()
    frames = c.handshake() + [c.seg(True, 0, 0, V2[:10], "PA"), c.seg(True, 10, 0, flags="FA")]
    out, eng = run(frames)
    assert out == frames
    assert eng.counters.header_truncated == 1


def test_hold_timeout_releases_untouched() -> None:
    c = Conv()
    eng = Normalizer(Options(proxies=(f"{PROXY4}/32",), pending_timeout=1.0))
    frames = c.handshake() + [c.seg(True, 0, 0, V2[:10], "PA")]
    for fr in frames:
        eng.feed(fr, 0)
    assert eng.drain() == []
    assert eng.held_packets == 4
    assert eng.counters.unaccounted(eng.held_packets) == 0
    assert eng.counters.unaccounted(0) == 4  # held packets are neither out nor dropped
    eng.tick(2 * NS)
    assert [bytes(f) for _t, f in eng.drain()] == frames
    assert eng.counters.hold_timeout == 1


def test_table_is_bounded_and_counts_evictions() -> None:
    eng = Normalizer(Options(proxies=(f"{PROXY4}/32",), max_flows=10))
    for port in range(1000, 1100):
        eng.feed(Conv(cport=port).handshake()[0], 0)
    assert len(eng.table) == 10
    assert eng.counters.flows_evicted == 90
    assert eng.counters.packets_out == 90  # evicted pending SYNs were released, not lost


@pytest.mark.parametrize(("policy", "forwarded"), [("pass", 2), ("drop", 0)])
def test_midstream_policy(policy: str, forwarded: int) -> None:
    c = Conv()
    frames = [c.seg(True, 0, 0, V1 + REQ, "PA"), c.seg(False, 0, 10, RESP, "PA")]
    out, eng = run(frames, midstream=policy)
    assert len(out) == forwarded
    assert eng.counters.unaccounted(eng.held_packets) == 0


def test_flows_expire_when_idle() -> None:
    c = Conv()
    eng = Normalizer(Options(proxies=(f"{PROXY4}/32",), idle_timeout=10))
    for fr in conversation(c, V1, coalesce=True)[:4]:
        eng.feed(fr, 0)
    assert len(eng.table) == 1
    eng.feed(plain(Conv(client="192.0.2.77"))[0], 11 * NS)
    assert len(eng.table) == 0
    assert eng.counters.flows_expired == 1


def test_header_events_name_both_ends() -> None:
    c = Conv()
    _out, eng = run(conversation(c, V1, coalesce=True))
    (ev,) = eng.drain_events()
    assert ev.client == (PROXY4, 40000)
    assert ev.server == ("192.0.2.2", 80)
    assert ev.header.src_addr == "203.0.113.7"


def test_restored_addresses_equal_a_direct_conversation() -> None:
    c = Conv()
    out, eng = run(conversation(c, V1, coalesce=True), restore_addresses=True)
    real = Conv(client="203.0.113.7", server="198.51.100.1", cport=51000, sport=80)
    assert out == plain(real)
    assert eng.counters.addresses_restored == 1


def test_restored_addresses_ipv6_wire_ipv6_client() -> None:
    c = Conv(client="2001:db8::1", server="2001:db8::2")
    hdr = proxy_v2.build(
        command="PROXY",
        family="TCP6",
        src="2001:db8:a::10",
        dst="2001:db8:a::1",
        sport=50000,
        dport=8080,
    )
    out, _ = run(conversation(c, hdr, coalesce=True), restore_addresses=True)
    real = Conv(client="2001:db8:a::10", server="2001:db8:a::1", cport=50000, sport=8080)
    assert out == plain(real)


@pytest.mark.parametrize(
    ("wire", "real"),
    [
        ((PROXY4, "192.0.2.2"), ("2001:db8:a::10", "2001:db8:a::1")),
        (("2001:db8::1", "2001:db8::2"), ("203.0.113.7", "198.51.100.1")),
    ],
    ids=["v6-client-over-v4", "v4-client-over-v6"],
)
def test_restored_addresses_across_families(wire: tuple[str, str], real: tuple[str, str]) -> None:
    c = Conv(client=wire[0], server=wire[1], vlans=(7,))
    hdr = proxy_v1.build(real[0], real[1], 51000, 443)
    out, _ = run(conversation(c, hdr, coalesce=True), restore_addresses=True)
    want = plain(Conv(client=real[0], server=real[1], cport=51000, sport=443, vlans=(7,)))
    assert len(out) == len(want)
    ip_cls = IPv6 if ":" in real[0] else IP
    for got, exp in zip(out, want, strict=True):
        assert_valid(got)
        g, e = Ether(got), Ether(exp)
        assert (g[ip_cls].src, g[ip_cls].dst) == (e[ip_cls].src, e[ip_cls].dst)
        assert bytes(g[TCP]) == bytes(e[TCP])  # ports, seq/ack, flags, payload, checksum


def test_local_and_unknown_headers_keep_wire_addresses() -> None:
    c = Conv()
    unknown = proxy_v1.build(None, None, None, None)
    out, eng = run(conversation(c, unknown, coalesce=True), restore_addresses=True)
    assert out == plain(c)
    assert eng.counters.addresses_restored == 0


def test_header_in_a_tcp_fast_open_syn() -> None:
    """HAProxy with ``tfo`` on a server line sends the header as SYN data: the SYN must stay (a
    Suricata without it never tracks the flow), its payload goes; the server's ack of the SYN
    data maps back onto the bare SYN."""
    c = Conv()
    n = len(V2)
    frames = [
        c.seg(True, 0, None, V2, flags="S"),
        c.seg(False, 0, n, flags="SA"),
        c.seg(True, n, 0),
        c.seg(True, n, 0, REQ, "PA"),
        c.seg(False, 0, n + len(REQ), RESP, "PA"),
        c.seg(True, n + len(REQ), len(RESP), flags="FA"),
        c.seg(False, len(RESP), n + len(REQ) + 1, flags="FA"),
        c.seg(True, n + len(REQ) + 1, len(RESP) + 1),
    ]
    out, eng = run(frames)
    assert eng.counters.headers_stripped == {"proxy-v2": 1}
    assert eng.counters.header_only_dropped == 0
    for got, want in zip(out, plain(c), strict=True):
        assert_valid(got)
        assert got == want
    # restored: the bare SYN already names the real client and target
    restored, _eng = run(frames, restore_addresses=True)
    syn = Ether(restored[0])
    assert (syn[IP].src, syn[TCP].flags, len(syn[TCP].payload)) == ("203.0.113.7", "S", 0)


def test_next_deadline_is_none_without_flows_and_follows_the_hold() -> None:
    c = Conv()
    eng = Normalizer(Options(proxies=(f"{PROXY4}/32",), pending_timeout=1.0, idle_timeout=10))
    assert eng.next_deadline() is None
    t0 = 5 * NS
    for fr in c.handshake() + [c.seg(True, 0, 0, V2[:10], "PA")]:
        eng.feed(fr, t0)
    due = eng.next_deadline()
    assert due is not None and due <= t0 + NS + 1
    eng.tick(t0 + NS)  # not yet: the hold timeout is strict
    assert eng.held_packets == 4 and eng.counters.hold_timeout == 0
    assert eng.next_deadline() == t0 + NS + 1  # exact after a sweep
    eng.tick(t0 + NS + 1)
    assert eng.held_packets == 0 and eng.counters.hold_timeout == 1
    assert eng.next_deadline() == t0 + 10 * NS + 1  # now only the idle expiry is due
    eng.tick(t0 + 10 * NS + 1)
    assert len(eng.table) == 0 and eng.counters.flows_expired == 1
    assert eng.next_deadline() is None


def test_next_deadline_of_a_closed_flow_is_the_closed_timeout() -> None:
    c = Conv()
    eng = Normalizer(Options(proxies=(f"{PROXY4}/32",), closed_timeout=2.0, idle_timeout=60))
    frames = conversation(c, V1, coalesce=True)
    for i, fr in enumerate(frames):
        eng.feed(fr, i)
    closed_at = len(frames) - 2  # the second FIN
    due = eng.next_deadline()
    assert due is not None and due <= closed_at + 2 * NS + 1
    eng.tick(closed_at + 2 * NS)
    assert len(eng.table) == 1
    assert eng.next_deadline() == closed_at + 2 * NS + 1
    eng.tick(closed_at + 2 * NS + 1)
    assert len(eng.table) == 0 and eng.counters.flows_expired == 1


def test_next_deadline_never_later_than_a_due_expiry() -> None:
    """Between sweeps the bound may be early but never late: ticking at it finds every flow
    that is due, for flows opened, closed and resumed after the last sweep."""
    eng = Normalizer(Options(proxies=(f"{PROXY4}/32",), pending_timeout=3.0, idle_timeout=4))
    eng.tick(0)
    eng.feed(Conv(cport=1000).handshake()[0], 100)
    header = parse_header(V1, Options().header_kinds, Options().custom_magic)
    assert isinstance(header, ProxyHeader)
    assert eng.resume(("192.0.2.1", 2000), ("192.0.2.2", 80), b"", 7, header, 50)
    due = eng.next_deadline()
    assert due is not None and due <= 100 + 3 * NS + 1
    eng.tick(100 + 3 * NS + 1)
    assert eng.counters.hold_timeout == 1
    assert eng.next_deadline() == 50 + 4 * NS + 1
