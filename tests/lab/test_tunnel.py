"""Lab tests for decapsulation: real kernel VXLAN, userspace GENEVE, a mirrored HAProxy bridge.

Claims, each checked with real Suricata 7 (``-k all``, the decoy rules) on our output:
1. VXLAN between namespaces (two VNIs, identical inner 5-tuples at the same time) captured on
   the underlay and rewritten with ``--decap``: per VLAN (= per VNI), Suricata raises exactly the
   alerts and flows it raises on that VNI's unencapsulated reference capture; nothing merges.
2. The same traffic wrapped in GENEVE per RFC 8926 with the gateway-load-balancer options, one
   VNI carrying Ethernet, the other bare IPv4: same equality; the cache names ENI and cookie.
3. VXLAN carrying a HAProxy ``send-proxy-v2`` connection: the header is stripped on the inner
   flows, alerts equal the header-free baseline, the connections rows carry the tunnel.
Also: VXLAN over an IPv6 underlay; outer IPv4 fragments made by the kernel (inner MTU = underlay
MTU) reassembled; a snap-length-limited underlay capture rewritten without error, cuts counted.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from normalizer.cache.connections import ConnectionCache
from tests.lab import tunnel_lab
from tests.lab.netlab import LabError
from tests.lab.suricata_run import (
    Event,
    alerts_by_sid,
    app_layer_failed,
    decoder_invalid,
    invalid_checksums,
    run_suricata,
)
from tests.lab.test_lab import normalizer_cli
from tests.lab.traffic import connections, expected_alerts

pytestmark = [pytest.mark.root, pytest.mark.lab]
Suricata = Callable[[Path], list[Event]]
PROXY = f"{tunnel_lab.CLIENT}/32"  # HAProxy's address on the VXLAN segment
NO_PROXY = "203.0.113.250/32"  # captures without a proxy: decap only, every flow untracked
# The lab's tunnel endpoints (both directions of the VXLAN underlays, the GENEVE balancer).
TUNNEL_PEERS = [
    f"--tunnel-peer={a}"
    for a in (*tunnel_lab.UNDERLAY, *tunnel_lab.UNDERLAY6, *tunnel_lab.GENEVE_OUTER)
]
GENEVE_L3 = frozenset({tunnel_lab.VNIS[1]})  # this VNI carries bare IPv4, the other Ethernet


@dataclass(frozen=True)
class TunnelCaptures:
    dir: Path
    underlay: Path  # kernel VXLAN, both VNIs
    inner: dict[int, Path]  # per VNI, captured on the VXLAN device: the reference
    proxied: Path  # VXLAN carrying HAProxy -> decoy with PROXY v2
    proxied_baseline: Path  # the same without the header
    geneve: Path  # ``inner`` wrapped in GENEVE by tunnel_lab.geneve_wrap
    geneve_counts: dict[str, int]


def entered(lab_type: type[tunnel_lab.VxlanLab]) -> tunnel_lab.VxlanLab:
    """A started lab of this kind, or the test skipped where the kernel cannot build it; the
    caller closes it."""
    try:
        lab = lab_type()
        lab.__enter__()
    except LabError as e:
        pytest.skip(f"{lab_type.__name__}: kernel VXLAN between namespaces not available: {e}")
    return lab


@pytest.fixture(scope="module")
def caps(lab_ready: None, lab_dir: Path) -> Iterator[TunnelCaptures]:
    d = lab_dir / "tunnel"
    lab = entered(tunnel_lab.VxlanLab)
    try:
        underlay, inner = tunnel_lab.record(lab, d)
        proxied, baseline = tunnel_lab.record_proxied(lab, d)
    finally:
        lab.close()
    geneve = d / "geneve.pcap"
    counts = tunnel_lab.geneve_wrap(inner, geneve, GENEVE_L3)
    yield TunnelCaptures(d, underlay, inner, proxied, baseline, geneve, counts)


def record_variant(lab_type: type[tunnel_lab.VxlanLab], d: Path) -> tuple[Path, dict[int, Path]]:
    """The VXLAN traffic in another lab variant: (underlay, per-VNI references)."""
    lab = entered(lab_type)
    try:
        return tunnel_lab.record(lab, d)
    finally:
        lab.close()


@pytest.fixture(scope="module")
def caps6(lab_ready: None, lab_dir: Path) -> tuple[Path, dict[int, Path]]:
    """Over an IPv6 underlay."""
    return record_variant(tunnel_lab.Vxlan6Lab, lab_dir / "tunnel6")


@pytest.fixture(scope="module")
def caps_frag(lab_ready: None, lab_dir: Path) -> tuple[Path, dict[int, Path]]:
    """With 1500-byte VXLAN devices over a 1500-byte underlay: the kernel fragments."""
    return record_variant(tunnel_lab.VxlanFragLab, lab_dir / "tunnelfrag")


def rewrite(pcap: Path, proxy: str = NO_PROXY) -> tuple[Path, dict[str, Any], Path]:
    """``suricata-normalizer rewrite --decap`` with a fresh cache: (output, counters, cache)."""
    out, cache, stats = (pcap.with_suffix(s) for s in (".decap.pcap", ".db", ".stats.json"))
    cache.unlink(missing_ok=True)
    argv = [*normalizer_cli(), "rewrite", str(pcap), "-o", str(out), "--decap", "--proxy", proxy]
    argv += TUNNEL_PEERS
    argv += ["--cache", str(cache), "--stats-json", str(stats), "-q"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(argv)}\n{p.stdout}{p.stderr}"
    return out, json.loads(stats.read_text()), cache


def per_vlan(events: list[Event], kind: str = "alert") -> dict[tuple[int, ...], list[Event]]:
    out: dict[tuple[int, ...], list[Event]] = {}
    for e in events:
        if e["event_type"] == kind:
            out.setdefault(tuple(e.get("vlan", ())), []).append(e)
    return out


def tcp_tuples(events: list[Event]) -> Counter[tuple[str, int, str, int]]:
    return Counter(
        (e["src_ip"], e["src_port"], e["dest_ip"], e["dest_port"])
        for e in events
        if e["event_type"] == "flow" and e.get("proto") == "TCP"
    )


def flow_protos(events: list[Event], everything: bool = False) -> Counter[str]:
    """Flow events by protocol: the lab's own TCP and ICMP, or with ``everything`` also the
    VXLAN devices' IPv6 chatter (MLD, ND), which only a capture built from the references
    (GENEVE) has exactly: the kernel captures start at slightly different moments."""
    return Counter(
        e["proto"]
        for e in events
        if e["event_type"] == "flow" and (everything or e["proto"] in ("TCP", "ICMP"))
    )


def assert_like_references(
    events: list[Event],
    inner: dict[int, Path],
    suricata: Suricata,
    protos: bool | None = False,
) -> dict[tuple[int, ...], list[Event]]:
    """Per VNI (its VLAN id), the alerts and TCP flows of our output are exactly those of the
    unencapsulated reference capture; ``protos``: also flow events by protocol (True: all of
    them, see flow_protos; None: skip). Returns the alerts per VLAN for further checks."""
    alerts, flows = per_vlan(events), per_vlan(events, "flow")
    for vni, ref in inner.items():
        ref_events = suricata(ref)
        assert alerts_by_sid(alerts[(vni,)]) == alerts_by_sid(ref_events) == expected_alerts(False)
        assert tcp_tuples(flows[(vni,)]) == tcp_tuples(ref_events)  # not merged across VNIs
        if protos is not None:
            assert flow_protos(flows[(vni,)], protos) == flow_protos(ref_events, protos)
    return alerts


def clean(events: list[Event]) -> None:
    assert invalid_checksums(events) == 0
    assert decoder_invalid(events) == 0
    assert app_layer_failed(events) == []


def epoch(event: Event) -> float:
    return datetime.strptime(event["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def tunnel_of(db: ConnectionCache, ev: Event) -> dict[str, Any]:
    """The tunnel the cache recorded for an alert's flow (its tuple + VLAN ids)."""
    row = db.lookup_tunnel(
        ev["src_ip"], ev["src_port"], ev["dest_ip"], ev["dest_port"], ev["vlan"], epoch(ev)
    )
    assert row is not None, ev
    tunnel: dict[str, Any] = row["tunnel"]
    return tunnel


def eve_of(out: Path) -> Path:
    """Where the ``suricata`` fixture left the eve.json of a pcap it analysed."""
    return out.with_suffix(".suricata") / "eve.json"


def enriched(eve: Path, cache: Path) -> list[Event]:
    """``eve-enricher enrich`` on a Suricata eve.json with the normalizer's cache; asserts
    every event of an inner flow (TCP, UDP, ICMP: all carry the VLAN id of their VNI) names
    its tunnel."""
    dst = eve.with_name("enriched.json")
    exe = shutil.which("eve-enricher") or str(Path(sys.executable).with_name("eve-enricher"))
    argv = [exe, "enrich", str(eve), "--cache", str(cache), "-o", str(dst), "-q"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(argv)}\n{p.stdout}{p.stderr}"
    events = [json.loads(line) for line in dst.read_text().splitlines() if line.strip()]
    flows = [e for e in events if "vlan" in e]
    assert any(e["event_type"] == "alert" for e in flows)
    for e in flows:
        assert e.get("encapsulation", {}).get("vni") == e["vlan"][0], e
    return events


# -- 1. kernel VXLAN -----------------------------------------------------------------------------


def test_references_share_their_tuples(caps: TunnelCaptures, suricata: Suricata) -> None:
    """The premise: both VNIs carry the same inner 5-tuples, and each reference raises every
    expected alert on its own."""
    refs = {vni: suricata(p) for vni, p in caps.inner.items()}
    tuples = [tcp_tuples(ev) for ev in refs.values()]
    assert tuples[0] == tuples[1] and len(tuples[0]) == len(connections(False))
    for ev in refs.values():
        assert alerts_by_sid(ev) == expected_alerts(False)
        clean(ev)


def test_vxlan_decap_alerts_equal_the_reference_per_vni(
    caps: TunnelCaptures, suricata: Suricata, record_property: Callable[[str, object], None]
) -> None:
    out, stats, _db = rewrite(caps.underlay)
    frames, vxlan = tunnel_lab.count_udp(caps.underlay, 4789)
    assert vxlan > 0 and stats["tunnel_decapsulated"] == vxlan, stats
    assert stats["tunnel_passed"] == frames - vxlan and stats["packets_out"] == frames
    assert stats["tunnel_bad_header"] == stats["tunnel_truncated"] == 0
    passed = stats["passed_untracked"] + stats["passed_not_tcp"]
    assert passed == stats["packets_out"], "decap only: no flow is held or edited"
    events = suricata(out)
    clean(events)
    alerts, flows = per_vlan(events), per_vlan(events, "flow")
    assert set(alerts) == set(flows) == {(vni,) for vni in tunnel_lab.VNIS}
    for vni, ref in caps.inner.items():
        ref_events = suricata(ref)
        assert alerts_by_sid(alerts[(vni,)]) == alerts_by_sid(ref_events) == expected_alerts(False)
        # Not merged: the VLAN's flows are exactly the reference's flows.
        assert tcp_tuples(flows[(vni,)]) == tcp_tuples(ref_events)
        assert flow_protos(flows[(vni,)]) == flow_protos(ref_events)
    # What Suricata's own VXLAN decoder makes of the underlay (VNI ignored, flows may merge).
    native = suricata(caps.underlay)
    record_property("native_alerts", alerts_by_sid(native).total())
    record_property("native_tcp_flows", len(tcp_tuples(native)))
    record_property("decap_alerts", sum(len(a) for a in alerts.values()))


def test_vxlan_alerts_map_back_to_their_tunnel(caps: TunnelCaptures, suricata: Suricata) -> None:
    out, _stats, cache = rewrite(caps.underlay)
    alerts = [e for e in suricata(out) if e["event_type"] == "alert"]
    db = ConnectionCache(cache, readonly=True)
    try:
        for ev in alerts:
            t = tunnel_of(db, ev)
            assert (t["type"], t["vni"], t["vlan"]) == ("vxlan", ev["vlan"][0], ev["vlan"][0])
            assert (t["outer"]["src_ip"], t["outer"]["dest_ip"]) in (
                tunnel_lab.UNDERLAY,
                tunnel_lab.UNDERLAY[::-1],
            )
            assert t["outer"]["dest_port"] == 4789
    finally:
        db.close()
    for e in enriched(eve_of(out), cache):
        if "vlan" in e:
            enc = e["encapsulation"]
            assert enc["type"] == "vxlan" and enc["outer"]["dest_port"] == 4789


def test_vxlan_over_ipv6_underlay(caps6: tuple[Path, dict[int, Path]], suricata: Suricata) -> None:
    underlay, inner = caps6
    out, stats, cache = rewrite(underlay)
    frames, vxlan = tunnel_lab.count_udp(underlay, 4789)
    assert vxlan > 0 and stats["tunnel_decapsulated"] == vxlan, stats
    assert stats["tunnel_passed"] == frames - vxlan and stats["tunnel_bad_header"] == 0
    events = suricata(out)
    clean(events)
    alerts = assert_like_references(events, inner, suricata)
    db = ConnectionCache(cache, readonly=True)
    try:
        for ev in alerts[(tunnel_lab.VNIS[0],)] + alerts[(tunnel_lab.VNIS[1],)]:
            t = tunnel_of(db, ev)
            assert t["vni"] == ev["vlan"][0]
            assert {t["outer"]["src_ip"], t["outer"]["dest_ip"]} == set(tunnel_lab.UNDERLAY6)
    finally:
        db.close()


def test_kernel_fragmented_outer_packets_are_reassembled(
    caps_frag: tuple[Path, dict[int, Path]], suricata: Suricata
) -> None:
    underlay, inner = caps_frag
    out, stats, _db = rewrite(underlay)
    assert stats["tunnel_fragments"] > 0 and stats["tunnel_reassembled"] > 0, stats
    assert stats["tunnel_frag_limit"] == stats["tunnel_bad_header"] == 0, stats
    frames = len(tunnel_lab.read_pcap(underlay))
    got = stats["tunnel_decapsulated"] + stats["tunnel_passed"] + stats["tunnel_fragments"]
    assert got - stats["tunnel_reassembled"] == frames, stats
    events = suricata(out)
    clean(events)
    assert_like_references(events, inner, suricata)


def test_snaplen_cut_underlay_is_counted_and_passed(
    caps: TunnelCaptures, suricata: Suricata
) -> None:
    """As ``tcpdump -s 160`` on the mirror target would record it: every packet comes out,
    the cut inner packets are counted and still valid for Suricata (no crash, no bad checksum)."""
    data = caps.underlay.read_bytes()
    cut_path = caps.dir / "underlay-snap160.pcap"
    parts, off, packets, cut = [data[:24]], 24, 0, 0
    while off + 16 <= len(data):
        sec, usec, incl, orig = struct.unpack("<IIII", data[off : off + 16])
        keep = min(incl, 160)
        parts.append(struct.pack("<IIII", sec, usec, keep, orig) + data[off + 16 : off + 16 + keep])
        off, packets, cut = off + 16 + incl, packets + 1, cut + (keep < incl)
    cut_path.write_bytes(b"".join(parts))
    assert cut > 0
    out, stats, _db = rewrite(cut_path)
    _frames, vxlan = tunnel_lab.count_udp(caps.underlay, 4789)
    assert stats["tunnel_decapsulated"] == vxlan and stats["tunnel_truncated"] == cut, stats
    assert stats["packets_out"] == packets and stats["tunnel_bad_header"] == 0
    events = suricata(out)
    assert invalid_checksums(events) == 0
    assert decoder_invalid(events) == 0


def test_icmp_flows_have_tunnel_rows(caps: TunnelCaptures, suricata: Suricata) -> None:
    """Portless inner flows (the ICMP echo in each VNI) are recorded with ports 0."""
    out, _stats, cache = rewrite(caps.underlay)
    icmp = [e for e in suricata(out) if e["event_type"] == "flow" and e["proto"] == "ICMP"]
    assert sorted(e["vlan"][0] for e in icmp) == sorted(tunnel_lab.VNIS)
    db = ConnectionCache(cache, readonly=True)
    try:
        for e in icmp:
            row = db.lookup_tunnel(e["src_ip"], 0, e["dest_ip"], 0, e["vlan"], epoch(e))
            assert row is not None and row["tunnel"]["vni"] == e["vlan"][0], e
    finally:
        db.close()


def test_icmp_events_name_their_tunnel(caps: TunnelCaptures, suricata: Suricata) -> None:
    out, _stats, cache = rewrite(caps.underlay)
    suricata(out)
    icmp = [e for e in enriched(eve_of(out), cache) if e.get("proto") == "ICMP"]
    assert sorted(e["encapsulation"]["vni"] for e in icmp) == sorted(tunnel_lab.VNIS)


# -- 2. GENEVE with gateway-load-balancer options ------------------------------------------------


def test_geneve_decap_alerts_equal_the_reference_per_vni(
    caps: TunnelCaptures, suricata: Suricata
) -> None:
    assert caps.geneve_counts["packets"] > 0
    out, stats, cache = rewrite(caps.geneve)
    assert stats["tunnel_decapsulated"] == caps.geneve_counts["packets"], stats
    assert stats["tunnel_bad_header"] == 0
    events = suricata(out)
    clean(events)
    alerts = assert_like_references(events, caps.inner, suricata, protos=True)
    db = ConnectionCache(cache, readonly=True)
    try:
        for ev in alerts[(tunnel_lab.VNIS[0],)] + alerts[(tunnel_lab.VNIS[1],)]:
            t = tunnel_of(db, ev)
            assert (t["type"], t["vni"]) == ("geneve", ev["vlan"][0])
            assert t["eni_id"] == tunnel_lab.ENI_ID.hex()
            assert t["attachment_id"] == tunnel_lab.ATTACHMENT_ID.hex()
            cookie = tunnel_lab.cookie_for(
                6, ev["src_ip"], ev["src_port"], ev["dest_ip"], ev["dest_port"]
            )
            assert t["flow_cookie"] == cookie.hex()
            assert t["outer"]["dest_port"] == 6081 and "options" not in t
    finally:
        db.close()
    for e in enriched(eve_of(out), cache):
        if e["event_type"] == "alert":
            t = e["encapsulation"]
            cookie = tunnel_lab.cookie_for(
                6, e["src_ip"], e["src_port"], e["dest_ip"], e["dest_port"]
            )
            assert t["type"] == "geneve" and t["eni_id"] == tunnel_lab.ENI_ID.hex(), e
            assert t["flow_cookie"] == cookie.hex()


# -- 3. VXLAN carrying a PROXY v2 connection ------------------------------------------------------


def test_vxlan_mirrored_proxy_is_stripped_and_alerts_equal_the_baseline(
    caps: TunnelCaptures, suricata: Suricata
) -> None:
    # The bug, on the mirror: Suricata decodes the VXLAN itself but the header hides attacks.
    native = suricata(caps.proxied)
    assert alerts_by_sid(native).total() < expected_alerts(False).total()
    assert app_layer_failed(native)

    base_out, base_stats, _ = rewrite(caps.proxied_baseline)
    assert not base_stats["headers_stripped"]
    out, stats, cache = rewrite(caps.proxied, PROXY)
    n = len(connections(False))
    assert stats["headers_stripped"] == {"proxy-v2": n}, stats
    events, base_events = suricata(out), suricata(base_out)
    clean(events)
    vlan = (tunnel_lab.VNIS[0],)
    assert set(per_vlan(events)) == {vlan}
    assert alerts_by_sid(events) == alerts_by_sid(base_events) == expected_alerts(False)

    db = ConnectionCache(cache, readonly=True)
    try:
        assert db.count() == n
    finally:
        db.close()
    con = sqlite3.connect(cache)
    try:
        rows = con.execute("SELECT wire_src_ip, vlan, tunnel FROM connections").fetchall()
    finally:
        con.close()
    assert len(rows) == n
    for src, vlan_hex, tunnel in rows:
        assert src == tunnel_lab.CLIENT and vlan_hex == vlan[0].to_bytes(2, "big").hex()
        t = json.loads(tunnel)
        assert (t["type"], t["vni"], t["vlan"]) == ("vxlan", vlan[0], vlan[0])
        assert {t["outer"]["src_ip"], t["outer"]["dest_ip"]} == set(tunnel_lab.UNDERLAY)
    # Alerts name the restored endpoints; the enricher finds their connection and its tunnel.
    alerts = [e for e in enriched(eve_of(out), cache) if e["event_type"] == "alert"]
    assert len(alerts) == expected_alerts(False).total()
    for e in alerts:
        assert e["encapsulation"]["type"] == "vxlan" and "proxy" in e, e


# -- 4. the live path: a mirror target's underlay port -> normalizer --decap -> tap -> Suricata --


def test_live_decap_on_the_underlay_port(lab_ready: None, lab_dir: Path) -> None:
    """``suricata-normalizer live --decap`` on the mirror target's port, Suricata on the tap:
    per VNI the alerts and flows of the unencapsulated references, nothing lost, and the
    enricher names the tunnel of every event."""
    from tests.lab import live_demo

    d = lab_dir / "tunnel-live"
    d.mkdir(parents=True, exist_ok=True)
    cache, stats = d / "live.db", d / "live.json"
    lab = entered(tunnel_lab.VxlanLab)
    try:
        argv = [*live_demo.NORMALIZER, "live", "--iface", "u1", "--tap", live_demo.TAP, "--decap"]
        argv += ["--proxy", NO_PROXY, "--stats-json", str(stats), "--cache", str(cache)]
        argv += TUNNEL_PEERS
        live = lab.spawn("sensor", argv, d / "live.log")
        live_demo._wait_for(d / "live.log", "live on", live, 15)
        suri = live_demo.start_suricata(lab, d)
        lab.procs.remove(live)  # record() stops its own services; these two are stopped here
        lab.procs.remove(suri)
        try:
            _underlay, inner = tunnel_lab.record(lab, d)
            live_demo.settle()
        finally:
            lab.procs += [live, suri]
        counters = live_demo.stop_live(lab, live_demo.Live(live, d / "live.log", stats))
        events = live_demo.stop_suricata(lab, suri, d)
    finally:
        lab.close()
    assert counters["tunnel_decapsulated"] > 0 and counters["tunnel_bad_header"] == 0, counters
    assert counters["kernel_drops"] == 0 and counters["tap_write_errors"] == 0, counters
    assert counters["tap_frames"] == counters["packets_out"] == counters["packets_in"]
    assert live_demo.kernel_drops(events) == 0
    assert invalid_checksums(events) == 0 and decoder_invalid(events) == 0
    assert_like_references(
        events, inner, lambda ref: run_suricata(ref, outdir=ref.with_suffix(".suricata")), None
    )
    live_events = enriched(d / "suricata-snl0" / "eve.json", cache)
    assert all(e["encapsulation"]["type"] == "vxlan" for e in live_events if "vlan" in e)
    assert counters["cache_tunnel_rows"] >= len(tcp_tuples(events)) > 0
