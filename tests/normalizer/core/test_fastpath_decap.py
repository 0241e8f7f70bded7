"""Decapsulation on the compiled engine (_decap.c + tunnels/compiled.py) against the Python path.

The Python Decapsulator in front of the Python engine is the specification: for every input the
compiled path (tunnels opened in C, the rest handed back to the Decapsulator) must forward the
same frames in the same order, with the same original lengths, and give the same counters, the
same header events and the same tunnel rows. Inputs: VXLAN and GENEVE (Ethernet and IP inside,
with options), both outer families, tagged outers, proxied inner flows, untrusted peers, plain
frames, outer fragments (in and out of order, incomplete), truncated and hostile tunnels, and
time gaps that make the decapsulator sweep its fragments.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normalizer.adapters import pcap_batch
from normalizer.adapters.afpacket import RingStats
from normalizer.commands.rewrite import rewrite_file
from normalizer.core.fastpath import CompiledNormalizer, compiled_available
from normalizer.core.frame import CutFrame
from normalizer.core.options import Options
from normalizer.core.pipeline import Pipeline
from normalizer.proxy_headers import proxy_v1, proxy_v2
from normalizer.tunnels import geneve
from normalizer.tunnels.flows import TunnelFlow
from tests import encap
from tests.normalizer.adapters.test_afpacket import make_block
from tests.normalizer.core.test_engine import conversation
from tests.normalizer.core.test_fastpath import _as_partial
from tests.normalizer.packets import NS, PROXY4, PROXY6, Conv

pytestmark = pytest.mark.skipif(not compiled_available(), reason="the compiled engine is not built")

ROOT = Path(__file__).resolve().parents[3]
PEER4, PEER6, STRANGER4, STRANGER6 = "10.9.0.1", "fd00::1", "10.66.0.9", "fd66::9"
DST4, DST6 = "10.9.0.2", "fd00::2"
AWS = geneve.aws_options(bytes.fromhex("0a1b2c3d4e5f6071"), bytes(8), b"\xca\xfe\xf0\x0d")
VNIS = (1, 100, 4094, 4095, 4096, 8189, 0, 0xFFFFFF)
T0 = 1_700_000_000 * NS

Output = tuple[list[tuple[int, bytes, int]], dict[str, Any], list[Any], list[TunnelFlow]]


def _opts(engine: str, **kw: Any) -> Options:
    kw.setdefault("tunnel_peers", (f"{PEER4}/32", f"{PEER6}/128"))
    kw.setdefault("proxies", (f"{PROXY4}/32", f"{PROXY6}/128"))
    kw.setdefault("checksums", "keep")  # as live runs it
    return Options(decapsulate=True, engine=engine, **kw)


@functools.cache
def _inner_flows() -> tuple[tuple[bytes, ...], ...]:
    """Inner Ethernet conversations: proxied (v1, v2; IPv4, IPv6; one with an inner VLAN tag)
    and one from a source that is not a proxy."""
    v2 = proxy_v2.build(
        command="PROXY", family="TCP4", src="203.0.113.7", dst="198.51.100.1", sport=51000, dport=80
    )
    v1 = proxy_v1.build("203.0.113.8", "198.51.100.1", 51001, 80)
    flows = [
        conversation(Conv(), v2, coalesce=True),
        conversation(Conv(cport=40001, cisn=2**32 - 3), v1, coalesce=False),
        conversation(Conv(client=PROXY6, server="2001:db8::2", cport=40002), v2, coalesce=True),
        conversation(Conv(cport=40003, vlans=(7,)), v2, coalesce=True),
        conversation(Conv(client="192.0.2.77", cport=40004), b"", coalesce=True),
    ]
    return tuple(tuple(f) for f in flows)


def _wrap(inner: bytes, kind: str, vni: int, src: str, vlan: tuple[int, ...], sport: int) -> bytes:
    dst = DST6 if ":" in src else DST4
    if kind == "vxlan":
        return encap.vxlan_frame(inner, vni, src, dst, sport=sport, vlan=vlan)
    if kind == "geneve-eth":
        return encap.geneve_frame(
            inner, vni, src, dst, geneve.PROTO_ETHERNET, AWS, sport=sport, vlan=vlan
        )
    if inner[12:14] not in (b"\x08\x00", b"\x86\xdd"):  # tagged inner: only as Ethernet
        return encap.geneve_frame(inner, vni, src, dst, geneve.PROTO_ETHERNET, sport=sport)
    proto = geneve.PROTO_IPV4 if inner[12:14] == b"\x08\x00" else geneve.PROTO_IPV6
    opts = AWS if kind == "geneve-aws" else ()
    return encap.geneve_frame(inner[14:], vni, src, dst, proto, opts, sport=sport, vlan=vlan)


def _hostile(frame: bytes, how: str, at: int, value: int) -> bytes:
    """One damaged copy of a tunnel frame (untagged outer Ethernet)."""
    b = bytearray(frame)
    ip = 14
    udp = ip + (40 if b[12:14] == b"\x86\xdd" else (b[ip] & 0x0F) * 4)
    tun = udp + 8
    if how == "cut":
        return bytes(b[: max(0, len(b) - 1 - at % max(1, len(b)))])
    if how == "byte" and len(b):
        b[at % len(b)] = value
    elif how == "tunnel-byte" and len(b) > tun:
        b[tun + at % min(24, len(b) - tun)] = value
    elif how == "inner-length" and len(b) > tun + 40:
        # an inner IP length past what was captured: the decapsulator trims (or flags) it
        inner_ip = tun + 8 + 14 if b[tun] & 0x08 and b[tun + 3] != 0x65 else tun + 8
        off = inner_ip + (2 if b[inner_ip] >> 4 == 4 else 4)
        if off + 2 <= len(b):
            b[off : off + 2] = (int.from_bytes(b[off : off + 2], "big") + 1 + value).to_bytes(
                2, "big"
            )[-2:]
    elif how == "udp-length" and len(b) > udp + 6:
        b[udp + 4 : udp + 6] = (value * 7).to_bytes(2, "big")
    return bytes(b)


@st.composite
def scenarios(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """A capture: inner flows wrapped in tunnels, interleaved, some damaged, some fragmented."""
    flows = _inner_flows()
    picked = draw(st.lists(st.integers(0, len(flows) - 1), min_size=1, max_size=3))
    queues = []
    for i, which in enumerate(picked):
        kind = draw(st.sampled_from(["vxlan", "geneve-eth", "geneve-ip", "geneve-aws", "plain"]))
        six = draw(st.booleans())
        trusted = draw(st.integers(0, 5)) > 0
        src = (PEER6 if six else PEER4) if trusted else (STRANGER6 if six else STRANGER4)
        vlan = tuple(draw(st.lists(st.sampled_from([5, 300, 4094]), max_size=2)))
        vni = draw(st.sampled_from(VNIS))
        partial = draw(st.integers(0, 3)) == 0  # a sender's tx offload left partial checksums
        out = []
        for inner in flows[which]:
            if partial and inner[12:14] in (b"\x08\x00", b"\x86\xdd"):
                inner = _as_partial(inner)
            if kind == "plain":
                out.append(inner)
            else:
                out.append(_wrap(inner, kind, vni, src, vlan, 49152 + i))
        queues.append(out)
    frames: list[bytes] = []
    while any(queues):
        q = draw(st.sampled_from([q for q in queues if q]))
        frames.append(q.pop(0))
    result: list[tuple[int, bytes]] = []
    ts = T0
    for frame in frames:
        ts += draw(st.sampled_from([0, 1000, NS // 3, 2 * NS, 31 * NS]))
        how = draw(
            st.sampled_from(
                ["none"] * 8
                + ["cut", "byte", "tunnel-byte", "inner-length", "udp-length", "fragment"]
            )
        )
        untagged = frame[12:14] in (b"\x08\x00", b"\x86\xdd")
        if how == "fragment" and untagged and len(frame) > 120:
            size = draw(st.sampled_from([16, 64, 512]))
            pieces = encap.fragment(frame, size, ident=draw(st.integers(0, 3)))
            if draw(st.booleans()):
                pieces.reverse()
            if len(pieces) > 1 and draw(st.integers(0, 3)) == 0:
                pieces.pop(draw(st.integers(0, len(pieces) - 1)))  # one never comes
            for p in pieces:
                result.append((ts, p))
                ts += draw(st.sampled_from([0, 1000, 2 * NS]))
            continue
        if how not in ("none", "fragment") and untagged:
            frame = _hostile(frame, how, draw(st.integers(0, 1 << 16)), draw(st.integers(0, 255)))
        result.append((ts, frame))
    return result


def _collect(pipe: Pipeline, out: list[tuple[int, bytes, int]]) -> None:
    for ts, f in pipe.take():
        out.append((ts, bytes(f), f.origlen if type(f) is CutFrame else -1))


def _via_push(
    frames: list[tuple[int, bytes]], engine: str, ticks: bool = False, **kw: Any
) -> Output:
    events: list[Any] = []
    rows: list[TunnelFlow] = []
    pipe = Pipeline(_opts(engine, **kw), 1, on_events=events.extend, on_tunnels=rows.extend)
    out: list[tuple[int, bytes, int]] = []
    for i, (ts, frame) in enumerate(frames):
        pipe.push(frame, ts)
        if ticks and i % 5 == 4:
            pipe.tick(ts + NS // 2)
        _collect(pipe, out)
    pipe.flush()
    _collect(pipe, out)
    return out, pipe.counters.as_dict(), events, rows


def _assert_same(got: Output, want: Output) -> None:
    assert got[0] == want[0], "frames differ"
    assert got[1] == want[1], "counters differ"
    assert got[2] == want[2], "events differ"
    assert got[3] == want[3], "tunnel rows differ"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=scenarios(),
    ticks=st.booleans(),
    checksums=st.sampled_from(["keep", "auto"]),
    small=st.booleans(),
)
def test_compiled_decap_matches_the_python_path(
    frames: list[tuple[int, bytes]], ticks: bool, checksums: str, small: bool
) -> None:
    """Pipeline.push: the C path under "keep" and "auto" (the policy then applied in C);
    ``small``: flow tables of two and a 1 s idle timeout, so tunnel rows are evicted and
    retired while C refreshes the flows it knows."""
    kw: dict[str, Any] = {"checksums": checksums}
    if small:
        kw.update(max_flows=2, idle_timeout=1.0)
    got = _via_push(frames, "compiled", ticks, **kw)
    _assert_same(got, _via_push(frames, "python", ticks, **kw))


def test_checksums_fix_keeps_decapsulation_in_python() -> None:
    """A policy the C path does not apply: the Decapsulator alone, same results."""
    frames = [(T0 + i, _wrap(f, "vxlan", 9, PEER4, (), 1)) for i, f in enumerate(_inner_flows()[0])]
    pipe = Pipeline(_opts("compiled", checksums="fix"), 1)
    for ts, f in frames:
        pipe.push(f, ts)
    assert isinstance(pipe.engine, CompiledNormalizer) and pipe.engine.decap_counters() == {}
    got = _via_push(frames, "compiled", checksums="fix")
    _assert_same(got, _via_push(frames, "python", checksums="fix"))


def test_the_common_case_is_decided_in_c_and_counted_as_python_counts_it() -> None:
    """Not a vacuous comparison: the scenarios' tunnels are opened by the C path itself."""
    flows = _inner_flows()
    frames = [
        (T0 + i, _wrap(f, kind, 100, src, vlan, 50000))
        for kind, src, vlan in [("vxlan", PEER4, ()), ("geneve-aws", PEER6, (5,))]
        for i, f in enumerate(flows[0])
    ]
    frames += [(T0 + 50, f) for f in flows[4]]  # plain frames
    frames += [(T0 + 60, _wrap(f, "vxlan", 3, STRANGER4, (), 1)) for f in flows[0]]
    pipe = Pipeline(_opts("compiled"), 1)
    for ts, f in frames:
        pipe.push(f, ts)
    assert isinstance(pipe.engine, CompiledNormalizer)
    in_c = pipe.engine.decap_counters()
    n = len(flows[0])
    # the first frame goes to Python (the decapsulator's first sweep), all others stay in C
    assert in_c == {
        "tunnel_decapsulated": 2 * n - 1,
        "tunnel_passed": len(flows[4]),
        "tunnel_untrusted": n,
        "checksum_kept": 0,  # "keep": no policy
        "checksum_completed": 0,
    }
    c = pipe.counters
    assert (c.tunnel_decapsulated, c.tunnel_passed, c.tunnel_untrusted) == (2 * n, len(flows[4]), n)
    _assert_same(_via_push(frames, "compiled"), _via_push(frames, "python"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=scenarios(), split=st.integers(0, 40), checksums=st.sampled_from(["keep", "auto"]))
def test_ring_blocks_with_decap_match_push(
    frames: list[tuple[int, bytes]], split: int, checksums: str
) -> None:
    """live's path: whole TPACKET_V3 blocks through feed_block with the C decap hook."""
    slots = [(ts // NS, ts % NS, f, len(f), 0, 0, 0) for ts, f in frames]
    blocks = [make_block(slots[:split]), make_block(slots[split:])]
    events: list[Any] = []
    rows: list[TunnelFlow] = []
    opts = _opts("compiled", checksums=checksums)
    pipe = Pipeline(opts, 1, on_events=events.extend, on_tunnels=rows.extend)
    out: list[tuple[int, bytes, int]] = []
    for b in blocks:
        pipe.push_block(b, 0, False, RingStats())
        _collect(pipe, out)
    pipe.flush()
    _collect(pipe, out)
    got = (out, pipe.counters.as_dict(), events, rows)
    # the same frames pushed one at a time, taken at the same points
    py_events: list[Any] = []
    py_rows: list[TunnelFlow] = []
    opts = _opts("python", checksums=checksums)
    ref = Pipeline(opts, 1, on_events=py_events.extend, on_tunnels=py_rows.extend)
    want_out: list[tuple[int, bytes, int]] = []
    for part in (frames[:split], frames[split:]):
        for ts, f in part:
            ref.push(f, ts)
        _collect(ref, want_out)
    ref.flush()
    _collect(ref, want_out)
    _assert_same(got, (want_out, ref.counters.as_dict(), py_events, py_rows))


def test_vni_vlan_collisions_and_explicit_table_match() -> None:
    """The VLAN ids come from the decapsulator's VlanMap (once per VNI), collisions counted once."""
    inner = _inner_flows()[0]
    frames = []
    for j, vni in enumerate([7, 4101, 7, 8195, 9, 4103, 12]):
        frames += [
            (T0 + 10 * j + i, _wrap(f, "vxlan", vni, PEER4, (), 1)) for i, f in enumerate(inner)
        ]
    kw = {"vni_vlan": ((9, 4101 % 4094), (12, 7))}
    got, want = _via_push(frames, "compiled", **kw), _via_push(frames, "python", **kw)
    _assert_same(got, want)
    assert want[1]["tunnel_vlan_collisions"] > 0


def _pcap(records: list[tuple[int, bytes, int]]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for ts, data, origlen in records:
        out += struct.pack("<IIII", ts // NS, ts % NS // 1000, len(data), origlen) + data
    return out


def _rewrite_both(
    src: Path, tmp: Path, opts: Options, with_rows: bool = True
) -> list[tuple[bytes, Any, Any, Any]]:
    """``rewrite --decap`` on the Python engine (per-packet loop) and on the compiled one
    (the batch path): output bytes, counters, events and tunnel rows (``with_rows``: recorded;
    without, the batch path builds GENEVE's inner frames in place too)."""
    results = []
    for engine in ("python", "compiled"):
        o = dataclasses.replace(opts, engine=engine)
        assert pcap_batch.applies(src, o) == (engine == "compiled")
        dst = tmp / f"{src.name}.{engine}.pcap"
        events: list[Any] = []
        rows: list[TunnelFlow] = []
        sink = rows.extend if with_rows else None
        c = rewrite_file(src, dst, o, on_events=events.extend, on_tunnels=sink)
        results.append((dst.read_bytes(), c.as_dict(), events, rows))
    return results


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=scenarios(),
    checksums=st.sampled_from(["auto", "keep"]),
    with_rows=st.booleans(),
    data=st.data(),
)
def test_rewrite_decap_batch_matches_the_per_packet_loop(
    tmp_path_factory: pytest.TempPathFactory,
    frames: list[tuple[int, bytes]],
    checksums: str,
    with_rows: bool,
    data: st.DataObject,
) -> None:
    """Cut records (CutFrame: the original length goes out with passed frames), checksums."""
    records = []
    for ts, f in frames:
        cut = data.draw(st.integers(0, 6)) == 0 and len(f) > 20
        records.append((ts, f[: len(f) - 10] if cut else f, len(f)))
    tmp = tmp_path_factory.mktemp("rw")
    src = tmp / "in.pcap"
    src.write_bytes(_pcap(records))
    py, c = _rewrite_both(src, tmp, _opts("auto", checksums=checksums), with_rows)
    assert c[0] == py[0], "output differs"
    assert c[1:] == py[1:]


def test_rewrite_decap_on_the_tunnelled_corpus(tmp_path: Path) -> None:
    """Every tunnelled capture in pcaps/, as its manifest configures it, both engines."""
    done = 0
    for pcap in sorted((ROOT / "pcaps").glob("*.pcap")):
        manifest = pcap.with_suffix(".yaml")
        if pcap.name.endswith(".baseline.pcap") or not manifest.exists():
            continue
        m = yaml.safe_load(manifest.read_text())
        o = m.get("options") or {}
        if not o.get("decapsulate"):
            continue
        for checksums in ("auto", "keep"):
            opts = _opts(
                "auto",
                proxies=tuple(m["proxies"]),
                tunnel_peers=tuple(o.get("tunnel_peers") or ()),
                checksums=checksums,
            )
            py, c = _rewrite_both(pcap, tmp_path, opts)
            assert c[0] == py[0], f"{pcap.name}: output differs"
            assert c[1:] == py[1:], f"{pcap.name}: counters, events or rows differ"
            assert py[1]["tunnel_decapsulated"] > 0
        done += 1
    assert done > 0


def test_partial_inner_checksums_are_completed_in_c_under_auto() -> None:
    """Pipeline's "auto" on the inner frames, applied by the C path, counted as Python counts."""
    inner = [_as_partial(f) for f in _inner_flows()[0]]
    frames = [(T0 + i, _wrap(f, "vxlan", 9, PEER4, (), 1)) for i, f in enumerate(inner)]
    pipe = Pipeline(_opts("compiled", checksums="auto"), 1)
    for ts, f in frames:
        pipe.push(f, ts)
    assert isinstance(pipe.engine, CompiledNormalizer)
    # every frame, also the first (decapsulated by Python, then checked and fed by C)
    assert pipe.engine.decap_counters()["checksum_completed"] == len(frames)
    got = _via_push(frames, "compiled", checksums="auto")
    want = _via_push(frames, "python", checksums="auto")
    _assert_same(got, want)
    assert want[1]["checksum_completed"] == len(frames)


def test_more_vnis_than_vlan_ids_and_than_the_tag_cache_holds() -> None:
    """Past 4094 VNIs every VLAN id is taken (each new VNI shares its default, a collision
    each time it is looked up); past 65,536 the decapsulator stops caching tags. Here the
    decapsulator's cache fills with VNIs whose packets it opened itself (inner lengths to trim:
    handed back by C), so the later VNIs C opens are not cached by Python, nor then by C: the
    collision count stays Python's."""
    inner = encap.udp_frame(b"x" * 8, "198.51.100.1", "198.51.100.2", 1, 2)
    head = encap.vxlan_frame(inner, 0, PEER4, DST4)
    udp = 14 + 20
    frames = []
    later = [70_000, 70_001, 70_000, 5, 70_001, 70_000]
    for i, vni in enumerate([*range(1, 66_000), *later]):
        b = bytearray(head)
        b[udp + 12 : udp + 15] = vni.to_bytes(3, "big")
        b[udp + 6 : udp + 8] = b"\x00\x00"  # no UDP checksum (valid in IPv4): no refit needed
        if vni < 66_000:  # the inner IP length one past the capture: trimmed, in Python
            at = udp + 16 + 14 + 2
            b[at : at + 2] = (int.from_bytes(b[at : at + 2], "big") + 1).to_bytes(2, "big")
        frames.append((T0 + i, bytes(b)))
    got, want = _via_push(frames, "compiled"), _via_push(frames, "python")
    _assert_same(got, want)
    assert want[1]["tunnel_vlan_collisions"] > 60_000 and want[1]["tunnel_truncated"] == 66_000


def test_a_tunnel_row_evicted_from_a_full_table_is_not_refreshed_by_c() -> None:
    """max_flows 2: the third flow evicts the first; the first one's next packet is a new row
    (Python's table no longer has it), not a refresh of the evicted one C had cached."""
    flows = _inner_flows()
    a, b, c = flows[0], flows[1], flows[4]
    order = [a[0], a[1], b[0], b[1], c[0], a[2], b[2], c[1], a[3]]
    frames = [(T0 + 1000 * i, _wrap(f, "vxlan", 9, PEER4, (), 1)) for i, f in enumerate(order)]
    got = _via_push(frames, "compiled", max_flows=2)
    want = _via_push(frames, "python", max_flows=2)
    _assert_same(got, want)
    assert len(want[3]) > 6  # the evicted flows came back as rows of their own


def _records(buf: bytes) -> list[tuple[int, bytes]]:
    """(ts, frame) of the core's pcap records (microsecond timestamps)."""
    out, pos = [], 0
    while pos < len(buf):
        sec, usec, n, _orig = struct.unpack_from("<IIII", buf, pos)
        out.append((sec * NS + usec * 1000, buf[pos + 16 : pos + 16 + n]))
        pos += 16 + n
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=scenarios())
def test_ring_blocks_with_decap_into_the_tap_sink_match_push(
    frames: list[tuple[int, bytes]],
) -> None:
    """live on the compiled engine: frames buffered for the tap (set_sink), decap in C."""
    slots = [(ts // NS, ts % NS, f, len(f), 0, 0, 0) for ts, f in frames]
    rows: list[TunnelFlow] = []
    pipe = Pipeline(_opts("compiled"), 1, on_tunnels=rows.extend)
    assert isinstance(pipe.engine, CompiledNormalizer)
    pipe.engine.set_sink(True)
    pipe.push_block(make_block(slots), 0, False, RingStats())
    pipe.flush()
    pipe.take()
    got = bytearray()
    pipe.engine.write_records(got.extend)
    py_rows: list[TunnelFlow] = []
    ref = Pipeline(_opts("python"), 1, on_tunnels=py_rows.extend)
    for ts, f in frames:
        ref.push(f, ts)
    ref.flush()
    want = [(ts // 1000 * 1000, bytes(f)) for ts, f in ref.take()]
    assert _records(bytes(got)) == want
    assert pipe.counters.as_dict() == ref.counters.as_dict()
    assert rows == py_rows
