"""Hostile eve lines: fields of unexpected JSON types or shapes never stop the enricher, and
every line has exactly one outcome -- enriched, unchanged, failed (passed unchanged and
recorded) or rejected -- in input order."""

from __future__ import annotations

import io
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eve_enricher import runner
from eve_enricher.cli import main
from eve_enricher.lookup import CacheLookup, Matcher, TunnelMatcher
from eve_enricher.stream import LineEnricher
from normalizer.cache.connections import ConnectionCache
from tests.eve_enricher.helpers import BACKEND, CLIENT, PROXY, alert, event, line


def _enricher(db: Path, records: list[bytes]) -> LineEnricher:
    cache = ConnectionCache(db, readonly=True)
    return LineEnricher(
        Matcher(CacheLookup(cache)), reject=records.append, tunnels=TunnelMatcher(cache)
    )


def _with_deep(ev: dict[str, Any], depth: int) -> bytes:
    """``ev``'s line with a field nested ``depth`` levels deep (more than orjson writes)."""
    return orjson.dumps(ev)[:-1] + b',"extra":' + b"[" * depth + b"]" * depth + b"}\n"


BASE = alert(PROXY, BACKEND)

# events of the proxied connection with one field the enricher reads made hostile, and whether
# the enricher can still enrich them (else they pass unchanged)
HOSTILE: list[tuple[str, dict[str, Any], bool]] = [
    ("flow_id list", {**BASE, "flow_id": [1, 2]}, True),
    ("flow_id object", {**BASE, "flow_id": {"a": 1}}, True),
    ("proto superscript digit", {**BASE, "proto": "\u00b2"}, True),
    ("proto arabic-indic digit", {**BASE, "proto": "\u0666"}, True),
    ("proto bool", {**BASE, "proto": True}, True),
    ("timestamp without offset, year 1", {**BASE, "timestamp": "0001-01-01T00:00:00"}, True),
    ("flow.start far past", {**BASE, "flow": {**BASE["flow"], "start": "0001-01-01"}}, False),
    ("alert a list", {**BASE, "alert": [1]}, True),
    ("flow a list", {**BASE, "flow": [1]}, True),
    ("alert.flow a string", {**BASE, "alert": {**BASE["alert"], "flow": "x"}}, True),
    ("src_port a string", {**BASE, "src_port": "40000"}, False),
    ("src_port a float", {**BASE, "src_port": 40000.0}, False),
    ("src_port a bool", {**BASE, "src_port": True}, False),
    ("src_port huge", {**BASE, "src_port": 1 << 62}, False),
    ("src_ip a number", {**BASE, "src_ip": 3221225985}, False),
    ("src_ip not an address", {**BASE, "src_ip": "192.0.2.1\x00"}, False),
    ("timestamp a number", {**BASE, "timestamp": 1.5}, True),
    ("vlan an object", {**event("http", ("192.0.2.9", 9), BACKEND), "vlan": {"a": 1}}, False),
    ("vlan huge", {**event("http", ("192.0.2.9", 9), BACKEND), "vlan": [1 << 62]}, False),
    (
        "flow_id list, vlan",
        {**event("http", ("192.0.2.9", 9), BACKEND, vlan=[9]), "flow_id": []},
        False,
    ),
]


@pytest.mark.parametrize(("name", "ev", "enriched"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_field_is_enriched_or_passed(
    db: Path, name: str, ev: dict[str, Any], enriched: bool
) -> None:
    records: list[bytes] = []
    enr = _enricher(db, records)
    raw = line(ev)
    out = enr.line(raw, 0)
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    if enriched:
        got = orjson.loads(out)
        assert (got["src_ip"], got["src_port"]) == CLIENT and "proxy" in got
    else:
        assert out == raw
    assert records == []
    c = enr.counters
    assert (c.lines, c.enriched, c.unchanged, c.failed) == (1, int(enriched), 1 - enriched, 0)


def test_event_the_encoder_cannot_write_back_passes_unchanged_and_is_recorded(db: Path) -> None:
    """orjson reads 1024 levels of nesting but writes only 254: a proxied event nested deeper
    cannot be re-serialized, so Suricata's line goes out as it was, and the reject file says so."""
    records: list[bytes] = []
    enr = _enricher(db, records)
    raw = _with_deep(BASE, 300)
    assert enr.line(raw, 77) == raw
    assert enr.counters.failed == 1 and enr.counters.lines == 1
    (rec,) = [orjson.loads(r) for r in records]
    assert rec["offset"] == 77 and rec["passed"] is True
    assert rec["reason"] == "cannot encode the enriched event: Recursion limit reached"
    assert rec["line"].encode() + b"\n" == raw


def test_enrich_keeps_every_line_around_a_hostile_one(tmp_path: Path, db: Path) -> None:
    """Formerly the whole run died on the first such line and the output was empty."""
    good = [line(alert(PROXY, BACKEND, flow_id=n)) for n in range(3)]
    hostile = [line({**BASE, "flow_id": [1]}), _with_deep(BASE, 300)]
    content = good[0] + hostile[0] + good[1] + hostile[1] + good[2]
    eve, out, rej = tmp_path / "eve.json", tmp_path / "out.json", tmp_path / "rej.json"
    eve.write_bytes(content)
    argv = ["enrich", str(eve), "--cache", str(db), "-o", str(out), "--reject", str(rej), "-q"]
    assert main(argv) == 0
    got = out.read_bytes().splitlines(keepends=True)
    assert len(got) == 5
    assert all(b'"proxy"' in got[i] for i in (0, 1, 2, 4))  # flow_id list: still enriched
    assert got[3] == hostile[1]  # not writable back: as Suricata wrote it
    assert [orjson.loads(r)["offset"] for r in rej.read_bytes().splitlines()] == [
        content.index(hostile[1])
    ]


def test_follow_moves_past_a_hostile_line(tmp_path: Path, db: Path) -> None:
    eve, out, rej = tmp_path / "eve.json", tmp_path / "out.json", tmp_path / "rej.json"
    hostile = _with_deep({**BASE, "flow_id": {"x": [1]}}, 300)
    long = b'{"a":"' + b"z" * 5000 + b'"}\n'  # over max_line
    eve.write_bytes(line(BASE) + hostile + long + line(BASE))
    stop = threading.Event()
    result: list[Any] = []

    def make(reject: Any) -> LineEnricher:  # called in the follow thread, which owns the cache
        return LineEnricher(Matcher(CacheLookup(ConnectionCache(db, readonly=True))), reject=reject)

    def run() -> None:
        try:
            cp = tmp_path / "cp.json"
            result.append(
                runner.follow(
                    eve, out, make, stop, checkpoint_path=cp, reject_path=rej, max_line=4096
                )
            )
        except BaseException as exc:
            result.append(exc)
            raise

    t = threading.Thread(target=run)
    t.start()
    try:
        for _ in range(1200):  # a guard against hanging, not a timed assertion
            if result or (out.exists() and out.read_bytes().count(b"\n") >= 3):
                break
            stop.wait(0.05)
    finally:
        stop.set()
        t.join()
    enr, _ = result[0]  # an exception instead: follow died on the line
    assert out.read_bytes().splitlines(keepends=True)[1] == hostile
    c = enr.counters
    assert (c.lines, c.enriched, c.failed, c.rejected) == (4, 2, 1, 1)
    records = [orjson.loads(r) for r in rej.read_bytes().splitlines()]
    assert [(r["offset"], r["passed"]) for r in records] == [
        (len(line(BASE)), True),
        (len(line(BASE)) + len(hostile), False),
    ]
    assert records[1]["reason"] == f"line of {len(long)} bytes, longer than 4096"


# -- property: arbitrary JSON in every field enrichment reads ------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["TCP", "UDP", "6", "\u0666", "\u00b2", "2023-11-14T22:13:21+0000", "::1"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_FIELDS = [
    "flow_id",
    "src_ip",
    "dest_ip",
    "src_port",
    "dest_port",
    "proto",
    "timestamp",
    "flow",
    "flow.start",
    "flow.src_ip",
    "alert",
    "alert.flow",
    "alert.source",
    "vlan",
    "tunnel",
    "tunnel.src_ip",
    "tunnel.depth",
    "event_type",
    "community_id",
]
_TEMPLATES = [
    alert(PROXY, BACKEND),
    alert(BACKEND, PROXY),
    event("http", PROXY, BACKEND),
    event("flow", ("192.0.2.9", 9), BACKEND, vlan=[9]),
    {**event("icmp", PROXY, BACKEND, vlan=[9]), "src_port": None},
    alert(  # an alert of decapsulated traffic: Suricata's own ``tunnel`` object
        PROXY,
        BACKEND,
        vlan=[9],
        tunnel={"src_ip": "10.9.0.1", "dest_ip": "10.9.0.2", "proto": "UDP", "depth": 1},
    ),
]


def _splice(ev: dict[str, Any], path: str, value: Any) -> None:
    head, _, rest = path.partition(".")
    if not rest:
        ev[head] = value
    elif type(ev.get(head)) is dict:
        ev[head] = dict(ev[head])
        _splice(ev[head], rest, value)


_event = st.builds(
    lambda template, edits: _edit(template, edits),
    st.sampled_from(_TEMPLATES),
    st.lists(st.tuples(st.sampled_from(_FIELDS), _json), min_size=1, max_size=4),
)


def _edit(template: dict[str, Any], edits: list[tuple[str, Any]]) -> dict[str, Any]:
    ev = dict(template)
    for path, value in edits:
        _splice(ev, path, value)
    return ev


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=st.lists(_event | st.just("garbage") | st.just("deep"), min_size=1, max_size=6))
def test_arbitrary_json_in_enrichment_fields_never_raises(db: Path, events: list[Any]) -> None:
    records: list[bytes] = []
    enr = _enricher(db, records)
    raws = [
        b"{not json\n" if e == "garbage" else _with_deep(BASE, 260) if e == "deep" else line(e)
        for e in events
    ]
    outs = [enr.line(raw, i) for i, raw in enumerate(raws)]  # never raises
    recs = [orjson.loads(r) for r in records]
    rejected = {r["offset"] for r in recs if not r["passed"]}
    failed = {r["offset"] for r in recs if r["passed"]}
    for i, (raw, out) in enumerate(zip(raws, outs, strict=True)):
        if i in rejected:  # exactly one outcome: a reject record and no output
            assert out == b"" and i not in failed
            continue
        assert out.count(b"\n") == 1 and out.endswith(b"\n")  # one output line, in its place
        if out != raw:
            assert i not in failed
            assert type(orjson.loads(out)) is dict
    c = enr.counters
    assert c.lines == len(raws) == c.enriched + c.unchanged + c.failed + c.rejected
    assert (c.rejected, c.failed) == (len(rejected), len(failed))
    assert len(recs) == c.rejected + c.failed
    # the batch path over the same lines: the same output, in order; records at byte offsets
    batch_records: list[bytes] = []
    out = io.BytesIO()
    runner.enrich_stream(io.BytesIO(b"".join(raws)), out, _enricher(db, batch_records))
    assert out.getvalue() == b"".join(outs)
    starts = [sum(map(len, raws[:i])) for i in range(len(raws))]
    assert [orjson.loads(r)["offset"] for r in batch_records] == [starts[r["offset"]] for r in recs]


@pytest.mark.parametrize(
    ("raw", "passed"),
    [
        (line(BASE)[:-2] + b',"url":"\\ud800"}\n', True),  # an escaped lone surrogate: valid JSON
        (line(BASE)[:-2] + b',"n":1e400}\n', True),  # beyond a double: valid JSON
        (b'{"a":NaN}\n', False),  # Python's extension, not JSON
        ('{"a":1}\n'.encode("utf-16"), False),  # not UTF-8
        (b'\xef\xbb\xbf{"a":1}\n', False),  # a byte order mark
        (b"[" * 2000 + b"]" * 2000 + b"\n", False),
        (b'{"a":' + b"[" * 1100 + b"]" * 1100 + b"}\n", False),  # deeper than either parser reads
    ],
)
def test_json_orjson_refuses_passes_only_if_it_is_an_object(
    db: Path, raw: bytes, passed: bool
) -> None:
    records: list[bytes] = []
    enr = _enricher(db, records)
    assert enr.line(raw, 5) == (raw if passed else b"")
    (rec,) = [orjson.loads(r) for r in records]
    assert rec["passed"] is passed and rec["offset"] == 5
    assert rec["reason"].startswith("cannot parse: " if passed else "not JSON: ")
    assert (enr.counters.failed, enr.counters.rejected) == (int(passed), 1 - passed)


def test_long_strings_and_lists_are_never_kept_in_a_memo(db: Path) -> None:
    """Memo keys and address caches keep 65536 entries: an address or VLAN list of any length
    in them would hold memory without bound (65536 x the line bound)."""
    enr = _enricher(db, [])
    vlans = [1] * (64 << 10)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(60):
            big = f"{i}:" + "a" * (256 << 10)
            flow = {**BASE["alert"]["flow"], "src_ip": big}
            for ev in (
                event("http", (big, 1), BACKEND, flow_id=i),  # the flow memo's key
                {**BASE, "alert": {**BASE["alert"], "flow": flow}},  # the address cache
                event("flow", ("192.0.2.9", 9), BACKEND, flow_id=i, vlan=vlans),  # tunnel memo
            ):
                enr.line(line(ev), 0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert enr.counters.lines == 180
    assert grown < 4 << 20, grown  # kept, each of the 180 lines would be 256-512 KiB
