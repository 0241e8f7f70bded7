"""Log lines both tools write on stderr: plain text for a terminal, syslog priority prefixes
when stderr is the journal, or one JSON object a line for a log shipper.

Why the prefix: under systemd, stderr is a stream to journald, which reads a leading ``<N>``
(syslog priority, ``sd-daemon(3)``) as the line's priority and strips it; without it every line
is "info", so ``journalctl -p warning`` would hide a full disk. systemd says a stream is the
journal by setting ``JOURNAL_STREAM`` to its ``device:inode``: the prefix is written only when
stderr's own device and inode match (stderr redirected to a file by a wrapper gets none).

Why not the ``logging`` module: one line per message, its format chosen once from the command
line, and no global state shared between the two tools run in one process (the tests do).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Literal, TextIO

import orjson

Level = Literal["err", "warning", "notice", "info"]
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
PRIORITY: dict[Level, int] = {"err": 3, "warning": 4, "notice": 5, "info": 6}


def stderr_is_journal(env: Mapping[str, str] = os.environ, fd: int = 2) -> bool:
    """Whether ``fd`` is the stream ``JOURNAL_STREAM`` names (``device:inode``, decimal)."""
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class Log:
    """``log(msg, level)``: one line on ``stream`` in the chosen format."""

    def __init__(
        self,
        prog: str,
        fmt: LogFormat = "text",
        stream: TextIO | None = None,
        journal: bool | None = None,
    ) -> None:
        self.prog = prog
        self.fmt = fmt
        self.stream = stream
        self.journal = stderr_is_journal() if journal is None else journal

    def line(self, msg: str, level: Level = "info") -> str:
        """The line written for ``msg`` (newline excluded)."""
        prefix = f"<{PRIORITY[level]}>" if self.journal else ""
        if self.fmt == "json":
            now = time.time()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            record = {
                "time": f"{stamp}.{int(now % 1 * 1e6):06d}Z",
                "level": level,
                "prog": self.prog,
                "message": msg,
            }
            return prefix + orjson.dumps(record).decode()
        return f"{prefix}{self.prog}: {msg}"

    def __call__(self, msg: str, level: Level = "info") -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        print(self.line(msg, level), file=stream, flush=True)

    def warning(self, msg: str) -> None:
        self(msg, "warning")

    def error(self, msg: str) -> None:
        self(msg, "err")


__all__ = ["LOG_FORMATS", "PRIORITY", "Level", "Log", "LogFormat", "stderr_is_journal"]
