"""Bounded table of tracked flows.

Only SYNs from trusted proxies create entries, but a client can still make the proxy open
connections without end, so the table has a hard size limit: when full it first expires idle
flows and then evicts the oldest-created one, counting every eviction. Expiry is a periodic
sweep rather than per-packet bookkeeping, to keep the per-packet cost at one lookup.

Why a queue beside the dict: a dict is in insertion order, but finding its oldest entry
(``next(iter(d))``) walks every slot deleted before it, and a SYN flood at a full table deletes
from the front once per SYN: each evicting SYN cost about seven normal packets. The queue holds
the flows in creation order; each flow knows its key, so an entry whose flow is no longer the
one in the dict (expired, evicted, replaced by a reused port) is stale and skipped. Eviction is
O(1) amortized. Stale entries are dropped by rebuilding the queue from the dict (whose order is
the same) once they outnumber a quarter of the table, so they hold at most that many dead flows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

_SLACK = 64  # stale queue entries always tolerated, so a small table is not rebuilt per removal


class Keyed(Protocol):
    """What the table stores: anything that can remember its own key (``Flow``, the decap
    stage's ``TunnelFlow``)."""

    key: bytes


V = TypeVar("V", bound=Keyed)


class FlowTable(Generic[V]):
    def __init__(self, max_flows: int) -> None:
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        self.max_flows = max_flows
        self.flows: dict[bytes, V] = {}  # read directly by the engine's hot path
        self._order: deque[V] = deque()  # creation order, oldest left; may hold stale flows

    def __len__(self) -> int:
        return len(self.flows)

    def __iter__(self) -> Iterator[tuple[bytes, V]]:
        return iter(list(self.flows.items()))

    def is_full(self) -> bool:
        return len(self.flows) >= self.max_flows

    def put(self, key: bytes, flow: V) -> None:
        """Insert or replace; the caller makes room first (``is_full`` / ``oldest``)."""
        flows = self.flows
        if flows.pop(key, None) is not None:  # a replaced flow moves to the young end
            self._removed()
        flow.key = key
        flows[key] = flow
        self._order.append(flow)

    def pop(self, key: bytes) -> V | None:
        flow = self.flows.pop(key, None)
        if flow is not None:
            order = self._order
            if order and order[0] is flow:  # the oldest (an eviction): no stale entry left
                order.popleft()
            else:
                self._removed()
        return flow

    def oldest(self) -> tuple[bytes, V]:
        """The oldest-created flow (the caller drops it; the table must not be empty).

        Queue entries whose flow already left the dict are discarded on the way: O(1)
        amortized, however many flows a flood removed from the front.
        """
        flows, order = self.flows, self._order
        while True:
            flow = order[0]
            key = flow.key
            if flows.get(key) is flow:
                return key, flow
            order.popleft()

    def pop_oldest(self) -> tuple[bytes, V]:
        """Remove and return the oldest flow (the table must not be empty)."""
        key, flow = self.oldest()
        self.pop(key)
        return key, flow

    def _removed(self) -> None:
        """A flow left the dict; its queue entry is stale now. Rebuild when they pile up."""
        if len(self._order) - len(self.flows) > len(self.flows) // 4 + _SLACK:
            self._order = deque(self.flows.values())
