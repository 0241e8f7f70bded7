"""The two ways to run the line enricher: over a finished file, or following a live one.

Kept apart from the CLI so tests and the benchmark drive them in process; kept apart from
``follower``/``checkpoint`` so the order of read -> write -> sync -> checkpoint is visible in one
loop, because exactly-once output depends on nothing else.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from eve_enricher import checkpoint
from eve_enricher.checkpoint import NO_SPACE, DurableAppender, naming
from eve_enricher.follower import (
    MAX_LINE,
    PREFIX,
    TAIL,
    ChangeWaiter,
    FileFollower,
    Line,
    Position,
    say,
)
from eve_enricher.stream import LineEnricher, RejectSink

_GC_EVERY = 1 << 16  # lines between collections of the young generations
_GC_FULL_EVERY = 16  # of those, one in this many is a full collection


@contextmanager
def paced_gc() -> Iterator[Callable[[int], None]]:
    """Automatic garbage collection off; ``collect(lines)`` collects the young generations every
    65536 lines and everything every 16 times that.

    Why: the per-line work makes no reference cycles (parsed events, tuples, the per-flow memo
    of cache rows are all freed by reference counting), yet the collector, woken by every few
    hundred allocations, rescans the growing memo: 10-15% of the run time, measured. A full
    collection costs about 75 ms once the memo is full, so it is rare; it still bounds memory
    should a cycle ever appear.
    """
    was = gc.isenabled()
    gc.disable()
    since = [0, 0]  # lines since the last collection, collections since the last full one

    def collect(lines: int) -> None:
        since[0] += lines
        if since[0] >= _GC_EVERY:
            since[0] = 0
            since[1] += 1
            if since[1] >= _GC_FULL_EVERY:
                since[1] = 0
                gc.collect()
            else:
                gc.collect(1)

    try:
        yield collect
    finally:
        if was:
            gc.enable()


class Writer(Protocol):
    def write(self, data: bytes, /) -> object: ...


class NamedWriter:
    """A buffered output file whose errors name it (the io module's name no file, so a full
    disk would be reported without saying which)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with naming(path):
            self._f = open(path, "wb", buffering=1 << 20)  # noqa: SIM115 -- closed by close()

    def write(self, data: bytes) -> None:
        with naming(self.path):
            self._f.write(data)

    def writelines(self, lines: list[bytes]) -> None:
        with naming(self.path):
            self._f.writelines(lines)

    def close(self) -> None:
        with naming(self.path):
            self._f.close()

    def __enter__(self) -> NamedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_lines(src: BinaryIO, max_line: int = MAX_LINE) -> Iterator[Line]:
    """The lines of ``src`` (a final line without newline included), none over ``max_line``
    held in memory: such a line is skipped to its end and given as its first bytes and length."""
    offset = 0
    readline = src.readline
    while raw := readline(max_line):
        n = len(raw)
        if n < max_line or raw[-1] == 0x0A:
            yield Line(offset, raw)
            offset += n
            continue
        more = readline(1 << 20)
        if not more:  # the last line, exactly max_line bytes without its newline
            yield Line(offset, raw)
            offset += n
            break
        prefix, length = raw[:PREFIX], n
        while more:
            length += len(more)
            if len(prefix) < PREFIX:
                prefix += more[: PREFIX - len(prefix)]
            if more[-1] == 0x0A:
                break
            more = readline(1 << 20)
        yield Line(offset, prefix, too_long=length)
        offset += length


def enrich_stream(
    src: BinaryIO, dst: BinaryIO | NamedWriter, enricher: LineEnricher, max_line: int = MAX_LINE
) -> None:
    """Batch: every line of ``src`` (a final line without newline included) to ``dst``."""
    batch: list[bytes] = []
    add = batch.append
    lines = read_lines(src, max_line)
    if isinstance(getattr(src, "name", None), str):  # a read error (EIO) names the input
        lines = _named_lines(lines, Path(src.name))
    with paced_gc() as collect:
        for ln in lines:
            add(_enrich_line(enricher, ln, max_line))
            if len(batch) >= 1024:  # one write call per batch, not per line
                dst.writelines(batch)
                collect(len(batch))
                batch.clear()
        dst.writelines(batch)


def _named_lines(lines: Iterator[Line], path: Path) -> Iterator[Line]:
    with naming(path):  # only errors raised by ``lines`` (reading) pass through here
        yield from lines


def _enrich_line(enricher: LineEnricher, ln: Line, max_line: int) -> bytes:
    if ln.too_long:
        return enricher.too_long(ln.offset, ln.raw, ln.too_long, max_line)
    return enricher.line(ln.raw, ln.offset)


def reject_writer(f: Writer) -> Callable[[bytes], None]:
    """A reject sink writing its records to ``f``."""

    def sink(record: bytes) -> None:
        f.write(record)

    return sink


StartAt = Literal["end", "beginning"]
START_AT: tuple[StartAt, ...] = ("end", "beginning")
_BACK = 1 << 16  # bytes read per step when looking back for the last newline


def end_position(eve: Path) -> Position | None:
    """Where ``follow --start-at end`` starts: after the last complete line of ``eve`` now
    (a line Suricata is half-way through writing is read once it is complete); None if the file
    does not exist yet (it is then read from its start, when it appears: all of it is new)."""
    try:
        f = open(eve, "rb")  # noqa: SIM115 -- closed below
    except FileNotFoundError:
        return None
    with f:
        st = os.fstat(f.fileno())
        end = st.st_size
        while end > 0:
            start = max(0, end - _BACK)
            f.seek(start)
            chunk = f.read(end - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                end = start + nl + 1
                break
            end = start
        f.seek(max(0, end - TAIL))
        tail = f.read(end - max(0, end - TAIL))
    return Position(st.st_dev, st.st_ino, end, tail)


def follow(
    eve: Path,
    out_path: Path,
    make_enricher: Callable[[RejectSink | None], LineEnricher],
    stop: threading.Event,
    *,
    reject_path: Path | None = None,
    checkpoint_path: Path | None = None,
    poll: float = 1.0,
    rotate_grace: float = 1.0,
    max_line: int = MAX_LINE,
    on_ready: Callable[[ChangeWaiter, FileFollower], None] | None = None,
    notify: Callable[[str], None] = say,
    start_at: StartAt = "beginning",
) -> tuple[LineEnricher, FileFollower]:
    """Follow ``eve`` until ``stop`` is set; every batch is synced, then checkpointed.

    A full disk is waited out: the batch stays in memory (reading stops meanwhile) and is
    synced and checkpointed once space returns, so nothing is lost or written twice.
    Raises OSError (other I/O errors, naming the file) and checkpoint.CheckpointError; returns
    the enricher and follower so the caller can report their counters. ``start_at``: where to
    begin when there is no checkpoint (with one, its position wins).
    """
    saved = checkpoint.load(checkpoint_path) if checkpoint_path is not None else None
    start = Position.from_json(saved["input"]) if saved else None
    if start is None and start_at == "end":
        start = end_position(eve)
    out = DurableAppender(out_path, saved["output"] if saved else None)
    rej = (
        DurableAppender(reject_path, saved.get("reject") if saved else None)
        if reject_path is not None
        else None
    )
    enricher = make_enricher(reject_writer(rej) if rej is not None else None)
    waiter = ChangeWaiter(eve.parent)
    follower = FileFollower(eve, start, rotate_grace=rotate_grace, notify=notify, max_line=max_line)

    def commit() -> bool:
        """Sync the batch, then checkpoint it; False if stopped while waiting for space (the
        batch is then not committed: the last checkpoint still stands)."""
        position, waiting = follower.position, False
        while True:
            try:
                out.sync()
                if rej is not None:
                    rej.sync()
                if checkpoint_path is not None:
                    rstate = rej.state() if rej is not None else None
                    checkpoint.save(checkpoint_path, position, out.state(), rstate)
            except OSError as exc:
                if exc.errno not in NO_SPACE:
                    raise
                if not waiting:
                    waiting = True
                    notify(f"{exc.filename}: {exc.strerror}; waiting for space (every {poll:g} s)")
                if stop.wait(poll):
                    return False
                continue
            if waiting:
                notify(f"{out_path}: space again, writing resumed")
            return True

    try:
        # a checkpoint from the first moment: a crash before the first batch is checkpointed
        # then rolls the output back to what it was, instead of duplicating what it wrote
        if checkpoint_path is not None and saved is None and not commit():
            return enricher, follower
        if on_ready is not None:
            on_ready(waiter, follower)
        position = follower.position
        with paced_gc() as collect:
            while True:
                lines = follower.read_lines()
                collect(len(lines))
                for ln in lines:
                    data = _enrich_line(enricher, ln, max_line)
                    if data:
                        out.write(data)
                if lines or follower.position != position:
                    if not commit():
                        break
                    position = follower.position
                if stop.is_set():
                    break
                if lines:
                    continue  # more may be waiting: read again before sleeping
                # with watchdog, the timeout only guards against a missed event
                waiter.wait(poll if waiter.watching else min(poll, 0.2))
    finally:
        waiter.close()
        follower.close()
        out.close()
        if rej is not None:
            rej.close()
    return enricher, follower
