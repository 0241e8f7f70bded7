"""``live --workers``: option and config validation, the decap refusal, summing (no devices).

The processes, fanout group and multi-queue tap are tested for real in
tests/lab/test_host_live_workers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from normalizer.adapters.config import ConfigError, build_options
from normalizer.cli import main
from normalizer.commands.live import LiveSettings, live_summary
from normalizer.commands.live_workers import Supervisor, combine, fanout_group_for, merge_sources
from normalizer.commands.rewrite import summary
from normalizer.core.counters import Counters

PROXY = {"proxies": ["192.0.2.1/32"]}
DECAP = {**PROXY, "decapsulate": True, "tunnel_peers": ["203.0.113.0/24"]}


def test_one_worker_is_the_default() -> None:
    assert build_options(PROXY, {}).workers == 1


@pytest.mark.parametrize("value", [0, -1, 65, "2", 2.0, True])
def test_a_bad_worker_count_names_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^normalizer\.workers: expected a number of worker"):
        build_options({**PROXY, "workers": value}, {})


def test_the_command_line_wins_and_is_checked_like_the_file() -> None:
    assert build_options({**PROXY, "workers": 4}, {"workers": 2}).workers == 2
    with pytest.raises(ConfigError, match=r"normalizer\.workers"):
        build_options(PROXY, {"workers": 0})


def test_several_workers_with_decapsulation_are_refused_without_the_opt_in() -> None:
    assert build_options(DECAP, {"workers": 1}).workers == 1  # one worker: no question
    with pytest.raises(ConfigError, match=r"^normalizer\.workers: 2 workers with decap") as e:
        build_options(DECAP, {"workers": 2})
    assert "--workers-by-outer-header" in str(e.value)
    opted = build_options({**DECAP, "workers_by_outer_header": True}, {"workers": 2})
    assert (opted.workers, opted.workers_by_outer_header, opted.decapsulate) == (2, True, True)


def test_the_cli_refuses_decap_with_workers_before_touching_a_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No such interface: had the check not come first, this would be a capture error (1).
    argv = ["live", "--iface", "no-such-if0", "--proxy", "192.0.2.1/32", "--decap"]
    argv += ["--tunnel-peer", "203.0.113.0/24", "--workers", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "normalizer.workers: 2 workers with decapsulation" in err
    assert "--workers-by-outer-header" in err


def test_the_cli_reports_a_bad_worker_count_as_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main(["live", "--iface", "no-such-if0", "--proxy", "192.0.2.1/32", "--workers", "0"]) == 2
    )
    assert "normalizer.workers: expected a number of worker processes 1..64" in (
        capsys.readouterr().err
    )


def test_the_config_file_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[normalizer]\nproxies = ["192.0.2.1/32"]\nworkers = "two"\n')
    assert main(["check-config", str(cfg)]) == 2
    assert "normalizer.workers: expected a number" in capsys.readouterr().err


def test_counters_are_summed_except_maxima_and_the_promiscuous_flag() -> None:
    a = {
        "packets_in": 10,
        "headers_stripped": {"proxy-v2": 3},
        "capture_max_frame": 9000,
        "cache_write_seconds": 0.25,
        "cache_write_seconds_max": 0.5,
        "capture_promisc": 1,
    }
    b = {
        "packets_in": 5,
        "headers_stripped": {"proxy-v2": 1, "proxy-v1": 2},
        "capture_max_frame": 1514,
        "cache_write_seconds": 0.5,
        "cache_write_seconds_max": 0.125,
        "capture_promisc": 0,
    }
    assert combine([a, b]) == {
        "packets_in": 15,
        "headers_stripped": {"proxy-v2": 4, "proxy-v1": 2},
        "capture_max_frame": 9000,
        "cache_write_seconds": 0.75,
        "cache_write_seconds_max": 0.5,
        "capture_promisc": 0,  # one worker without the membership: the capture is not promisc
    }
    assert a["headers_stripped"] == {"proxy-v2": 3}  # the parts are not modified


def test_untrusted_sources_of_all_workers_are_merged() -> None:
    got = merge_sources([[("10.0.0.1", 3), ("10.0.0.2", 1)], [("10.0.0.2", 4), ("10.0.0.3", 2)]])
    assert got == [("10.0.0.2", 5), ("10.0.0.1", 3), ("10.0.0.3", 2)]


def test_the_fanout_group_id_fits_the_kernels_16_bits() -> None:
    assert fanout_group_for(0x12345) == 0x2345


def test_before_any_report_the_sum_names_every_counter_the_summary_prints(tmp_path: Path) -> None:
    """A stop during the start (no worker reported yet) still ends with a summary."""
    sup = Supervisor(
        LiveSettings(iface="no-such-if0"), lambda: build_options(PROXY, {"workers": 2}), 2
    )
    c = sup.counters()
    assert (c["packets_in"], c["headers_stripped"], c["workers"], c["workers_alive"]) == (
        0,
        {},
        2,
        0,
    )
    assert "capture: 0 packets" in live_summary(c)
    assert "0 in" in summary(Counters(**{k: c[k] for k in Counters.__dataclass_fields__}))
    assert "no frame at all was captured on no-such-if0" in sup.silence()
