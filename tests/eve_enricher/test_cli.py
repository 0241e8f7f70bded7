"""``eve-enricher enrich``: batch runs, bad lines, exit statuses and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from eve_enricher.cli import main
from normalizer.cache.connections import ConnectionCache
from tests.eve_enricher.helpers import (
    BACKEND,
    CLIENT,
    PROXY,
    T0,
    alert,
    event,
    line,
)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


GARBAGE = [
    b'{"timestamp":"2023-11-14T22:13:21.000000+0000","event_type":"alert","src_ip":"19',  # cut
    b"[1, 2, 3]",  # JSON, not an object
    b"\xff\xfe not utf-8",
    b"",  # an empty line
]


def test_batch_enriches_rejects_and_counts(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = [
        line(alert(PROXY, BACKEND)),
        line(event("flow", ("192.0.2.9", 1), BACKEND, flow_id=5)),
        b'{"timestamp":"2023-11-14T22:13:21.000000+0000","event_type":"stats","stats":{}}\n',
    ]
    content = good[0] + GARBAGE[0] + b"\n" + good[1] + GARBAGE[1] + b"\n" + GARBAGE[2] + b"\n"
    content += GARBAGE[3] + b"\n" + good[2].rstrip(b"\n")  # last line without newline
    eve = tmp_path / "eve.json"
    eve.write_bytes(content)
    out, rej = tmp_path / "out.json", tmp_path / "rej.json"
    assert main(["enrich", str(eve), "--cache", str(db), "-o", str(out), "--reject", str(rej)]) == 0
    got = _lines(out)
    assert len(got) == 3
    first = orjson.loads(got[0])
    assert (first["src_ip"], first["src_port"]) == CLIENT and "proxy" in first
    assert got[1:] == good[1:]  # unchanged byte for byte (the last one gains its newline)
    records = [orjson.loads(r) for r in _lines(rej)]
    starts = [0]
    for raw in content.split(b"\n")[:-1]:
        starts.append(starts[-1] + len(raw) + 1)
    expected_offsets = [content.index(g) if g else None for g in GARBAGE]
    expected_offsets[3] = content.index(b"\n\n") + 1
    assert [r["offset"] for r in records] == expected_offsets
    assert [r["line"] for r in records] == [
        GARBAGE[0].decode(),
        "[1, 2, 3]",
        "\\xff\\xfe not utf-8",
        "",
    ]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "eve-enricher: 7 lines: 1 enriched (0 tunnel only),"
        " 2 unchanged (1 TCP events not in the cache), 0 failed (passed unchanged), 4 rejected;"
        " 0 late, 0 waited without a row"
    ]


def test_without_reject_file_bad_lines_pass_through(tmp_path: Path, db: Path) -> None:
    eve = tmp_path / "eve.json"
    eve.write_bytes(GARBAGE[0] + b"\n" + line(alert(PROXY, BACKEND)))
    out = tmp_path / "out.json"
    assert main(["enrich", str(eve), "--cache", str(db), "-o", str(out), "-q"]) == 0
    got = _lines(out)
    assert got[0] == GARBAGE[0] + b"\n" and b'"proxy"' in got[1]


def test_identical_input_identical_output(tmp_path: Path, db: Path) -> None:
    eve = tmp_path / "eve.json"
    eve.write_bytes(b"".join(line(event("http", PROXY, BACKEND, tx_id=i)) for i in range(100)))
    outs = []
    for n in (1, 2):
        out = tmp_path / f"out{n}.json"
        assert main(["enrich", str(eve), "--cache", str(db), "-o", str(out), "-q"]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and outs[0].count(b'"proxy"') == 100


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["enrich"], 2, "usage error: the following arguments are required"),
        (["frobnicate"], 2, "usage error: argument command: invalid choice"),
        (["enrich", "EVE", "--cache", "DB", "-o", "EVE"], 2, "are the same file"),
        (["enrich", "EVE", "--cache", "DB", "-o", "OUT", "--wait", "-1"], 2, "not a duration"),
        (["enrich", "EVE", "--cache", "DB", "-o", "OUT", "--wait", "inf"], 2, "--wait: not a"),
        (["enrich", "EVE", "--cache", "DB", "-o", "OUT", "--window", "nan"], 2, "--window: not"),
        (["follow", "EVE", "--cache", "DB", "-o", "OUT", "--poll", "0"], 2, "--poll: '0' is not"),
        (["follow", "EVE", "--cache", "DB", "-o", "OUT", "--poll", "1e300"], 2, "--poll:"),
        (["enrich", "EVE", "--cache", "DB", "-o", "OUT", "--max-line", "1"], 2, "--max-line:"),
        (["enrich", "EVE", "--cache", "DB", "-o", "OUT", "--max-line", "٦K"], 2, "--max-line"),
        (
            ["enrich", "EVE", "--cache", "DB", "-o", "OUT", "--community-id-seed", "70000"],
            2,
            "seed",
        ),
        (["enrich", "MISSING", "--cache", "DB", "-o", "OUT"], 1, "MISSING: No such file"),
        (["enrich", "EVE", "--cache", "NODB", "-o", "OUT"], 1, "NODB: no such connection cache"),
        (["enrich", "EVE", "--cache", "BADDB", "-o", "OUT"], 1, "not a usable connection cache"),
        (["enrich", "EVE", "--cache", "DB", "-o", "NODIR/OUT"], 1, "NODIR/OUT: No such file"),
        (["follow", "NODIR/EVE", "--cache", "DB", "-o", "OUT"], 1, "NODIR: No such directory"),
        (["enrich", "EVE", "--cache", "DB", "-o", "OUT", "--reject", "NODIR/R"], 1, "NODIR/R: No"),
        (["follow", "EVE", "--cache", "DB", "-o", "NODIR/OUT", "-q"], 1, "NODIR/OUT: No such"),
        (["follow", "EVE", "--cache", "DB", "-o", "OUT", "--checkpoint", "NODIR/CP"], 1, "CP: No"),
        (["follow", "EVE", "--cache", "DB", "-o", "OUT", "--checkpoint", "BADCP"], 1, "BADCP:"),
    ],
)
def test_errors_are_one_line(
    tmp_path: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
    message: str,
) -> None:
    (tmp_path / "EVE").write_bytes(line(alert(PROXY, BACKEND)))
    (tmp_path / "BADDB").write_bytes(b"not a database" * 100)
    (tmp_path / "BADCP").write_bytes(b"{half a checkpoint")
    placeholders = {"EVE", "OUT", "MISSING", "NODB", "BADDB", "NODIR", "BADCP"}
    args = [
        str(db) if a == "DB" else str(tmp_path / a) if a.split("/")[0] in placeholders else a
        for a in argv
    ]
    assert main(args) == status
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert "Traceback" not in err


def test_console_script_runs(tmp_path: Path, db: Path) -> None:
    eve, out = tmp_path / "eve.json", tmp_path / "out.json"
    eve.write_bytes(line(alert(PROXY, BACKEND)))
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "eve_enricher.cli",
            "enrich",
            str(eve),
            "--cache",
            str(db),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "1 enriched" in p.stderr


def test_lookup_real_matches_restored_tuples(db: Path) -> None:
    cache = ConnectionCache(db, readonly=True)
    row = cache.lookup_real(*CLIENT, "198.51.100.1", 443, ts=T0 + 1)
    assert row is not None and (row["wire_src_ip"], row["wire_src_port"]) == PROXY
    assert cache.lookup_real("198.51.100.1", 443, *CLIENT, ts=T0 + 1) is not None  # reversed
    assert cache.lookup_real(*CLIENT, "198.51.100.1", 443, ts=T0 - 10) is None
    assert cache.lookup_real(*PROXY, *BACKEND, ts=T0 + 1) is None
