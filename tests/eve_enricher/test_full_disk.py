"""``follow`` on a full disk (a real one: a small tmpfs holding output, reject file and
checkpoint) waits for space instead of exiting, and neither loses nor duplicates a line -- also
when it is stopped while waiting and restarted once space is back. Batch mode exits 1 naming
the file."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from eve_enricher import runner
from eve_enricher.cli import main
from eve_enricher.lookup import CacheLookup, Matcher
from eve_enricher.stream import LineEnricher, RejectSink
from normalizer.cache.connections import ConnectionCache
from tests.eve_enricher.helpers import BACKEND, PROXY, event, line

pytestmark = pytest.mark.root


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path) -> Path:
    """Fill ``mnt`` until a write fails with ENOSPC; the filler file is returned."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            try:
                os.write(fd, b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)
    return filler


def _lines(first: int, n: int) -> bytes:
    return b"".join(line(event("http", PROXY, BACKEND, tx_id=i)) for i in range(first, first + n))


class Follow:
    """``runner.follow`` in a thread, with what it says collected."""

    def __init__(self, eve: Path, mnt: Path, db: Path) -> None:
        self.said: list[str] = []
        self.stop = threading.Event()
        self.result: list[Any] = []
        self.out = mnt / "out.json"

        def make(reject: RejectSink | None) -> LineEnricher:  # in the thread owning the cache
            cache = ConnectionCache(db, readonly=True)
            return LineEnricher(Matcher(CacheLookup(cache)), reject=reject)

        def run() -> None:
            try:
                self.result.append(
                    runner.follow(
                        eve,
                        self.out,
                        make,
                        self.stop,
                        reject_path=mnt / "rej.json",
                        checkpoint_path=mnt / "cp.json",
                        poll=0.05,
                        notify=self.said.append,
                    )
                )
            except BaseException as exc:
                self.result.append(exc)

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def until(self, cond: Any) -> None:
        for _ in range(1200):  # a guard against hanging, not a timed assertion
            if cond() or self.result:
                break
            self.stop.wait(0.05)
        assert cond(), (self.said, self.result)

    def tx_ids(self) -> list[int]:
        if not self.out.exists():
            return []
        return [orjson.loads(r)["tx_id"] for r in self.out.read_bytes().splitlines()]

    def finish(self) -> Any:
        self.stop.set()
        self.thread.join()
        assert self.result and not isinstance(self.result[0], BaseException), self.result
        return self.result[0]


def test_follow_waits_for_space_and_loses_or_duplicates_nothing(
    tmp_path: Path, small: Path, db: Path
) -> None:
    eve = tmp_path / "eve.json"
    eve.write_bytes(_lines(0, 20))
    f = Follow(eve, small, db)
    f.until(lambda: len(f.tx_ids()) == 20)

    # full while running: it waits, the output holds no torn batch; space back: it goes on
    filler = _fill(small)
    with open(eve, "ab") as w:
        w.write(_lines(20, 20) + b"not json\n")
    f.until(lambda: any("waiting for space" in s for s in f.said))
    assert f.tx_ids() == list(range(20))
    assert any(str(small) in s and "No space left on device" in s for s in f.said)
    filler.unlink()
    f.until(lambda: len(f.tx_ids()) == 40)
    assert any("space again" in s for s in f.said)

    # full again, stopped while waiting, restarted after space is back
    filler = _fill(small)
    with open(eve, "ab") as w:
        w.write(_lines(40, 20) + b"[]\n")
    f.until(lambda: sum("waiting for space" in s for s in f.said) == 2)
    f.finish()
    assert f.tx_ids() == list(range(40))
    filler.unlink()
    g = Follow(eve, small, db)
    g.until(lambda: len(g.tx_ids()) == 60)
    enricher, _ = g.finish()
    assert g.tx_ids() == list(range(60))
    rejects = [orjson.loads(r) for r in (small / "rej.json").read_bytes().splitlines()]
    assert [r["line"] for r in rejects] == ["not json", "[]"]
    assert enricher.counters.lines == 21  # the restart re-read only the uncommitted batch


def test_batch_on_a_full_disk_exits_1_naming_the_output(
    tmp_path: Path, small: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eve = tmp_path / "eve.json"
    eve.write_bytes(_lines(0, 2000))
    _fill(small)
    out = small / "out.json"
    assert main(["enrich", str(eve), "--cache", str(db), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert err == f"eve-enricher: {out}: No space left on device\n"
