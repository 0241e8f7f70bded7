"""What a detection engineer meets at the command line: being told why nothing was stripped,
pipes, pcapng output, the flows report, check-config, --version (subprocesses, as run)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PCAPS = ROOT / "pcaps"
TLV = PCAPS / "haproxy-v2-tlv.pcap"


def _run(
    tmp: Path, *argv: str, stdin: bytes = b"", umask: int | None = None
) -> subprocess.CompletedProcess[bytes]:
    def pre() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run(
        [sys.executable, "-m", "normalizer", *argv],
        input=stdin,
        capture_output=True,
        cwd=tmp,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        preexec_fn=pre,
    )


def _rewrite(tmp: Path, pcap: Path, *flags: str) -> tuple[str, dict[str, int]]:
    p = _run(tmp, "rewrite", str(pcap), "-o", "out.pcap", "--stats-json", "s.json", *flags)
    assert p.returncode == 0, p.stderr
    return p.stderr.decode(), json.loads((tmp / "s.json").read_text())


def test_wrong_proxy_is_told_the_right_one(tmp_path: Path) -> None:
    err, _ = _rewrite(tmp_path, TLV, "--proxy", "10.1.2.3/32")
    assert "7 connections from 192.0.2.1 start with a proxy header" in err
    assert "try --proxy 192.0.2.1" in err


def test_excluded_kind_is_counted_as_excluded(tmp_path: Path) -> None:
    err, stats = _rewrite(tmp_path, TLV, "--proxy", "192.0.2.1/32", "--header", "proxy-v1")
    assert stats["header_malformed"] == 0 and stats["header_excluded"] == 7
    assert "a kind --header excludes (valid, not malformed): try --header proxy-v2" in err


def test_header_free_capture_says_no_header(tmp_path: Path) -> None:
    base = PCAPS / "haproxy-v2-tlv.baseline.pcap"
    err, stats = _rewrite(tmp_path, base, "--proxy", "192.0.2.1/32")
    assert stats["header_malformed"] == 0 and stats["header_none"] > 0
    assert "start with no header at all" in err


def test_tunnels_without_decap_are_named(tmp_path: Path) -> None:
    err, _ = _rewrite(tmp_path, PCAPS / "vxlan-haproxy-v2.pcap", "--proxy", "192.0.2.1/32")
    assert "UDP datagrams to VXLAN/GENEVE ports were not opened: try --decap" in err


def test_no_advice_when_headers_were_stripped(tmp_path: Path) -> None:
    err, _ = _rewrite(tmp_path, TLV, "--proxy", "192.0.2.1/32")
    assert "no header stripped" not in err


def test_stdin_to_stdout_equals_files(tmp_path: Path) -> None:
    _rewrite(tmp_path, TLV, "--proxy", "192.0.2.1/32")
    p = _run(tmp_path, "rewrite", "-", "-o", "-", "--proxy", "192.0.2.1/32", stdin=TLV.read_bytes())
    assert p.returncode == 0, p.stderr
    assert p.stdout == (tmp_path / "out.pcap").read_bytes()
    assert not (tmp_path / "-").exists()
    p = _run(tmp_path, "rewrite", "-", "-o", "x", "--proxy", "192.0.2.1/32", "--flows-json", "f")
    assert p.returncode == 2 and b"--flows-json" in p.stderr


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")
def test_pcapng_by_extension_or_format_reads_like_the_pcap(tmp_path: Path) -> None:
    """tcpdump, an independent reader, sees the same packets in the pcapng output; files are
    created with the umask."""
    _rewrite(tmp_path, TLV, "--proxy", "192.0.2.1/32")
    args = ("rewrite", str(TLV), "--proxy", "192.0.2.1/32", "-q")
    assert _run(tmp_path, *args, "-o", "out.pcapng", umask=0o027).returncode == 0
    assert _run(tmp_path, *args, "-o", "forced", "--format", "pcapng").returncode == 0
    assert stat.S_IMODE((tmp_path / "out.pcapng").stat().st_mode) == 0o640

    def dump(name: str) -> bytes:
        argv = ["tcpdump", "-r", str(tmp_path / name), "-nn", "-tt", "-x"]
        return subprocess.run(argv, capture_output=True, check=True, timeout=60).stdout

    assert dump("out.pcapng") == dump("out.pcap") == dump("forced")
    assert (tmp_path / "out.pcapng").read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"


def test_flows_table_json_and_flows_json_agree(tmp_path: Path) -> None:
    p = _run(tmp_path, "flows", str(TLV), "--proxy", "192.0.2.1/32", "--json")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    assert len(rows) == 7 and {r["outcome"] for r in rows} == {"stripped"}
    assert all(r["real_client"].startswith("198.51.100.10:") for r in rows)
    _rewrite(tmp_path, TLV, "--proxy", "192.0.2.1/32", "--flows-json", "flows.json")
    assert [json.loads(x) for x in (tmp_path / "flows.json").read_text().splitlines()] == rows
    table = _run(tmp_path, "flows", str(TLV), "--proxy", "10.9.9.9/32").stdout.decode()
    assert "try --proxy 192.0.2.1" in table and table.splitlines()[0].startswith("start")
    assert "7 connections: 7 untrusted" in table


def test_check_config_and_version(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[normalizer]\nproxies = ["192.0.2.1/32"]\n')
    p = _run(tmp_path, "check-config", str(good))
    assert p.returncode == 0 and b"ok: 1 trusted proxies (192.0.2.1/32)" in p.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[normalizer]\nproxies = ["192.0.2.1/32"]\nmax_flows = "many"\n')
    p = _run(tmp_path, "check-config", str(bad))
    assert p.returncode == 2 and b"max_flows" in p.stderr
    p = _run(tmp_path, "check-config", str(ROOT / "suricata" / "config.toml"))
    assert p.returncode == 0, p.stderr
    p = _run(tmp_path, "--version")
    assert p.returncode == 0 and p.stdout.startswith(b"suricata-normalizer ")
