"""The connection cache: one SQLite row per proxied connection, shared with the eve enricher.

SQLite in WAL mode lets the enricher read while the normalizer writes, survives restarts, and
needs no server. Rows are written in batches, but ``record`` commits before it returns, so a
connection's row is durable before the adapter forwards the first rewritten frame of its flow.
The schema carries a version; a file written by another version is refused with a clear error
rather than misread.

Text is stored as valid UTF-8 whatever the header carried: a codec keeps bytes it cannot decode
as lone surrogates (a UNIX path of a PROXY v2 header is any bytes the sender chose), which
neither SQLite nor a strict JSON reader accepts. Those are written escaped instead, ``\\xNN`` per
byte as ``backslashreplace`` spells them (``_text``), so every header the codec accepted is
recorded and every row reads back.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from normalizer.cache import tunnels as tunnel_cache
from normalizer.core.events import HeaderEvent, Resumable
from normalizer.proxy_headers.base import ProxyHeader
from normalizer.tunnels.flows import TunnelFlow

# Which of several connections with one tuple an event at ``ts`` belongs to (ports are reused,
# and with restored addresses several backend connections of one HTTP-mode client connection
# share the real tuple): the last one started at or before ``ts``; failing that, the first one
# started within the second after it (a live Suricata stamps the tap's copy of a packet a little
# after the normalizer saw it on the bridge).
NEAREST_START = "ORDER BY first_seen > ?, abs(first_seen - ?) LIMIT 1"


def _tuple_terms(kind: str) -> str:
    one = f"({kind}_src_ip=? AND {kind}_src_port=? AND {kind}_dst_ip=? AND {kind}_dst_port=?)"
    return f"{one} OR {one}"


# Lookups by wire tuple, real tuple, or either; each tuple in both directions (indexed, see
# EXPLAIN QUERY PLAN: one index search per term), restricted to the time window.
_LOOKUPS: dict[tuple[str, ...], str] = {
    kinds: "SELECT * FROM connections WHERE ("
    + " OR ".join(_tuple_terms(k) for k in kinds)
    + f") AND first_seen <= ? AND first_seen >= ? {NEAREST_START}"
    for kinds in (("wire",), ("real",), ("wire", "real"))
}
SCHEMA_VERSION = 2  # 2: the tunnels table and the trigger filling connections.tunnel
_NS = 1_000_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS connections (
    id INTEGER PRIMARY KEY,
    wire_src_ip TEXT NOT NULL, wire_src_port INTEGER NOT NULL,
    wire_dst_ip TEXT NOT NULL, wire_dst_port INTEGER NOT NULL,
    vlan TEXT NOT NULL,
    real_src_ip TEXT, real_src_port INTEGER,
    real_dst_ip TEXT, real_dst_port INTEGER,
    family TEXT NOT NULL,
    header_kind TEXT NOT NULL, header_len INTEGER NOT NULL, command TEXT NOT NULL,
    fields TEXT NOT NULL,
    client_isn INTEGER NOT NULL DEFAULT 0,
    tunnel TEXT,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS connections_wire
    ON connections (wire_src_ip, wire_src_port, wire_dst_ip, wire_dst_port, first_seen);
CREATE INDEX IF NOT EXISTS connections_real
    ON connections (real_src_ip, real_src_port, real_dst_ip, real_dst_port, first_seen);
CREATE INDEX IF NOT EXISTS connections_last_seen ON connections (last_seen);
"""


class CacheError(Exception):
    """The cache file cannot be used (wrong schema version, not a database, unwritable)."""


class ConnectionCache:
    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            else:
                self._db = sqlite3.connect(path, timeout=5)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
            self._check_version(readonly)
            if not readonly:  # only once the version is known to be ours
                self._db.executescript(tunnel_cache.SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise CacheError(f"{path}: not a usable connection cache ({exc})") from None

    def _check_version(self, readonly: bool) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            if readonly:
                raise CacheError(f"{self.path}: no schema version: not a connection cache")
            with self._db:
                self._db.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
        elif row[0] != str(SCHEMA_VERSION):
            raise CacheError(
                f"{self.path}: schema version {row[0]}, this program reads version "
                f"{SCHEMA_VERSION}; use a matching release or a new cache file"
            )

    def record(self, events: Iterable[HeaderEvent]) -> int:
        """Insert one row per event in a single transaction (durable when this returns)."""
        rows = [_row(ev) for ev in events]
        if rows:
            with self._db:
                self._db.executemany(
                    "INSERT INTO connections (wire_src_ip, wire_src_port, wire_dst_ip,"
                    " wire_dst_port, vlan, real_src_ip, real_src_port, real_dst_ip,"
                    " real_dst_port, family, header_kind, header_len, command, fields,"
                    " first_seen, last_seen, state, client_isn)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
        return len(rows)

    def newest(self) -> float | None:
        """The latest ``last_seen`` in the cache (epoch seconds), None if it is empty: where
        ``rewrite`` counts retention back from."""
        row = self._db.execute("SELECT max(last_seen) FROM connections").fetchone()
        return None if row[0] is None else float(row[0])

    def expire(self, older_than: float) -> int:
        """Delete rows last seen before ``older_than`` (epoch seconds): the retention policy."""
        with self._db:
            cur = self._db.execute("DELETE FROM connections WHERE last_seen < ?", (older_than,))
            self._db.execute("DELETE FROM tunnels WHERE last_seen < ?", (older_than,))
        return cur.rowcount

    def lookup_wire(
        self, src: str, sport: int, dst: str, dport: int, ts: float, window: float = 3600.0
    ) -> dict[str, Any] | None:
        """The connection with this wire tuple (either direction) that ``ts`` falls in: the one
        started last at or before ``ts``, else the first started within a second after it."""
        return self._lookup(("wire",), (src, sport, dst, dport), ts, window)

    def lookup_real(
        self, src: str, sport: int, dst: str, dport: int, ts: float, window: float = 3600.0
    ) -> dict[str, Any] | None:
        """Like ``lookup_wire``, by the real (client, target) tuple: for events of flows whose
        addresses the normalizer restored, so they no longer name the wire endpoints."""
        return self._lookup(("real",), (src, sport, dst, dport), ts, window)

    def lookup_any(
        self, src: str, sport: int, dst: str, dport: int, ts: float, window: float = 3600.0
    ) -> dict[str, Any] | None:
        """``lookup_wire`` and ``lookup_real`` in one query (the enricher's per-flow lookup:
        one round trip instead of two for traffic that is not proxied)."""
        return self._lookup(("wire", "real"), (src, sport, dst, dport), ts, window)

    def _lookup(
        self, kinds: tuple[str, ...], t: tuple[str, int, str, int], ts: float, window: float
    ) -> dict[str, Any] | None:
        both = (*t, t[2], t[3], t[0], t[1])  # the tuple in either direction
        cur = self._db.execute(_LOOKUPS[kinds], (*both * len(kinds), ts + 1.0, ts - window, ts, ts))
        return _first_row(cur)

    def resumable(self, since: float) -> list[Resumable]:
        """Connections first seen at or after ``since``: what a restarted normalizer adopts.

        Returned as (wire client, wire server, vlan, client ISN, header) for ``Normalizer.resume``;
        the newest row wins when a 4-tuple was reused.
        """
        rows = self._db.execute(
            "SELECT wire_src_ip, wire_src_port, wire_dst_ip, wire_dst_port, vlan, client_isn,"
            " header_kind, header_len, command, family, real_src_ip, real_dst_ip,"
            " real_src_port, real_dst_port, fields FROM connections WHERE first_seen >= ?"
            " ORDER BY first_seen DESC",
            (since,),
        ).fetchall()
        out: list[Resumable] = []
        for r in rows:
            header = ProxyHeader(
                kind=r[6],
                length=r[7],
                command=r[8],
                family=r[9],
                src_addr=r[10],
                dst_addr=r[11],
                src_port=r[12],
                dst_port=r[13],
                fields=json.loads(r[14]),
            )
            out.append(Resumable((r[0], r[1]), (r[2], r[3]), bytes.fromhex(r[4]), r[5], header))
        return out

    def record_tunnels(self, flows: Iterable[TunnelFlow]) -> int:
        """Rows of decapsulated inner flows (see tunnel_cache.py); durable when this returns."""
        return tunnel_cache.record(self._db, flows)

    def lookup_tunnel(
        self,
        src: str,
        sport: int,
        dst: str,
        dport: int,
        vlan: bytes | list[int],
        ts: float,
        window: float = 3600.0,
    ) -> dict[str, Any] | None:
        """The tunnel an inner flow came through, by its tuple and VLAN ids (an eve event's
        ``vlan`` array will do); ``row["tunnel"]`` is the object to add to its events."""
        return tunnel_cache.lookup(self._db, src, sport, dst, dport, vlan, ts, window)

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM connections").fetchone()[0])

    def time_range(self) -> tuple[float, float] | None:
        """(earliest ``first_seen``, latest ``last_seen``) of the connections, None if there
        are none: the enricher's diagnosis when no event matched (the wrong cache?)."""
        row = self._db.execute("SELECT min(first_seen), max(last_seen) FROM connections").fetchone()
        return None if row[0] is None else (float(row[0]), float(row[1]))

    def close(self) -> None:
        self._db.close()


@dataclass(slots=True)
class CacheStats:
    writes: int = 0  # transactions attempted (record, record_tunnels)
    rows: int = 0  # connections recorded
    tunnel_rows: int = 0  # inner flows recorded (--decap)
    errors: int = 0  # writes, reads or expiries that failed: their rows are missing
    expired: int = 0  # rows removed by retention
    seconds: float = 0.0  # time spent in writes
    seconds_max: float = 0.0

    def as_dict(self) -> dict[str, int | float]:
        return {
            "cache_writes": self.writes,
            "cache_rows": self.rows,
            "cache_tunnel_rows": self.tunnel_rows,
            "cache_errors": self.errors,
            "cache_expired": self.expired,
            "cache_write_seconds": self.seconds,
            "cache_write_seconds_max": self.seconds_max,
        }


class CacheSink:
    """The adapters' side of the cache: a failing cache is counted and reported, never raised.

    Why: the traffic matters more than its rows. A full disk, an I/O error or a locked database
    must not stop a live tap or lose a rewritten capture; the rows of that batch are missing
    (the enricher then leaves those events as Suricata wrote them), ``stats.errors`` says how
    many writes failed, and each distinct error is reported once through ``log``.
    """

    def __init__(self, cache: ConnectionCache, log: Callable[[str], object]) -> None:
        self.cache = cache
        self.stats = CacheStats()
        self._log = log
        self._seen: set[str] = set()
        self.first_error: str | None = None

    def record(self, events: list[HeaderEvent]) -> None:
        self.stats.rows += self._write(self.cache.record, events)

    def record_tunnels(self, flows: list[TunnelFlow]) -> None:
        self.stats.tunnel_rows += self._write(self.cache.record_tunnels, flows)

    def resumable(self, since: float) -> list[Resumable]:
        """Flows to adopt; none when the cache cannot be read (counted, reported)."""
        try:
            return self.cache.resumable(since)
        except (sqlite3.Error, ValueError, TypeError) as exc:  # a row that does not decode
            self._failed("read", exc)
            return []

    def newest(self) -> float | None:
        """``ConnectionCache.newest``; None when it cannot be read (counted, reported)."""
        try:
            return self.cache.newest()
        except sqlite3.Error as exc:
            self._failed("read", exc)
            return None

    def expire(self, older_than: float) -> None:
        try:
            self.stats.expired += self.cache.expire(older_than)
        except sqlite3.Error as exc:
            self._failed("expiry", exc)

    def _write(self, write: Callable[[Any], int], rows: Any) -> int:
        t0 = time.perf_counter()
        written = 0
        try:
            written = write(rows)
        except sqlite3.Error as exc:
            self._failed("write", exc)
        dt = time.perf_counter() - t0
        st = self.stats
        st.writes += 1
        st.seconds += dt
        st.seconds_max = max(st.seconds_max, dt)
        return written

    def _failed(self, what: str, exc: Exception) -> None:
        self.stats.errors += 1
        text = f"cache {what} failed: {self.cache.path}: {exc}"
        if self.first_error is None:
            self.first_error = text
        if text not in self._seen and len(self._seen) < 64:
            self._seen.add(text)
            self._log(
                f"suricata-normalizer: {text} (counted; later ones of this kind are not shown)"
            )


def _first_row(cur: sqlite3.Cursor) -> dict[str, Any] | None:
    row = cur.fetchone()
    if row is None:
        return None
    names = [d[0] for d in cur.description]
    out = dict(zip(names, row, strict=True))
    out["fields"] = orjson.loads(out["fields"])
    if out.get("tunnel"):
        out["tunnel"] = orjson.loads(out["tunnel"])
    return out


def _row(ev: HeaderEvent) -> tuple[Any, ...]:
    h = ev.header
    ts = ev.ts / _NS
    fields = json.dumps(h.fields, ensure_ascii=True, default=str)
    if "\\ud" in fields:  # a surrogate escape: maybe a lone one, which JSON readers refuse
        fields = json.dumps(_clean(h.fields), ensure_ascii=True, default=str)
    return (
        ev.client[0],
        ev.client[1],
        ev.server[0],
        ev.server[1],
        ev.vlan.hex(),
        _text(h.src_addr),
        h.src_port,
        _text(h.dst_addr),
        h.dst_port,
        _text(h.family),
        _text(h.kind),
        h.length,
        _text(h.command),
        fields,
        ts,
        ts,
        "open",
        ev.isn,
    )


def _text(value: str | None) -> str | None:
    """``value`` as valid UTF-8 text: surrogates (bytes a codec could not decode) escaped."""
    if value is None or value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "".join(_escape(ch) if "\ud800" <= ch <= "\udfff" else ch for ch in value)
    return value


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's spelling of the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def _clean(value: Any) -> Any:
    """A JSON-ready value with every string (keys too) passed through ``_text``."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_clean(k) if isinstance(k, str) else k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
