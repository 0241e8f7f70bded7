"""The live path with real HAProxy, nginx, curl and Suricata 7 on a tap (root only).

Claims: (1) Suricata reading the normalizer's tap raises exactly the alerts it raises on the same
traffic sent without a PROXY header, every alert names the attacker, and no frame was lost
(kernel ring, tap writes, Suricata's own capture); (2) a deleted tap is recreated, counted, and
the service keeps running; (3) after kill -9 in the middle of a download, a restart with the same
cache adopts the flow and keeps normalizing its later packets.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.live_demo import (
    TAP,
    settle,
    start_live,
    start_services,
    start_suricata,
    stop_live,
    stop_suricata,
)
from tests.lab.netlab import ATTACKER, GATEWAY_FRONT, Lab
from tests.lab.suricata_run import Event, alerts_by_sid
from tests.lab.traffic import expected_alerts, run_traffic

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture(scope="module")
def lab(lab_ready: None) -> Iterator[Lab]:
    if shutil.which("suricata") is None:
        pytest.skip("suricata missing")
    with Lab() as lab:
        yield lab


@pytest.fixture
def d(lab: Lab, tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    lab.stop_all()


def _capture_drops(events: list[Event]) -> int:
    stats = [e["stats"] for e in events if e["event_type"] == "stats"]
    assert stats, "Suricata wrote no stats event"
    return int(stats[-1]["capture"]["kernel_drops"])


def test_live_alerts_equal_baseline_and_nothing_is_lost(lab: Lab, d: Path) -> None:
    # Baseline: no header, Suricata directly on the bridge port.
    (d / "base").mkdir()
    start_services(lab, d / "base", proxy_header=False)
    suri = start_suricata(lab, d, iface="sg")
    run_traffic(lab, d / "base")
    settle()
    baseline = stop_suricata(lab, suri, d, iface="sg")
    lab.stop_all()

    # Live: HAProxy sends PROXY v2; Suricata reads the normalizer's tap.
    (d / "live").mkdir()
    start_services(lab, d / "live", proxy_header=True)
    live = start_live(lab, d, "live", d / "conn.db")
    suri = start_suricata(lab, d)
    run_traffic(lab, d / "live")
    settle()
    counters = stop_live(lab, live)
    events = stop_suricata(lab, suri, d)

    want = expected_alerts(False)
    assert alerts_by_sid(baseline) == want
    assert alerts_by_sid(events) == want
    alerts = [e for e in events if e["event_type"] == "alert"]
    assert {e["src_ip"] for e in alerts} == {ATTACKER[4]}
    assert {e["dest_ip"] for e in alerts} == {GATEWAY_FRONT[4]}
    assert counters["headers_stripped"] == {"proxy-v2": 7}
    assert counters["kernel_drops"] == 0 and counters["kernel_freezes"] == 0
    assert counters["capture_truncated"] == 0
    assert counters["tap_write_errors"] == 0
    assert counters["packets_in"] == counters["ring_frames"] == counters["kernel_packets"]
    assert counters["tap_frames"] == counters["packets_out"]
    assert counters["packets_out"] + counters["packets_dropped"] == counters["packets_in"]
    assert _capture_drops(events) == 0
    assert _capture_drops(baseline) == 0


def test_tap_removed_while_running_is_recreated(lab: Lab, d: Path) -> None:
    start_services(lab, d, proxy_header=True)
    live = start_live(lab, d, "live")
    run_traffic(lab, d)
    lab.sh("sensor", "ip", "link", "del", TAP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and TAP not in lab.ip("sensor", "-br", "link"):
        time.sleep(0.1)
    assert TAP in lab.ip("sensor", "-br", "link"), "tap not recreated"
    run_traffic(lab, d)  # and frames keep flowing into the new device
    settle()
    assert live.proc.poll() is None, live.log.read_text()
    counters = stop_live(lab, live)
    assert counters["tap_recreated"] >= 1
    assert counters["headers_stripped"] == {"proxy-v2": 14}
    assert counters["tap_frames"] + counters["tap_write_errors"] == counters["packets_out"]
    assert counters["tap_frames"] > 0


def test_kill9_mid_download_then_restart_resumes_from_cache(lab: Lab, d: Path) -> None:
    start_services(lab, d, proxy_header=True)
    # Small socket buffers on the attacker and the gateway, so curl's rate limit reaches back
    # over the bridge: with autotuned megabyte buffers the decoy's 2 MB cross the bridge in a
    # burst before the kill, and nothing is left for the restarted normalizer to see.
    small = {"attacker": "4096 16384 32768", "gateway": "4096 16384 32768"}
    keys = ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem")
    saved = {(ns, k): " ".join(lab.sh(ns, "sysctl", "-n", k).split()) for ns in small for k in keys}
    for (ns, key), _old in saved.items():
        lab.sh(ns, "sysctl", "-qw", f"{key}={small[ns]}")
    try:
        _kill9_and_resume(lab, d)
    finally:
        for (ns, key), old in saved.items():
            lab.sh(ns, "sysctl", "-qw", f"{key}={old}")


def _kill9_and_resume(lab: Lab, d: Path) -> None:
    cache = d / "conn.db"
    first = start_live(lab, d, "first", cache)
    url = f"http://{GATEWAY_FRONT[4]}/big.bin"
    curl = lab.spawn(
        "attacker",
        ["curl", "-sS", "--limit-rate", "300k", "-o", "/dev/null", "-w", "%{size_download}", url],
        d / "curl.log",
    )
    time.sleep(1.5)
    assert curl.poll() is None, "download finished before the kill"
    first.proc.kill()  # SIGKILL: no flush, no stats; the cache row is already durable
    first.proc.wait()
    lab.procs.remove(first.proc)
    second = start_live(lab, d, "second", cache)
    assert curl.wait(60) == 0
    lab.procs.remove(curl)
    assert (d / "curl.log").read_text().strip().endswith(str(2 * 1024 * 1024))
    settle(0.5)
    counters = stop_live(lab, second)
    assert counters["flows_resumed"] >= 1
    assert counters["rewritten"] > 100, counters  # the rest of the 2 MB, still normalized
    assert counters["kernel_drops"] == 0
    assert Counter(counters["headers_stripped"]) == Counter()  # no new header: adopted flow
