"""``test-rules``: replay recorded proxy captures through the normalizer and real Suricata.

Why a package of its own: detection engineers use it without touching the rewriting core, and
the same code is the project's regression suite (``tests/rulecheck``). One module per concept:
``manifest`` (what a capture must raise), ``discover`` (which captures to check), ``rules``
(idstools parsing), ``suricata`` (running it), ``compare``, ``report``/``junit`` (output),
``harness`` (one capture end to end) and ``command`` (the subcommand).
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS = PROJECT_ROOT / "pcaps"
DEFAULT_RULES = PROJECT_ROOT / "suricata" / "rules" / "decoy.rules"
