"""The built wheel, installed into a fresh venv outside the repository, runs every command from
/tmp: what they default to (rules, the capture corpus, units, schema, man pages, completions)
comes with it and is found through the data directory (normalizer/adapters/datadir.py).

Needs pip and the package index (dependencies are installed from it): marked ``network``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the environment without the checkout on PYTHONPATH (its build's egg-info would make pip
# think the package is installed already)
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
pytestmark = pytest.mark.network
needs_suricata = pytest.mark.skipif(shutil.which("suricata") is None, reason="needs Suricata 7")


class Installed:
    def __init__(self, venv: Path, work: Path) -> None:
        self.venv, self.work = venv, work
        self.data = venv / "share" / "suricata-normalizer"

    def run(self, *argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{self.venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.work)}
        exe = str(self.venv / "bin" / argv[0])
        p = subprocess.run(
            [exe, *argv[1:]], cwd=self.work, env=env, capture_output=True, text=True, timeout=300
        )
        if ok:
            assert p.returncode == 0, f"{argv}: {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    with tempfile.TemporaryDirectory(prefix="snwheel-", dir="/tmp") as tmp:
        base = Path(tmp)
        wheels = base / "wheels"
        pip = [sys.executable, "-m", "pip"]
        build = subprocess.run(
            [*pip, "wheel", str(ROOT), "--no-deps", "-w", str(wheels), "-q"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if build.returncode != 0:
            pytest.skip(f"cannot build the wheel (pip/index unreachable?): {build.stderr[-400:]}")
        (wheel,) = wheels.glob("*.whl")
        venv = base / "venv"
        python = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120, env=CLEAN_ENV)
        inst = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
            capture_output=True,
            text=True,
            timeout=600,
            env=CLEAN_ENV,
        )
        if inst.returncode != 0:
            pytest.skip(f"cannot install the wheel's dependencies: {inst.stderr[-400:]}")
        work = base / "work"
        work.mkdir()
        yield Installed(venv, work)


def test_data_directory_and_docs_are_installed(installed: Installed) -> None:
    d = installed.data
    assert (d / "rules" / "decoy.rules").is_file()
    assert len(list((d / "pcaps").glob("*.pcap"))) >= 10
    assert (d / "systemd" / "eve-enricher.service").is_file()
    assert (d / "schema" / "eve-enrichment.schema.json").is_file()
    assert (d / "elasticsearch" / "eve-enricher-ecs.json").is_file()
    assert (installed.venv / "share" / "man" / "man1" / "suricata-normalizer.1").is_file()
    assert (d / "completion" / "eve-enricher.bash").is_file()
    # nothing of the repository is importable: the package runs from site-packages
    p = installed.run("python", "-c", "import normalizer, sys; print(normalizer.__file__)")
    assert "site-packages" in p.stdout and str(ROOT) not in p.stdout


def test_every_command_answers_help(installed: Installed) -> None:
    for prog, module in (("suricata-normalizer", "normalizer"), ("eve-enricher", "eve_enricher")):
        top = installed.run(prog, "--help").stdout
        assert installed.run("python", "-m", module, "--help").stdout == top
        groups = [g.split("}", 1)[0] for g in top.split("{")[1:]]
        subs = max(groups, key=len).split(",")  # the subcommands (not --log-format's choices)
        assert len(subs) >= 2, subs
        for sub in subs:
            assert installed.run(prog, sub, "--help").stdout.startswith("usage:")
    p = installed.run("eve-enricher", "--version")
    assert p.stdout.strip() == "eve-enricher 0.1.0"
    p = installed.run("suricata-normalizer", "--version")
    # the engine the wheel built: compiled where a compiler was found (it was here), else python
    assert p.stdout.strip() in (
        "suricata-normalizer 0.1.0 (compiled engine)",
        "suricata-normalizer 0.1.0 (python engine)",
    )
    config = installed.data / "suricata" / "config.toml"
    assert "ok:" in installed.run("suricata-normalizer", "check-config", str(config)).stderr
    bash = installed.data / "completion" / "suricata-normalizer.bash"
    p = subprocess.run(
        ["bash", "-c", f"source {bash} && complete -p suricata-normalizer"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "suricata-normalizer" in p.stdout


def test_quick_start_without_root(installed: Installed) -> None:
    """README's quick start: rewrite a shipped capture with the wrong proxy, be told the
    right one, rewrite again, read the flows report."""
    pcap = str(installed.data / "pcaps" / "haproxy-v2-tlv.pcap")
    p = installed.run("suricata-normalizer", "rewrite", pcap, "-o", "a.pcap", "--proxy", "10.0.0.1")
    assert "try --proxy 192.0.2.1" in p.stderr
    installed.run("suricata-normalizer", "rewrite", pcap, "-o", "b.pcapng", "--proxy", "192.0.2.1")
    assert (installed.work / "b.pcapng").read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    p = installed.run("suricata-normalizer", "flows", pcap, "--proxy", "192.0.2.1", "--json")
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    assert len(rows) == 7 and all(r["outcome"] == "stripped" for r in rows)


@needs_suricata
def test_rewrite_suricata_enrich_and_test_rules(installed: Installed) -> None:
    pcap = installed.data / "pcaps" / "haproxy-v2-tlv.pcap"
    installed.run(
        "suricata-normalizer", "rewrite", str(pcap), "-o", "out.pcap", "--proxy", "192.0.2.1/32",
        "--cache", "conn.db",
    )  # fmt: skip
    rules = installed.data / "rules" / "decoy.rules"
    subprocess.run(
        ["suricata", "-r", "out.pcap", "-S", str(rules), "-l", ".", "--runmode", "single"],
        cwd=installed.work, capture_output=True, check=True, timeout=300,
    )  # fmt: skip
    installed.run("eve-enricher", "enrich", "eve.json", "--cache", "conn.db", "-o", "enr.json")
    alerts = [
        json.loads(x)
        for x in (installed.work / "enr.json").read_text().splitlines()
        if '"event_type":"alert"' in x
    ]
    assert len(alerts) == 10 and all(a["src_ip"] == "198.51.100.10" for a in alerts)
    # the default rules and corpus, from the data directory
    p = installed.run("suricata-normalizer", "test-rules")
    assert "haproxy-v2-tlv" in p.stdout + p.stderr
    assert os.listdir(installed.work)  # everything was written here, in /tmp
