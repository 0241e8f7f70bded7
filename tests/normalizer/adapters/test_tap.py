"""A tap the process may not create fails with a message that names the device and its needs.

Why: under a sandboxed unit the bare strerror ("Operation not permitted", "Permission denied")
said nothing about which of the service's resources was refused (found under a real systemd,
tests/lab/test_systemd_real.py). Root with CAP_NET_ADMIN dropped stands in for such a unit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import sys
from normalizer.adapters.tap import Tap
try:
    Tap("snltapperm0")
except OSError as exc:
    print(exc.strerror)
    sys.exit(3)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (tap devices)")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv missing")
@pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun")
def test_tap_without_cap_net_admin_names_the_tap_and_what_it_needs() -> None:
    p = subprocess.run(
        ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", sys.executable]
        + ["-c", SCRIPT],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert p.returncode == 3, p.stdout + p.stderr
    assert "tap snltapperm0" in p.stdout and "CAP_NET_ADMIN" in p.stdout, p.stdout
