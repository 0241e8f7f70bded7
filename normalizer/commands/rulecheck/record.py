"""``test-rules --record CAPTURE``: a manifest written from what Suricata raises on the
normalized capture, for the detection engineer to review and commit.

Why record instead of writing by hand: the expected (sid, src, dest, count) of a new capture
are what the normalizer plus Suricata produce today; the engineer's job is to read them and
delete what must not fire (or mark it ``count: 0``), not to type them. The file says it was
recorded and not reviewed; it loads with the same validation as every manifest, so a recorded
manifest passes ``test-rules`` on its capture by construction (until something changes).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from normalizer.cache.connections import ConnectionCache
from normalizer.commands.rewrite import rewrite_file
from normalizer.commands.rulecheck.compare import fired_alerts
from normalizer.commands.rulecheck.harness import _eve, enrich_events
from normalizer.commands.rulecheck.suricata import RuleBundle
from normalizer.core.options import Options


def observe(
    capture: Path, options: Options, bundle: RuleBundle, workdir: Path, config: Path | None
) -> list[dict[str, Any]]:
    """Enriched eve events of the normalized capture (as ``run_case`` produces them)."""
    workdir.mkdir(parents=True, exist_ok=True)
    normalized, cache_db = workdir / "normalized.pcap", workdir / "conn-cache.db"
    cache = ConnectionCache(cache_db)
    try:
        rewrite_file(
            capture,
            normalized,
            options,
            on_events=cache.record,
            resume=cache.resumable,
            on_tunnels=cache.record_tunnels,
        )
    finally:
        cache.close()
    return enrich_events(_eve(normalized, bundle, workdir, config), cache_db)


def manifest_text(
    capture: Path,
    proxies: list[str],
    header_kinds: list[str] | None,
    restore: bool,
    events: list[dict[str, Any]],
) -> str:
    fired = fired_alerts(events)
    doc: dict[str, Any] = {"proxies": proxies}
    if header_kinds:
        doc["header"] = header_kinds[0] if len(header_kinds) == 1 else header_kinds
    if not restore:
        doc["restore_addresses"] = False
    doc["description"] = f"recorded from {capture.name}; REVIEW before committing"
    doc["expected_alerts"] = [
        {"sid": k.sid, "count": n, "src": k.src, "dest": k.dest}
        for k, n in sorted(fired.items(), key=lambda kv: (kv[0].sid, kv[0].src, kv[0].dest))
    ]
    head = (
        f"# Recorded by `suricata-normalizer test-rules --record {capture.name}`: the alerts\n"
        "# Suricata raised on the normalized capture. Review every entry (delete what must not\n"
        "# fire, or keep it with count: 0) before committing.\n"
    )
    body: str = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)
    return head + body


def write(text: str, out: Path) -> None:
    if str(out) == "-":
        sys.stdout.write(text)
        return
    with out.open("x") as f:  # never overwrites a reviewed manifest
        f.write(text)
