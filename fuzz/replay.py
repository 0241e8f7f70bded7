"""``python -m fuzz --replay DIR ...``: run a reproducer's checks again, e.g. against a fix.

Pipeline and file reproducers are rebuilt from their directory (input bytes, ``config.toml``,
``finding.json``) and checked exactly as the fuzz run checked them; enricher ones need the eve
cache they were found with (``--work``). CLI findings carry the command line to run instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from fuzz.eve import RejectLog, line_problem, make_enricher
from fuzz.files import Hostile, check_file
from fuzz.findings import crash_class
from fuzz.packets import Run, execute
from fuzz.wire import read_pcap
from normalizer.adapters.config import build_options, load_file
from normalizer.cache.connections import ConnectionCache


def replay(d: Path, work: Path, eve_db: Path | None) -> list[str]:
    """The problems the reproducer in ``d`` still shows (empty: fixed)."""
    info = json.loads((d / "finding.json").read_text())
    tier = info["tier"]
    if tier in ("pipeline", "file"):
        options = build_options(load_file(d / "config.toml"), {})
        peers = tuple(info["peers"])
        if tier == "pipeline":
            _lt, _nano, recs = read_pcap((d / "input.pcap").read_bytes())
            run = Run(recs, info["linktype"], options, peers, info["cache"])
            return [f"{p.cls}: {p.detail}" for p in execute(run, work)[0]]
        if not (d / "records.pcap").exists():
            return ["written by an older fuzz target (no records.pcap): run the fuzz target again"]
        _lt, _nano, recs = read_pcap((d / "records.pcap").read_bytes())
        prefix = d / "prefix.cap"
        h = Hostile(
            info["kind"],
            (d / "input.cap").read_bytes(),
            frozenset(info["expect"]),
            prefix.read_bytes() if prefix.exists() else None,
            info.get("count"),
            info.get("times"),
            bool(info.get("nano")),
            own_records="scrambled" not in info["kind"],
        )
        run = Run(recs, info["linktype"], options, peers, True)
        found = check_file(h, run, work, bool(info.get("restart")))
        return [c if "\n" in detail else f"{c}: {detail}" for c, detail in found]
    if tier == "enricher":
        if eve_db is None or not eve_db.exists():
            return [f"needs the eve cache it was found with ({eve_db}); see --work"]
        raw = (d / "line.json").read_bytes()
        cache = ConnectionCache(eve_db, readonly=True)
        rejects = RejectLog()
        try:
            out = make_enricher(cache, rejects).line(raw, 0)
        except Exception as exc:
            return [crash_class(exc)]
        finally:
            cache.close()
        problem = line_problem(raw, out, rejects.records, 0)
        return [problem] if problem else []
    return [f"not replayable in process; run: {info.get('command', '?')}"]
