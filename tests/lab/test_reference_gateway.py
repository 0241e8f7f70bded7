"""The reference gateway on real kernels (root): attacker -> gateway ns -> bridge -> decoy.

The scenarios ``reference-*`` (tests/lab/scenarios.py) run ``suricata-normalizer
reference-gateway`` in the gateway namespace, writing our custom header to a decoy that strips
it itself (a reference-gateway receiver in front of nginx). test_lab.py checks Suricata's alerts
on them like on every scenario; this file checks what is specific to our header:

1. every connection the gateway accepted carried a header the decoy's strict receiver accepted,
   and nginx behind it logged the attacker as the client;
2. on the bridge-port capture the header sits where the scenario says (alone or coalesced);
3. ``rewrite`` strips exactly one custom header per connection and restores the attacker and
   the gateway's front address on every packet.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.lab.conftest import selected_scenarios
from tests.lab.netlab import ATTACKER, GATEWAY_FRONT
from tests.lab.pcapshape import shape
from tests.lab.scenarios import SCENARIOS, ScenarioCaptures
from tests.lab.test_lab import HEADERS, normalizer_cli
from tests.lab.traffic import connections

pytestmark = [pytest.mark.root, pytest.mark.lab]
REFERENCE = [name for name in SCENARIOS if name.startswith("reference-")]
CONNECTIONS = len(connections(bulk=False))


def _captures(name: str, captures: dict[str, ScenarioCaptures]) -> ScenarioCaptures:
    if name not in selected_scenarios():
        pytest.skip(f"{name} not in LAB_SCENARIOS")
    return captures[name]


def _work(caps: ScenarioCaptures) -> Path:
    return caps.raw.parent / "work" / caps.name / "raw"


@pytest.mark.parametrize("name", REFERENCE)
def test_every_connection_carried_a_header_the_decoy_accepted(
    name: str, captures: dict[str, ScenarioCaptures]
) -> None:
    caps = _captures(name, captures)
    work = _work(caps)
    gw = json.loads((work / "refgw-stats.json").read_text())
    receiver = json.loads((work / "decoy-receiver-stats.json").read_text())
    assert gw["accepted"] == gw["headers_written"] == gw["completed"] == CONNECTIONS, gw
    assert gw["backend_failed"] == gw["aborted"] == 0, gw
    assert receiver["headers_accepted"] == CONNECTIONS, receiver
    assert receiver["headers_rejected"] == 0, receiver
    fam = 6 if "ipv6" in name else 4
    access = (work / "decoy-access.log").read_text().splitlines()
    assert access and all(f" pp={ATTACKER[fam]} " in line for line in access), access


@pytest.mark.parametrize("name", REFERENCE)
def test_rewrite_strips_one_custom_header_per_connection_and_restores_addresses(
    name: str, captures: dict[str, ScenarioCaptures], tmp_path: Path
) -> None:
    cli = normalizer_cli()
    caps = _captures(name, captures)
    raw = shape(caps.raw)
    assert raw.flows == CONNECTIONS and set(raw.headers) == HEADERS[name], raw
    norm, stats = tmp_path / "norm.pcap", tmp_path / "stats.json"
    argv = [*cli, "rewrite", str(caps.raw), "-o", str(norm), "--proxy", caps.proxy, "-q"]
    p = subprocess.run(
        [*argv, "--stats-json", str(stats)], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    counters = json.loads(stats.read_text())
    assert counters["headers_stripped"] == {"custom": CONNECTIONS}, counters
    assert counters["addresses_restored"] == CONNECTIONS, counters
    for bad in ("header_malformed", "header_missing", "header_truncated", "passed_unparsed_flow"):
        assert counters[bad] == 0, (bad, counters)
    out = shape(norm)
    assert out.headers == {"none": CONNECTIONS}, out
    fam = 6 if "ipv6" in name else 4
    attacker, front = ATTACKER[fam], GATEWAY_FRONT[fam]
    assert set(out.endpoints) == {(attacker, front), (front, attacker)}, out.endpoints
