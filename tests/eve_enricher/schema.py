"""Suricata's own EVE schema plus the two objects the enricher adds.

The extension is docs/eve-enrichment.schema.json. It extends Suricata's schema and never
replaces a definition of it: a property or ``$defs`` entry that Suricata defines already (its
``tunnel`` object, say) is an error here, so Suricata's keys are validated by Suricata's rules.

The schema comes from Suricata's source (etc/schema.json, first shipped with 8.0; 7.0.10's
tarball has none), fetched by scripts/fetch-eve-schema.sh during setup. Suricata 7.0.10's
non-stats events validate against it cleanly; its stats counters have drifted since, which is
why callers compare an enriched event's errors with those of Suricata's original event.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
SURICATA_SCHEMA = ROOT / ".cache" / "suricata-eve-schema.json"
EXTENSION = ROOT / "docs" / "eve-enrichment.schema.json"


@cache
def validator() -> Any:
    if not SURICATA_SCHEMA.is_file():
        pytest.skip(f"{SURICATA_SCHEMA} missing: scripts/fetch-eve-schema.sh could not fetch it")
    schema = json.loads(SURICATA_SCHEMA.read_text())
    schema["properties"] = extended(schema["properties"], extension()["properties"])
    schema["$defs"] = extended(schema.get("$defs", {}), extension().get("$defs", {}))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def extension() -> dict[str, Any]:
    ext: dict[str, Any] = json.loads(EXTENSION.read_text())
    return ext


def extended(ours: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """``ours`` plus ``added``, refusing any key ``ours`` has (that would replace Suricata's)."""
    clash = sorted(set(ours) & set(added))
    assert not clash, f"the extension redefines Suricata's {clash}"
    return {**ours, **added}


def suricata_properties() -> set[str]:
    """The top-level keys Suricata's schema defines."""
    if not SURICATA_SCHEMA.is_file():
        pytest.skip(f"{SURICATA_SCHEMA} missing: scripts/fetch-eve-schema.sh could not fetch it")
    return set(json.loads(SURICATA_SCHEMA.read_text())["properties"])


def schema_errors(event: dict[str, Any]) -> set[tuple[str, str]]:
    """(path, message) of every schema violation of ``event``."""
    return {
        ("/".join(map(str, e.absolute_path)), e.message) for e in validator().iter_errors(event)
    }
