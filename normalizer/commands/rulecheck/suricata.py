"""Running real Suricata on one normalized capture, and telling rule-load errors apart.

Why the stock configuration plus overrides (as ``tests/lab/suricata_run.py``): it is what an
operator runs. ``-S`` replaces its ``rule-files``; ``-k all`` makes Suricata drop packets with bad
checksums, so a rewrite that forgets them shows up as missing alerts; ``--runmode single`` keeps
the event order deterministic.

Why several rule files are concatenated: ``-S`` takes exactly one file. The concatenation keeps a
line map, so Suricata's "error parsing signature ... at line N" is reported against the file and
line the engineer wrote. Suricata exits 0 when rules fail to load; the failure shows only in its
log and in the stats event's ``detect.engines[].rules_failed``, both of which are checked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normalizer.commands.rulecheck.rules import RuleError

Event = dict[str, Any]
_SIG_ERROR = re.compile(r'error parsing signature ".*" from file (.+) at line (\d+)\s*$')
_LOG_ERROR = re.compile(r"\bError: [\w-]+: (.*)$")


class SuricataError(RuntimeError):
    """Suricata is missing, exited non-zero or wrote no eve.json; carries the reason."""


class RuleLoadError(Exception):
    """Suricata could not load some rules: ``errors`` name file and line where it said so."""

    def __init__(self, errors: list[RuleError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class RuleBundle:
    """The single file handed to ``-S`` and where each of its lines came from."""

    path: Path
    origins: tuple[tuple[Path, int], ...]  # index = combined line - 1 -> (file, line)

    def origin(self, line: int) -> tuple[Path, int]:
        if 1 <= line <= len(self.origins):
            return self.origins[line - 1]
        return self.path, line


def bundle_rules(files: Sequence[Path], dest: Path) -> RuleBundle:
    """Concatenate ``files`` into ``dest`` and remember the origin of every line."""
    origins: list[tuple[Path, int]] = []
    chunks: list[str] = []
    for path in files:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        chunks.extend(lines)
        origins.extend((path, n) for n in range(1, len(lines) + 1))
    dest.write_text("\n".join(chunks) + "\n", encoding="utf-8")
    return RuleBundle(dest, tuple(origins))


def log_rule_errors(log: str, bundle: RuleBundle) -> list[RuleError]:
    """Suricata's "error parsing signature" lines, each with the reason logged just before it."""
    errors: list[RuleError] = []
    reason = ""
    for line in log.splitlines():
        sig = _SIG_ERROR.search(line)
        if sig:
            path, n = bundle.origin(int(sig.group(2)))
            errors.append(RuleError(path, n, reason or "rule failed to load", "suricata"))
            reason = ""
        elif m := _LOG_ERROR.search(line):
            reason = m.group(1).rstrip(".")
    return errors


def _engines(events: list[Event]) -> list[dict[str, Any]]:
    stats = [e["stats"] for e in events if e.get("event_type") == "stats"]
    if not stats:
        raise SuricataError("no stats event in eve.json (is the stats eve output disabled?)")
    engines: list[dict[str, Any]] = stats[-1].get("detect", {}).get("engines", [])
    return engines


def run_suricata(
    pcap: Path, bundle: RuleBundle, outdir: Path, config: Path | None = None
) -> list[Event]:
    """Eve events of ``suricata -r pcap``; RuleLoadError if any rule failed to load."""
    exe = shutil.which("suricata")
    if exe is None:
        raise SuricataError("suricata not found on PATH (install Suricata 7)")
    outdir.mkdir(parents=True, exist_ok=True)
    eve = outdir / "eve.json"
    eve.unlink(missing_ok=True)
    argv = [exe, "-r", str(pcap), "-k", "all", "-S", str(bundle.path), "-l", str(outdir)]
    argv += ["--runmode", "single"] + (["-c", str(config)] if config else [])
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if p.returncode != 0 or not eve.exists():
        tail = "\n".join((p.stderr + p.stdout).strip().splitlines()[-5:])
        raise SuricataError(f"suricata exited with {p.returncode}: {tail}")
    events = [json.loads(line) for line in eve.read_text().splitlines() if line.strip()]
    engines = _engines(events)
    failed = sum(int(e.get("rules_failed", 0)) for e in engines)
    if failed:
        log = outdir / "suricata.log"
        text = p.stderr + (log.read_text(errors="replace") if log.exists() else "")
        errors = log_rule_errors(text, bundle)
        if not errors:
            msg = f"{failed} rule(s) failed to load (see {log})"
            errors = [RuleError(bundle.path, 0, msg, "suricata")]
        # the same error appears on stderr and in suricata.log: report each once
        raise RuleLoadError(list(dict.fromkeys(errors)))
    if not any(e.get("rules_loaded") for e in engines):
        raise RuleLoadError([RuleError(bundle.path, 0, "no rule loaded", "suricata")])
    return events
