"""Our own header on the real deployment (root): the reference gateway on the host owning br1.

The layout of tests/lab/hostlab.py (gateway on the host whose bridge address is its source,
decoys as bridge ports, every offload at the kernel's default), with two reference gateways on
the host: one sends the custom header in its own segment (to decoy0), one coalesces it with the
request (to decoy1). Each decoy strips it with the reference receiver in front of nginx. Claim,
as for HAProxy and nginx in test_host_live.py: ``live --iface br1`` feeds one Suricata that
validates checksums and raises, per decoy, exactly the header-free baseline's alerts, each naming
the attacker and the address he hit; the enricher names the decoy and the header kind.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.lab import services
from tests.lab.hostlab import ATTACKER, BRIDGE, FRONT, HostLab, decoy_addr
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
from tests.lab.traffic import connections, expected_alerts, run_traffic

pytestmark = [pytest.mark.root, pytest.mark.lab]
# gateway port on the host -> (decoy index, reference-gateway options)
GATEWAYS = {82: (0, ("--send-separately",)), 83: (1, ("--coalesce",))}
PER_GATEWAY = len(connections(bulk=False)) + 1  # the scripted connections and one download


@pytest.fixture
def tools(lab_ready: None) -> None:
    if shutil.which("suricata") is None:
        pytest.skip("suricata missing")


def _start(lab: HostLab, d: Path, headers: bool) -> dict[int, str]:
    """Decoys (stripping receivers when ``headers``) and the two gateways; port -> decoy."""
    d.mkdir(parents=True, exist_ok=True)
    www = services.make_webroot(d / "www")
    routes = {}
    for port, (i, opts) in GATEWAYS.items():
        role, addr = f"decoy{i}", decoy_addr(i)
        if headers:
            services.start_custom_decoy(lab, d, www, role=role, addr=addr)  # type: ignore[arg-type]
        else:
            services.start_decoy(lab, d, www, False, role=role, addrs=(addr,))  # type: ignore[arg-type]
        header = ("--header", "custom" if headers else "none")
        services.start_reference_gateway(
            lab,  # type: ignore[arg-type]
            d,
            "host",
            f"{FRONT}:{port}",
            f"{addr}:80",
            *header,
            *opts,
            name=f"refgw{port}",
        )
        routes[port] = addr
    return routes


def _traffic(lab: HostLab, d: Path) -> None:
    for port in GATEWAYS:
        run_traffic(lab, d, url=f"http://{FRONT}:{port}")  # type: ignore[arg-type]
        # 2 MB: the decoy's TSO sends it as GSO frames far above the MTU.
        lab.sh("attacker", "curl", "-sS", "-o", "/dev/null", f"http://{FRONT}:{port}/big.bin")


def _by_gateway(events: list[Event], routes: dict[int, str]) -> dict[int, Counter[int]]:
    """sid counts per gateway port, from the server end of each alert (the baseline names the
    decoy, the normalized run FRONT:port)."""
    back = {addr: port for port, addr in routes.items()}
    out: dict[int, Counter[int]] = {port: Counter() for port in routes}
    for e in events:
        if e.get("event_type") == "alert":
            to_server = e.get("direction", "to_server") == "to_server"
            ip, port = (e["dest_ip"], e["dest_port"]) if to_server else (e["src_ip"], e["src_port"])
            out.setdefault(back.get(ip, port), Counter())[e["alert"]["signature_id"]] += 1
    return out


def test_reference_gateway_on_the_bridge_host_with_offloads_on(tools: None, tmp_path: Path) -> None:
    d = tmp_path
    with HostLab(decoys=2) as lab:
        assert lab.offloads("host", BRIDGE)["tx-checksumming"] == "on"

        # Baseline: the same gateways writing no header, Suricata on the bridge (-k none: its
        # checksums are partial there), leaving the host's offloads as they are.
        routes = _start(lab, d / "base", headers=False)
        base_args = ["-k", "none", "--set", "capture.disable-offloading=false"]
        suri = start_suricata(lab, d / "base", iface=BRIDGE, role="host", extra=base_args)  # type: ignore[arg-type]
        _traffic(lab, d / "base")
        settle()
        baseline = stop_suricata(lab, suri, d / "base", iface=BRIDGE)  # type: ignore[arg-type]
        lab.stop_all()

        _start(lab, d / "live", headers=True)
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
        lab.stop_all()  # the gateways and receivers write their counters on SIGTERM

    want = expected_alerts(False)
    assert _by_gateway(baseline, routes) == {port: want for port in GATEWAYS}
    assert _by_gateway(events, routes) == _by_gateway(baseline, routes)
    for e in alerts:
        to_server = e.get("direction", "to_server") == "to_server"
        ends = (e["src_ip"], e["dest_ip"]) if to_server else (e["dest_ip"], e["src_ip"])
        assert ends == (ATTACKER, FRONT), e
    decoys = Counter(
        (e["proxy"]["wire"]["dest_ip"], e["proxy"]["header"]["kind"])
        for e in enriched
        if e.get("event_type") == "alert" and e.get("direction", "to_server") == "to_server"
    )
    n = sum(want.values())
    assert decoys == {(routes[82], "custom"): n, (routes[83], "custom"): n}
    assert counters["headers_stripped"] == {"custom": 2 * PER_GATEWAY}
    assert counters["headers_by_backend"] == {routes[p]: PER_GATEWAY for p in GATEWAYS}
    assert counters["csum_not_ready"] > 0
    assert counters["csum_completed"] == counters["csum_not_ready"]
    assert counters["capture_oversize"] > 0
    assert counters["kernel_drops"] == 0 and counters["tap_write_errors"] == 0
    for port, (i, _) in GATEWAYS.items():
        gw = json.loads((d / "live" / f"refgw{port}-stats.json").read_text())
        receiver = json.loads((d / "live" / f"decoy{i}-receiver-stats.json").read_text())
        assert gw["headers_written"] == gw["completed"] == PER_GATEWAY, gw
        assert receiver["headers_accepted"] == PER_GATEWAY, receiver
        assert receiver["headers_rejected"] == 0, receiver
    stats = [e["stats"] for e in events if e["event_type"] == "stats"][-1]
    assert stats["tcp"].get("invalid_checksum", 0) == 0
