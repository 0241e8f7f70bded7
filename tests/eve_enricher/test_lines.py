"""Splitting eve.json into lines under a bound: the follower's incremental splitter and the batch
reader give the lines a plain split gives, a line over the bound as its offset, first bytes and
length, and neither holds more than the bound of one line in memory."""

from __future__ import annotations

import io
import itertools
import tracemalloc
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eve_enricher.cli import main
from eve_enricher.follower import PREFIX, TAIL, FileFollower, Line, LineSplitter
from eve_enricher.runner import read_lines
from tests.eve_enricher.helpers import BACKEND, PROXY, alert, line


def _reference(data: bytes, limit: int) -> list[Line]:
    out, offset = [], 0
    parts = [p + b"\n" for p in data.split(b"\n")]
    parts[-1] = parts[-1][:-1]  # what follows the last newline (maybe nothing)
    for raw in filter(None, parts):
        complete = raw.endswith(b"\n")
        if len(raw) > limit:
            out.append(Line(offset, raw[:PREFIX], complete, too_long=len(raw)))
        else:
            out.append(Line(offset, raw, complete))
        offset += len(raw)
    return out


_data = st.lists(st.sampled_from([b"\n", b"a", b"bc", b"{}", b"x" * 7, b"\r"]), max_size=40).map(
    b"".join
)


@given(
    data=_data,
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12),
    limit=st.integers(min_value=1, max_value=12),
)
def test_splitter_gives_the_lines_of_a_plain_split(
    data: bytes, cuts: list[int], limit: int
) -> None:
    splitter = LineSplitter(max_line=limit)
    got: list[Line] = []
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for a, b in itertools.pairwise(bounds):
        splitter.feed(data[a:b], got)
    assert splitter.offset + splitter.pending == len(data)
    assert splitter.fingerprint() == data[-TAIL:]
    assert splitter.tail == data[: splitter.offset][-TAIL:]
    splitter.finish(got)
    assert got == _reference(data, limit)


@given(data=_data, limit=st.integers(min_value=1, max_value=12))
def test_batch_reader_gives_the_same_lines(data: bytes, limit: int) -> None:
    expected = [Line(ln.offset, ln.raw, True, ln.too_long) for ln in _reference(data, limit)]
    assert list(read_lines(io.BufferedReader(io.BytesIO(data), 3), limit)) == expected


def test_follower_holds_at_most_the_bound_of_a_long_line(tmp_path: Path) -> None:
    eve = tmp_path / "eve.json"
    n = 24 << 20
    with open(eve, "wb") as f:
        for _ in range(n >> 20):
            f.write(b"x" * (1 << 20))
        f.write(b"\n" + line(alert(PROXY, BACKEND)))
    follower = FileFollower(eve, max_line=1 << 20)
    got: list[Line] = []
    tracemalloc.start()
    try:
        for _ in range(n >> 20 << 1):  # 1 MiB per read: enough reads for the whole file
            got += follower.read_lines()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        follower.close()
    assert got == [
        Line(0, b"x" * PREFIX, too_long=n + 1),
        Line(n + 1, line(alert(PROXY, BACKEND))),
    ]
    assert follower.position.offset == eve.stat().st_size
    assert peak < 4 << 20, peak  # 1 MiB reads, a 1 MiB bound: not the 24 MiB line


def test_enrich_rejects_a_line_over_the_bound_with_its_offset(tmp_path: Path, db: Path) -> None:
    good = line(alert(PROXY, BACKEND))
    long = b'{"event_type":"' + b"y" * 5000 + b'"}\n'
    eve, out, rej = tmp_path / "eve.json", tmp_path / "out.json", tmp_path / "rej.json"
    eve.write_bytes(good + long + good)
    argv = ["enrich", str(eve), "--cache", str(db), "-o", str(out), "--reject", str(rej)]
    assert main([*argv, "--max-line", "4K", "-q"]) == 0
    assert out.read_bytes().count(b'"proxy"') == 2 and out.read_bytes().count(b"\n") == 2
    (rec,) = [orjson.loads(r) for r in rej.read_bytes().splitlines()]
    assert rec == {
        "offset": len(good),
        "reason": f"line of {len(long)} bytes, longer than 4096",
        "passed": False,
        "line": long[:PREFIX].decode(),
    }


def test_without_reject_file_a_line_over_the_bound_is_dropped_and_said(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its first bytes alone would be a corrupt event in the output."""
    good = line(alert(PROXY, BACKEND))
    eve, out = tmp_path / "eve.json", tmp_path / "out.json"
    eve.write_bytes(good + b'{"a":"' + b"y" * 5000 + b'"}\n' + good)
    assert main(["enrich", str(eve), "--cache", str(db), "-o", str(out), "--max-line", "4K"]) == 0
    assert out.read_bytes().count(b'"proxy"') == 2 and out.read_bytes().count(b"\n") == 2
    err = capsys.readouterr().err
    assert f"line at byte {len(good)} dropped, line of 5009 bytes, longer than 4096" in err
    assert "0 failed (passed unchanged), 1 rejected" in err
