"""Expected alerts against fired alerts, keyed by (sid, src, dest) and counted exactly.

Why exact counts and endpoints: a rule that fires twice per request, or an alert that still
names the proxy instead of the attacker, is as much a regression as a silent rule. Alerts are
read from the *enriched* events, so ``src``/``dest`` are what an analyst sees.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from normalizer.commands.rulecheck.manifest import AlertKey, canonical_ip


def fired_alerts(events: Iterable[dict[str, Any]]) -> Counter[AlertKey]:
    """How often each (sid, src, dest) fired; addresses spelt as in manifests."""
    fired: Counter[AlertKey] = Counter()
    for e in events:
        if e.get("event_type") == "alert":
            sid = int(e["alert"]["signature_id"])
            fired[AlertKey(sid, canonical_ip(e["src_ip"]), canonical_ip(e["dest_ip"]))] += 1
    return fired


@dataclass(frozen=True)
class Comparison:
    """Per key: how many were expected, fired, are missing (short) or unexpected (extra)."""

    expected: dict[AlertKey, int]
    fired: dict[AlertKey, int]
    missing: dict[AlertKey, int] = field(default_factory=dict)
    unexpected: dict[AlertKey, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.missing and not self.unexpected

    def totals(self) -> tuple[int, int, int, int]:
        """(expected, fired, missing, unexpected) alert counts."""
        return (
            sum(self.expected.values()),
            sum(self.fired.values()),
            sum(self.missing.values()),
            sum(self.unexpected.values()),
        )


def compare(expected: dict[AlertKey, int], fired: dict[AlertKey, int]) -> Comparison:
    missing = {k: n - fired.get(k, 0) for k, n in expected.items() if fired.get(k, 0) < n}
    unexpected = {k: n - expected.get(k, 0) for k, n in fired.items() if n > expected.get(k, 0)}
    return Comparison(
        dict(expected), dict(fired), dict(sorted(missing.items())), dict(sorted(unexpected.items()))
    )
