"""Every lab scenario through normalizer -> real Suricata -> eve-enricher, both address modes
(root only): each event names the real attacker (IPv4, IPv6 and an IPv6 client over an IPv4
hop), keeps the wire tuple under ``proxy``, stays valid EVE, and both modes give the same
documents; both enricher modes (overwrite, extra-data) against Suricata's own community_id. The
checks themselves are in tests/eve_enricher/e2e.py and test_modes_suricata.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.eve_enricher.e2e import Ends, check
from tests.eve_enricher.test_modes_suricata import check_modes
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


@pytest.mark.parametrize("keep", [False, True], ids=["restored", "kept"])
def test_overwrite_and_extra_data_modes(
    scenario: str, captures: dict[str, ScenarioCaptures], tmp_path: Path, keep: bool
) -> None:
    """``--mode extra-data`` keeps Suricata's bytes and adds ``proxy.real``; ``overwrite``
    names the attacker; Suricata's own community_id is the oracle for both (see
    tests/eve_enricher/test_modes_suricata.py)."""
    caps = captures[scenario]
    counts = check_modes(caps.raw, caps.proxy, keep, tmp_path)
    assert counts["proxied"] > 0 and counts["real"] > 0
