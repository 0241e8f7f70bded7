"""The appliance core (normalizer/tunnels/appliance.py): validation, returns, inspection frames.

The return packet is checked against scapy (an independent decoder of IPv4/UDP and their
checksums); the inspection frame against the inner packet it must carry byte for byte.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP  # type: ignore[import-untyped]

from normalizer.cache.connections import ConnectionCache
from normalizer.cli import main
from normalizer.core.frame import LINKTYPE_ETHERNET
from normalizer.core.options import Options
from normalizer.core.pipeline import Pipeline
from normalizer.tunnels import geneve
from normalizer.tunnels.appliance import (
    REASONS,
    Appliance,
    ApplianceCounters,
    Rejected,
    Verdict,
    healthy,
    validate,
)
from normalizer.tunnels.ref import TunnelRef, tunnel_json
from tests.normalizer.core.test_engine import REQ, V2, conversation
from tests.normalizer.packets import PROXY4, Conv

BALANCER = bytes([10, 98, 0, 1])
APPLIANCE = bytes([10, 98, 0, 2])
ENI = bytes.fromhex("0e1a2b3c4d5e6f70")
ATT = bytes.fromhex("a77ac4000000beef")
COOKIE = bytes.fromhex("03910253")


def ipv4(payload: bytes, proto: int = 6, src: bytes = b"\xc6\x33\x64\x0a") -> bytes:
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, src, b"\xc0\x00\x02\x02"
    )
    return head + payload


def ipv6(payload: bytes) -> bytes:
    return struct.pack("!IHBB", 0x60000000, len(payload), 17, 64) + bytes(32) + payload


def datagram(
    inner: bytes,
    eni: bytes = ENI,
    cookie: bytes = COOKIE,
    vni: int = 0,
    extra: tuple[geneve.GeneveOption, ...] = (),
) -> bytes:
    proto = geneve.PROTO_IPV4 if inner[0] >> 4 == 4 else geneve.PROTO_IPV6
    opts = [*geneve.aws_options(eni, ATT, cookie), *extra]
    return geneve.build(vni, proto, opts) + inner


def appliance() -> Appliance:
    return Appliance(("10.98.0.0/24",), APPLIANCE)


inner_packets = st.one_of(
    st.binary(max_size=1400).map(ipv4),
    st.binary(max_size=1400).map(ipv6),
)


@settings(max_examples=200, deadline=None)
@given(
    inner=inner_packets,
    eni=st.binary(min_size=8, max_size=8),
    cookie=st.binary(min_size=4, max_size=4),
    vni=st.integers(0, (1 << 24) - 1),
    sport=st.integers(1, 65535),
)
def test_valid_datagram_is_returned_unchanged_and_inspected(
    inner: bytes, eni: bytes, cookie: bytes, vni: int, sport: int
) -> None:
    payload = datagram(inner, eni, cookie, vni)
    a = appliance()
    v = a.receive(payload, BALANCER, sport)
    assert v is not None
    pkt = IP(v.ret)
    # Addresses swapped, ports kept, payload as received, checksums as scapy computes them.
    assert (pkt.src, pkt.dst) == ("10.98.0.2", "10.98.0.1")
    assert (pkt[UDP].sport, pkt[UDP].dport) == (sport, 6081)
    assert bytes(pkt[UDP].payload) == payload
    again = IP(v.ret)
    del again.chksum, again[UDP].chksum
    rebuilt = IP(bytes(again))
    assert (rebuilt.chksum, rebuilt[UDP].chksum) == (pkt.chksum, pkt[UDP].chksum)
    # The inspection frame: synthesized MACs, the ENI's tag, the inner packet byte for byte.
    assert v.frame[12:14] == b"\x81\x00"
    assert int.from_bytes(v.frame[14:16], "big") == v.ref.vlan
    assert v.frame[16:18] == (b"\x08\x00" if inner[0] >> 4 == 4 else b"\x86\xdd")
    assert v.frame[18:] == inner
    meta = tunnel_json(v.ref)
    assert (meta["eni_id"], meta["attachment_id"], meta["flow_cookie"]) == (
        eni.hex(),
        ATT.hex(),
        cookie.hex(),
    )
    assert meta["outer"]["src_ip"] == "10.98.0.1" and meta["outer"]["src_port"] == sport
    assert a.counters.inspected == a.counters.received == 1


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 255))
def test_random_bytes_are_a_counted_reject_or_valid(data: bytes, last: int) -> None:
    a = appliance()
    for payload in (data, datagram(ipv4(b""))[:12] + data):
        v = a.receive(payload, BALANCER, 1)
        if v is not None:
            assert v.ret.endswith(payload)
    c = a.counters
    assert c.received == 2 == c.inspected + c.rejected


def test_every_truncation_is_rejected() -> None:
    payload = datagram(ipv4(b"x" * 40))
    a = appliance()
    for cut in range(len(payload)):
        assert a.receive(payload[:cut], BALANCER, 1) is None
    assert a.counters.rejected == len(payload) and a.counters.inspected == 0
    assert a.counters.rejected_inner > 0 and a.counters.rejected_length > 0
    assert a.counters.rejected_short == 8


def reason(payload: bytes) -> str:
    try:
        validate(payload)
    except Rejected as exc:
        return exc.reason
    return "valid"


def test_reasons() -> None:
    good = datagram(ipv4(b"abcd"))
    assert reason(good) == "valid"
    assert reason(bytes([0x40 | good[0]]) + good[1:]) == "version"
    assert reason(good[:2] + b"\x65\x58" + good[4:]) == "protocol"
    assert reason(bytes([good[0] + 1]) + good[1:]) in ("length", "inner")
    assert reason(bytes([63]) + good[1:]) == "length"
    assert reason(good + b"\x00") == "inner"  # trailing bytes the inner length does not cover
    for drop in range(3):
        opts = geneve.aws_options(ENI, ATT, COOKIE)
        del opts[drop]
        assert reason(geneve.build(0, geneve.PROTO_IPV4, opts) + ipv4(b"")) == "options"
    twice = [*geneve.aws_options(ENI, ATT, COOKIE), geneve.GeneveOption(0x0108, 3, COOKIE)]
    assert reason(geneve.build(0, geneve.PROTO_IPV4, twice) + ipv4(b"")) == "options"
    small = [*geneve.aws_options(ENI, ATT, COOKIE)[:2], geneve.GeneveOption(0x0108, 3, ENI)]
    assert reason(geneve.build(0, geneve.PROTO_IPV4, small) + ipv4(b"")) == "options"
    critical = geneve.GeneveOption(0x0200, 0x81, b"abcd")
    assert reason(datagram(ipv4(b""), extra=(critical,))) == "options"
    # An unknown option without the critical bit is kept, and returned as received.
    other = datagram(ipv4(b""), extra=(geneve.GeneveOption(0x0200, 1, b"abcd"),))
    v = appliance().receive(other, BALANCER, 7)
    assert v is not None and v.ret.endswith(other)
    assert reason(datagram(ipv6(b"xy"))[:-1]) == "inner"
    assert set(REASONS) >= {"peer", "short", "version", "length", "protocol", "options", "inner"}


def test_unknown_peer_is_neither_returned_nor_inspected() -> None:
    a = appliance()
    assert a.receive(datagram(ipv4(b"")), bytes([10, 97, 0, 1]), 1) is None
    # Its own address, even inside tunnel_peers: a return that came back is not returned again.
    assert a.receive(datagram(ipv4(b"")), APPLIANCE, 6081) is None
    assert a.counters.rejected_peer == 2 and a.counters.inspected == 0


def test_each_endpoint_has_its_own_vlan() -> None:
    a = appliance()
    other = bytes.fromhex("0e99999999999999")
    vlans = [a.receive(datagram(ipv4(b"p"), eni), BALANCER, 1) for eni in (ENI, other, ENI)]
    ids = [v.ref.vlan for v in vlans if v is not None]
    assert len(ids) == 3 and ids[0] == ids[2] != ids[1]
    # Equal inner packets, different endpoints: frames differ only in the tag.
    assert vlans[0] is not None and vlans[1] is not None
    assert vlans[0].frame[18:] == vlans[1].frame[18:] and vlans[0].frame != vlans[1].frame


def test_vxlan_inside_geneve_is_opened_through_both_layers() -> None:
    eth = bytes.fromhex("0200000000aa0200000000bb0800") + ipv4(b"inner-tcp")
    vx = (
        struct.pack("!HHHH", 40000, 4789, 8 + 8 + len(eth), 0) + b"\x08\x00\x00\x00\x00\x00\x64\x00"
    )
    outer = ipv4(vx + eth, proto=17, src=bytes([10, 1, 0, 5]))
    payload = datagram(outer)
    a = appliance()
    v = a.receive(payload, BALANCER, 1)
    assert v is not None and v.ret.endswith(payload)
    assert v.frame == eth[:12] + b"\x81\x00" + v.ref.vlan.to_bytes(2, "big") + eth[12:]
    meta = tunnel_json(v.ref)
    assert meta["mirror"]["type"] == "vxlan" and meta["mirror"]["vni"] == 100
    assert meta["mirror"]["outer"]["src_ip"] == "10.1.0.5" and meta["eni_id"] == ENI.hex()
    assert a.counters.mirrored == 1
    # The same ENI without the mirror layer gets another id: two sessions, two flows.
    plain = a.receive(datagram(ipv4(b"")), BALANCER, 1)
    assert plain is not None and plain.ref.vlan != v.ref.vlan


def test_healthy_needs_all_three() -> None:
    assert healthy(True, True, False)
    assert not healthy(False, True, False)
    assert not healthy(True, False, False)
    assert not healthy(True, True, True)


def test_header_stripping_composes_and_the_cache_names_the_endpoint(tmp_path: Path) -> None:
    """A proxied flow inside the balancer's GENEVE (a proxy in the protected VPC): its header is
    stripped on the way to the tap, and its connection row carries ENI id and cookie."""
    conv = conversation(Conv(), V2, coalesce=True)
    opts = Options(proxies=(f"{PROXY4}/32",), restore_addresses=False, idle_timeout=350.0)
    cache = ConnectionCache(tmp_path / "c.db")
    pipe = Pipeline(
        opts,
        LINKTYPE_ETHERNET,
        on_events=cache.record,
        on_tunnels=cache.record_tunnels,
        tunnelled=True,
    )
    a = appliance()
    for i, f in enumerate(conv):
        v = a.receive(datagram(f[14:]), BALANCER, 50001)
        assert v is not None
        pipe.push_inner(v.frame, 1_700_000_000_000_000_000 + i * 1000, v.ref)
    pipe.flush()
    out = [bytes(f) for _t, f in pipe.take()]
    assert pipe.counters.headers_stripped == {"proxy-v2": 1}
    assert REQ in b"".join(out)
    rows = cache._db.execute("SELECT tunnel FROM connections").fetchall()
    assert len(rows) == 1
    tunnel = json.loads(rows[0][0])
    assert (tunnel["eni_id"], tunnel["flow_cookie"]) == (ENI.hex(), COOKIE.hex())
    cache.close()


def test_the_cli_refuses_an_appliance_without_balancers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["appliance", "--listen", "10.98.0.2", "--tap", "snlx0"]) == 2
    assert "normalizer.tunnel_peers" in capsys.readouterr().err


@settings(max_examples=100, deadline=None)
@given(
    eth=st.binary(min_size=14, max_size=600),
    vni=st.integers(0, (1 << 24) - 1),
    eni=st.binary(min_size=8, max_size=8),
)
def test_any_mirrored_frame_comes_out_whole_with_one_tag(eth: bytes, vni: int, eni: bytes) -> None:
    """Whatever Ethernet frame the mirror session carries: returned as received, inspected as
    itself plus one tag after its MACs, on an id of its own (ENI and VNI)."""
    vx = struct.pack("!HHHH", 40000, 4789, 16 + len(eth), 0) + b"\x08\x00\x00\x00"
    vx += (vni << 8).to_bytes(4, "big") + eth
    payload = datagram(ipv4(vx, proto=17), eni)
    a = appliance()
    v = a.receive(payload, BALANCER, 9)
    plain = a.receive(datagram(ipv4(b""), eni), BALANCER, 9)
    assert v is not None and plain is not None and v.ret.endswith(payload)
    assert v.frame == eth[:12] + b"\x81\x00" + v.ref.vlan.to_bytes(2, "big") + eth[12:]
    assert v.ref.mirror is not None and v.ref.mirror.vni == vni
    assert v.ref.vlan != plain.ref.vlan


def test_a_frame_whose_inspection_raises_is_still_returned_and_reaches_the_tap() -> None:
    """The adapter's guard, exercised with stand-ins for the sockets, tap and pipeline: the
    protected traffic must go back to the balancer whatever the inspection side does."""
    from normalizer.commands.appliance import ApplianceLive

    class Sock:
        def __init__(self, items: list[tuple[bytes, tuple[str, int]]]) -> None:
            self.items = items
            self.sent: list[bytes] = []

        def recvfrom(self, _n: int) -> tuple[bytes, tuple[str, int]]:
            if not self.items:
                raise BlockingIOError
            return self.items.pop(0)

        def sendto(self, data: bytes, _addr: tuple[str, int]) -> None:
            self.sent.append(data)

    class Tap:
        def __init__(self) -> None:
            self.frames: list[bytes] = []

        def write(self, frame: bytes) -> None:
            self.frames.append(frame)

    class Core:
        def receive(self, data: bytes, _host: bytes, _port: int) -> object:
            if data == b"bug":
                raise RuntimeError("validator bug")
            return Verdict(b"ret-" + data, b"frame-" + data, ref)

    class Pipe:
        def push_inner(self, frame: bytes, _ts: int, _ref: object) -> None:
            if frame == b"frame-boom":
                raise ValueError("core bug")

        def take(self) -> list[tuple[int, bytes]]:
            return []

    ref = TunnelRef("geneve", 1, 2, b"\xc0\x00\x02\x09", b"\xc0\x00\x02\x01", 1, 6081, b"")
    app = ApplianceLive.__new__(ApplianceLive)
    app.sock = Sock(
        [
            (b"ok", ("192.0.2.9", 6081)),
            (b"boom", ("192.0.2.9", 6081)),
            (b"bug", ("192.0.2.9", 6081)),
            (b"ok2", ("192.0.2.9", 6081)),
        ]
    )
    app.raw, app.tap, app.core, app.pipe = Sock([]), Tap(), Core(), Pipe()
    app.acounters = ApplianceCounters()
    app.frames_failed = app.internal_errors = 0
    app._reported = set()
    app.returns_failing = False
    app._serve()
    assert app.raw.sent == [b"ret-ok", b"ret-boom", b"ret-ok2"]  # the bug's datagram: unknown
    assert app.tap.frames == [b"frame-boom"]  # passed untouched (the others went via take)
    assert (app.frames_failed, app.internal_errors, app.acounters.returned) == (1, 1, 3)
