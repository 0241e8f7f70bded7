"""Finding an event's connection in the cache: by wire tuple, then by real tuple, memoized per
flow, with a bounded wait for rows that are not visible yet.

Why memoize per flow: a flow produces many events (alerts, http, fileinfo, flow) and each SQL
lookup costs far more than parsing the line; Suricata's ``flow_id`` plus the tuple names one
flow, so its answer cannot change. Misses are memoized too, once they are final (the event was
too old for its row to be still on the way, or the wait ran out): that is what keeps non-proxied
traffic cheap.

Why wait at all: the normalizer commits a connection's row before it forwards the first frame of
the flow, so a missing row is normally final. Only a reader whose view lags (another host's
copy, a checkpointed restart racing a new writer) can see an event first; follow mode therefore
gives events younger than ``wait`` seconds that long for their row, and counts them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from eve_enricher.enrich import (
    Connection,
    Event,
    Tuple4,
    cache_addr,
    event_time,
    reference_time,
)
from normalizer.cache.connections import ConnectionCache

_MISSING = object()


def _unordered(t: Tuple4) -> Tuple4:
    """The tuple with its ends in a fixed order: a flow's events in both directions (a request's
    http event, the response's fileinfo) share one memo entry and so one connection."""
    return t if (t[0], t[1]) <= (t[2], t[3]) else (t[2], t[3], t[0], t[1])


V = TypeVar("V")


class FlowMemo(dict[tuple[object, ...], V]):
    """Answers per flow, bounded: beyond ``size`` entries the oldest is forgotten (plain dict
    order, cheaper per event than an LRU's reordering; a flow that falls out is looked up
    again, with the same answer)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def remember(self, key: tuple[object, ...], value: V) -> None:
        self[key] = value
        if len(self) > self.size:
            del self[next(iter(self))]


class CacheLookup:
    """``LookupFn`` over a ``ConnectionCache``: wire tuple first, then real tuple."""

    def __init__(self, cache: ConnectionCache) -> None:
        self.cache = cache

    def __call__(self, t: Tuple4, ts: float, window: float) -> Connection | None:
        src, sport, dst, dport = cache_addr(t[0]), t[1], cache_addr(t[2]), t[3]
        row = self.cache.lookup_any(src, sport, dst, dport, ts, window)
        return None if row is None else Connection.from_row(row)


@dataclass
class MatchCounters:
    memo_hits: int = 0
    lookups: int = 0
    late: int = 0  # found only after waiting for the row
    waited_unmatched: int = 0  # waited the full time, no row (also non-proxied live flows)
    # earliest and latest time of the events looked up (None: none): compared with the
    # cache's time range when nothing matched
    first_ts: float | None = None
    last_ts: float | None = None


class Matcher:
    """The connection of an event, memoized per (flow_id, tuple) in a ``FlowMemo``."""

    def __init__(
        self,
        lookup: Callable[[Tuple4, float, float], Connection | None],
        *,
        wait: float = 0.0,
        window: float = 3600.0,
        memo_size: int = 65536,
        poll: float = 0.05,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.lookup = lookup
        self.wait = wait
        self.window = window
        self.poll = poll
        self.clock = clock
        self.sleep = sleep
        self.counters = MatchCounters()
        self._memo: FlowMemo[Connection | None] = FlowMemo(memo_size)

    def match(self, event: Event, t: Tuple4) -> Connection | None:
        flow_id = event.get("flow_id")
        # Suricata's flow_id is an integer; anything else names no flow and is not memoized
        key = (flow_id, *_unordered(t)) if type(flow_id) is int else None
        if key is not None:
            hit = self._memo.get(key, _MISSING)
            if hit is not _MISSING:
                self.counters.memo_hits += 1
                return hit  # type: ignore[return-value]
        ts = event_time(event)
        c = self.counters
        if ts is None:
            ts = self.clock()
        else:
            if c.first_ts is None or ts < c.first_ts:
                c.first_ts = ts
            if c.last_ts is None or ts > c.last_ts:
                c.last_ts = ts
        ref = reference_time(event, ts)
        window = self.window
        c.lookups += 1
        conn = self.lookup(t, ref, window)
        if conn is None and self.wait > 0:
            conn = self._wait_for(t, ts, ref, window)
        if key is not None:
            self._memo.remember(key, conn)
        return conn

    def _wait_for(self, t: Tuple4, ts: float, ref: float, window: float) -> Connection | None:
        """Poll until the row shows up or the event is ``wait`` seconds old (at most ``wait``
        from now, whatever the clocks say). Sleeps exactly up to each event's own deadline, so
        a stream of fresh non-proxied events becomes a ``wait``-long delay line, not a stall."""
        now = self.clock()
        deadline = min(ts, now) + self.wait
        if now >= deadline:
            return None
        while True:
            self.sleep(min(self.poll, max(0.0, deadline - now)))
            self.counters.lookups += 1
            conn = self.lookup(t, ref, window)
            if conn is not None:
                self.counters.late += 1
                return conn
            now = self.clock()
            if now >= deadline:
                self.counters.waited_unmatched += 1
                return None


VLAN_LAYERS_MAX = 3  # Suricata decodes at most three VLAN layers (VLAN_MAX_LAYERS)


def vlan_ids(vlan: object) -> list[int] | None:
    """eve's ``vlan`` array as VLAN ids, None unless it is a list of at most three 12-bit ids
    (a tunnel's frames always carry one: anything else cannot be one, and a longer list would
    make memo keys of any size)."""
    if (
        type(vlan) is not list
        or len(vlan) > VLAN_LAYERS_MAX
        or not all(type(v) is int and 0 <= v <= 0xFFF for v in vlan)
    ):
        return None
    return vlan


class TunnelMatcher:
    """The tunnel of an event that belongs to no proxied connection, memoized per flow.

    Why separate from ``Matcher``: mirrored traffic is mostly not proxied, so this is the only
    lookup most of its events get; the key includes the event's ``vlan`` ids, because the
    normalizer tags each VNI's inner frames with its own VLAN id and flows of two mirror
    sessions may share a 5-tuple. No waiting: a tunnel row is committed before the first frame
    of its inner flow is forwarded, so a miss is final.
    """

    def __init__(
        self,
        cache: ConnectionCache,
        *,
        window: float = 3600.0,
        memo_size: int = 65536,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.window = window
        self.clock = clock
        self._memo: FlowMemo[dict[str, Any] | None] = FlowMemo(memo_size)

    def match(self, event: Event, t: Tuple4) -> dict[str, Any] | None:
        ids = vlan_ids(event.get("vlan"))
        if ids is None:
            return None
        flow_id = event.get("flow_id")
        key = (flow_id, *_unordered(t), *ids) if type(flow_id) is int else None
        if key is not None:
            hit = self._memo.get(key, _MISSING)
            if hit is not _MISSING:
                return hit  # type: ignore[return-value]
        ts = event_time(event)
        if ts is None:
            ts = self.clock()
        try:
            row = self.cache.lookup_tunnel(
                t[0], t[1], t[2], t[3], ids, reference_time(event, ts), self.window
            )
        except ValueError:  # an address the cache cannot parse: no tunnel
            row = None
        tunnel: dict[str, Any] | None = None if row is None else row["tunnel"]
        if key is not None:
            self._memo.remember(key, tunnel)
        return tunnel
