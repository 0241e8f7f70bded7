"""What a SOC running the enricher relies on: ``follow --start-at``, pipes, metrics, and being
told why nothing was enriched."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from eve_enricher import metrics, runner
from eve_enricher.cli import version
from eve_enricher.follower import ChangeWaiter, FileFollower
from eve_enricher.lookup import CacheLookup, Matcher
from eve_enricher.stream import LineEnricher, RejectSink
from normalizer.cache.connections import ConnectionCache
from tests.eve_enricher.helpers import BACKEND, CLIENT, PROXY, T0, event, line, record, v2_header

ROOT = Path(__file__).resolve().parents[2]


def _proxied(seq: int, t: float = T0 + 1) -> bytes:
    return line(event("http", PROXY, BACKEND, t=t, seq=seq))


def test_end_position_is_after_the_last_complete_line(tmp_path: Path) -> None:
    eve = tmp_path / "eve.json"
    assert runner.end_position(eve) is None  # not there yet: read from its start when it is
    eve.write_bytes(_proxied(0) + _proxied(1) + b'{"half')
    pos = runner.end_position(eve)
    assert pos is not None and pos.offset == len(_proxied(0)) * 2
    assert eve.read_bytes()[: pos.offset].endswith(pos.tail) and pos.tail
    eve.write_bytes(b'{"no newline at all')
    pos = runner.end_position(eve)
    assert pos is not None and pos.offset == 0


class _Follow:
    """``runner.follow`` in a thread, as the command runs it."""

    def __init__(self, tmp: Path, db: Path, start_at: runner.StartAt, port: int = 0) -> None:
        self.eve, self.out = tmp / "eve.json", tmp / "out.json"
        self.cache = ConnectionCache(db, readonly=True)
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.state = metrics.EnricherState(self.eve, version())
        if port:
            metrics.serve(port, self.state)

        def make(reject: RejectSink | None) -> LineEnricher:
            # the cache is read from the follow thread only
            cache = ConnectionCache(db, readonly=True)
            self.state.enricher = LineEnricher(Matcher(CacheLookup(cache)), reject=reject)
            return self.state.enricher

        def on_ready(waiter: ChangeWaiter, follower: FileFollower) -> None:
            self.state.follower = follower
            self.ready.set()

        def run() -> None:
            runner.follow(
                self.eve,
                self.out,
                make,
                self.stop,
                checkpoint_path=tmp / "cp.json",
                poll=0.05,
                on_ready=on_ready,
                start_at=start_at,
            )

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30)

    def seqs(self, n: int) -> list[int]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = [orjson.loads(x)["seq"] for x in self.out.read_bytes().splitlines()]
            if len(got) >= n:
                return got
            time.sleep(0.05)
        return got

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.cache.close()


@pytest.mark.parametrize("start_at", ["end", "beginning"])
def test_follow_start_at(tmp_path: Path, db: Path, start_at: runner.StartAt) -> None:
    """Without a checkpoint, ``end`` skips what the file held (the half-written last line is
    completed and read), ``beginning`` reads it all; a restart resumes at the checkpoint."""
    eve = tmp_path / "eve.json"
    half = _proxied(2)
    eve.write_bytes(_proxied(0) + _proxied(1) + half[:10])
    f = _Follow(tmp_path, db, start_at)
    try:
        with eve.open("ab") as w:
            w.write(half[10:] + _proxied(3))
        expected = [2, 3] if start_at == "end" else [0, 1, 2, 3]
        assert f.seqs(len(expected)) == expected
    finally:
        f.close()
    with eve.open("ab") as w:
        w.write(_proxied(4))
    f = _Follow(tmp_path, db, "end")  # the checkpoint wins over --start-at
    try:
        assert f.seqs(len(expected) + 1) == [*expected, 4]
    finally:
        f.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {}
    for ln in text.splitlines():
        if ln and not ln.startswith("#"):
            name, _, value = ln.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_count_lines_and_lag(tmp_path: Path, db: Path) -> None:
    port = _free_port()
    eve = tmp_path / "eve.json"
    eve.write_bytes(b"")
    f = _Follow(tmp_path, db, "beginning", port)
    try:
        with eve.open("ab") as w:
            w.write(_proxied(0) + b"not json\n" + line(event("http", ("192.0.2.9", 9), BACKEND)))
            w.write(b'{"partial')  # not a line yet: lag
        deadline = time.monotonic() + 30
        m = _scrape(port)
        while m.get("eve_enricher_lines_total") != 3 and time.monotonic() < deadline:
            time.sleep(0.05)
            m = _scrape(port)
    finally:
        f.close()
    assert m["eve_enricher_lines_total"] == 3
    assert m["eve_enricher_enriched_total"] == 1
    assert m["eve_enricher_rejected_total"] == 1
    assert m["eve_enricher_unknown_total"] == 1
    assert m["eve_enricher_failed_total"] == 0
    assert m["eve_enricher_lag_bytes"] == len(b'{"partial')
    # the last event is from 2023: its lag is at least the time since then
    assert m["eve_enricher_lag_seconds"] >= time.time() - T0 - 2
    assert m[f'eve_enricher_build_info{{version="{version()}"}}'] == 1
    assert m["process_start_time_seconds"] > 0 and "process_resident_memory_bytes" in m


def _cli(tmp: Path, *argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "eve_enricher", *argv],
        input=stdin,
        capture_output=True,
        cwd=tmp,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def test_pipe_stdin_to_stdout(tmp_path: Path, db: Path) -> None:
    data = _proxied(0) + line(event("http", ("192.0.2.9", 9), BACKEND))
    argv = ["enrich", "-", "--cache", str(db), "-o", "-", "--mode", "extra-data"]
    p = _cli(tmp_path, *argv, stdin=data)
    assert p.returncode == 0, p.stderr
    first, second = p.stdout.splitlines(keepends=True)
    assert orjson.loads(first)["proxy"]["real"]["src_ip"] == CLIENT[0]
    assert second == data.splitlines(keepends=True)[1]
    assert b"2 lines: 1 enriched" in p.stderr and not (tmp_path / "-").exists()
    p = _cli(tmp_path, "follow", "-", "--cache", str(db), "-o", "out.json")
    assert p.returncode == 2 and b"not '-'" in p.stderr


def test_version_and_json_log(tmp_path: Path, db: Path) -> None:
    p = _cli(tmp_path, "--version")
    assert p.returncode == 0 and p.stdout.decode().strip() == f"eve-enricher {version()}"
    (tmp_path / "eve.json").write_bytes(_proxied(0))
    p = _cli(tmp_path, "enrich", "eve.json", "--cache", str(db), "-o", "o", "--log-format", "json")
    assert p.returncode == 0
    rec = orjson.loads(p.stderr.splitlines()[0])
    assert rec["prog"] == "eve-enricher" and rec["level"] == "info"
    assert rec["message"].startswith("1 lines: 1 enriched")


def _diagnose(tmp: Path, db: Path, *events: bytes) -> list[str]:
    eve = tmp / "eve.json"
    eve.write_bytes(b"".join(events))
    p = _cli(tmp, "enrich", str(eve), "--cache", str(db), "-o", str(tmp / "out.json"))
    assert p.returncode == 0, p.stderr
    return p.stderr.decode().splitlines()


def test_says_why_nothing_was_enriched(tmp_path: Path) -> None:
    db = tmp_path / "conn.db"
    ConnectionCache(db).close()
    other = line(event("http", ("192.0.2.9", 9), BACKEND))
    err = _diagnose(tmp_path, db, other)
    assert err[-1].endswith("is empty (was the normalizer run with --cache on this file?)")
    record(db, v2_header(), t=T0)
    late = line(event("http", ("192.0.2.9", 9), BACKEND, t=T0 + 30 * 86400))
    err = _diagnose(tmp_path, db, late, late)
    assert (
        "2023-12-14 22:13:20 to 2023-12-14 22:13:20 UTC) and the cache's 1 connections" in (err[-1])
    )
    assert "different times" in err[-1]
    err = _diagnose(tmp_path, db, other)
    assert "none of the 1 TCP events has a tuple among the cache's 1 connections" in err[-1]
    # something enriched: no diagnosis
    err = _diagnose(tmp_path, db, _proxied(0), other)
    assert len(err) == 1 and "1 enriched" in err[0]
