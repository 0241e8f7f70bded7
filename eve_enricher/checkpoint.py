"""Exactly-once output across restarts and kill -9: durable appends plus an atomic checkpoint.

The order of writes is the whole argument: output (and reject) lines are flushed and fsynced
first, then the checkpoint -- input position *and* the output sizes at that moment -- is written
to a temporary file, fsynced and renamed over the old one. After a crash:

* the checkpoint is either the old or the new one, never a torn mix (rename is atomic);
* everything it counts as read is in the output (fsynced before it was written);
* output written after it (a batch whose checkpoint never landed) is cut back to the
  checkpointed size on restart and produced again from the same input lines -- so nothing is
  lost and nothing is duplicated.

An output file that is no longer the checkpointed one (rotated by someone else, replaced) is
appended to as it is.

A batch whose sync fails (a full disk) is cut back out of the file and stays buffered, so the
caller can wait for space and sync it again: the file never holds a torn batch, and the
checkpoint never counts one. Every error names the file it is about.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from eve_enricher.follower import Position

VERSION = 1


class CheckpointError(Exception):
    """The checkpoint file exists but cannot be used."""


NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})  # errors that end when space is freed


@contextlib.contextmanager
def naming(path: Path, instead: bool = False) -> Iterator[None]:
    """OSErrors inside that name no file name ``path`` (os.write, fsync and buffered files name
    none); ``instead``: all do (a temporary file's name means nothing to the operator)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None and not (instead and exc.filename != str(path)):
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


class DurableAppender:
    """An append-only output file that can be rolled back to a checkpointed size."""

    def __init__(self, path: Path, expect: dict[str, Any] | None = None) -> None:
        self.path = path
        self.rolled_back = 0
        self._buf = bytearray()  # written since the last sync
        with naming(path):
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
            st = os.fstat(self._fd)
            if (
                expect is not None
                and (st.st_dev, st.st_ino) == (expect["dev"], expect["ino"])
                and st.st_size > expect["size"]
            ):
                self.rolled_back = st.st_size - int(expect["size"])
                os.ftruncate(self._fd, int(expect["size"]))
                os.fsync(self._fd)

    def write(self, data: bytes) -> None:
        self._buf += data

    def sync(self) -> None:
        """Append what was written since the last sync and fsync it. On an error the file is
        cut back to its size before, and what was written stays buffered for the next try."""
        with naming(self.path):
            before = os.fstat(self._fd).st_size
            try:
                done, n = 0, len(self._buf)
                with memoryview(self._buf) as view:
                    while done < n:
                        done += os.write(self._fd, view[done:])
                os.fsync(self._fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, before)
                raise
            self._buf.clear()

    def state(self) -> dict[str, Any]:
        with naming(self.path):
            st = os.fstat(self._fd)
        return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size + len(self._buf)}

    def close(self) -> None:
        """Close; what was never synced is dropped (no checkpoint counts it)."""
        os.close(self._fd)


def load(path: Path) -> dict[str, Any] | None:
    """The saved checkpoint, None if there is none yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror})") from None
    try:
        data = orjson.loads(raw)
        if data.get("version") != VERSION:
            raise CheckpointError(
                f"{path}: checkpoint version {data.get('version')!r}, expected {VERSION}"
            )
        Position.from_json(data["input"])
        for key in ("output", "reject"):
            part = data.get(key)
            if part is not None:
                int(part["dev"]), int(part["ino"]), int(part["size"])
        return dict(data)
    except CheckpointError:
        raise
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"{path}: not a checkpoint of this program; remove it to start from the beginning"
        ) from None


def save(
    path: Path, position: Position, output: dict[str, Any], reject: dict[str, Any] | None
) -> None:
    """Atomically replace the checkpoint (call only after the outputs were synced)."""
    data = {"version": VERSION, "input": position.to_json(), "output": output, "reject": reject}
    tmp = path.with_name(path.name + ".tmp")
    with naming(path, instead=True):
        try:
            with open(tmp, "wb") as f:
                f.write(orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE))
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()  # a full disk: do not leave a partial copy taking space
            raise
        os.replace(tmp, path)
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
