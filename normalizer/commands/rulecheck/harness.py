"""One capture end to end: manifest -> normalize -> Suricata -> enrich -> compare.

Why the production code paths and not shortcuts: the corpus is the regression suite of exactly
what operators run. Normalizing goes through ``rewrite_file`` with a connection cache (as
``rewrite --cache``), enrichment through the eve enricher's ``LineEnricher`` over that cache (as
``eve-enricher enrich``), so alerts name the real attacker even when a manifest keeps the wire
addresses. Per-capture problems (bad manifest, unreadable capture, Suricata failing) become an
``error`` result so the other captures still run; rule-load errors (``RuleLoadError``) concern
every capture and propagate.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from eve_enricher.lookup import CacheLookup, Matcher
from eve_enricher.runner import enrich_stream
from eve_enricher.stream import LineEnricher
from normalizer.adapters.pcap_io import PcapError
from normalizer.cache.connections import CacheError, ConnectionCache
from normalizer.commands.rewrite import rewrite_file
from normalizer.commands.rulecheck.compare import Comparison, compare, fired_alerts
from normalizer.commands.rulecheck.discover import Target
from normalizer.commands.rulecheck.manifest import ManifestError, load_manifest
from normalizer.commands.rulecheck.suricata import Event, RuleBundle, SuricataError, run_suricata

Status = Literal["pass", "fail", "error"]


@dataclass(frozen=True)
class CaseResult:
    """The outcome for one capture; ``comparison`` is None when it could not be checked."""

    target: Target
    status: Status
    seconds: float
    comparison: Comparison | None = None
    error: str = ""
    usage_error: bool = False  # a manifest problem: the engineer must fix an input file
    # Packets Suricata dropped for a bad checksum (-k all), the manifest's checksum mode and
    # the partial checksums the normalizer completed: a capture recorded on the sending host
    # with offloads on shows up here instead of as silently missing alerts.
    invalid_checksums: int = 0
    checksum_mode: str = "auto"
    checksum_completed: int = 0

    def checksum_hint(self) -> str:
        """Why alerts may be missing, when checksums are the likely reason ("" otherwise)."""
        if not self.invalid_checksums:
            return ""
        hint = f"Suricata dropped {self.invalid_checksums} packets with invalid checksums (-k all)"
        if self.checksum_mode == "keep":
            return (
                f"{hint}: the capture was probably recorded on the sending host with offloads on;"
                " the manifest sets 'checksums: keep', the default 'auto' completes them"
            )
        return (
            f"{hint} that are not an offload's partial sum, so 'auto' left them as the receiver"
            " saw them; if they are an artefact of the recording, set 'options: {checksums: fix}'"
        )


def enrich_events(eve: Path, cache_db: Path) -> list[Event]:
    """The eve events as the enricher writes them, read back as dicts."""
    cache = ConnectionCache(cache_db, readonly=True)
    try:
        out = io.BytesIO()
        with eve.open("rb") as src:
            enrich_stream(src, out, LineEnricher(Matcher(CacheLookup(cache))))
    finally:
        cache.close()
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def run_case(
    target: Target, bundle: RuleBundle, workdir: Path, config: Path | None = None
) -> CaseResult:
    """Check one capture, using ``workdir`` (created) for the normalized pcap, cache and logs."""
    start = time.monotonic()

    def result(
        status: Status, comparison: Comparison | None = None, error: str = "", usage: bool = False
    ) -> CaseResult:
        return CaseResult(target, status, time.monotonic() - start, comparison, error, usage)

    if target.manifest is None:
        msg = f"{target.capture}: no manifest (create {target.capture.with_suffix('.yaml').name})"
        return result("error", error=msg, usage=True)
    try:
        manifest = load_manifest(target.manifest)
    except ManifestError as exc:
        return result("error", error=str(exc), usage=True)
    except OSError as exc:
        return result("error", error=f"{target.manifest}: {exc.strerror or exc}", usage=True)
    if not target.capture.is_file():
        msg = f"{target.manifest}: its capture {target.capture.name} does not exist"
        return result("error", error=msg, usage=True)
    workdir.mkdir(parents=True, exist_ok=True)
    normalized, cache_db = workdir / "normalized.pcap", workdir / "conn-cache.db"
    try:
        cache = ConnectionCache(cache_db)
        try:
            counters = rewrite_file(
                target.capture,
                normalized,
                manifest.options(),
                on_events=cache.record,
                resume=cache.resumable,
                on_tunnels=cache.record_tunnels,
            )
        finally:
            cache.close()
        events = enrich_events(_eve(normalized, bundle, workdir, config), cache_db)
    except (PcapError, CacheError, SuricataError) as exc:
        return result("error", error=f"{target.capture}: {exc}")
    except OSError as exc:
        return result("error", error=f"{exc.filename or target.capture}: {exc.strerror or exc}")
    comparison = compare(manifest.expected, fired_alerts(events))
    return dataclasses.replace(
        result("pass" if comparison.passed else "fail", comparison=comparison),
        invalid_checksums=invalid_checksums(events),
        checksum_mode=manifest.options().checksums,
        checksum_completed=counters.checksum_completed,
    )


def invalid_checksums(events: list[Event]) -> int:
    """Every ``invalid_checksum`` counter of Suricata's last stats event, summed."""
    stats = [e["stats"] for e in events if e.get("event_type") == "stats"]

    def total(node: object) -> int:
        if not isinstance(node, dict):
            return 0
        return sum(
            v if k == "invalid_checksum" and isinstance(v, int) else total(v)
            for k, v in node.items()
        )

    return total(stats[-1]) if stats else 0


def _eve(pcap: Path, bundle: RuleBundle, workdir: Path, config: Path | None) -> Path:
    run_suricata(pcap, bundle, workdir / "suricata", config)
    return workdir / "suricata" / "eve.json"
