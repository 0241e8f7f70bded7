"""``test-rules``: replay recorded proxy captures through the normalizer and real Suricata.

Why a package of its own: detection engineers use it without touching the rewriting core, and
the same code is the project's regression suite (``tests/rulecheck``). One module per concept:
``manifest`` (what a capture must raise), ``discover`` (which captures to check), ``rules``
(idstools parsing), ``suricata`` (running it), ``compare``, ``report``/``junit`` (output),
``harness`` (one capture end to end) and ``command`` (the subcommand).
"""

from __future__ import annotations

from normalizer.adapters import datadir

# the source checkout's, or the installed data directory's (normalizer/adapters/datadir.py)
DEFAULT_CORPUS = datadir.find("pcaps")
DEFAULT_RULES = datadir.find("rules") / "decoy.rules"
