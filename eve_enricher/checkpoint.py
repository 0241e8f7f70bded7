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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from eve_enricher.follower import Position

VERSION = 1


class CheckpointError(Exception):
    """The checkpoint file exists but cannot be used."""


class DurableAppender:
    """An append-only output file that can be rolled back to a checkpointed size."""

    def __init__(self, path: Path, expect: dict[str, Any] | None = None) -> None:
        self.path = path
        self.rolled_back = 0
        self._f: BinaryIO = open(path, "ab")  # noqa: SIM115 -- the daemon's lifetime
        st = os.fstat(self._f.fileno())
        if (
            expect is not None
            and (st.st_dev, st.st_ino) == (expect["dev"], expect["ino"])
            and st.st_size > expect["size"]
        ):
            self.rolled_back = st.st_size - int(expect["size"])
            os.ftruncate(self._f.fileno(), int(expect["size"]))
            os.fsync(self._f.fileno())

    def write(self, data: bytes) -> None:
        self._f.write(data)

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def state(self) -> dict[str, Any]:
        st = os.fstat(self._f.fileno())
        return {"dev": st.st_dev, "ino": st.st_ino, "size": self._f.tell()}

    def close(self) -> None:
        self._f.close()


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
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
