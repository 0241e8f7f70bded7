"""The connection cache's ``tunnels`` table: one row per decapsulated inner flow.

Kept beside ``conn_cache.py`` rather than in it so the tunnel SQL reads in one place. Why a
table of its own: most inner flows of a mirror are not proxied, yet each of their Suricata
events must name its tunnel. A trigger copies the matching row's ``tunnel`` JSON into the
``connections`` row of a proxied inner flow when that row is inserted (the tunnel row is always
written first: the pipeline drains tunnel rows before header events).

``vlan`` is written like ``connections.vlan``: the hex of the frame's VLAN ids, 2 bytes each,
outermost first -- the first id is the one the VNI was mapped to.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from normalizer.tunnels.flows import TunnelFlow

_NS = 1_000_000_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS tunnels (
    id INTEGER PRIMARY KEY,
    vlan TEXT NOT NULL, proto INTEGER NOT NULL,
    src_ip TEXT NOT NULL, src_port INTEGER NOT NULL,
    dst_ip TEXT NOT NULL, dst_port INTEGER NOT NULL,
    kind TEXT NOT NULL, vni INTEGER NOT NULL, vlan_id INTEGER NOT NULL,
    outer_src_ip TEXT NOT NULL, outer_dst_ip TEXT NOT NULL,
    tunnel TEXT NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    UNIQUE (vlan, proto, src_ip, src_port, dst_ip, dst_port, first_seen)
);
CREATE INDEX IF NOT EXISTS tunnels_last_seen ON tunnels (last_seen);
CREATE TRIGGER IF NOT EXISTS connections_tunnel AFTER INSERT ON connections
WHEN NEW.tunnel IS NULL
BEGIN
    UPDATE connections SET tunnel = (
        SELECT t.tunnel FROM tunnels t
        WHERE t.vlan = NEW.vlan AND t.proto = 6 AND t.first_seen <= NEW.first_seen
          AND ((t.src_ip = NEW.wire_src_ip AND t.src_port = NEW.wire_src_port
                AND t.dst_ip = NEW.wire_dst_ip AND t.dst_port = NEW.wire_dst_port)
            OR (t.src_ip = NEW.wire_dst_ip AND t.src_port = NEW.wire_dst_port
                AND t.dst_ip = NEW.wire_src_ip AND t.dst_port = NEW.wire_src_port))
        ORDER BY t.first_seen DESC LIMIT 1)
    WHERE id = NEW.id;
END;
"""


def record(db: sqlite3.Connection, flows: Iterable[TunnelFlow]) -> int:
    """Insert new inner flows, or move ``last_seen`` of known ones; one transaction."""
    rows = [
        (
            f.vlan.hex(),
            f.proto,
            f.src[0],
            f.src[1],
            f.dst[0],
            f.dst[1],
            f.tunnel["type"],
            f.tunnel["vni"],
            f.tunnel["vlan"],
            f.tunnel["outer"]["src_ip"],
            f.tunnel["outer"]["dest_ip"],
            json.dumps(f.tunnel, sort_keys=True),
            f.first_seen / _NS,
            f.last_seen / _NS,
        )
        for f in flows
    ]
    if rows:
        with db:
            db.executemany(
                "INSERT INTO tunnels (vlan, proto, src_ip, src_port, dst_ip, dst_port, kind, vni,"
                " vlan_id, outer_src_ip, outer_dst_ip, tunnel, first_seen, last_seen)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (vlan, proto, src_ip, src_port, dst_ip, dst_port, first_seen)"
                " DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
                rows,
            )
    return len(rows)


def vlan_text(vlan: bytes | Sequence[int]) -> str:
    """VLAN ids as stored: from frame bytes, or from the ``vlan`` array of a Suricata event."""
    if isinstance(vlan, bytes | bytearray):
        return bytes(vlan).hex()
    return b"".join((v & 0x0FFF).to_bytes(2, "big") for v in vlan).hex()


def lookup(
    db: sqlite3.Connection,
    src: str,
    sport: int,
    dst: str,
    dport: int,
    vlan: bytes | Sequence[int],
    ts: float,
    window: float = 3600.0,
) -> dict[str, Any] | None:
    """The inner flow with this tuple (either direction) on these VLAN ids, started last
    before ``ts`` (epoch seconds); its ``tunnel`` is decoded. For protocols without ports,
    pass 0 for both ports. Addresses in any notation (Suricata writes IPv6 uncompressed)."""
    src, dst = str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst))
    cur = db.execute(
        "SELECT * FROM tunnels WHERE vlan = ? AND ((src_ip=? AND src_port=? AND dst_ip=? AND"
        " dst_port=?) OR (src_ip=? AND src_port=? AND dst_ip=? AND dst_port=?))"
        " AND first_seen <= ? AND first_seen >= ? ORDER BY first_seen > ?, abs(first_seen - ?)"
        " LIMIT 1",
        (vlan_text(vlan), src, sport, dst, dport, dst, dport, src, sport)
        + (ts + 1.0, ts - window, ts, ts),
    )
    row = cur.fetchone()
    if row is None:
        return None
    out = dict(zip([d[0] for d in cur.description], row, strict=True))
    out["tunnel"] = json.loads(out["tunnel"])
    return out
