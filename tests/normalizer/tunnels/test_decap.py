"""The decapsulation stage: round trips, truncation, outer fragments, VLAN mapping, junk input."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normalizer.core.counters import Counters
from normalizer.core.frame import LINKTYPE_ETHERNET, LINKTYPE_RAW, SUPPORTED_LINKTYPES, locate_tcp
from normalizer.core.options import Options
from normalizer.core.tcp_edit import ipv4_checksum_valid, tcp_checksum_valid
from normalizer.tunnels import geneve
from normalizer.tunnels.decap import SYNTH_MACS, Decapsulator, Out
from normalizer.tunnels.geneve import GeneveOption
from normalizer.tunnels.ipfrag import MAX_FRAGMENTS
from normalizer.tunnels.ref import VlanMap, default_vlan
from tests import encap
from tests.normalizer.packets import Conv

NS = 1_000_000_000
OUTER4 = ("10.9.0.1", "10.9.0.2")
OUTER6 = ("2001:db8:9::1", "2001:db8:9::2")
ANY = ("0.0.0.0/0", "::/0")  # tunnel_peers: every outer source


def decap(opts: Options | None = None, linktype: int = LINKTYPE_ETHERNET) -> Decapsulator:
    return Decapsulator(opts or Options(decapsulate=True, tunnel_peers=ANY), linktype)


def untag(frame: bytes) -> bytes:
    assert frame[12:14] == b"\x81\x00"
    return frame[:12] + frame[16:]


def balanced(c: Counters, frames_in: int) -> bool:
    """Every frame that went in is accounted for (see counters.py)."""
    got = c.tunnel_decapsulated + c.tunnel_passed + c.tunnel_bad_header + c.tunnel_fragments
    got += c.tunnel_untrusted
    return got - c.tunnel_reassembled == frames_in


def tcp(
    payload: bytes = b"GET / HTTP/1.1\r\n\r\n", v6: bool = False, vlans: tuple[int, ...] = ()
) -> bytes:
    c = Conv(client="2001:db8::1", server="2001:db8::2") if v6 else Conv()
    c.vlans = vlans
    return c.seg(True, 0, 0, payload, "PA")


# -- round trips --------------------------------------------------------------------------------


@st.composite
def inner_frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["tcp4", "tcp6", "udp", "other"]))
    payload = draw(st.binary(max_size=300))
    if kind == "other":  # ARP, LLDP, anything not IP: carried opaquely
        etype = draw(st.sampled_from([0x0806, 0x88CC, 0x88B5, 0x0000]))
        return draw(st.binary(min_size=12, max_size=12)) + etype.to_bytes(2, "big") + payload
    if kind == "udp":
        return encap.udp_frame(payload, "192.0.2.7", "192.0.2.8", 5353, draw(st.integers(1, 65535)))
    vlans = tuple(draw(st.lists(st.integers(1, 4094), max_size=2)))
    return tcp(payload, v6=kind == "tcp6", vlans=vlans)


outer = st.sampled_from([OUTER4, OUTER6])
outer_vlans = st.lists(st.integers(0, 4095), max_size=2).map(tuple)
options = st.lists(
    st.builds(
        GeneveOption,
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFF),
        st.integers(0, 8).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
    ),
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(inner_frames(), st.integers(0, (1 << 24) - 1), outer, outer_vlans, st.integers(1, 65535))
def test_vxlan_decap_of_encap_is_the_frame(
    inner: bytes, vni: int, addrs: tuple[str, str], vlan: tuple[int, ...], sport: int
) -> None:
    d = decap()
    [(ts, out, ref)] = d.feed(encap.vxlan_frame(inner, vni, *addrs, sport=sport, vlan=vlan), 7)
    assert untag(out) == inner and ts == 7
    assert ref is not None and (ref.kind, ref.vni, ref.vlan) == ("vxlan", vni, default_vlan(vni))
    assert int.from_bytes(out[14:16], "big") == ref.vlan
    assert ref.outer_src == ipaddress.ip_address(addrs[0]).packed
    assert (ref.outer_sport, ref.outer_dport) == (sport, 4789)
    assert ref.outer_vlan == b"".join((v & 0xFFF).to_bytes(2, "big") for v in vlan)
    assert d.counters.tunnel_decapsulated == 1 and d.counters.tunnel_truncated == 0


@settings(max_examples=150, deadline=None)
@given(inner_frames(), st.integers(0, (1 << 24) - 1), outer, options, st.booleans())
def test_geneve_decap_of_encap_is_the_packet(
    inner: bytes, vni: int, addrs: tuple[str, str], opts: list[GeneveOption], l3: bool
) -> None:
    d = decap()
    etype = int.from_bytes(inner[12:14], "big")
    if l3 and etype in (0x0800, 0x86DD):  # as a gateway load balancer sends it: no Ethernet
        [(_ts, out, ref)] = d.feed(encap.geneve_frame(inner[14:], vni, *addrs, etype, opts), 0)
        assert out[:12] == SYNTH_MACS and out[16:] == inner[12:]
    else:
        frame = encap.geneve_frame(inner, vni, *addrs, geneve.PROTO_ETHERNET, opts)
        [(_ts, out, ref)] = d.feed(frame, 0)
        assert untag(out) == inner
    assert ref is not None and (ref.kind, ref.vni, ref.options) == ("geneve", vni, tuple(opts))


def test_passthrough_of_everything_else_is_byte_identical() -> None:
    frames = [tcp(), encap.udp_frame(b"dns", *OUTER4, 5353, 53), b"\x00" * 60]
    d = decap()
    out = [o for f in frames for o in d.feed(f, 0)]
    assert [(f, ref) for _ts, f, ref in out] == [(f, None) for f in frames]
    assert d.counters.tunnel_passed == 3


def test_other_ports_are_configurable() -> None:
    d = decap(Options(decapsulate=True, tunnel_peers=ANY, vxlan_ports=(8472,), geneve_ports=()))
    standard = encap.vxlan_frame(tcp(), 1, *OUTER4)
    assert d.feed(standard, 0)[0][2] is None  # 4789 no longer means VXLAN
    linux = encap.udp_frame(bytes.fromhex("0800000000000100") + tcp(), *OUTER4, 1, 8472)
    assert d.feed(linux, 0)[0][2] is not None
    gen = encap.geneve_frame(tcp()[14:], 1, *OUTER4)
    assert d.feed(gen, 0)[0][2] is None


def test_raw_ip_input_comes_out_as_ethernet() -> None:
    d = decap(linktype=LINKTYPE_RAW)
    vx = encap.vxlan_frame(tcp(), 9, *OUTER4)[14:]  # outer IPv4 without Ethernet
    plain = tcp()[14:]
    [(_t, inner, ref)] = d.feed(vx, 0)
    [(_t, other, none)] = d.feed(plain, 0)
    assert ref is not None and untag(inner) == tcp()
    assert none is None and other == SYNTH_MACS + b"\x08\x00" + plain


# -- bad headers and junk -------------------------------------------------------------------------


def test_bad_tunnel_headers_are_forwarded_as_captured_and_counted() -> None:
    no_i_flag = encap.udp_frame(bytes(8) + tcp(), *OUTER4, 1, 4789)
    geneve_v1 = encap.udp_frame(b"\x40" + bytes(7) + tcp()[14:], *OUTER4, 1, 6081)
    empty = encap.udp_frame(bytes.fromhex("0800000000000100") + bytes(10), *OUTER4, 1, 4789)
    d = decap()
    for f in (no_i_flag, geneve_v1, empty):
        assert d.feed(f, 0) == [(0, f, None)]
    assert d.counters.tunnel_bad_header == 3 and d.counters.tunnel_decapsulated == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(sorted(SUPPORTED_LINKTYPES)))
def test_random_frames_are_counted_never_raise(buf: bytes, linktype: int) -> None:
    d = decap(linktype=linktype)
    out = d.feed(buf, 0) + d.flush()
    assert balanced(d.counters, 1)
    if linktype != LINKTYPE_ETHERNET:  # given an Ethernet header, whatever came in
        assert all(len(f) >= 14 for _t, f, _r in out)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([4789, 6081]), outer)
def test_random_tunnel_payloads_are_a_counted_reject_or_a_frame(
    junk: bytes, port: int, addrs: tuple[str, str]
) -> None:
    d = decap()
    frame = encap.udp_frame(junk, *addrs, 1, port)
    [(_t, out, ref)] = d.feed(frame, 0)
    c = d.counters
    if ref is None:
        assert out == frame and c.tunnel_bad_header == 1
    else:
        assert c.tunnel_decapsulated == 1
    assert balanced(c, 1)


# -- truncated mirror packets ----------------------------------------------------------------------


def _check_trimmed(out: bytes, size: int) -> None:
    inner = untag(out)
    f = locate_tcp(inner)
    assert f is not None and f.end == len(inner) == size
    assert tcp_checksum_valid(inner, f) and ipv4_checksum_valid(inner, f)


@pytest.mark.parametrize("v6", [False, True], ids=["inner4", "inner6"])
def test_mirror_truncation_is_trimmed_to_a_valid_packet(v6: bool) -> None:
    full = tcp(b"x" * 1000, v6=v6)
    cut = full[:120]  # the mirror kept 120 bytes; the outer packet says so consistently
    d = decap()
    [(_t, out, ref)] = d.feed(encap.vxlan_frame(cut, 3, *OUTER4), 0)
    assert ref is not None and d.counters.tunnel_truncated == 1
    _check_trimmed(out, 120)
    assert untag(out)[-40:] == cut[-40:]  # the bytes themselves are kept


def test_snaplen_truncation_of_the_outer_packet_is_trimmed() -> None:
    frame = encap.vxlan_frame(tcp(b"y" * 1000), 3, *OUTER6)
    d = decap()
    [(_t, out, ref)] = d.feed(frame[:200], 0)  # tcpdump -s 200
    assert ref is not None and d.counters.tunnel_truncated == 1
    _check_trimmed(out, 200 - (14 + 40 + 8 + 8))


def test_truncation_inside_the_tunnel_header_forwards_the_outer_frame() -> None:
    frame = encap.vxlan_frame(tcp(), 3, *OUTER4)[: 14 + 20 + 8 + 5]
    d = decap()
    assert d.feed(frame, 0) == [(0, frame, None)]
    c = d.counters
    assert (c.tunnel_bad_header, c.tunnel_truncated) == (1, 1)


@settings(max_examples=100, deadline=None)
@given(st.integers(14, 1100), st.booleans())
def test_any_truncation_point_never_raises(size: int, geneve_l3: bool) -> None:
    full = tcp(b"z" * 1000)
    frame = (
        encap.geneve_frame(full[14:], 1, *OUTER4)
        if geneve_l3
        else encap.vxlan_frame(full, 1, *OUTER4)
    )
    d = decap()
    out = d.feed(frame[:size], 0)
    assert len(out) == 1 and balanced(d.counters, 1)


# An inner IP header that contradicts itself (issue 11, class 1): one datagram from any host.
_INNER_L3 = st.sampled_from([(b"\x08\x00", 0x0800), (b"\x86\xdd", 0x86DD)])


@settings(max_examples=400, deadline=None)
@given(
    _INNER_L3,
    st.integers(0, 255),
    st.binary(max_size=80),
    st.lists(st.integers(1, 4094), max_size=2),
    st.sampled_from(["vxlan", "geneve-eth", "geneve-l3"]),
)
def test_inconsistent_inner_ip_headers_are_handed_on_never_raise(
    etype: tuple[bytes, int], first: int, rest: bytes, vlans: list[int], kind: str
) -> None:
    """Any version nibble and header/total length after an IPv4 or IPv6 EtherType: the inner
    frame comes out (trimmed only when its header is consistent), counted, never an exception."""
    packet = bytes((first,)) + rest
    tags = b"".join(b"\x81\x00" + v.to_bytes(2, "big") for v in vlans)
    eth = bytes(12) + tags + etype[0] + packet
    if kind == "vxlan":
        frame = encap.vxlan_frame(eth, 1, *OUTER4)
    elif kind == "geneve-eth":
        frame = encap.geneve_frame(eth, 1, *OUTER4, geneve.PROTO_ETHERNET)
    else:
        frame = encap.geneve_frame(packet, 1, *OUTER4, etype[1])
    d = decap()
    out = d.feed(frame, 0) + d.flush()
    assert len(out) == 1 and balanced(d.counters, 1)


@pytest.mark.parametrize("first", [0x65, 0x05, 0x35], ids=["nibble6", "nibble0", "nibble3"])
def test_ipv4_ethertype_with_another_version_nibble_is_not_trimmed(first: int) -> None:
    """The crash of issue 11: EtherType IPv4, version nibble not 4, total length beyond the
    capture. The frame is decapsulated as it came and counted as malformed."""
    inner = bytes(12) + b"\x08\x00" + bytes((first, 0)) + (2000).to_bytes(2, "big") + bytes(16)
    d = decap()
    [(_t, out, ref)] = d.feed(encap.vxlan_frame(inner, 1, *OUTER4), 0)
    assert ref is not None and untag(out) == inner
    c = d.counters
    assert (c.tunnel_inner_malformed, c.tunnel_truncated, c.tunnel_decapsulated) == (1, 0, 1)


def test_ipv6_ethertype_carrying_an_ipv4_header_is_not_trimmed() -> None:
    v4 = tcp(b"x" * 100)
    inner = v4[:12] + b"\x86\xdd" + v4[14:120]  # IPv4 bytes under an IPv6 EtherType, cut
    d = decap()
    [(_t, out, _ref)] = d.feed(encap.vxlan_frame(inner, 1, *OUTER4), 0)
    assert untag(out) == inner and d.counters.tunnel_inner_malformed == 1


def test_rewrite_decap_survives_a_hostile_datagram(tmp_path: Path) -> None:
    """``rewrite --decap`` writes every frame, the hostile one included, and exits 0."""
    from normalizer.adapters.pcap_io import CaptureReader, PcapWriter
    from normalizer.cli import main

    bad = bytes(12) + b"\x08\x00" + b"\x65\x00" + (2000).to_bytes(2, "big") + bytes(16)
    frames = [encap.vxlan_frame(tcp(), 1, *OUTER4), encap.vxlan_frame(bad, 1, *OUTER4)]
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    with src.open("wb") as fh:
        w = PcapWriter(fh, LINKTYPE_ETHERNET)
        for i, f in enumerate(frames):
            w.write(i, f)
    args = ["rewrite", str(src), "-o", str(dst), "--proxy", "192.0.2.1/32", "--decap", "-q"]
    args += ["--tunnel-peer", "10.9.0.0/24"]
    assert main(args) == 0
    with dst.open("rb") as fh:
        out = [f for _t, f, _o in CaptureReader(fh)]
    assert [untag(f) for f in out] == [tcp(), bad]


# -- outer fragments -----------------------------------------------------------------------------


@pytest.mark.parametrize("addrs", [OUTER4, OUTER6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("order", ["in-order", "reversed", "duplicated", "shuffled"])
def test_fragmented_tunnel_packets_are_reassembled(addrs: tuple[str, str], order: str) -> None:
    inner = tcp(b"q" * 1200)
    frags = encap.fragment(encap.vxlan_frame(inner, 77, *addrs), 256)
    if order == "reversed":
        frags.reverse()
    elif order == "duplicated":
        frags = frags[:2] + frags[1:]
    elif order == "shuffled":
        random.Random(4).shuffle(frags)
    d = decap()
    out = [o for i, f in enumerate(frags) for o in d.feed(f, i)]
    assert [(t, untag(f), ref is not None) for t, f, ref in out] == [(len(frags) - 1, inner, True)]
    c = d.counters
    assert (c.tunnel_fragments, c.tunnel_reassembled, c.tunnel_frag_limit) == (len(frags), 1, 0)
    assert balanced(c, len(frags))


def test_fragments_of_other_udp_pass_untouched_in_order() -> None:
    frags = encap.fragment(encap.udp_frame(b"d" * 900, *OUTER4, 5353, 53), 256)
    d = decap()
    late = d.feed(frags[1], 0)  # before the first: held until it is clear
    out = late + [o for f in (frags[0], *frags[2:]) for o in d.feed(f, 1)]
    assert [f for _t, f, _r in out] == [frags[1], frags[0], *frags[2:]]
    assert d.counters.tunnel_frag_limit == 0 and balanced(d.counters, len(frags))


def test_incomplete_datagrams_are_released_after_the_timeout() -> None:
    frags = encap.fragment(encap.vxlan_frame(tcp(b"w" * 900), 1, *OUTER4), 256)
    d = decap()
    assert d.feed(frags[0], 0) == []
    later = tcp()
    out = d.feed(later, 31 * NS)
    assert [f for _t, f, _r in out] == [frags[0], later]
    assert d.counters.tunnel_frag_limit == 1 and d.held_frames == 0


def test_flush_releases_what_is_held() -> None:
    frags = encap.fragment(encap.vxlan_frame(tcp(b"w" * 900), 1, *OUTER6), 256)
    d = decap()
    assert d.feed(frags[2], 0) + d.feed(frags[0], 0) == []
    assert [f for _t, f, _r in d.flush()] == [frags[2], frags[0]]


def test_overlapping_fragments_with_different_bytes_are_given_up() -> None:
    a = encap.fragment(encap.vxlan_frame(tcp(b"a" * 900), 1, *OUTER4), 256)
    b = encap.fragment(encap.vxlan_frame(tcp(b"b" * 900), 1, *OUTER4), 256)
    d = decap()
    out = d.feed(a[0], 0) + d.feed(a[1], 0) + d.feed(b[1], 0)
    assert [f for _t, f, _r in out] == [a[0], a[1], b[1]]
    assert d.counters.tunnel_frag_limit == 3


def test_truncated_fragment_and_too_many_fragments_are_given_up() -> None:
    frags = encap.fragment(encap.vxlan_frame(tcp(b"t" * 1200), 1, *OUTER4), 16)
    assert len(frags) > MAX_FRAGMENTS
    d = decap()
    out = [o for f in frags for o in d.feed(f, 0)]
    assert len(out) == len(frags) and all(r is None for _t, _f, r in out)
    c = d.counters
    assert c.tunnel_frag_limit > 0 and c.tunnel_reassembled == 0
    d2 = decap()
    cut = encap.fragment(encap.vxlan_frame(tcp(b"t" * 600), 1, *OUTER4), 256)
    out = d2.feed(cut[0], 0) + d2.feed(cut[1][:100], 0) + d2.feed(cut[2], 0)
    assert d2.counters.tunnel_truncated == 1 and d2.counters.tunnel_reassembled == 0


# -- VNI -> VLAN ------------------------------------------------------------------------------


def test_default_mapping_is_identity_within_the_vlan_range() -> None:
    assert [default_vlan(v) for v in (1, 100, 4094, 4095, 0, 8190)] == [1, 100, 4094, 1, 4094, 2]


def test_collisions_probe_to_the_next_free_id_and_are_counted() -> None:
    m = VlanMap({5: 1})  # VLAN 1 is reserved by the table
    assert [m.vlan(1), m.vlan(4095), m.vlan(5), m.vlan(1)] == [2, 3, 1, 2]
    assert m.collisions == 2


def test_collisions_reach_the_counters() -> None:
    d = decap()
    for vni in (7, 7 + 4094):
        d.feed(encap.vxlan_frame(tcp(), vni, *OUTER4), 0)
    assert d.counters.tunnel_vlan_collisions == 1


def test_same_tuple_in_two_vnis_gets_two_vlans() -> None:
    d = decap(Options(decapsulate=True, tunnel_peers=ANY, vni_vlan=((1000, 10), (2000, 20))))
    outs: list[Out] = []
    for vni in (1000, 2000):
        outs += d.feed(encap.vxlan_frame(tcp(), vni, *OUTER4), 0)
    tuples = [locate_tcp(f) for _t, f, _r in outs]
    assert [t.vlan for t in tuples if t is not None] == [b"\x00\x0a", b"\x00\x14"]


@pytest.mark.parametrize("first", [0xC5, 0x65, 0x45], ids=["nibble12", "nibble6", "ipv4-ok"])
def test_an_outer_header_contradicting_its_ethertype_is_passed(first: int) -> None:
    """The outer IPv4 EtherType with another version nibble is not read as IPv4 (as the core's
    locate_tcp does not): the frame is passed as captured, never decapsulated."""
    frame = bytearray(encap.vxlan_frame(tcp(), 1, *OUTER4))
    frame[14] = first
    [(_t, out, ref)] = decap().feed(bytes(frame), 0)
    assert (ref is None) == (first != 0x45)
    if ref is None:
        assert out == frame
