"""``suricata-normalizer test-rules`` through its real entry point: exit status and output.

Each test runs one capture of the corpus (copied, so manifests can be edited) to stay fast.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from normalizer.commands.rulecheck import DEFAULT_RULES
from tests.rulecheck.conftest import SAMPLE, needs_suricata

NIKTO = 'http.user_agent; content:"Nikto";'


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "normalizer.cli", "test-rules", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def _rules(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_RULES.read_text()
    assert old in text
    path = tmp_path / "local.rules"
    path.write_text(text.replace(old, new))
    return path


@needs_suricata
def test_sample_passes_and_writes_junit(sample_case: Path, tmp_path: Path) -> None:
    xml = tmp_path / "junit.xml"
    p = _run(sample_case, "--junit", xml)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"{SAMPLE}.pcap  PASS" in p.stdout and "1/1 captures passed" in p.stdout
    assert p.stderr == ""
    case = ET.parse(xml).getroot().find("testcase")
    assert case is not None and case.get("name") == f"{SAMPLE}.pcap" and list(case) == []


@needs_suricata
def test_broken_rule_reports_the_missing_sid(sample_case: Path, tmp_path: Path) -> None:
    rules = _rules(tmp_path, NIKTO, 'http.user_agent; content:"Nikto-wrong";')
    p = _run(sample_case, "--rules", rules)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"{SAMPLE}.pcap  FAIL" in p.stdout
    assert "missing      9100010 x1   198.51.100.10 -> 198.51.100.1  LAB Nikto" in p.stdout
    assert "unexpected" not in p.stdout.split("\n", 2)[2]  # nothing else changed


def test_syntax_error_is_reported_with_its_line(sample_case: Path, tmp_path: Path) -> None:
    rules = _rules(tmp_path, NIKTO, 'http.user_agent; content:"Nikto"')  # ";" missing
    xml = tmp_path / "junit.xml"
    p = _run(sample_case, "--rules", rules, "--junit", xml)
    assert p.returncode == 2
    assert p.stdout == ""
    assert f"rule error: {rules}:13: idstools: " in p.stderr
    assert "Traceback" not in p.stderr
    assert ET.parse(xml).getroot().get("errors") == "1"


@needs_suricata
def test_suricata_rule_load_error_is_reported_with_its_line(
    sample_case: Path, tmp_path: Path
) -> None:
    rules = _rules(tmp_path, NIKTO, 'http.user_agent; nikto_content:"Nikto";')
    p = _run(sample_case, "--rules", rules)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"rule error: {rules}:13: suricata: unknown rule keyword 'nikto_content'" in p.stderr


@needs_suricata
def test_enrichment_names_the_attacker_when_addresses_are_kept(sample_case: Path) -> None:
    manifest = sample_case / f"{SAMPLE}.yaml"
    manifest.write_text(manifest.read_text() + "restore_addresses: false\n")
    p = _run(sample_case / f"{SAMPLE}.pcap")
    assert p.returncode == 0, p.stdout + p.stderr


@needs_suricata  # manifests are read per capture, after Suricata is known to be there
def test_manifest_errors_exit_2_with_file_and_key(sample_case: Path) -> None:
    manifest = sample_case / f"{SAMPLE}.yaml"
    manifest.write_text(manifest.read_text().replace("proxies:", "proxy:"))
    (sample_case / "orphan.pcap").write_bytes(b"")
    p = _run(sample_case)
    assert p.returncode == 2
    assert f"{manifest}: proxy: unknown key" in p.stdout
    assert "orphan.pcap: no manifest (create orphan.yaml)" in p.stdout
    assert "Traceback" not in p.stderr


def test_missing_inputs_are_usage_errors(sample_case: Path, tmp_path: Path) -> None:
    for args in (
        [tmp_path / "nope.pcap"],
        [sample_case, "--rules", tmp_path / "nope.rules"],
        [sample_case, "--suricata-config", tmp_path / "nope.yaml"],
    ):
        p = _run(*args)
        assert p.returncode == 2, args
        assert "nope." in p.stderr and "Traceback" not in p.stderr


@needs_suricata
def test_explicit_suricata_config_and_kept_outputs(sample_case: Path, tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    p = _run(sample_case, "--suricata-config", "/etc/suricata/suricata.yaml", "--keep", keep)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (keep / f"01-{SAMPLE}" / "normalized.pcap").is_file()
    assert (keep / f"01-{SAMPLE}" / "suricata" / "eve.json").is_file()


@needs_suricata
def test_offloaded_capture_passes_and_with_checksums_kept_says_why_alerts_vanish(
    tmp_path: Path,
) -> None:
    """pcaps/host-offload: recorded on the sending host, every TCP checksum partial."""
    corpus = Path(__file__).resolve().parents[2] / "pcaps"
    for name in ("host-offload.pcap", "host-offload.yaml"):
        (tmp_path / name).write_bytes((corpus / name).read_bytes())
    p = _run(tmp_path / "host-offload.pcap")
    assert p.returncode == 0, p.stdout + p.stderr
    manifest = tmp_path / "host-offload.yaml"
    manifest.write_text(manifest.read_text() + "options: {checksums: keep}\n")
    p = _run(tmp_path / "host-offload.pcap")
    assert p.returncode == 1, p.stdout + p.stderr
    row = next(line for line in p.stdout.splitlines() if line.startswith("host-offload.pcap"))
    assert row.split()[1:6] == ["FAIL", "20", "0", "20", "0"]
    assert int(row.split()[6]) > 100  # packets Suricata dropped for their checksum
    assert "hint: Suricata dropped" in p.stdout
    assert "recorded on the sending host with offloads on" in p.stdout
