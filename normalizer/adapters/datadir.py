"""Where the files the commands default to live: rules, the capture corpus, systemd units,
Suricata fragments, the EVE schema extension, the Elasticsearch pipeline, man pages.

Why a lookup rather than a path beside the code: in a source checkout they sit at the top of
the repository (``suricata/``, ``pcaps/``, ``docs/``); an installed wheel carries them as data
files under ``<prefix>/share/suricata-normalizer/`` (a venv's, the system's, or the user's
``~/.local``), where no path relative to the package points. The first of these that exists
wins:

1. ``$SURICATA_NORMALIZER_DATA`` (an operator's own copy);
2. the source checkout this package was imported from;
3. ``share/suricata-normalizer`` under the running interpreter's data prefix, then under the
   user scheme's (``pip install --user``).

The layout is the same everywhere: ``rules/decoy.rules``, ``pcaps/``, ``systemd/``,
``schema/eve-enrichment.schema.json``, ``elasticsearch/``, ``man/``, ``completion/``.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Mapping
from pathlib import Path

ENV = "SURICATA_NORMALIZER_DATA"
NAME = "suricata-normalizer"
_SOURCE = Path(__file__).resolve().parents[2]
# the installed layout's name -> where it is in a source checkout
_IN_SOURCE = {
    "rules": "suricata/rules",
    "pcaps": "pcaps",
    "systemd": "suricata/systemd",
    "elasticsearch": "suricata/elasticsearch",
    "schema": "docs",
    "man": "docs/man",
    "completion": "docs/completion",
    "suricata": "suricata",
}


def _installed_roots() -> list[Path]:
    roots = [Path(sysconfig.get_path("data")) / "share" / NAME]
    user = f"{os.name}_user"
    if user in sysconfig.get_scheme_names():
        roots.append(Path(sysconfig.get_path("data", user)) / "share" / NAME)
    return roots


def find(part: str, env: Mapping[str, str] = os.environ) -> Path:
    """The directory ``part`` (a name of the installed layout) from the first root that has
    it; the installed path under the interpreter's prefix if none does (so an error names
    where it was expected)."""
    override = env.get(ENV)
    if override:
        return Path(override) / part
    source = _SOURCE / _IN_SOURCE.get(part, part)
    if (_SOURCE / "pyproject.toml").is_file() and source.exists():
        return source
    roots = _installed_roots()
    for root in roots:
        if (root / part).exists():
            return root / part
    return roots[0] / part


def describe(env: Mapping[str, str] = os.environ) -> str:
    """Where data is looked up, for ``--help`` texts and errors."""
    return f"${ENV}, the source checkout, or {_installed_roots()[0]}"


__all__ = ["ENV", "describe", "find"]
