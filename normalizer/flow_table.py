"""Bounded table of tracked flows.

Only SYNs from trusted proxies create entries, but a client can still make the proxy open
connections without end, so the table has a hard size limit: when full it first expires idle
flows and then evicts the oldest-created one (dict order), counting every eviction. Expiry is a
periodic sweep rather than per-packet bookkeeping, to keep the per-packet cost at one lookup.
"""

from __future__ import annotations

from collections.abc import Iterator

from normalizer.flow import Flow


class FlowTable:
    def __init__(self, max_flows: int) -> None:
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        self.max_flows = max_flows
        self.flows: dict[bytes, Flow] = {}  # read directly by the engine's hot path

    def __len__(self) -> int:
        return len(self.flows)

    def __iter__(self) -> Iterator[tuple[bytes, Flow]]:
        return iter(list(self.flows.items()))

    def is_full(self) -> bool:
        return len(self.flows) >= self.max_flows

    def put(self, key: bytes, flow: Flow) -> None:
        """Insert or replace; the caller makes room first (``is_full`` / ``oldest``)."""
        self.flows.pop(key, None)  # a replaced flow moves to the young end
        self.flows[key] = flow

    def pop(self, key: bytes) -> Flow | None:
        return self.flows.pop(key, None)

    def oldest(self) -> tuple[bytes, Flow]:
        """The oldest-created flow (the caller drops it): the first in dict order."""
        return next(iter(self.flows.items()))
