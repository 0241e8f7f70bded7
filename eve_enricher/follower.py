"""Following a growing eve.json through rotation: complete lines only, each exactly once.

A position is (device, inode, offset of the end of the last complete line) plus a fingerprint of
the bytes just before that offset. The inode tells a renamed-away file from its successor; the
fingerprint tells a file that was truncated and refilled (copytruncate) from one that only grew,
even when it grew past the old offset before we looked.

* Rename rotation (logrotate's default, Suricata reopening on SIGHUP): the old file stays open and
  is read until it has been quiet for ``rotate_grace`` seconds after the rotation was seen (the
  writer may still append before it reopens), then the new file is read from its start.
* copytruncate: the lines between what was read and the truncation usually sit in the copy
  (``EVE.json.1`` or any ``EVE.json.*`` / ``EVE.json-*`` that is not compressed); the copy is
  recognised by the fingerprint at the read offset and finished before the truncated file is read
  from its start. Without a copy those lines are gone: that is said, once, on stderr.
* Partial lines: bytes after the last newline stay buffered until their newline arrives. Only
  when a file is left for good (rotated, truncated) is such a remainder handed out, flagged
  incomplete, so the caller can reject it instead of losing it silently.
* Restart: a position whose inode is no longer the current file is looked up among the rotated
  files; that file is finished first.
* Bounded memory, linear time: a partial line is kept in one growing buffer (each byte copied
  a bounded number of times, whatever the line's length), and only up to ``max_line`` bytes of
  it: a longer line is skipped to its newline and handed out as its first bytes and its length
  (``too_long``), so the caller can reject it with its offset.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

TAIL = 64
MAX_LINE = 64 << 20  # default bound of one line, newline included
PREFIX = 4096  # bytes kept of a line over the bound (for its reject record)
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")


@dataclass(frozen=True, slots=True)
class Position:
    """Where the next complete line starts, and the bytes just before it."""

    dev: int
    ino: int
    offset: int
    tail: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {"dev": self.dev, "ino": self.ino, "offset": self.offset, "tail": self.tail.hex()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Position:
        return cls(
            int(data["dev"]), int(data["ino"]), int(data["offset"]), bytes.fromhex(data["tail"])
        )


@dataclass(frozen=True, slots=True)
class Line:
    """One line read: its offset in its file, its bytes (with the newline unless incomplete).
    ``too_long``: the length of a line over the bound, of which ``raw`` holds the first bytes."""

    offset: int
    raw: bytes
    complete: bool = True
    too_long: int = 0


class LineSplitter:
    """Bytes of a file in, its lines out, none longer than ``max_line`` kept in memory.

    ``offset`` is where the bytes not yet handed out start, ``tail`` the bytes just before it.
    """

    def __init__(self, offset: int = 0, tail: bytes = b"", max_line: int = MAX_LINE) -> None:
        self.offset = offset
        self.tail = tail[-TAIL:]
        self.max_line = max_line
        self._buf = bytearray()  # bytes after ``offset``, no newline in them (not skipping)
        self._skip = 0  # bytes after ``offset`` of a line over the bound (skipping to its end)
        self._prefix = b""  # the first PREFIX bytes of that line
        self._skip_tail = b""  # the last TAIL bytes read (of it, or before it if it is short)

    @property
    def pending(self) -> int:
        """Bytes after ``offset`` that belong to a line not yet complete."""
        return len(self._buf) + self._skip

    def fingerprint(self) -> bytes:
        """Up to TAIL bytes just before ``offset + pending``."""
        if self._skip:
            return self._skip_tail
        if len(self._buf) >= TAIL:
            return bytes(self._buf[-TAIL:])
        return (self.tail + bytes(self._buf))[-TAIL:]

    def feed(self, data: bytes, out: list[Line]) -> None:
        """The lines ``data`` completes, appended to ``out``; the rest is kept."""
        start = 0
        if self._skip:
            nl = data.find(b"\n")
            if nl < 0:
                self._skipped(data)
                return
            self._skipped(data[: nl + 1])
            self._emit_skipped(out, complete=True)
            start = nl + 1
        end = data.rfind(b"\n", start) + 1
        if end == 0:
            self._keep(data, start)
            return
        if self._buf:  # the first newline ends the line we hold: copy it once, now
            first = data.find(b"\n", start) + 1
            head = bytes(self._buf) + data[start:first]
            self._buf = bytearray()
            self._line(head, out)
            start = first
        _split(self.offset, data, start, end, out, self.max_line)
        if end > start:
            self.offset += end - start
            self.tail = (self.tail + data[max(start, end - TAIL) : end])[-TAIL:]
        self._keep(data, end)

    def finish(self, out: list[Line]) -> None:
        """Hand out what is held as the incomplete last line (the file is left for good)."""
        if self._skip:
            self._emit_skipped(out, complete=False)
        elif self._buf:
            raw = bytes(self._buf)
            out.append(Line(self.offset, raw, complete=False))
            self.offset += len(raw)
            self.tail = (self.tail + raw[-TAIL:])[-TAIL:]
            self._buf = bytearray()

    def _line(self, raw: bytes, out: list[Line]) -> None:
        if len(raw) > self.max_line:
            out.append(Line(self.offset, raw[:PREFIX], too_long=len(raw)))
        else:
            out.append(Line(self.offset, raw))
        self.offset += len(raw)
        self.tail = (self.tail + raw[-TAIL:])[-TAIL:]

    def _keep(self, data: bytes, start: int) -> None:
        if start < len(data):
            self._buf += memoryview(data)[start:]
        if len(self._buf) > self.max_line:  # over the bound even without its newline: skip it
            self._prefix = bytes(self._buf[:PREFIX])
            self._skip = len(self._buf)
            self._skip_tail = (self.tail + bytes(self._buf[-TAIL:]))[-TAIL:]
            self._buf = bytearray()

    def _skipped(self, data: bytes) -> None:
        if len(self._prefix) < PREFIX:
            self._prefix += data[: PREFIX - len(self._prefix)]
        self._skip += len(data)
        self._skip_tail = (self._skip_tail + data[-TAIL:])[-TAIL:]

    def _emit_skipped(self, out: list[Line], complete: bool) -> None:
        out.append(Line(self.offset, self._prefix, complete, too_long=self._skip))
        self.offset += self._skip
        self.tail = self._skip_tail
        self._skip, self._prefix, self._skip_tail = 0, b"", b""


def say(msg: str) -> None:
    print(f"eve-enricher: {msg}", file=sys.stderr)


class FileFollower:
    """Reads complete lines of ``path`` across rotations; ``position`` is after the last one."""

    def __init__(
        self,
        path: Path,
        start: Position | None = None,
        rotate_grace: float = 1.0,
        notify: Callable[[str], None] = say,
        clock: Callable[[], float] = time.monotonic,
        max_line: int = MAX_LINE,
    ) -> None:
        self.path = path
        self.max_line = max_line
        self.rotate_grace = rotate_grace
        self.notify = notify
        self.clock = clock
        self.rotations = 0
        self.truncations = 0
        self._f: BinaryIO | None = None
        self._dev = self._ino = 0
        self._lines = LineSplitter(max_line=max_line)  # after the last line handed out
        self._rotated_since: float | None = None
        self._pending: list[Line] = []  # lines recovered while positioning at start
        self._start(start)

    # -- positioning ---------------------------------------------------------------------------

    @property
    def position(self) -> Position:
        return Position(self._dev, self._ino, self._lines.offset, self._lines.tail)

    def _open(self, path: Path, offset: int = 0, tail: bytes = b"") -> bool:
        try:
            f = open(path, "rb")  # noqa: SIM115 -- kept open across calls on purpose
        except FileNotFoundError:
            return False
        st = os.fstat(f.fileno())
        self._close()
        self._f = f
        self._dev, self._ino = st.st_dev, st.st_ino
        f.seek(offset)
        self._lines = LineSplitter(offset, tail, self.max_line)
        self._rotated_since = None
        return True

    def _close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def close(self) -> None:
        self._close()

    def _start(self, start: Position | None) -> None:
        if start is None or start.ino == 0:  # no checkpoint, or one taken before the file was
            self._open(self.path)
            return
        st = _stat(self.path)
        if st is not None and (st.st_dev, st.st_ino) == (start.dev, start.ino):
            if st.st_size >= start.offset and _holds(self.path, start.offset, start.tail):
                self._open(self.path, start.offset, start.tail)
                return
            # truncated while we were down: finish its copy, then read it from the start
            self.truncations += 1
            lines = LineSplitter(start.offset, start.tail, self.max_line)
            self._from_copy(lines, start.ino, self._pending)
            self._open(self.path)
            return
        old = self._find_rotated(lambda c, s: (s.st_dev, s.st_ino) == (start.dev, start.ino))
        if old is not None and self._open(old, start.offset, start.tail):
            self.notify(f"{self.path}: resuming rotated {old.name} at byte {start.offset}")
            self._rotated_since = self.clock()
            return
        self.notify(
            f"{self.path}: the checkpointed file (inode {start.ino}) is gone; its unread lines "
            "are lost, continuing with the current file from its start"
        )
        self._open(self.path)

    def _find_rotated(self, accept: Callable[[Path, os.stat_result], bool]) -> Path | None:
        """The newest sibling ``NAME.*`` / ``NAME-*`` (not compressed) that ``accept`` takes."""
        base = self.path.name
        found: list[tuple[float, Path]] = []
        try:
            siblings = list(self.path.parent.iterdir())
        except OSError:
            return None
        for cand in siblings:
            n = cand.name
            if not (n.startswith(base + ".") or n.startswith(base + "-")) or n.endswith(
                _COMPRESSED
            ):
                continue
            st = _stat(cand)
            if st is not None and accept(cand, st):
                found.append((st.st_mtime, cand))
        return max(found)[1] if found else None

    def _from_copy(self, lines: LineSplitter, exclude: int, out: list[Line]) -> None:
        """The rest of a truncated file from its copytruncate copy (the sibling whose bytes
        before the read position match ours), fed to ``lines`` and finished, into ``out``."""
        read_pos, fingerprint = lines.offset + lines.pending, lines.fingerprint()
        copy = self._find_rotated(
            lambda c, s: (
                s.st_ino != exclude and s.st_size >= read_pos and _holds(c, read_pos, fingerprint)
            )
        )
        if copy is None:
            self.notify(
                f"{self.path}: truncated (copytruncate?) and no copy found; lines written "
                "between the last read and the truncation are lost"
            )
        else:
            self.notify(f"{self.path}: truncated; finishing its copy {copy.name} first")
            with open(copy, "rb") as f:
                f.seek(read_pos)
                while chunk := f.read(1 << 20):
                    lines.feed(chunk, out)
        lines.finish(out)

    # -- reading -------------------------------------------------------------------------------

    def read_lines(self, max_bytes: int = 1 << 20) -> list[Line]:
        """The complete lines available now (possibly none); never a partial line, except the
        remainder of a file that was left for good (``complete=False``)."""
        out, self._pending = self._pending, []
        if self._f is None and not self._open(self.path):
            return out
        assert self._f is not None
        read_pos = self._lines.offset + self._lines.pending
        if self._rotated_since is None and self._truncated(read_pos):
            self.truncations += 1
            # the copy continues at read_pos: its bytes complete the partial line we hold
            self._from_copy(self._lines, self._ino, out)
            self._open(self.path)
            return out
        try:
            data = self._f.read(max_bytes)
        except OSError as exc:  # EIO and the like: name the file, as every error here does
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        if data:
            self._lines.feed(data, out)
            return out
        self._check_rotation(out)
        return out

    def _truncated(self, read_pos: int) -> bool:
        assert self._f is not None
        size = os.fstat(self._f.fileno()).st_size
        if size < read_pos:
            return True
        fp = self._lines.fingerprint()
        return bool(fp) and os.pread(self._f.fileno(), len(fp), read_pos - len(fp)) != fp

    def _check_rotation(self, out: list[Line]) -> None:
        st = _stat(self.path)
        if st is not None and (st.st_dev, st.st_ino) == (self._dev, self._ino):
            return
        now = self.clock()
        if self._rotated_since is None:
            self._rotated_since = now
            return
        if now - self._rotated_since < self.rotate_grace or st is None:
            return  # the writer may still append to the old file; or no successor yet
        self._lines.finish(out)
        self.rotations += 1
        self._open(self.path)


def _split(offset: int, data: bytes, start: int, end: int, out: list[Line], limit: int) -> None:
    """Append the lines of ``data[start:end]`` (which ends with a newline and starts at file
    offset ``offset``); a line over ``limit`` as its first bytes and its length."""
    base = offset - start
    while start < end:
        nl = data.find(b"\n", start, end) + 1
        if nl - start > limit:
            cut = min(nl, start + PREFIX)
            out.append(Line(base + start, data[start:cut], too_long=nl - start))
        else:
            out.append(Line(base + start, data[start:nl]))
        start = nl


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _holds(path: Path, offset: int, fingerprint: bytes) -> bool:
    """Whether ``path`` has ``fingerprint`` just before ``offset``."""
    if not fingerprint:
        return True
    try:
        with open(path, "rb") as f:
            return os.pread(f.fileno(), len(fingerprint), offset - len(fingerprint)) == fingerprint
    except OSError:
        return False


class ChangeWaiter:
    """Sleeps until the directory of the followed file changes, or ``timeout`` passes.

    watchdog (inotify on Linux) wakes the follower within milliseconds of a write; when it cannot
    start (no inotify watches left, unsupported file system) the timeout alone paces a polling
    loop, so following still works, only with more latency.
    """

    def __init__(self, directory: Path) -> None:
        self._event = threading.Event()
        self._observer: Any = None
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer

            event = self._event

            class _Wake(FileSystemEventHandler):
                def on_any_event(self, ev: FileSystemEvent) -> None:
                    event.set()

            observer = Observer()
            observer.schedule(_Wake(), str(directory), recursive=False)
            observer.daemon = True
            observer.start()
            self._observer = observer
        except Exception as exc:  # any failure only costs latency: fall back to polling
            say(f"file change notification unavailable ({exc}); polling")

    @property
    def watching(self) -> bool:
        return self._observer is not None

    def wait(self, timeout: float) -> None:
        self._event.wait(timeout)
        self._event.clear()

    def wake(self) -> None:
        self._event.set()

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None
