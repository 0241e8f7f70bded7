"""``suricata-normalizer appliance`` behind a simulated gateway load balancer (root, lab).

Real curl against real nginx in two protected sites, every packet GENEVE-wrapped by the
balancer simulator (tests/lab/balancer.py) and delivered only when the appliance returns it;
real Suricata (-k all) on the appliance's tap; eve-enricher with the appliance's cache. One
lab run (about a minute) goes through every phase in order -- traffic, equal tuples behind two
endpoints, hostile datagrams, failing returns, stop, restart -- and the tests below each
check one part of what it recorded.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.lab import live_demo
from tests.lab.appliance_lab import (
    APPLIANCE,
    BALANCER,
    ENI_A,
    ENI_B,
    ENI_C,
    MIRROR_VNI,
    ROOT,
    STRANGER,
    TAP,
    ApplianceLab,
    balancer_stats,
    wait_for,
    wait_stats,
)
from tests.lab.balancer import (
    ATTACHMENT_ID,
    HOSTILE_ENI,
    MARKER_ENI,
    MIRROR_SOURCE,
    MIRROR_TARGET,
    hostile_datagrams,
)
from tests.lab.netlab import DECOY
from tests.lab.services import make_webroot, start_decoy
from tests.lab.suricata_run import (
    alerts_by_sid,
    decoder_invalid,
    invalid_checksums,
    run_suricata,
)
from tests.lab.traffic import expected_alerts, run_traffic

pytestmark = [pytest.mark.root, pytest.mark.lab]

Event = dict[str, Any]
URL = f"http://{DECOY[4]}"
SAME_PORT = "41000"  # both sites' clients use it: identical inner 5-tuples
DROP_RETURNS = """table ip snlapp {
  chain out {
    type filter hook output priority 0;
    udp dport 6081 drop
  }
}
"""
HOLD_HEALTH = f"""
import socket, sys
held = []
for _ in range(40):
    s = socket.socket()
    s.bind(("{STRANGER}", 0))
    s.connect(("{APPLIANCE}", 8080))
    held.append(s)
print("held", len(held), flush=True)
sys.stdin.read()
"""
PY = ["env", f"PYTHONPATH={ROOT}", sys.executable]


@dataclass
class Run:
    d: Path
    counters: dict[str, Any] = field(default_factory=dict)  # first appliance run, at exit
    counters2: dict[str, Any] = field(default_factory=dict)  # after the restart
    health: dict[str, str] = field(default_factory=dict)  # phase -> HTTP status
    health_bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    same_tuple_codes: list[str] = field(default_factory=list)
    hostile_before: dict[str, Any] = field(default_factory=dict)
    hostile_after: dict[str, Any] = field(default_factory=dict)
    balancer_hostile: dict[str, Any] = field(default_factory=dict)
    stopped_before: dict[str, Any] = field(default_factory=dict)
    stopped_after: dict[str, Any] = field(default_factory=dict)
    stopped_curl_rc: int = 0
    restart_code: str = ""
    reload_code: str = ""
    flood_held: str = ""
    head_status: str = ""
    events: list[Event] = field(default_factory=list)  # Suricata on the tap
    reference: list[Event] = field(default_factory=list)  # Suricata on the server's own veth
    enriched: list[Event] = field(default_factory=list)
    tunnel_rows: list[dict[str, Any]] = field(default_factory=list)  # the cache's, at the end


def _curl(lab: ApplianceLab, role: str, path: str, *extra: str) -> subprocess.Popen[str]:
    argv = lab.cmd(role, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *extra)
    return subprocess.Popen([*argv, URL + path], stdout=subprocess.PIPE, text=True)


def _code(p: subprocess.Popen[str]) -> str:
    out, _ = p.communicate(timeout=60)
    return out.strip()


def _nft(lab: ApplianceLab, ruleset: str) -> None:
    subprocess.run(lab.cmd("appliance", "nft", "-f", "-"), input=ruleset, text=True, check=True)


def _phases(lab: ApplianceLab, r: Run) -> None:
    d = r.d
    cache = d / "appliance.db"
    www = make_webroot(d / "www")
    start_decoy(lab, d, www, proxy_protocol=False, role="decoy", addrs=(DECOY[4],))
    start_decoy(lab, d, www, proxy_protocol=False, role="server2", addrs=(DECOY[4],))
    start_decoy(lab, d, www, proxy_protocol=False, role="server3", addrs=(DECOY[4],))
    stats = lab.start_balancer(d)
    app = lab.start_appliance(d, cache, "appliance")
    suri = live_demo.start_suricata(lab, d, iface=TAP, role="appliance")
    lab.wait_health("200")
    r.health["started"] = lab.health()[0]
    # 1. The scripted attack from site A, captured unencapsulated at the server for reference.
    with lab.capture(d / "reference.pcap", port="s0", role="decoy"):
        run_traffic(lab, d, url=URL)
    # 1b. The same attack at site C, whose balancer only mirrors (VXLAN inside GENEVE).
    run_traffic(lab.as_role("client3", "attacker"), d, url=URL)
    # 2. The same 5-tuple at the same time behind both endpoints.
    both = [
        _curl(lab, role, "/docs.bin", "--local-port", SAME_PORT) for role in ("attacker", "client2")
    ]
    r.same_tuple_codes = [_code(p) for p in both]
    # 3. Hostile datagrams, then a marker: once its return is back, all were seen.
    r.hostile_before = lab.health()[1]
    lab.sh(
        "balancer",
        *PY,
        "-m",
        "tests.lab.balancer",
        "hostile",
        "--appliance",
        APPLIANCE,
        "--address",
        BALANCER,
        "--stranger",
        STRANGER,
    )
    r.balancer_hostile = wait_stats(stats, lambda s: MARKER_ENI.hex() in s["returned_by_eni"])
    r.hostile_after = lab.health()[1]
    # 3b. 40 idle connections from a stranger to the health port: the balancer's probe is
    # still answered (the cap applies to others), and HEAD answers without a body.
    holder = subprocess.Popen(
        lab.cmd("balancer", sys.executable, "-c", HOLD_HEALTH),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    r.flood_held = holder.stdout.readline().strip()
    r.health["flooded"] = lab.health()[0]
    head = lab.sh("balancer", "curl", "-sI", "--max-time", "5", f"http://{APPLIANCE}:8080/")
    r.head_status = head.splitlines()[0] if head else ""
    holder.stdin.close()
    holder.wait(timeout=30)
    # 4. Returns that cannot be sent: 503 until one succeeds again.
    _nft(lab, DROP_RETURNS)
    _code(_curl(lab, "attacker", "/index.html", "--max-time", "2"))
    r.health_bodies["failing"] = lab.wait_health("503")
    r.health["failing"] = "503"
    _nft(lab, "delete table ip snlapp\n")
    r.health["recovered_curl"] = _code(_curl(lab, "attacker", "/index.html", "--max-time", "20"))
    r.health["recovered"] = lab.health()[0]
    # 5. Stopped: nothing answers the health check, the balancer gets no returns.
    r.counters = lab.stop_appliance(app, d, "appliance")
    r.health["stopped"] = lab.health()[0]
    r.stopped_before = balancer_stats(stats)
    p = _curl(lab, "attacker", "/index.html", "--max-time", "2")
    p.communicate(timeout=30)
    r.stopped_curl_rc = p.returncode
    r.stopped_after = wait_stats(stats, lambda s: s["refused"] > r.stopped_before["refused"])
    # 6. Restarted: healthy again, traffic flows again; and again after a reload (SIGHUP) that
    # changes the config (a proxy to strip headers from): core and pipeline are rebuilt.
    config = d / "appliance.toml"
    config.write_text("[normalizer]\nidle_timeout = 350.0\n")
    app = lab.start_appliance(d, cache, "appliance2", config)
    lab.wait_health("200")
    r.health["restarted"] = lab.health()[0]
    r.restart_code = _code(_curl(lab, "attacker", "/index.html", "--max-time", "20"))
    config.write_text('[normalizer]\nidle_timeout = 350.0\nproxies = ["192.0.2.99/32"]\n')
    app.send_signal(signal.SIGHUP)
    wait_for(d / "appliance2.log", "config reloaded", app, 10)
    r.reload_code = _code(_curl(lab, "attacker", "/index.html", "--max-time", "20"))
    live_demo.settle(1.0)
    r.counters2 = lab.stop_appliance(app, d, "appliance2")
    r.events = live_demo.stop_suricata(lab, suri, d, iface=TAP)


@pytest.fixture(scope="module")
def run(lab_ready: None, lab_dir: Path) -> Iterator[Run]:
    d = lab_dir / "appliance"
    d.mkdir(parents=True, exist_ok=True)
    r = Run(d)
    with ApplianceLab() as lab:
        _phases(lab, r)
    r.reference = run_suricata(d / "reference.pcap", outdir=d / "reference.suricata")
    out = d / "enriched.json"
    argv = [*PY, "-m", "eve_enricher.cli", "enrich", str(d / f"suricata-{TAP}" / "eve.json")]
    argv += ["--cache", str(d / "appliance.db"), "-o", str(out), "-q"]
    subprocess.run(argv, check=True, timeout=120)
    r.enriched = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    with contextlib.closing(sqlite3.connect(d / "appliance.db")) as db:
        r.tunnel_rows = [json.loads(t) for (t,) in db.execute("SELECT tunnel FROM tunnels")]
    yield r


def _cookie(e: Event) -> str:
    a = bytes(int(x) for x in e["src_ip"].split(".")) + e["src_port"].to_bytes(2, "big")
    b = bytes(int(x) for x in e["dest_ip"].split(".")) + e["dest_port"].to_bytes(2, "big")
    return zlib.crc32(bytes((6,)) + min(a, b) + max(a, b)).to_bytes(4, "big").hex()


def test_protected_traffic_flows_through_the_appliance(run: Run) -> None:
    """run_traffic raises if any curl fails; every request got an HTTP answer."""
    codes = [line.split()[0] for line in (run.d / "curl.log").read_text().splitlines()]
    assert codes and "000" not in codes, codes
    c = run.counters
    assert c["returned"] > 100 and c["inspected"] == c["received"] - c["rejected"], c
    assert c["returned"] == c["inspected"] - c["return_errors"], c
    assert c["tap_frames"] == c["inspected"] and c["tap_write_errors"] == 0, c
    assert c["cache_tunnel_rows"] > 0 and c["cache_errors"] == 0, c


def _alerts(run: Run, eni: str) -> list[Event]:
    return [
        e
        for e in run.enriched
        if e["event_type"] == "alert" and e["encapsulation"]["eni_id"] == eni
    ]


def test_suricata_on_the_tap_alerts_like_the_unencapsulated_traffic(run: Run) -> None:
    want = expected_alerts(False)
    assert alerts_by_sid(run.reference) == want
    assert alerts_by_sid(_alerts(run, ENI_A)) == want
    assert alerts_by_sid(run.events) == want + want  # and site C's mirrored copies
    assert invalid_checksums(run.events) == 0 and decoder_invalid(run.events) == 0
    assert live_demo.kernel_drops(run.events) == 0


def test_every_enriched_alert_names_its_endpoint(run: Run) -> None:
    alerts = [e for e in run.enriched if e["event_type"] == "alert"]
    assert len(alerts) == 2 * expected_alerts(False).total()
    for e in alerts:
        t = e["encapsulation"]
        assert (t["type"], t["attachment_id"]) == ("geneve", ATTACHMENT_ID.hex()), e
        assert t["eni_id"] in (ENI_A, ENI_C) and t["vlan"] == e["vlan"][0]
        assert t["outer"]["src_ip"] == BALANCER and t["outer"]["dest_ip"] == APPLIANCE
        if t["eni_id"] == ENI_A:
            assert t["flow_cookie"] == _cookie(e) and "mirror" not in t, e


def test_mirrored_vxlan_inside_geneve_is_inspected_through_both_layers(run: Run) -> None:
    """Site C's balancer mirrors: Suricata sees the VXLAN session's frames, on their own VLAN
    id, and raises the attack's alerts once; the enriched alerts name both layers."""
    alerts = _alerts(run, ENI_C)
    assert alerts_by_sid(alerts) == expected_alerts(False)
    assert len({e["vlan"][0] for e in alerts} | {e["vlan"][0] for e in _alerts(run, ENI_A)}) == 2
    for e in alerts:
        m = e["encapsulation"]["mirror"]
        assert (m["type"], m["vni"]) == ("vxlan", MIRROR_VNI), e
        assert (m["outer"]["src_ip"], m["outer"]["dest_ip"]) == (MIRROR_SOURCE, MIRROR_TARGET)
    assert run.counters["mirrored"] > 0


def test_equal_tuples_behind_two_endpoints_stay_two_flows(run: Run) -> None:
    assert run.same_tuple_codes == ["200", "200"]
    flows = [
        e
        for e in run.enriched
        if e["event_type"] == "flow" and e.get("src_port") == int(SAME_PORT) and e["proto"] == "TCP"
    ]
    assert len(flows) == 2, flows
    assert len({tuple(e["vlan"]) for e in flows}) == 2
    assert {e["encapsulation"]["eni_id"] for e in flows} == {ENI_A, ENI_B}
    for e in flows:
        assert e["flow"]["bytes_toclient"] > 32 * 1024 and e["flow"]["state"] == "closed", e


def test_hostile_geneve_is_counted_never_returned_or_inspected(run: Run) -> None:
    before, after = run.hostile_before, run.hostile_after
    for reason in [*hostile_datagrams(), "peer"]:
        key = f"rejected_{reason}"
        assert after[key] - before[key] == 1, (key, before[key], after[key])
    # Inspected inner flows each have a tunnel row: the marker's, none of the hostile ones'.
    enis = [t.get("eni_id", "none") for t in run.tunnel_rows]
    assert enis.count(MARKER_ENI.hex()) == 1 and HOSTILE_ENI.hex() not in enis
    assert all(e in (ENI_A, ENI_B, ENI_C, MARKER_ENI.hex()) for e in enis), set(enis)
    by_eni = run.balancer_hostile["returned_by_eni"]
    assert HOSTILE_ENI.hex() not in by_eni and "none" not in by_eni, by_eni
    assert by_eni[MARKER_ENI.hex()] == 1


def test_health_follows_the_appliance(run: Run) -> None:
    h = run.health
    assert h["started"] == "200" and h["failing"] == "503"
    assert run.flood_held == "held 40" and h["flooded"] == "200"
    assert run.head_status.startswith("HTTP/1.0 200")
    body = run.health_bodies["failing"]
    assert body["returns_failing"] and body["return_errors"] > 0 and not body["healthy"]
    assert h["recovered_curl"] == "200" and h["recovered"] == "200"
    assert h["stopped"] == "000"  # nothing listens: the balancer's probe fails
    assert h["restarted"] == "200"


def test_stopped_appliance_returns_nothing_and_a_restart_resumes(run: Run) -> None:
    before, after = run.stopped_before, run.stopped_after
    assert run.stopped_curl_rc != 0
    assert after["sent"] > before["sent"] and after["returned"] == before["returned"]
    assert run.restart_code == run.reload_code == "200"
    c = run.counters2
    assert c["returned"] == c["inspected"] > 0 and c["return_errors"] == 0, c
    assert c["reloads"] == 1 and c["tap_frames"] == c["inspected"], c
