"""Suricata's own EVE schema plus the two objects the enricher adds.

The extension is docs/eve-enrichment.schema.json.

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
    schema["properties"].update(json.loads(EXTENSION.read_text())["properties"])
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(event: dict[str, Any]) -> set[tuple[str, str]]:
    """(path, message) of every schema violation of ``event``."""
    return {
        ("/".join(map(str, e.absolute_path)), e.message) for e in validator().iter_errors(event)
    }
