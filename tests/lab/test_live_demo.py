"""``./run demo`` end to end (root only): the enriched alerts it prints name the attacker, the
address attacked and, from the eve enricher's ``proxy`` object, the proxy hop and the decoy.

Claim: every alert of the scripted attack comes out of ``eve-enricher follow`` with the real
client as source, the gateway's public address as destination, and a ``proxy`` object whose
wire tuple is the HAProxy -> nginx hop the bridge carried and whose header is the PROXY v2
header the normalizer stripped; the printed table shows exactly those; nothing was dropped and
the namespaces are gone afterwards.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.lab.live_demo import alert_rows, kernel_drops, run_demo, table
from tests.lab.netlab import ATTACKER, DECOY, GATEWAY_BACK, GATEWAY_FRONT, run
from tests.lab.suricata_run import alerts_by_sid
from tests.lab.traffic import expected_alerts

pytestmark = [pytest.mark.root, pytest.mark.lab]


def _our_namespaces() -> set[str]:
    """Namespaces this process created (netlab names them snl<pid>x<n>...); others' runs on the
    same machine come and go meanwhile."""
    mine = f"snl{os.getpid()}x"
    names = (line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line)
    return {n for n in names if n.startswith(mine)}


def test_demo_enriched_alerts_name_attacker_and_proxy_hop(lab_ready: None, tmp_path: Path) -> None:
    if shutil.which("suricata") is None:
        pytest.skip("suricata missing")
    before = _our_namespaces()
    r = run_demo(tmp_path)
    assert _our_namespaces() <= before, "lab namespaces left behind"

    want = expected_alerts(False)
    assert alerts_by_sid(r.events) == want
    alerts = r.alerts()
    assert Counter(e["alert"]["signature_id"] for e in alerts) == want
    for e in alerts:
        assert (e["src_ip"], e["dest_ip"], e["dest_port"]) == (ATTACKER[4], GATEWAY_FRONT[4], 80)
        wire = e["proxy"]["wire"]
        assert (wire["src_ip"], wire["dest_ip"], wire["dest_port"]) == (
            GATEWAY_BACK[4],
            DECOY[4],
            80,
        )
        header = e["proxy"]["header"]
        assert (header["kind"], header["command"], header["family"]) == (
            "proxy-v2",
            "PROXY",
            "TCP4",
        )
    # one proxied connection per client connection: distinct client ports, distinct hop ports
    assert len({e["src_port"] for e in alerts}) == len(
        {e["proxy"]["wire"]["src_port"] for e in alerts}
    )

    rows = alert_rows(r.enriched)
    assert len(rows) == len(alerts)
    assert {(row[0].split(":")[0], row[2].split(":")[0], row[3], row[4]) for row in rows} == {
        (ATTACKER[4], GATEWAY_BACK[4], f"{DECOY[4]}:80", "proxy-v2")
    }
    text = table(rows)
    assert ATTACKER[4] in text and f"{DECOY[4]}:80" in text and "proxy hop" in text

    c = r.counters
    assert c["headers_stripped"] == {"proxy-v2": 7}
    assert c["kernel_drops"] == 0 and c["tap_write_errors"] == 0
    assert kernel_drops(r.events) == 0
