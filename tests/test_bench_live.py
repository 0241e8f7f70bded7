"""The live benchmark's verdict: which step counts as "the highest rate with zero drops".

A clean fast step after a lossy slower one must not be reported as a rate the capture holds
(on a loaded machine drops come and go); tap write errors count as losses too.
"""

from __future__ import annotations

from typing import Any

from bench.live import best, report


def _row(mb: int | str, pps: int, drops: int = 0, tap_errors: int = 0) -> dict[str, Any]:
    return {
        "offered_MBps": mb,
        "pps": pps,
        "payload_gbps": pps * 1448 * 8 / 1e9,
        "wire_gbps": pps * 1514 * 8 / 1e9,
        "kernel_drops": drops,
        "tap_write_errors": tap_errors,
        "us_per_packet": 4.5,
        "cpu_share": 0.5,
    }


def test_best_is_the_fastest_step_before_the_first_loss() -> None:
    rows = [_row(25, 20_000), _row(50, 40_000), _row(100, 80_000, drops=5), _row(200, 130_000)]
    top = best(rows)
    assert top is not None and top["offered_MBps"] == 50
    text = report(rows)
    assert "40000 packets/s" in text and "100 MB/s (5 drops)" in text


def test_tap_write_errors_are_losses_and_all_clean_takes_the_fastest() -> None:
    assert best([_row(25, 20_000, tap_errors=1)]) is None
    rows = [_row(25, 20_000), _row("max", 150_000), _row(200, 130_000)]
    top = best(rows)
    assert top is not None and top["offered_MBps"] == "max"
    assert "one core at 100% would carry ~222,222 packets/s" in report(rows)
