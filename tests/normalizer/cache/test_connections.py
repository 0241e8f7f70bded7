"""The connection cache: rows per proxied connection, versioned schema, lookups by wire tuple."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eve_enricher.enrich import Connection
from normalizer.adapters.pcap_io import CaptureReader, PcapWriter
from normalizer.cache.connections import CacheError, CacheSink, ConnectionCache
from normalizer.cli import main
from normalizer.commands.rewrite import rewrite_file
from normalizer.core.checksum import adjust16
from normalizer.core.events import HeaderEvent
from normalizer.core.options import Options
from normalizer.proxy_headers import proxy_v2
from normalizer.proxy_headers.base import HeaderError, ProxyHeader, Tlv
from tests.normalizer.core.test_engine import V2, conversation
from tests.normalizer.packets import Conv
from tests.normalizer.test_cli import _capture


def _event(ts: int = 5_000_000_000, port: int = 40000) -> HeaderEvent:
    raw = proxy_v2.build(
        command="PROXY",
        family="TCP4",
        src="203.0.113.7",
        dst="198.51.100.1",
        sport=51000,
        dport=443,
        tlvs=[Tlv(0x02, b"decoy.example")],
    )
    header = proxy_v2.parse(raw)
    assert not isinstance(header, proxy_v2.NeedMore)
    return HeaderEvent(ts, ("192.0.2.1", port), ("192.0.2.2", 80), b"", header)


def test_record_and_lookup_either_direction(tmp_path: Path) -> None:
    cache = ConnectionCache(tmp_path / "c.db")
    assert cache.record([_event(), _event(port=40001)]) == 2
    row = cache.lookup_wire("192.0.2.2", 80, "192.0.2.1", 40000, ts=6.0)
    assert row is not None
    assert (row["real_src_ip"], row["real_src_port"]) == ("203.0.113.7", 51000)
    assert row["fields"]["authority"] == "decoy.example"
    assert cache.lookup_wire("192.0.2.1", 40000, "192.0.2.2", 80, ts=1.0) is None  # before it
    cache.close()
    reader = ConnectionCache(tmp_path / "c.db", readonly=True)
    assert reader.count() == 2


def test_port_reuse_picks_the_latest_connection_before_the_event(tmp_path: Path) -> None:
    cache = ConnectionCache(tmp_path / "c.db")
    cache.record([_event(ts=10_000_000_000), _event(ts=100_000_000_000)])
    assert cache.lookup_wire("192.0.2.1", 40000, "192.0.2.2", 80, ts=50.0)["first_seen"] == 10.0  # type: ignore[index]
    assert cache.lookup_wire("192.0.2.1", 40000, "192.0.2.2", 80, ts=101.0)["first_seen"] == 100.0  # type: ignore[index]
    assert cache.expire(older_than=50.0) == 1


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    ConnectionCache(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(CacheError, match="schema version 99"):
        ConnectionCache(path)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CacheError, match="not a usable connection cache"):
        ConnectionCache(path)


def test_rewrite_records_connections(tmp_path: Path) -> None:
    src, db = tmp_path / "in.pcap", tmp_path / "c.db"
    _capture(src)
    assert (
        main(
            [
                "rewrite",
                str(src),
                "-o",
                str(tmp_path / "o.pcap"),
                "--proxy",
                "192.0.2.1",
                "--cache",
                str(db),
                "-q",
            ]
        )
        == 0
    )
    cache = ConnectionCache(db, readonly=True)
    assert cache.count() == 1
    row = cache.lookup_wire("192.0.2.1", 40000, "192.0.2.2", 80, ts=1.0)
    assert row is not None and row["header_kind"] == "proxy-v1"


def _write(path: Path, frames: list[bytes], start: int = 0) -> None:
    with path.open("wb") as fh:
        w = PcapWriter(fh, 1)
        for i, f in enumerate(frames):
            w.write(1_700_000_000_000_000_000 + (start + i) * 1_000_000, f)


def _read(path: Path) -> list[bytes]:
    with path.open("rb") as fh:
        return [f for _t, f, _o in CaptureReader(fh)]


@pytest.mark.parametrize("keep", [False, True])
def test_restart_mid_capture_keeps_open_flows_normalized(tmp_path: Path, keep: bool) -> None:
    """A second run (a restarted normalizer) adopts flows whose header the first run saw."""
    c = Conv()
    frames = conversation(c, V2, coalesce=False)
    _write(tmp_path / "all.pcap", frames)
    _write(tmp_path / "a.pcap", frames[:5])
    _write(tmp_path / "b.pcap", frames[5:], start=5)
    flags = ["--proxy", "192.0.2.1", "-q"] + (["--keep-addresses"] if keep else [])
    db = str(tmp_path / "c.db")
    assert (
        main(["rewrite", str(tmp_path / "all.pcap"), "-o", str(tmp_path / "one.pcap"), *flags]) == 0
    )
    assert (
        main(
            [
                "rewrite",
                str(tmp_path / "a.pcap"),
                "-o",
                str(tmp_path / "a.out"),
                "--cache",
                db,
                *flags,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "rewrite",
                str(tmp_path / "b.pcap"),
                "-o",
                str(tmp_path / "b.out"),
                "--cache",
                db,
                *flags,
            ]
        )
        == 0
    )
    one = _read(tmp_path / "one.pcap")
    assert _read(tmp_path / "a.out") + _read(tmp_path / "b.out") == one
    # without the cache, the second half would pass untouched, still shifted by the header
    assert main(["rewrite", str(tmp_path / "b.pcap"), "-o", str(tmp_path / "b2.out"), *flags]) == 0
    assert _read(tmp_path / "b2.out") == frames[5:]


def test_rewrite_applies_retention_from_the_newest_row(tmp_path: Path) -> None:
    """Rows older than the retention before the newest connection go; an old capture's own
    rows stay, however long ago it was recorded."""
    src, db = tmp_path / "in.pcap", tmp_path / "c.db"
    with src.open("wb") as fh:
        w = PcapWriter(fh, 1)
        for i, f in enumerate(conversation(Conv(), V2, coalesce=False)):
            w.write(1_000_000_000 * 1_000_000_000 + i * 1000, f)  # 2001-09-09
    cache = ConnectionCache(db)
    old, recent = 1_000_000_000 - 3 * 86400, 1_000_000_000 - 3600
    cache.record([_event(old * 10**9, port=1), _event(recent * 10**9, port=2)])
    cache.close()
    argv = ["rewrite", str(src), "-o", str(tmp_path / "out.pcap"), "--proxy", "192.0.2.1/32"]
    assert main([*argv, "--cache", str(db), "--cache-retention", "86400", "-q"]) == 0
    cache = ConnectionCache(db, readonly=True)
    ports = sorted(r[0] for r in cache._db.execute("SELECT wire_src_port FROM connections"))
    assert ports == [2, Conv().cport]
    cache.close()
    assert main([*argv, "--cache", str(db), "--cache-retention", "0", "-q"]) == 2


# -- whatever the codec accepted is recorded, and reads back (issue 11, class 2) ---------------

_BAD_PATH = b"/run/\xff\xfe\xc3(sock".decode("utf-8", "surrogateescape")


def _unix_header() -> ProxyHeader:
    raw = proxy_v2.build("PROXY", "UNIX", src=_BAD_PATH, dst="/run/ok", tlvs=[Tlv(0x02, b"a\xffb")])
    header = proxy_v2.parse(raw)
    assert isinstance(header, ProxyHeader)
    return header


def test_non_utf8_unix_path_is_stored_escaped_and_read_by_the_enricher(tmp_path: Path) -> None:
    header = _unix_header()
    odd_fields = dataclasses.replace(header, fields={**header.fields, "x\udcff": ["\ud800"]})
    cache = ConnectionCache(tmp_path / "c.db")
    events = [
        HeaderEvent(5 * 10**9, ("192.0.2.1", 40000), ("192.0.2.2", 80), b"", header),
        HeaderEvent(5 * 10**9, ("192.0.2.1", 40001), ("192.0.2.2", 80), b"", odd_fields),
    ]
    assert cache.record(events) == 2
    row = cache.lookup_wire("192.0.2.1", 40000, "192.0.2.2", 80, ts=6.0)
    assert row is not None and row["real_src_ip"] == "/run/\\xff\\xfe\\xc3(sock"
    assert row["family"] == "UNIX" and row["real_dst_ip"] == "/run/ok"
    conn = Connection.from_row(row)
    assert conn.real_client is None and conn.header["authority"] == "a\\xffb"
    odd = cache.lookup_wire("192.0.2.1", 40001, "192.0.2.2", 80, ts=6.0)
    assert odd is not None and odd["fields"]["x\\xff"] == ["\\ud800"]
    assert len(cache.resumable(0.0)) == 2


_TLVS = [Tlv(0x02, b"decoy.example"), Tlv(0x05, b"id"), Tlv(0x01, b"h2")]
_BASES = [
    proxy_v2.build("PROXY", "TCP4", "203.0.113.7", "198.51.100.1", 1, 2, _TLVS),
    proxy_v2.build("PROXY", "UNIX", "/run/client.sock", "/run/haproxy.sock", tlvs=_TLVS),
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_BASES), st.lists(st.integers(0, 8 * 260 - 1), min_size=1, max_size=6))
def test_any_bit_flipped_header_the_codec_accepts_is_recorded(
    base: bytes, flips: list[int]
) -> None:
    raw = bytearray(base.ljust(260, b"\x00"))
    for bit in flips:
        raw[bit // 8] ^= 1 << (bit % 8)
    try:
        header = proxy_v2.parse(bytes(raw))
    except HeaderError:
        return
    if not isinstance(header, ProxyHeader):
        return
    cache = ConnectionCache(Path(":memory:"))  # the same SQL, no file per example
    cache.record([HeaderEvent(10**9, ("192.0.2.1", 1), ("192.0.2.2", 2), b"", header)])
    row = cache.lookup_wire("192.0.2.1", 1, "192.0.2.2", 2, ts=1.0)
    assert row is not None and row["family"] == header.family
    Connection.from_row(row)
    cache.close()


def test_rewrite_with_cache_survives_a_non_utf8_unix_header(tmp_path: Path) -> None:
    """Before: UnicodeEncodeError in the cache write, no output at all."""
    raw = proxy_v2.build("PROXY", "UNIX", src=_BAD_PATH, dst="/run/ok")
    frames = conversation(Conv(), raw, coalesce=False)
    _write(tmp_path / "in.pcap", frames)
    db = tmp_path / "c.db"
    argv = ["rewrite", str(tmp_path / "in.pcap"), "-o", str(tmp_path / "out.pcap")]
    assert main([*argv, "--proxy", "192.0.2.1", "--cache", str(db), "-q"]) == 0
    assert len(_read(tmp_path / "out.pcap")) == len(frames) - 1  # the header segment went
    cache = ConnectionCache(db, readonly=True)
    assert cache.count() == 1
    cache.close()


# -- a cache whose disk fills up mid-run (issue 11, class 6) ---------------------------------------


def _many_flows(path: Path, flows: int) -> int:
    """``flows`` proxied conversations (one template, client ports patched): several batches."""
    template = conversation(Conv(cport=1), V2, coalesce=True)
    n = 0
    with path.open("wb") as fh:
        w = PcapWriter(fh, 1)
        for i in range(flows):
            port = (10000 + i).to_bytes(2, "big")
            for f in template:
                out = bytearray(f)
                server_side = f[26:30] == bytes((192, 0, 2, 2))
                at = 36 if server_side else 34  # the client's port: destination or source
                old = int.from_bytes(out[at : at + 2], "big")
                out[at : at + 2] = port
                csum = int.from_bytes(out[50:52], "big")
                out[50:52] = adjust16(csum, old, 10000 + i).to_bytes(2, "big")
                w.write(1_700_000_000 * 10**9 + n * 1000, bytes(out))
                n += 1
    return n


class _SmallDisk(ConnectionCache):
    """A cache whose database may not grow past a few pages: SQLITE_FULL, as on a full disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        self._db.execute(f"PRAGMA max_page_count = {pages + 60}")


def test_cache_writes_failing_mid_run_are_counted_and_the_output_is_complete(
    tmp_path: Path,
) -> None:
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    frames = _many_flows(src, 1200)  # 9600 frames: three batches of header events
    cache = _SmallDisk(tmp_path / "c.db")
    logged: list[str] = []
    sink = CacheSink(cache, logged.append)
    opts = Options(proxies=("192.0.2.1/32",))
    counters = rewrite_file(src, dst, opts, on_events=sink.record, resume=sink.resumable)
    assert counters.packets_out + counters.packets_dropped == frames
    assert len(_read(dst)) == counters.packets_out  # every frame written, none lost
    st = sink.stats
    assert st.errors >= 1 and st.writes > st.errors and 0 < st.rows < 1200
    assert cache.count() == st.rows
    assert len(logged) == 1 and "database or disk is full" in logged[0]
    assert str(cache.path) in logged[0]


@pytest.mark.root
def test_rewrite_with_its_cache_on_a_full_filesystem_writes_the_output_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real full disk: a 256 KiB tmpfs holds the cache; the output is elsewhere."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
    try:
        src, dst, stats = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "s.json"
        frames = _many_flows(src, 1200)
        argv = ["rewrite", str(src), "-o", str(dst), "--proxy", "192.0.2.1"]
        argv += ["--cache", str(small / "c.db"), "--stats-json", str(stats)]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "database or disk is full" in err and str(small / "c.db") in err
        assert f"{dst} was written in full" in err and "Traceback" not in err
        assert len(_read(dst)) == frames  # every frame written (header and request coalesced)
        counters = json.loads(stats.read_text())
        assert counters["cache_errors"] >= 1 and 0 < counters["cache_rows"] < 1200
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_cache_row_that_does_not_decode_costs_the_resume_not_the_run(tmp_path: Path) -> None:
    cache = ConnectionCache(tmp_path / "c.db")
    cache.record([_event()])
    cache._db.execute("UPDATE connections SET fields = 'not json', vlan = 'zz'")
    cache._db.commit()
    logged: list[str] = []
    sink = CacheSink(cache, logged.append)
    assert sink.resumable(0.0) == [] and sink.stats.errors == 1
    assert "cache read failed" in logged[0] and str(tmp_path / "c.db") in logged[0]
