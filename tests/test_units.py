"""The systemd units pass ``systemd-analyze verify`` and the shipped examples load.

Why substituted copies: verify insists that ExecStart's binary exists, and before
scripts/install-units.sh ran it does not; pointing ExecStart at this checkout's venv checks
everything else (directives, dependencies, sandboxing syntax) on any machine with systemd.
Debian's own suricata.service, where installed, is verified with our drop-in beside it. What the
units do under a real systemd is tests/lab/test_systemd_real.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from normalizer.adapters.config import build_options, load_file

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "suricata" / "systemd"
DROPIN = UNITS / "suricata.service.d" / "normalizer.conf"
DEBIAN_SURICATA = Path("/lib/systemd/system/suricata.service")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_units_verify(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    paths = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text().replace("/usr/local/bin/", f"{bindir}/")
        (tmp_path / unit.name).write_text(text)
        paths.append(str(tmp_path / unit.name))
    if DEBIAN_SURICATA.exists():  # verify loads suricata.service.d/ beside the copy
        shutil.copy(DEBIAN_SURICATA, tmp_path / "suricata.service")
        shutil.copytree(DROPIN.parent, tmp_path / "suricata.service.d")
        paths.append(str(tmp_path / "suricata.service"))
    p = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *paths], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr + p.stdout
    assert not p.stderr.strip(), p.stderr  # unknown keys are only warnings
    assert "normalizer.service" in [Path(x).name for x in paths]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_nothing_lets_a_normalizer_failure_stop_suricata() -> None:
    """Suricata orders itself after the normalizer and wants it; nothing requires or binds it."""
    binding = ("Requires=", "RequiredBy=", "BindsTo=", "PartOf=", "Requisite=")
    for path in [*UNITS.glob("*.service"), DROPIN]:
        for line in _lines(path):
            assert not line.startswith(binding) or "suricata" not in line, (path.name, line)
    drop = _lines(DROPIN)
    assert "Wants=normalizer.service" in drop and "After=normalizer.service" in drop
    exec_starts = [ln for ln in drop if ln.startswith("ExecStart=")]
    assert exec_starts[0] == "ExecStart="  # replaces Debian's command instead of adding one
    assert "--include /etc/suricata/normalizer.yaml" in exec_starts[1]
    assert " --af-packet " in exec_starts[1] and "--pidfile /run/suricata.pid" in exec_starts[1]


def test_normalizer_unit_is_notify_with_watchdog_and_least_capabilities() -> None:
    text = (UNITS / "normalizer.service").read_text()
    for line in (
        "Type=notify",
        "Before=suricata.service",
        "WantedBy=multi-user.target",
        "Restart=on-failure",
        "CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
    ):
        assert line in text.splitlines(), line
    assert any(ln.startswith("WatchdogSec=") for ln in text.splitlines())


def test_example_config_is_valid() -> None:
    options = build_options(load_file(ROOT / "suricata" / "config.toml"), {})
    assert options.proxies == ("192.0.2.1/32",)


def test_enricher_unit_checkpoints_and_rejects() -> None:
    """Without --checkpoint a restarted follower would start the file over (duplicates)."""
    text = (UNITS / "eve-enricher.service").read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert " follow " in exec_start and "--checkpoint /var/lib/eve-enricher/" in exec_start
    assert "--reject" in exec_start and "StateDirectory=eve-enricher" in text


def test_enricher_writes_only_its_own_log_directory() -> None:
    """Debian's /var/log/suricata is root:root 0755: the enricher's user cannot write there."""
    lines = _lines(UNITS / "eve-enricher.service")
    assert "LogsDirectory=eve-enricher" in lines
    env = next(ln for ln in lines if ln.startswith("Environment=EVE_IN="))
    assert "EVE_OUT=/var/log/eve-enricher/" in env and "EVE_REJECT=/var/log/eve-enricher/" in env
    assert not any(ln.startswith("ReadWritePaths=/var/log") for ln in lines)


def test_appliance_unit_and_example_config() -> None:
    """The appliance's unit restarts always (the protected traffic waits on it) and its example
    config names balancers; header stripping stays optional there."""
    text = (UNITS / "appliance.service").read_text().splitlines()
    for line in (
        "Type=notify",
        "Restart=always",
        "CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN",
    ):
        assert line in text, line
    values = load_file(ROOT / "suricata" / "appliance.toml")
    options = build_options(values, {}, require_proxies=False)
    assert options.tunnel_peers and options.idle_timeout == 350.0 and not options.proxies
