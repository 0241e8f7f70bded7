"""Log lines: journald priority prefixes only when stderr is the stream JOURNAL_STREAM names."""

from __future__ import annotations

import io
import os
from pathlib import Path

import orjson

from normalizer.adapters.journal import Log, stderr_is_journal


def test_journal_stream_must_be_this_fd(tmp_path: Path) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        st = os.fstat(a.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stderr_is_journal(env, a.fileno())
        assert not stderr_is_journal(env, b.fileno())  # redirected elsewhere: no prefix
        assert not stderr_is_journal({}, a.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "x:y"}, a.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}"}, a.fileno())


def test_priorities_and_json() -> None:
    out = io.StringIO()
    log = Log("prog", stream=out, journal=True)
    log.warning("disk full")
    log("42 lines")
    log.error("bad")
    assert out.getvalue().splitlines() == [
        "<4>prog: disk full",
        "<6>prog: 42 lines",
        "<3>prog: bad",
    ]
    assert Log("prog", journal=False).line("x", "warning") == "prog: x"
    line = Log("prog", "json", journal=True).line("x", "notice")
    assert line.startswith("<5>{")
    rec = orjson.loads(line[3:])
    assert rec["level"] == "notice" and rec["message"] == "x" and rec["time"].endswith("Z")
    assert orjson.loads(Log("p", "json", journal=False).line('say "hi"\n'))["message"] == (
        'say "hi"\n'
    )
