"""Pure enrichment: one eve event plus the proxied connection it belongs to -> the event as it
would read had Suricata seen the real client.

Why a pure module: every rule about *what* an enriched event looks like (direction, which nested
objects carry tuples, how addresses are spelt, what ``proxy`` holds) lives here and is tested on
hand-written events; reading files, the cache and time live elsewhere.

Address spelling: Suricata 7 writes IPv6 addresses fully expanded ("2001:0db8:000b:...") while the
connection cache stores the compressed form. Comparisons use the expanded form and every address
this module writes is expanded too, so an enriched event reads like one Suricata wrote, and an
event enriched from its wire tuple equals the same event of a flow whose addresses the normalizer
restored (enriched from its real tuple).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal, TypeGuard

from eve_enricher.community_id import TCP, community_id, proto_number

Endpoint = tuple[str, int]
Event = dict[str, Any]
# (src ip, src port, dest ip, dest port) as the event spells them
Tuple4 = tuple[str, int, str, int]
# (tuple, event time in epoch seconds, how far back the connection may have started) -> match
LookupFn = Callable[[Tuple4, float, float], "Connection | None"]

_IP_FAMILIES = frozenset({"TCP4", "TCP6", "UDP4", "UDP6"})

# What enrichment does to Suricata's own tuple (the names of Suricata's XFF modes):
# "overwrite" puts the real one in its place (and the wire one under ``proxy.wire``);
# "extra-data" keeps every Suricata key as written and adds the real one as ``proxy.real``.
Mode = Literal["overwrite", "extra-data"]
MODES: tuple[Mode, ...] = ("overwrite", "extra-data")


# The longest address text accepted from an event ("ffff:...:255.255.255.255" is 45): what
# is longer is no address, and is never kept in a memo (65536 entries of a 64 MiB string each
# would be memory without bound).
ADDR_MAX = 64


def is_addr(value: object) -> TypeGuard[str]:
    """Whether an event's value can be an address as Suricata writes it (a short string)."""
    return type(value) is str and len(value) <= ADDR_MAX


def eve_addr(addr: str) -> str:
    """An address as Suricata spells it: IPv6 expanded, IPv4 unchanged (unparsable: unchanged)."""
    if ":" not in addr or len(addr) > ADDR_MAX:
        return addr
    return _exploded(addr)


def cache_addr(addr: str) -> str:
    """An address as the connection cache spells it (Python's canonical, compressed form)."""
    if ":" not in addr or len(addr) > ADDR_MAX:
        return addr
    return _compressed(addr)


@lru_cache(maxsize=65536)
def _exploded(addr: str) -> str:
    try:
        return ipaddress.IPv6Address(addr).exploded
    except ValueError:
        return addr


@lru_cache(maxsize=65536)
def _compressed(addr: str) -> str:
    try:
        return ipaddress.IPv6Address(addr).compressed
    except ValueError:
        return addr


@dataclass(frozen=True, slots=True)
class Connection:
    """One proxied connection from the cache, addresses spelt as eve spells them.

    ``real_*`` is None when the header named no usable client (LOCAL health checks, v1 UNKNOWN,
    UNSPEC, UNIX sockets): such events keep the wire tuple and still get ``proxy``. ``header``
    is the ``proxy.header`` object, shared by every event of the connection: read-only.
    """

    wire_client: Endpoint
    wire_server: Endpoint
    real_client: Endpoint | None
    real_server: Endpoint | None
    header: dict[str, Any]
    tunnel: dict[str, Any] | None = None  # set when the connection came through VXLAN/GENEVE
    # the ``proxy`` object per (direction (1: client to server, -1: back), seed, with ``real``),
    # built once per flow
    _proxy: dict[tuple[int, int, bool], dict[str, Any]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _sides: dict[Tuple4, int] = field(default_factory=dict, compare=False, repr=False)

    def proxy_object(self, side: int, seed: int = 0, real: bool = False) -> dict[str, Any]:
        """``proxy`` for events in direction ``side``: shared by all of them, read-only.

        ``wire`` carries the wire tuple's community_id (joins with Zeek or Arkime sensors on
        the proxy-decoy hop); ``real`` (extra-data mode, when the header named a client) the
        real tuple in the event's direction and its community_id."""
        key = (side, seed, real)
        obj = self._proxy.get(key)
        if obj is None:
            obj = {"wire": _tuple_object(self.wire_client, self.wire_server, side, seed)}
            if real and self.real_client is not None and self.real_server is not None:
                obj["real"] = _tuple_object(self.real_client, self.real_server, side, seed)
            obj["header"] = self.header
            self._proxy[key] = obj
        return obj

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Connection:
        """From a ``ConnectionCache.lookup_*`` row."""
        real_client = real_server = None
        if (
            row["family"] in _IP_FAMILIES
            and row["real_src_ip"] is not None
            and row["real_dst_ip"] is not None
            and row["real_src_port"] is not None
            and row["real_dst_port"] is not None
        ):
            real_client = (eve_addr(row["real_src_ip"]), int(row["real_src_port"]))
            real_server = (eve_addr(row["real_dst_ip"]), int(row["real_dst_port"]))
        header: dict[str, Any] = {
            "kind": row["header_kind"],
            "command": row["command"],
            "family": row["family"],
            "length": row["header_len"],
        }
        for key, value in (row["fields"] or {}).items():
            header.setdefault(key, value)
        return cls(
            wire_client=(eve_addr(row["wire_src_ip"]), int(row["wire_src_port"])),
            wire_server=(eve_addr(row["wire_dst_ip"]), int(row["wire_dst_port"])),
            real_client=real_client,
            real_server=real_server,
            header=header,
            tunnel=row.get("tunnel") or None,
        )

    def sides(self, t: Tuple4) -> int:
        """``side`` of the event tuple's source if its destination is the other end, else 0;
        memoized per spelling of the tuple, since every event of a flow repeats it."""
        got = self._sides.get(t)
        if got is None:
            side = self.side((eve_addr(t[0]), t[1]))
            got = side if side and self.side((eve_addr(t[2]), t[3])) == -side else 0
            if len(self._sides) < 8:  # a flow has two directions; spellings are bounded too
                self._sides[t] = got
        return got

    def side(self, endpoint: Endpoint) -> int:
        """1 if ``endpoint`` is the client (wire or real), -1 if the server, 0 if neither."""
        if endpoint == self.wire_client or endpoint == self.real_client:
            return 1
        if endpoint == self.wire_server or endpoint == self.real_server:
            return -1
        return 0


def _tuple_object(client: Endpoint, server: Endpoint, side: int, seed: int) -> dict[str, Any]:
    """{src_ip, src_port, dest_ip, dest_port, community_id} in direction ``side`` (TCP: the
    cache records TCP connections only); no community_id for an address the hash cannot take."""
    a, b = (client, server) if side > 0 else (server, client)
    obj: dict[str, Any] = {"src_ip": a[0], "src_port": a[1], "dest_ip": b[0], "dest_port": b[1]}
    with contextlib.suppress(ValueError):
        obj["community_id"] = community_id(TCP, a[0], b[0], a[1], b[1], seed)
    return obj


def event_tuple(event: Event) -> Tuple4 | None:
    """The event's top-level tuple, or None when it has none (stats, ICMP, decoder events)."""
    src, sport = event.get("src_ip"), event.get("src_port")
    dst, dport = event.get("dest_ip"), event.get("dest_port")
    if (
        is_addr(src)
        and is_addr(dst)
        and type(sport) is int
        and type(dport) is int
        and 0 <= sport <= 0xFFFF
        and 0 <= dport <= 0xFFFF
    ):
        return (src, sport, dst, dport)
    return None


def eve_time(value: object) -> float | None:
    """An eve time ("2026-11-22T21:10:45.123456+0000") in epoch seconds, None if it is not one.

    A time without UTC offset (Suricata always writes one) is read as UTC, not as the local
    time: the answer must not depend on the machine, and local-time conversion can fail for
    years far from now."""
    if type(value) is not str:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def event_time(event: Event) -> float | None:
    """The event's ``timestamp`` in epoch seconds, None if it has no usable one."""
    return eve_time(event.get("timestamp"))


def reference_time(event: Event, ts: float) -> float:
    """The time that picks the event's connection among those sharing its tuple: when the
    flow started if the event says so (alerts and flow events do), else the event's own time.

    Why: a flow event is written when its flow ends, by which time a later connection with the
    same tuple may have begun (HAProxy in HTTP mode opens several backend connections for one
    client connection; with restored addresses they all carry the client's tuple)."""
    flow = event.get("flow")
    if type(flow) is dict:
        start = eve_time(flow.get("start"))
        if start is not None:
            return start
    return ts


def _remap(obj: dict[str, Any], conn: Connection, client: Endpoint, server: Endpoint) -> None:
    """Rewrite a nested {src_ip, src_port, dest_ip, dest_port} object in place, in its own
    direction (alert events' ``flow`` is in the flow's direction, not the packet's)."""
    src, sport = obj.get("src_ip"), obj.get("src_port")
    if type(src) is not str or type(sport) is not int:
        return
    side = conn.side((eve_addr(src), sport))
    if side == 0:
        return
    first, second = (client, server) if side > 0 else (server, client)
    obj["src_ip"], obj["src_port"] = first
    if "dest_ip" in obj:
        obj["dest_ip"] = second[0]
    if "dest_port" in obj:
        obj["dest_port"] = second[1]


def _remap_endpoint(
    obj: dict[str, Any], conn: Connection, client: Endpoint, server: Endpoint
) -> None:
    """Rewrite an {ip, port} object (alert.source / alert.target) in place."""
    ip, port = obj.get("ip"), obj.get("port")
    if type(ip) is not str or type(port) is not int:
        return
    side = conn.side((eve_addr(ip), port))
    if side:
        obj["ip"], obj["port"] = client if side > 0 else server


def apply(
    event: Event,
    conn: Connection,
    seed: int = 0,
    t: Tuple4 | None = None,
    copy: bool = True,
    mode: Mode = "overwrite",
) -> Event | None:
    """The enriched copy of ``event`` (the input is not modified), or None if the event's tuple
    is not this connection's (its ends are not the connection's two ends: keep the event as is).

    ``overwrite``: top level gets the real tuple in the event's own direction (src is the proxy
    side -> src is the real client; src is the backend -> src is the real target); ``flow``,
    ``alert.flow`` (Suricata 7 logs the flow's tuple there) and ``alert.source`` /
    ``alert.target`` likewise; ``community_id`` is recomputed when present. ``extra-data``:
    none of Suricata's keys change; the real tuple is ``proxy.real``. Both: ``proxy`` names the
    wire tuple (in the event's direction, with its community_id) and the header;
    ``encapsulation`` the VXLAN/GENEVE tunnel (Suricata's own ``tunnel`` object is never
    touched). ``t``: the event's tuple, if the caller has it already; ``copy=False``: the
    caller owns ``event`` (freshly parsed), so it is changed in place.
    """
    if t is None:
        t = event_tuple(event)
        if t is None:
            return None
    side = conn.sides(t)
    if side == 0:
        return None
    out = dict(event) if copy else event
    if mode == "extra-data":
        out["proxy"] = conn.proxy_object(side, seed, real=True)
        if conn.tunnel is not None:
            out["encapsulation"] = conn.tunnel
        return out
    client = conn.real_client or conn.wire_client
    server = conn.real_server or conn.wire_server
    src, dst = (client, server) if side > 0 else (server, client)
    out["src_ip"], out["src_port"] = src
    out["dest_ip"], out["dest_port"] = dst

    flow = out.get("flow")
    if type(flow) is dict and "src_ip" in flow:
        if copy:
            out["flow"] = flow = dict(flow)
        _remap(flow, conn, client, server)
    alert = out.get("alert")
    if type(alert) is dict:
        if copy:
            out["alert"] = alert = dict(alert)
        for key in ("flow", "source", "target"):
            sub = alert.get(key)
            if type(sub) is dict:
                if copy:
                    alert[key] = sub = dict(sub)
                if key == "flow":
                    _remap(sub, conn, client, server)
                else:
                    _remap_endpoint(sub, conn, client, server)

    if "community_id" in out:
        proto = proto_number(out.get("proto")) or TCP
        # an address the hash cannot take keeps Suricata's value
        with contextlib.suppress(ValueError):
            out["community_id"] = community_id(proto, src[0], dst[0], src[1], dst[1], seed)
    out["proxy"] = conn.proxy_object(side, seed)
    if conn.tunnel is not None:
        out["encapsulation"] = conn.tunnel
    return out


def enrich(
    event: Event,
    lookup: LookupFn,
    seed: int = 0,
    window: float = 3600.0,
    mode: Mode = "overwrite",
) -> Event | None:
    """Look the event's connection up and apply it: the enriched copy, or None (pass it as is).

    The unmemoized composition of the steps above, for callers that enrich single events; the
    line stream adds per-flow memoization and waiting for late cache rows around the same steps.
    """
    t = event_tuple(event)
    if t is None:
        return None
    ts = event_time(event)
    if ts is None:
        return None
    conn = lookup(t, reference_time(event, ts), window)
    return None if conn is None else apply(event, conn, seed, mode=mode)


__all__ = [
    "MODES",
    "Connection",
    "Event",
    "LookupFn",
    "Mode",
    "Tuple4",
    "apply",
    "cache_addr",
    "enrich",
    "eve_addr",
    "eve_time",
    "event_time",
    "event_tuple",
    "is_addr",
    "reference_time",
]
