"""Shared fixtures: whether real Suricata can run, and a scratch copy of one corpus capture.

Why skip instead of fail without Suricata: the unit tests of manifests, rules, comparison and
JUnit output need nothing but Python and must run everywhere; the corpus needs the real engine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from normalizer.commands.rulecheck import DEFAULT_CORPUS

needs_suricata = pytest.mark.skipif(
    shutil.which("suricata") is None, reason="suricata not installed (run scripts/setup.sh)"
)
SAMPLE = "haproxy-v1"


@pytest.fixture
def sample_case(tmp_path: Path) -> Path:
    """A directory holding one corpus capture and its manifest, free to edit."""
    case = tmp_path / "case"
    case.mkdir()
    for suffix in (".pcap", ".yaml"):
        shutil.copy(DEFAULT_CORPUS / f"{SAMPLE}{suffix}", case / f"{SAMPLE}{suffix}")
    return case
