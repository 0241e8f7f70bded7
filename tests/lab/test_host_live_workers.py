"""``live --workers 2`` on the host lab (root, real HAProxy/nginx/curl/Suricata -k all).

Claims, on the layout of tests/lab/hostlab.py (gateways on the host, two decoys behind br1):

1. Two workers make ONE Suricata raise exactly the alerts one worker does on the same traffic
   (same rules, same counts per gateway, every alert naming the attacker and the address he
   hit), and both workers carried traffic; both wrote their rows into the one connection cache,
   from which ``eve-enricher`` names the header of every alert.
2. The kernel's fanout hash is symmetric: every server-to-client segment reached the worker
   that holds its flow, so no worker passed a segment as untracked (all TCP on br1 is proxied).
3. A worker killed with SIGKILL is restarted, and the traffic after it is normalized as before;
   SIGHUP reaches every worker, the restarted one too.
4. Several workers on the single-queue tap a one-worker run left behind: a clear error (exit 1)
   that says to delete it, and the tap is left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab.hostlab import (
    ATTACKER,
    BRIDGE,
    FRONT,
    HAPROXY_PORT,
    NGINX_PORT,
    HostLab,
    start_host_services,
)
from tests.lab.live_demo import (
    NORMALIZER,
    TAP,
    Live,
    settle,
    start_enricher,
    start_live,
    start_suricata,
    stop_enricher,
    stop_live,
    stop_suricata,
)
from tests.lab.suricata_run import Event
from tests.lab.test_host_live import _by_port
from tests.lab.traffic import expected_alerts, run_traffic

pytestmark = [pytest.mark.root, pytest.mark.lab]

PROXY = "192.0.2.1/32"
ROUNDS = 2  # scripted attacks per gateway and run: 7 connections each
BENIGN = 15  # extra connections per gateway and run


@pytest.fixture
def tools(lab_ready: None) -> None:
    if shutil.which("suricata") is None:
        pytest.skip("suricata missing")


def _traffic(lab: HostLab, d: Path) -> int:
    """The scripted attack ROUNDS times plus BENIGN plain requests per gateway; returns the
    number of connections made."""
    for port in (HAPROXY_PORT, NGINX_PORT):
        url = f"http://{FRONT}:{port}"
        for _ in range(ROUNDS):
            run_traffic(lab, d, url=url)  # type: ignore[arg-type]
        loop = f"for i in $(seq {BENIGN}); do curl -sS -o /dev/null {url}/index.html; done"
        lab.sh("attacker", "sh", "-c", loop)
    return 2 * (ROUNDS * 7 + BENIGN)


@dataclass
class Run:
    counters: dict[str, Any]
    events: list[Event]  # Suricata's eve.json
    enriched: list[Event]  # eve-enricher's output, from the workers' shared cache
    conns: int


def _run(lab: HostLab, d: Path, workers: int) -> Run:
    d.mkdir()
    start_host_services(lab, d, headers=True)
    cache = d / "conn.db"
    live = start_live(
        lab, d, "live", cache, "--workers", str(workers), role="host", iface=BRIDGE, proxy=PROXY
    )  # type: ignore[arg-type]
    suri = start_suricata(lab, d, role="host")  # type: ignore[arg-type]
    eve = d / f"suricata-{TAP}" / "eve.json"
    enricher = start_enricher(lab, d, eve, cache, d / "enriched.json", role="host")  # type: ignore[arg-type]
    conns = _traffic(lab, d)
    settle()
    counters = stop_live(lab, live)  # type: ignore[arg-type]
    events = stop_suricata(lab, suri, d)  # type: ignore[arg-type]
    n = len(_alerts(events))
    enriched = stop_enricher(lab, enricher, d / "enriched.json", n)  # type: ignore[arg-type]
    lab.stop_all()
    return Run(counters, events, enriched, conns)


def _alerts(events: list[Event]) -> list[Event]:
    return [e for e in events if e["event_type"] == "alert"]


def _ends(e: Event) -> tuple[str, str]:
    """(client, server) of an alert, whichever direction raised it."""
    if e.get("direction", "to_server") == "to_server":
        return e["src_ip"], e["dest_ip"]
    return e["dest_ip"], e["src_ip"]


def test_two_workers_raise_the_alerts_of_one_and_keep_both_directions_together(
    tools: None, tmp_path: Path
) -> None:
    with HostLab(decoys=2) as lab:
        run1 = _run(lab, tmp_path / "one", 1)
        # The one-worker run left its single-queue tap: two workers refuse it, clearly.
        refused = lab.sh(
            "host",
            "sh",
            "-c",
            f"{NORMALIZER[0]} live --iface {BRIDGE} --tap {TAP} --proxy {PROXY} --workers 2"
            " 2>&1; echo rc=$?",
        )
        assert "tap snl0 exists as a single-queue device" in refused, refused
        assert "ip link del snl0" in refused and refused.rstrip().endswith("rc=1"), refused
        assert "multi_queue" not in lab.ip("host", "-d", "link", "show", TAP)
        lab.ip("host", "link", "del", TAP)
        run2 = _run(lab, tmp_path / "two", 2)
        assert "multi_queue" in lab.ip("host", "-d", "link", "show", TAP)

    one_events, conns = run1.events, run1.conns
    two, two_events = run2.counters, run2.events
    want = Counter({sid: n * ROUNDS for sid, n in expected_alerts(False).items()})
    assert _by_port(one_events) == {HAPROXY_PORT: want, NGINX_PORT: want}
    assert _by_port(two_events) == _by_port(one_events)
    for e in _alerts(two_events) + _alerts(one_events):
        assert _ends(e) == (ATTACKER, FRONT), e
    per_port = conns // 2
    for r in (run1, run2):
        c = r.counters
        assert c["headers_stripped"] == {"proxy-v2": per_port, "proxy-v1": per_port}
        # Every connection has its row in the one cache (N writers), and the enricher, reading
        # it unchanged, names the header behind every alert.
        assert c["cache_rows"] == conns and c["cache_errors"] == 0
        enriched = _alerts(r.enriched)
        assert len(enriched) == len(_alerts(r.events))
        kinds = Counter(e["proxy"]["header"]["kind"] for e in enriched)
        assert kinds == {"proxy-v2": len(enriched) // 2, "proxy-v1": len(enriched) // 2}
        assert c["passed_untracked"] == 0
        assert c["kernel_drops"] == 0 and c["tap_write_errors"] == 0
        assert c["tap_frames"] == c["packets_out"]
    assert two["workers"] == 2 and two["worker_restarts"] == 0
    workers = two["per_worker"]
    assert [w["worker"] for w in workers] == [0, 1]
    for w in workers:
        # Both carried connections, and neither saw a reply whose flow the other one holds.
        assert sum(w["headers_stripped"].values()) > 0, workers
        assert w["passed_untracked"] == 0, workers
    assert sum(w["ring_frames"] for w in workers) == two["ring_frames"]
    assert sum(w["flows_created"] for w in workers) == two["flows_created"] == conns


def _pids(live: Live) -> list[int]:
    m = re.search(r"2 workers \(fanout group \d+, pids (\d+), (\d+)\)", live.log.read_text())
    assert m, live.log.read_text()
    return [int(m[1]), int(m[2])]


def _wait_log(live: Live, pattern: str, timeout: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, live.log.read_text())
        if m:
            return m
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not in the log: {live.log.read_text()[-2000:]}")


def test_a_killed_worker_is_restarted_and_traffic_keeps_flowing(
    tools: None, tmp_path: Path
) -> None:
    d = tmp_path
    with HostLab(decoys=2) as lab:
        start_host_services(lab, d, headers=True)
        live = start_live(
            lab, d, "live", None, "--workers", "2", role="host", iface=BRIDGE, proxy=PROXY
        )  # type: ignore[arg-type]
        suri = start_suricata(lab, d, role="host")  # type: ignore[arg-type]
        before = _traffic(lab, d)
        settle()
        victim = _pids(live)[1]
        os.kill(victim, signal.SIGKILL)
        _wait_log(live, rf"worker 1 \(pid {victim}\) was killed by SIGKILL; restarting it")
        new = int(_wait_log(live, r"worker 1 \(pid (\d+)\) running again \(restart 1\)")[1])
        live.proc.send_signal(signal.SIGHUP)  # reaches both workers, the new one too
        after = _traffic(lab, d)
        settle()
        counters = stop_live(lab, live)  # type: ignore[arg-type]
        events = stop_suricata(lab, suri, d)  # type: ignore[arg-type]

    assert new != victim
    assert counters["worker_restarts"] == 1
    w0, w1 = counters["per_worker"]
    assert (w0["restarts"], w1["restarts"], w1["pid"]) == (0, 1, 0)  # pid 0: stopped
    assert (counters["reloads"], w0["reloads"], w1["current_run"]["reloads"]) == (1, 1, 1)
    # The new worker 1 carried traffic of the second half, and nothing was lost.
    assert sum(w1["current_run"]["headers_stripped"].values()) > 0, w1
    total = (before + after) // 2
    assert counters["headers_stripped"] == {"proxy-v2": total, "proxy-v1": total}
    want = Counter({sid: 2 * n * ROUNDS for sid, n in expected_alerts(False).items()})
    assert _by_port(events) == {HAPROXY_PORT: want, NGINX_PORT: want}
    for e in _alerts(events):
        assert _ends(e) == (ATTACKER, FRONT), e


def _metric(lab: HostLab, port: int, name: str) -> float:
    text = lab.sh("host", "curl", "-sS", f"http://127.0.0.1:{port}/metrics")
    for line in text.splitlines():
        if line.startswith(f"suricata_normalizer_{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in {text[:500]}")


def test_a_restart_moves_no_connection_of_the_other_worker(tools: None, tmp_path: Path) -> None:
    """The rings are the parent's: a dead worker's socket stays in the fanout group, so the
    kernel never renumbers it. Downloads running across the restart: the survivor's continue
    undisturbed (no reply it cannot place), the dead worker's frames wait in its ring and go
    to its successor (which passes them: their header state died with the worker)."""
    d = tmp_path
    metrics = 9189
    with HostLab(decoys=2) as lab:
        start_host_services(lab, d, headers=True)
        args = ("--workers", "2", "--metrics-port", str(metrics))
        live = start_live(lab, d, "live", None, *args, role="host", iface=BRIDGE, proxy=PROXY)  # type: ignore[arg-type]
        # Small socket buffers on the gateway host: curl's --limit-rate then paces HAProxy's
        # backend connections on the bridge too, so the downloads run for seconds, across the
        # restart.
        for key in ("tcp_rmem", "tcp_wmem"):
            lab.sh("host", "sysctl", "-qw", f"net.ipv4.{key}=4096 16384 32768")
        url = f"http://{FRONT}:{HAPROXY_PORT}/big.bin"
        curl = f"curl -sS -r 0-599999 --limit-rate 100k -o /dev/null {url}"  # ~6 s each
        loop = f"for i in $(seq 8); do {curl} & done; wait"
        downloads = lab.spawn("attacker", ["sh", "-c", loop], d / "downloads.log")
        deadline = time.monotonic() + 30
        while _metric(lab, metrics, "flows_active") < 8:  # all eight running
            assert time.monotonic() < deadline and downloads.poll() is None
            time.sleep(0.1)
        victim = _pids(live)[0]
        os.kill(victim, signal.SIGKILL)
        _wait_log(live, r"worker 0 \(pid \d+\) running again \(restart 1\)")
        assert downloads.wait(120) == 0, (d / "downloads.log").read_text()
        lab.procs.remove(downloads)
        settle()
        counters = stop_live(lab, live)  # type: ignore[arg-type]

    w0, w1 = counters["per_worker"]
    assert counters["headers_stripped"] == {"proxy-v2": 8}  # all before the kill
    assert sum(w1["headers_stripped"].values()) > 0, w1  # the survivor had downloads
    assert w1["passed_untracked"] == 0, w1  # and none of the dead worker's frames
    # The successor got the rest of the dead worker's downloads from the same ring.
    now = w0["current_run"]
    assert now["ring_frames"] > 0 and now["passed_untracked"] > 0 and now["flows_created"] == 0, w0
