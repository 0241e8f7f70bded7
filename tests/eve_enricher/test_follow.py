"""``eve-enricher follow`` against a real writer process: partial lines, rename rotation,
copytruncate, SIGTERM, kill -9 and restart -- every line out exactly once, in order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from eve_enricher import runner
from eve_enricher.checkpoint import DurableAppender
from eve_enricher.follower import FileFollower, Line, Position
from eve_enricher.lookup import CacheLookup, Matcher
from eve_enricher.stream import LineEnricher, RejectSink
from normalizer.cache.connections import ConnectionCache
from tests.eve_enricher.writer import eve_line

ROOT = Path(__file__).resolve().parents[2]
_STARTUP: dict[int, str] = {}  # what each follower said before it was ready, by pid


def _start_follower(tmp: Path, *extra: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "eve_enricher.cli", "follow", str(tmp / "eve.json")]
    argv += ["--cache", str(tmp / "conn.db"), "-o", str(tmp / "out.json")]
    argv += ["--checkpoint", str(tmp / "cp.json"), "--reject", str(tmp / "rej.json")]
    argv += ["--poll", "0.2", "--rotate-grace", "0.3", "--wait", "0", "--start-at", "beginning"]
    argv += extra
    p = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE)
    if "-q" not in extra:  # "following" is said once the signal handlers are in place
        assert p.stderr is not None
        seen = []
        while not seen or b"following" not in seen[-1]:
            line = p.stderr.readline()
            assert line, b"".join(seen)  # EOF before the ready line: the follower died
            seen.append(line)
        _STARTUP[p.pid] = b"".join(seen).decode()
    return p


def _writer(tmp: Path, *args: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "tests.eve_enricher.writer", str(tmp / "eve.json")]
    return subprocess.Popen([*argv, str(tmp / "conn.db"), *args], cwd=ROOT)


def _seqs(out: Path) -> list[int]:
    if not out.exists():
        return []
    data = out.read_bytes()
    # Polled while the follower writes: a last line without its newline is still being
    # written (a CI run once parsed one half-written); only complete lines count.
    complete = data[: data.rfind(b"\n") + 1]
    return [orjson.loads(raw)["seq"] for raw in complete.splitlines()]


def _wait_for(out: Path, n: int, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    seqs = _seqs(out)
    while len(seqs) < n and time.monotonic() < deadline:
        time.sleep(0.1)
        seqs = _seqs(out)
    return seqs


def _stop(p: subprocess.Popen[bytes]) -> str:
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    return _STARTUP.pop(p.pid, "") + err.decode()


def _check_output(tmp: Path, n: int) -> None:
    seqs = _wait_for(tmp / "out.json", n)
    assert seqs == list(range(n)), f"got {len(seqs)} lines, {len(set(seqs))} distinct"
    lines = (tmp / "out.json").read_bytes().splitlines()
    for raw in lines:
        ev = orjson.loads(raw)
        assert ("proxy" in ev) == (ev["seq"] % 2 == 0)
        if ev["seq"] % 2 == 0:
            assert ev["src_ip"] == "203.0.113.7"
        else:
            assert raw + b"\n" == eve_line(ev["seq"])  # untouched byte for byte


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    init = _writer(tmp_path, "--init-cache")
    assert init.wait(timeout=60) == 0
    return tmp_path


def test_follow_through_partial_lines_rename_and_copytruncate(tmp: Path) -> None:
    n = 1200
    follower = _start_follower(tmp)
    writer = _writer(
        tmp,
        *("--lines", str(n), "--interval", "0.001"),
        *("--rotate-rename", "300", "--copytruncate", "600", "--rotate-rename", "900"),
    )
    assert writer.wait(timeout=120) == 0
    _check_output(tmp, n)
    err = _stop(follower)
    assert (
        f"{n} lines: {n // 2} enriched (0 tunnel only), {n // 2} unchanged"
        f" ({n // 2} TCP events not in the cache), 0 failed (passed unchanged), 0 rejected" in err
    )
    assert "2 rotations, 1 truncations" in err
    assert not (tmp / "rej.json").read_bytes()


def test_kill_9_and_restart_lose_and_duplicate_nothing(tmp: Path) -> None:
    n = 3000
    writer = _writer(
        tmp,
        *("--lines", str(n), "--interval", "0.001", "--partial-every", "11"),
        *("--rotate-rename", "700", "--copytruncate", "1500", "--rotate-rename", "2300"),
    )
    kills = 0
    while writer.poll() is None:
        follower = _start_follower(tmp, "-q")
        time.sleep(0.4 + 0.15 * kills)
        follower.kill()  # SIGKILL: no chance to flush or checkpoint
        follower.wait()
        kills += 1
    assert writer.returncode == 0
    assert kills >= 2
    follower = _start_follower(tmp)
    _check_output(tmp, n)
    _stop(follower)


def test_restart_after_rotation_while_down_finishes_the_rotated_file(tmp: Path) -> None:
    eve = tmp / "eve.json"
    assert _writer(tmp, "--lines", "50", "--interval", "0").wait(timeout=60) == 0
    follower = _start_follower(tmp)
    assert len(_wait_for(tmp / "out.json", 50)) == 50
    _stop(follower)
    # while the enricher is down: more lines, then a rename rotation, then more lines
    assert _writer(tmp, "--start", "50", "--lines", "50", "--interval", "0").wait(timeout=60) == 0
    os.rename(eve, tmp / "eve.json.1")
    assert _writer(tmp, "--start", "100", "--lines", "50", "--interval", "0").wait(timeout=60) == 0
    follower = _start_follower(tmp)
    _check_output(tmp, 150)
    err = _stop(follower)
    assert "resuming rotated eve.json.1 at byte" in err


def test_partial_line_is_never_emitted(tmp_path: Path) -> None:
    eve = tmp_path / "eve.json"
    eve.write_bytes(b'{"a":1}\n{"b":')
    f = FileFollower(eve, notify=lambda m: None)
    assert [ln.raw for ln in f.read_lines()] == [b'{"a":1}\n']
    assert f.read_lines() == []
    with open(eve, "ab") as w:
        w.write(b"2}\n")
    assert f.read_lines() == [Line(8, b'{"b":2}\n')]
    assert f.position.offset == 16
    f.close()


def test_rotated_file_remainder_is_handed_out_incomplete(tmp_path: Path) -> None:
    eve = tmp_path / "eve.json"
    eve.write_bytes(b'{"a":1}\n{"cut')
    clock = [0.0]
    f = FileFollower(eve, rotate_grace=1.0, notify=lambda m: None, clock=lambda: clock[0])
    f.read_lines()
    os.rename(eve, tmp_path / "eve.json.1")
    eve.write_bytes(b'{"new":1}\n')
    assert f.read_lines() == []  # rotation seen: the old file gets its grace period
    clock[0] = 2.0
    assert f.read_lines() == [Line(8, b'{"cut', complete=False)]
    assert f.read_lines() == [Line(0, b'{"new":1}\n')]
    f.close()


def test_missing_rotated_file_is_reported(tmp_path: Path) -> None:
    eve = tmp_path / "eve.json"
    eve.write_bytes(b'{"new":1}\n')
    said: list[str] = []
    f = FileFollower(eve, Position(1, 2, 100, b"x"), notify=said.append)
    assert f.read_lines() == [Line(0, b'{"new":1}\n')]
    assert said and "is gone" in said[0]
    f.close()


def test_truncated_while_down_without_copy(tmp_path: Path) -> None:
    eve = tmp_path / "eve.json"
    eve.write_bytes(b'{"a":1}\n{"b":2}\n')
    st = eve.stat()
    eve.write_bytes(b'{"c":3}\n')  # same inode, truncated and refilled
    said: list[str] = []
    f = FileFollower(eve, Position(st.st_dev, st.st_ino, 16, b'{"b":2}\n'), notify=said.append)
    assert f.read_lines() == [Line(0, b'{"c":3}\n')]
    assert "no copy found" in said[0]
    f.close()


def test_appender_rolls_back_to_the_checkpointed_size(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    out.write_bytes(b"line1\nline2\nunconfirmed\n")
    st = out.stat()
    a = DurableAppender(out, {"dev": st.st_dev, "ino": st.st_ino, "size": 12})
    assert a.rolled_back == 12 and out.read_bytes() == b"line1\nline2\n"
    a.close()
    # another file at that path (rotated by someone else): appended to, never cut
    # (written beside and renamed over, so the new file cannot reuse the freed inode)
    (tmp_path / "other").write_bytes(b"x" * 100)
    os.replace(tmp_path / "other", out)
    DurableAppender(out, {"dev": st.st_dev, "ino": st.st_ino, "size": 12}).close()
    assert out.stat().st_size == 100


def test_first_checkpoint_is_taken_before_the_first_batch(tmp_path: Path, db: Path) -> None:
    """A follower that dies after writing its first batch but before checkpointing it used to
    find no checkpoint on restart, start over and write that batch a second time."""
    eve, out, cp = tmp_path / "eve.json", tmp_path / "out.json", tmp_path / "cp.json"
    out.write_bytes(b"an older run's output\n")
    eve.write_bytes(b"")
    stop = threading.Event()
    ready: list[bool] = []

    def make(reject: RejectSink | None) -> LineEnricher:
        return LineEnricher(Matcher(CacheLookup(ConnectionCache(db, readonly=True))))

    def on_ready(*_: object) -> None:
        ready.append(True)
        stop.set()  # stop before anything is read

    runner.follow(eve, out, make, stop, checkpoint_path=cp, poll=0.05, on_ready=on_ready)
    assert ready and cp.exists()
    # what a batch written but never checkpointed leaves behind (kill -9 between the two)
    with open(out, "ab") as f:
        f.write(b'{"written":"before the crash"}\n')
    eve.write_bytes(b'{"event_type":"stats"}\n')
    stop.clear()

    def run() -> None:
        runner.follow(eve, out, make, stop, checkpoint_path=cp, poll=0.05)

    t = threading.Thread(target=run)
    t.start()
    try:
        for _ in range(1200):  # a guard against hanging, not a timed assertion
            if out.read_bytes().endswith(b'{"event_type":"stats"}\n'):
                break
            stop.wait(0.05)
    finally:
        stop.set()
        t.join()
    assert out.read_bytes() == b'an older run\'s output\n{"event_type":"stats"}\n'
