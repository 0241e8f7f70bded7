"""The text report: one table row per capture, then the alerts behind every failure.

Why details only for failures (all with ``--verbose``): a passing corpus should read at a glance;
a failing capture names each missing or unexpected sid with its message and endpoints, which is
what the engineer needs to decide whether the rule or the expectation is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

from normalizer.commands.rulecheck.harness import CaseResult
from normalizer.commands.rulecheck.manifest import AlertKey
from normalizer.commands.rulecheck.rules import RuleSet

_HEAD = ("capture", "result", "expected", "fired", "missing", "unexpected", "bad csum", "time")


def _alert_line(kind: str, key: AlertKey, n: int, rules: RuleSet) -> str:
    return f"    {kind:<10} {key.sid:>9} x{n:<3} {key.src} -> {key.dest}  {rules.message(key.sid)}"


def details(r: CaseResult, rules: RuleSet, verbose: bool = False) -> list[str]:
    """Lines under the table for one capture (empty for a quiet pass)."""
    if r.status == "error":
        return [f"  {r.target.name}: ERROR {r.error}"]
    c = r.comparison
    if c is None or (r.status == "pass" and not verbose):
        return []
    lines = [f"  {r.target.name}: {r.status.upper()}"]
    if hint := r.checksum_hint():
        lines.append(f"    hint: {hint}")
    lines += [_alert_line("missing", k, n, rules) for k, n in c.missing.items()]
    lines += [_alert_line("unexpected", k, n, rules) for k, n in c.unexpected.items()]
    if verbose:
        lines += [_alert_line("fired", k, n, rules) for k, n in sorted(c.fired.items())]
    return lines


def render(
    results: Sequence[CaseResult], rules: RuleSet, seconds: float, verbose: bool = False
) -> str:
    rows: list[tuple[str, ...]] = [_HEAD]
    for r in results:
        counts = r.comparison.totals() if r.comparison else ("-",) * 4
        csum = str(r.invalid_checksums) if r.comparison else "-"
        rows.append((r.target.name, r.status.upper(), *map(str, counts), csum, f"{r.seconds:.1f}s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEAD))]
    out = [
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    for r in results:
        out += details(r, rules, verbose)
    passed = sum(r.status == "pass" for r in results)
    out.append(f"{passed}/{len(results)} captures passed in {seconds:.1f}s")
    return "\n".join(out)
