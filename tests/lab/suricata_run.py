"""Run Suricata 7 on a pcap with the lab rules and read its eve.json back.

Why the stock /etc/suricata/suricata.yaml plus command-line overrides: it is what an operator
runs; ``-S`` replaces its ``rule-files`` (the ET ruleset it names is not installed), ``-k all``
makes Suricata drop packets with bad checksums (so a rewrite that forgets them shows up), and
``--runmode single`` keeps the event order deterministic. The stock eve output already logs
alert, anomaly, http, flow and a final stats event, which is all the helpers below read.

How Suricata 7.0.10 reports a stream it could not parse (measured on the raw lab captures):
the ``flow`` event has ``app_proto: "http"`` (detected from the response) and
``app_proto_ts: "failed"``; ``anomaly`` events with layer ``proto_detect`` and event
``APPLAYER_DETECT_PROTOCOL_ONLY_ONE_DIRECTION`` and libhtp's ``REQUEST_FIELD_MISSING_COLON``
follow; the first request of each connection gets method ``"\\u0000"`` and no URL.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RULES = Path(__file__).resolve().parents[2] / "suricata" / "rules" / "decoy.rules"
Event = dict[str, Any]


class SuricataError(RuntimeError):
    """Suricata exited non-zero or wrote no eve.json; carries its stderr."""


def run_suricata(
    pcap: Path,
    rules: Path = RULES,
    outdir: Path | None = None,
    checksum_validation: bool = True,
    extra: Sequence[str] = (),
) -> list[Event]:
    """Run ``suricata -r pcap`` into ``outdir`` (default: beside the pcap); return eve events.
    ``extra``: more command-line arguments (``--set key=value`` overrides)."""
    outdir = outdir or pcap.with_suffix(".suricata")
    outdir.mkdir(parents=True, exist_ok=True)
    eve = outdir / "eve.json"
    eve.unlink(missing_ok=True)
    argv = ["suricata", "-r", str(pcap), "-k", "all" if checksum_validation else "none"]
    argv += ["-S", str(rules), "-l", str(outdir), "--runmode", "single", *extra]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if p.returncode != 0 or not eve.exists():
        raise SuricataError(f"{' '.join(argv)} -> rc {p.returncode}\n{p.stderr}{p.stdout}")
    events = [json.loads(line) for line in eve.read_text().splitlines() if line.strip()]
    # Suricata skips a rule it cannot parse and still exits 0: make that loud too.
    engines = stats(events).get("detect", {}).get("engines", [])
    if any(e.get("rules_failed") for e in engines) or not any(
        e.get("rules_loaded") for e in engines
    ):
        raise SuricataError(f"{rules}: rules failed to load {engines}\n{p.stderr}{p.stdout}")
    return events


def alerts_by_sid(events: list[Event]) -> Counter[int]:
    """sid -> number of alerts."""
    return Counter(e["alert"]["signature_id"] for e in events if e["event_type"] == "alert")


def app_layer_failed(events: list[Event]) -> list[Event]:
    """Events saying protocol detection failed: flows with any app_proto* == "failed" and
    ``proto_detect`` anomalies (e.g. APPLAYER_DETECT_PROTOCOL_ONLY_ONE_DIRECTION)."""
    out = []
    for e in events:
        if e["event_type"] == "flow":
            if "failed" in (e.get(k) for k in ("app_proto", "app_proto_ts", "app_proto_tc")):
                out.append(e)
        elif e["event_type"] == "anomaly" and e["anomaly"].get("layer") == "proto_detect":
            out.append(e)
    return out


def stats(events: list[Event]) -> dict[str, Any]:
    """The last stats event's counters (Suricata writes one at the end of a pcap run)."""
    found: list[dict[str, Any]] = [e["stats"] for e in events if e["event_type"] == "stats"]
    if not found:
        raise SuricataError("no stats event in eve.json (stats output disabled?)")
    return found[-1]


def invalid_checksums(events: list[Event]) -> int:
    """TCP packets Suricata rejected for a bad checksum under ``-k all`` (Suricata 7.0.10's stats
    have only ``tcp.invalid_checksum``; bad IPv4 header checksums are not counted there)."""
    return int(stats(events)["tcp"]["invalid_checksum"])


def decoder_invalid(events: list[Event]) -> int:
    """Packets the decoder found malformed (bad lengths etc.) -- must stay 0 after a rewrite."""
    return int(stats(events)["decoder"]["invalid"])
