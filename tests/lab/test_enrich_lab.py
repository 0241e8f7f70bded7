"""Every lab scenario through normalizer -> real Suricata -> eve-enricher, both address modes
(root only): each event names the real attacker (IPv4, IPv6 and an IPv6 client over an IPv4
hop), keeps the wire tuple under ``proxy``, stays valid EVE, and both modes give the same
documents. The checks themselves are in tests/eve_enricher/e2e.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.eve_enricher.e2e import Ends, check
from tests.lab.netlab import ATTACKER, DECOY, GATEWAY_BACK, GATEWAY_FRONT
from tests.lab.scenarios import ScenarioCaptures

pytestmark = [pytest.mark.root, pytest.mark.lab]


def test_enriched_events_name_the_attacker(
    scenario: str, captures: dict[str, ScenarioCaptures], tmp_path: Path
) -> None:
    caps = captures[scenario]
    fam, cfam = (6 if ":" in caps.proxy else 4), caps.client_family
    ends = Ends(ATTACKER[cfam], GATEWAY_FRONT[cfam], GATEWAY_BACK[fam], DECOY[fam])
    counts = check(caps.raw, caps.proxy, ends, tmp_path)
    assert counts["alerts"] == caps.expected.total()
    assert (counts["local"] > 0) == ("check" in scenario)
