"""The corpus as a plain pytest collection: one test per capture in pcaps/, so CI runs it.

Why in process: the harness is the same code ``test-rules`` runs; the command itself is tested
through its real entry point in ``test_command.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from normalizer.commands.rulecheck import DEFAULT_CORPUS, DEFAULT_RULES
from normalizer.commands.rulecheck.discover import Target, discover
from normalizer.commands.rulecheck.harness import run_case
from normalizer.commands.rulecheck.report import details
from normalizer.commands.rulecheck.rules import parse_rules
from normalizer.commands.rulecheck.suricata import bundle_rules
from tests.rulecheck.conftest import needs_suricata

TARGETS = discover([DEFAULT_CORPUS])


def test_corpus_is_complete() -> None:
    """Every capture has a manifest and every manifest a capture; the corpus stays small."""
    assert len(TARGETS) >= 6
    assert all(t.manifest is not None and t.capture.is_file() for t in TARGETS)
    size = sum(p.stat().st_size for p in DEFAULT_CORPUS.iterdir())
    assert size < 5_000_000, f"pcaps/ holds {size} bytes; keep the corpus to a few MB"


@needs_suricata
@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.capture.stem)
def test_capture_raises_its_manifest_alerts(target: Target, tmp_path: Path) -> None:
    rules = parse_rules([DEFAULT_RULES])
    bundle = bundle_rules([DEFAULT_RULES], tmp_path / "rules.rules")
    result = run_case(target, bundle, tmp_path / "work")
    assert result.status == "pass", "\n".join(details(result, rules))
