"""Fixtures shared by the enricher tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.eve_enricher.helpers import record, v2_header


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A connection cache with one proxied connection (helpers.PROXY -> BACKEND, PROXY v2)."""
    path = tmp_path / "conn.db"
    record(path, v2_header())
    return path
