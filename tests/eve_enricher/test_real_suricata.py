"""The shipped lab captures (pcaps/) through normalizer -> real Suricata -> enricher, both
address modes: see e2e.py for what is checked. Needs Suricata, not root."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.eve_enricher.e2e import Ends, check
from tests.eve_enricher.helpers import alert, event
from tests.eve_enricher.schema import schema_errors

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
V4 = Ends("198.51.100.10", "198.51.100.1", "192.0.2.1", "192.0.2.2")
V6 = Ends("2001:db8:a::10", "2001:db8:a::1", "2001:db8:b::1", "2001:db8:b::2")
CASES = {
    "haproxy-v2-tlv": ("192.0.2.1/32", V4),
    "haproxy-v1": ("192.0.2.1/32", V4),
    "nginx-v1": ("192.0.2.1/32", V4),
    "haproxy-v2-ipv6": ("2001:db8:b::1/128", V6),
    "haproxy-v2-checks": ("192.0.2.1/32", V4),
    "haproxy-v2-hdrloss": ("192.0.2.1/32", V4),
    "reference-custom": ("192.0.2.1/32", V4),  # our own header, from the reference gateway
    # IPv6 attacker behind an IPv4 hop: restoration rebuilds the packets as IPv6
    "haproxy-v2-v6client": ("192.0.2.1/32", Ends(V6.attacker, V6.target, V4.gateway, V4.decoy)),
}

needs_suricata = pytest.mark.skipif(
    shutil.which("suricata") is None, reason="needs Suricata 7 (scripts/setup.sh installs it)"
)


@needs_suricata
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_event_names_the_attacker_in_both_modes(name: str, tmp_path: Path) -> None:
    proxy, ends = CASES[name]
    counts = check(PCAPS / f"{name}.pcap", proxy, ends, tmp_path)
    assert counts["alerts"] == 10  # pcaps/README.md: every decoy rule once
    assert (counts["local"] > 0) == (name == "haproxy-v2-checks")


def test_schema_catches_what_the_enricher_must_not_do() -> None:
    """The validation above can fail: unknown top-level keys, a mistyped port, a proxy object
    without its wire tuple are all errors."""
    ok = alert(("192.0.2.1", 40000), ("192.0.2.2", 80))
    ok.pop("community_id")  # the helper's placeholder is not a real community id
    del ok["alert"]["flow"]  # not in Suricata's schema: 7.0.10 writes the tuple under "flow"
    assert schema_errors(ok) == set()
    assert schema_errors({**ok, "attacker": "x"})
    assert schema_errors({**ok, "src_port": "40000"})
    assert schema_errors({**ok, "proxy": {"header": {}}})
    good = {"wire": {"src_ip": "a", "src_port": 1, "dest_ip": "b", "dest_port": 2}}
    good["header"] = {"kind": "proxy-v2", "command": "PROXY", "family": "TCP4", "length": 28}
    assert schema_errors({**ok, "proxy": good}) == set()
    assert schema_errors(
        event("flow", ("a", 1), ("b", 2), community_id=False, tunnel={"type": "gre"})
    )
