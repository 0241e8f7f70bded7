"""The live sidecar on the host it is built for (root, real HAProxy/nginx/curl/Suricata).

Claims, on the layout of tests/lab/hostlab.py (gateways on the host that owns the bridge, two
decoys as bridge ports, every offload at the kernel's default):

1. ``live --iface br1`` feeds ONE Suricata, validating checksums (``-k all``), that raises for
   every decoy exactly the alerts of the same traffic sent without headers; every alert names
   the attacker and the address he hit, the enricher's proxy object names the decoy; the
   offloaded (partial) checksums were completed, GSO frames larger than the MTU went through
   whole, nothing was dropped.
2. With the proxy behind a bridge port, the same capture on the bridge device strips every
   header (promiscuous membership); with ``--no-promisc`` it strips none and says why.
3. A wrong ``--proxy`` is answered with the address that opened the connections.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

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
    TAP,
    settle,
    start_enricher,
    start_live,
    start_suricata,
    stop_enricher,
    stop_live,
    stop_suricata,
)
from tests.lab.suricata_run import Event
from tests.lab.traffic import expected_alerts, run_traffic

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture
def tools(lab_ready: None) -> None:
    if shutil.which("suricata") is None:
        pytest.skip("suricata missing")


def _traffic(lab: HostLab, d: Path) -> None:
    for port in (HAPROXY_PORT, NGINX_PORT):
        run_traffic(lab, d, url=f"http://{FRONT}:{port}")  # type: ignore[arg-type]
        # A 2 MB download: the decoy's TSO sends it as GSO frames far above the MTU.
        lab.sh("attacker", "curl", "-sS", "-o", "/dev/null", f"http://{FRONT}:{port}/big.bin")


def _server(e: Event) -> tuple[str, int]:
    """The server end of an alert's connection, whichever direction raised it."""
    if e.get("direction", "to_server") == "to_server":
        return e["dest_ip"], e["dest_port"]
    return e["src_ip"], e["src_port"]


def _by_port(events: list[Event], routes: dict[int, str] | None = None) -> dict[int, Counter[int]]:
    """sid counts per gateway port; ``routes`` maps a decoy's wire address back to its port
    (the baseline shows proxy -> decoy, the normalized run the attacker -> FRONT:port)."""
    back = {addr: port for port, addr in (routes or {}).items()}
    out: dict[int, Counter[int]] = {HAPROXY_PORT: Counter(), NGINX_PORT: Counter()}
    for e in events:
        if e.get("event_type") == "alert":
            ip, port = _server(e)
            out.setdefault(back.get(ip, port), Counter())[e["alert"]["signature_id"]] += 1
    return out


def _stats(events: list[Event]) -> dict[str, object]:
    found = [e["stats"] for e in events if e["event_type"] == "stats"]
    assert found, "Suricata wrote no stats event"
    last: dict[str, object] = found[-1]
    return last


def test_bridge_capture_with_offloads_on_feeds_one_suricata_for_every_decoy(
    tools: None, tmp_path: Path
) -> None:
    d = tmp_path
    with HostLab(decoys=2) as lab:
        assert lab.offloads("host", BRIDGE)["tx-checksumming"] == "on"
        assert lab.offloads("decoy0", "d0")["tcp-segmentation-offload"] == "on"

        # Baseline: no header anywhere; Suricata on the bridge itself. Its checksums are
        # partial there, so this one run does not validate them (-k none), and it must not
        # turn the host's offloads off for the run that follows.
        (d / "base").mkdir()
        routes = start_host_services(lab, d / "base", headers=False)
        base_args = ["-k", "none", "--set", "capture.disable-offloading=false"]
        suri = start_suricata(lab, d / "base", iface=BRIDGE, role="host", extra=base_args)  # type: ignore[arg-type]
        _traffic(lab, d / "base")
        settle()
        baseline = stop_suricata(lab, suri, d / "base", iface=BRIDGE)  # type: ignore[arg-type]
        lab.stop_all()

        # Live: headers on; the normalizer on br1 in the host; Suricata -k all on its tap.
        (d / "live").mkdir()
        start_host_services(lab, d / "live", headers=True)
        cache = d / "conn.db"
        live = start_live(lab, d, "live", cache, role="host", iface=BRIDGE, proxy="192.0.2.1/32")  # type: ignore[arg-type]
        suri = start_suricata(lab, d, role="host")  # type: ignore[arg-type]
        eve = d / f"suricata-{TAP}" / "eve.json"
        enricher = start_enricher(lab, d, eve, cache, d / "enriched.json", role="host")  # type: ignore[arg-type]
        _traffic(lab, d / "live")
        settle()
        counters = stop_live(lab, live)  # type: ignore[arg-type]
        events = stop_suricata(lab, suri, d)  # type: ignore[arg-type]
        alerts = [e for e in events if e["event_type"] == "alert"]
        enriched = stop_enricher(lab, enricher, d / "enriched.json", len(alerts))  # type: ignore[arg-type]

    want = expected_alerts(False)
    assert _by_port(baseline, routes) == {HAPROXY_PORT: want, NGINX_PORT: want}
    assert _by_port(events) == _by_port(baseline, routes)
    for e in alerts:
        client = e["src_ip"] if e.get("direction", "to_server") == "to_server" else e["dest_ip"]
        target = e["dest_ip"] if e.get("direction", "to_server") == "to_server" else e["src_ip"]
        assert (client, target) == (ATTACKER, FRONT), e
    # The enricher names the decoy each alert's connection went to.
    decoys = Counter(
        (e["proxy"]["wire"]["dest_ip"], e["proxy"]["header"]["kind"])
        for e in enriched
        if e.get("event_type") == "alert" and e.get("direction", "to_server") == "to_server"
    )
    n = sum(want.values())
    assert decoys == {(routes[HAPROXY_PORT], "proxy-v2"): n, (routes[NGINX_PORT], "proxy-v1"): n}
    # 7 scripted connections + the download, per gateway.
    assert counters["headers_stripped"] == {"proxy-v2": 8, "proxy-v1": 8}
    assert counters["headers_by_backend"] == {routes[HAPROXY_PORT]: 8, routes[NGINX_PORT]: 8}
    assert counters["csum_not_ready"] > 100
    assert counters["csum_completed"] == counters["csum_not_ready"]
    assert counters["capture_oversize"] > 0 and counters["capture_max_frame"] > 9000
    assert counters["capture_promisc"] == 1
    assert counters["kernel_drops"] == 0 and counters["tap_write_errors"] == 0
    assert counters["capture_truncated"] == 0
    assert counters["tap_frames"] == counters["packets_out"]
    stats = _stats(events)
    tcp = stats["tcp"]
    assert isinstance(tcp, dict)
    assert tcp.get("invalid_checksum", 0) == 0
    assert tcp["sessions"] >= 16
    capture = stats["capture"]
    assert isinstance(capture, dict) and capture["kernel_drops"] == 0


@pytest.fixture
def portlab(tools: None, tmp_path: Path) -> Iterator[tuple[HostLab, Path]]:
    with HostLab(decoys=2, gateway_on_port=True) as lab:
        start_host_services(lab, tmp_path, headers=True)
        yield lab, tmp_path


def test_proxy_behind_a_port_is_seen_on_the_bridge_only_when_promiscuous(
    portlab: tuple[HostLab, Path],
) -> None:
    lab, d = portlab
    proxy = f"{lab.proxy_source}/32"
    live = start_live(lab, d, "promisc", None, role="host", iface=BRIDGE, proxy=proxy)  # type: ignore[arg-type]
    _traffic(lab, d)
    settle()
    counters = stop_live(lab, live)  # type: ignore[arg-type]
    assert counters["headers_stripped"] == {"proxy-v2": 8, "proxy-v1": 8}
    assert counters["capture_promisc"] == 1

    args = ("--no-promisc", "--warn-after", "1")
    blind = start_live(lab, d, "blind", None, *args, role="host", iface=BRIDGE, proxy=proxy)  # type: ignore[arg-type]
    _traffic(lab, d)
    settle()
    counters = stop_live(lab, blind)  # type: ignore[arg-type]
    assert counters["headers_stripped"] == {}
    assert counters["no_proxied_flows"] == 1
    log = blind.log.read_text()
    assert "warning: 1 s in, no proxied flow" in log
    assert f"{BRIDGE} is a bridge captured without promiscuous mode" in log


def test_wrong_proxy_is_answered_with_the_address_that_opened_the_connections(
    portlab: tuple[HostLab, Path],
) -> None:
    lab, d = portlab
    args = ("--warn-after", "1")
    live = start_live(
        lab, d, "wrong", None, *args, role="host", iface=BRIDGE, proxy="192.0.2.99/32"
    )  # type: ignore[arg-type]
    _traffic(lab, d)
    settle()
    counters = stop_live(lab, live)  # type: ignore[arg-type]
    assert counters["headers_stripped"] == {}
    log = live.log.read_text()
    assert f"try --proxy {lab.proxy_source}" in log, log
    assert "none opened a connection from a trusted proxy (192.0.2.99/32)" in log
