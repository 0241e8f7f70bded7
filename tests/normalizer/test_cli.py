"""The rewrite command end to end on files: exit codes, messages, config precedence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from normalizer.adapters.pcap_io import CaptureReader, PcapWriter
from normalizer.cli import main
from normalizer.proxy_headers import proxy_v1
from tests.normalizer.packets import Conv

REQ = b"GET / HTTP/1.1\r\n\r\n"


def _capture(path: Path) -> list[bytes]:
    c = Conv()
    hdr = proxy_v1.build("203.0.113.7", "198.51.100.1", 51000, 80)
    frames = [*c.handshake(), c.seg(True, 0, 0, hdr + REQ, "PA")]
    with path.open("wb") as fh:
        w = PcapWriter(fh, 1)
        for i, f in enumerate(frames):
            w.write(i, f)
    return frames


def _frames(path: Path) -> list[bytes]:
    with path.open("rb") as fh:
        return [f for _t, f, _o in CaptureReader(fh)]


def test_rewrite_strips_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst, stats = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "s.json"
    _capture(src)
    assert (
        main(
            [
                "rewrite",
                str(src),
                "-o",
                str(dst),
                "--proxy",
                "192.0.2.1",
                "--stats-json",
                str(stats),
            ]
        )
        == 0
    )
    out = _frames(dst)
    assert out[-1].endswith(REQ) and b"PROXY" not in out[-1]
    assert "headers stripped: proxy-v1 1" in capsys.readouterr().err
    assert json.loads(stats.read_text())["headers_stripped"] == {"proxy-v1": 1}


def test_config_file_and_flag_override(tmp_path: Path) -> None:
    src, dst, cfg = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "c.toml"
    frames = _capture(src)
    cfg.write_text('[normalizer]\nproxies = ["192.0.2.1/32"]\nheader_kinds = ["proxy-v2"]\n')
    assert main(["rewrite", str(src), "-o", str(dst), "--config", str(cfg), "-q"]) == 0
    assert _frames(dst) == frames  # v1 not accepted: flow left untouched
    assert (
        main(
            [
                "rewrite",
                str(src),
                "-o",
                str(dst),
                "--config",
                str(cfg),
                "-q",
                "--header",
                "proxy-v1",
            ]
        )
        == 0
    )
    assert _frames(dst) != frames


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('proxies = ["10.0.0.300"]', "normalizer.proxies"),
        ('proxies = ["10.0.0.1"]\nmax_flows = -1', "normalizer.max_flows"),
        ('proxies = ["10.0.0.1"]\nmidstream = "maybe"', "normalizer.midstream"),
        ('proxies = ["10.0.0.1"]\ncolour = 1', "normalizer.colour"),
        ('proxies = ["10.0.0.1"]\ncustom_magic = "abcd"', "normalizer.custom_magic"),
        ("max_flows = 5", "normalizer.proxies"),
        # Durations that have no integer nanoseconds, or are typos (issue 11, class 7).
        ('proxies = ["10.0.0.1"]\nidle_timeout = nan', "normalizer.idle_timeout"),
        ('proxies = ["10.0.0.1"]\nidle_timeout = inf', "normalizer.idle_timeout"),
        ('proxies = ["10.0.0.1"]\npending_timeout = 1e300', "normalizer.pending_timeout"),
        ('proxies = ["10.0.0.1"]\nclosed_timeout = -inf', "normalizer.closed_timeout"),
        ('proxies = ["10.0.0.1"]\ncache_retention = nan', "normalizer.cache_retention"),
        ('proxies = ["10.0.0.1"]\ncache_retention = 1e-300', "normalizer.cache_retention"),
        ('proxies = ["10.0.0.1"]\nidle_timeout = 9223372036854775807', "normalizer.idle_timeout"),
        ('proxies = ["10.0.0.1"]\nmax_flows = ' + "9" * 5000, "not valid TOML"),
        ("proxies = " + "[" * 100_000, "not valid TOML"),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, key: str
) -> None:
    src, cfg = tmp_path / "in.pcap", tmp_path / "c.toml"
    _capture(src)
    cfg.write_text("[normalizer]\n" + toml + "\n")
    assert main(["rewrite", str(src), "-o", str(tmp_path / "o.pcap"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err


def test_io_errors_exit_1_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "rewrite",
                str(tmp_path / "missing.pcap"),
                "-o",
                str(tmp_path / "o.pcap"),
                "--proxy",
                "192.0.2.1",
            ]
        )
        == 1
    )
    assert "No such file" in capsys.readouterr().err
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"garbage that is not a capture")
    assert main(["rewrite", str(bad), "-o", str(tmp_path / "o.pcap"), "--proxy", "192.0.2.1"]) == 1
    assert "not a pcap" in capsys.readouterr().err
    assert not (tmp_path / "o.pcap").exists()


def test_truncated_input_keeps_complete_packets(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    frames = _capture(src)
    src.write_bytes(src.read_bytes()[:-5])
    assert main(["rewrite", str(src), "-o", str(dst), "--proxy", "192.0.2.1", "-q"]) == 1
    assert _frames(dst) == frames[:3]  # the held handshake is released, untouched


def test_unwritable_output(tmp_path: Path) -> None:
    src = tmp_path / "in.pcap"
    _capture(src)
    assert (
        main(
            ["rewrite", str(src), "-o", str(tmp_path / "nodir" / "o.pcap"), "--proxy", "192.0.2.1"]
        )
        == 1
    )


def test_checksums_flag_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The offloaded corpus capture: auto completes, keep leaves, a bad value names the key."""
    src = Path(__file__).resolve().parents[2] / "pcaps" / "host-offload.pcap"
    out, stats = tmp_path / "o.pcap", tmp_path / "s.json"
    base = ["rewrite", str(src), "-o", str(out), "--proxy", "192.0.2.1/32", "-q"]
    assert main([*base, "--stats-json", str(stats)]) == 0
    auto = json.loads(stats.read_text())
    assert auto["checksum_completed"] > 100 and auto["checksum_kept"] == 6  # ARP, not TCP
    assert main([*base, "--checksums", "keep", "--stats-json", str(stats)]) == 0
    assert json.loads(stats.read_text())["checksum_completed"] == 0
    cfg = tmp_path / "c.toml"
    cfg.write_text('[normalizer]\nproxies = ["192.0.2.1/32"]\nchecksums = "sometimes"\n')
    assert main(["rewrite", str(src), "-o", str(out), "--config", str(cfg)]) == 2
    assert "normalizer.checksums: expected one of keep, auto, fix" in capsys.readouterr().err


def test_a_config_file_that_is_not_utf8_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, cfg = tmp_path / "in.pcap", tmp_path / "c.toml"
    _capture(src)
    cfg.write_bytes(b'[normalizer]\nproxies = ["192.0.2.1"]\n# caf\xe9\n')
    assert main(["rewrite", str(src), "-o", str(tmp_path / "o.pcap"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "not UTF-8 (byte 0xe9 at offset 42)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300"])
def test_a_duration_flag_without_integer_nanoseconds_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    src = tmp_path / "in.pcap"
    _capture(src)
    argv = ["rewrite", str(src), "-o", str(tmp_path / "o.pcap"), "--proxy", "192.0.2.1"]
    assert main([*argv, f"--cache-retention={value}"]) == 2
    assert "normalizer.cache_retention" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--metrics-port", "70000"),
        ("--metrics-port", "0"),
        ("--metrics-port", "-1"),
        ("--tap-mtu", "10"),
        ("--ring-mb", "0"),
        ("--fanout-group", "65536"),
        ("--metrics-port", "port"),
    ],
)
def test_live_flags_out_of_range_are_usage_errors_naming_the_flag(
    capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    """Refused before any device is touched: exit 2, the flag named, no traceback."""
    with pytest.raises(SystemExit) as info:
        main(["live", "--iface", "nonexistent0", "--proxy", "192.0.2.1", f"{flag}={value}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err
