"""``test-rules --record``: the manifest recorded for a shipped capture lists the same alerts as
its reviewed manifest (whose expectations came from the header-free baseline), passes
``test-rules``, and an existing manifest is never overwritten."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("suricata") is None, reason="needs Suricata 7")


def _run(tmp: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "normalizer", "test-rules", *argv],
        capture_output=True,
        text=True,
        cwd=tmp,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )


@pytest.mark.parametrize("name", ["haproxy-v2-ipv6", "reference-custom"])
def test_recorded_manifest_matches_the_reviewed_one(tmp_path: Path, name: str) -> None:
    shipped = yaml.safe_load((ROOT / "pcaps" / f"{name}.yaml").read_text())
    capture = tmp_path / "new.pcap"
    shutil.copy(ROOT / "pcaps" / f"{name}.pcap", capture)
    proxy = shipped["proxies"][0]
    p = _run(tmp_path, "--record", str(capture), "--proxy", proxy)
    assert p.returncode == 0, p.stderr
    recorded = yaml.safe_load((tmp_path / "new.yaml").read_text())
    assert recorded["proxies"] == [proxy]

    def key(a: dict[str, object]) -> tuple[str, ...]:
        return tuple(str(a[k]) for k in ("sid", "count", "src", "dest"))

    expected = [a for a in shipped["expected_alerts"] if a.get("count", 1) > 0]
    assert sorted(map(key, recorded["expected_alerts"])) == sorted(map(key, expected))
    assert "REVIEW" in (tmp_path / "new.yaml").read_text()
    p = _run(tmp_path, str(capture))
    assert p.returncode == 0 and "1/1 captures passed" in p.stdout, p.stdout + p.stderr
    before = (tmp_path / "new.yaml").read_bytes()
    p = _run(tmp_path, "--record", str(capture), "--proxy", proxy)
    assert p.returncode == 2 and "exists: not overwritten" in p.stderr
    assert (tmp_path / "new.yaml").read_bytes() == before


def test_record_needs_proxy(tmp_path: Path) -> None:
    p = _run(tmp_path, "--record", str(ROOT / "pcaps" / "haproxy-v1.pcap"))
    assert p.returncode == 2 and "--proxy" in p.stderr
