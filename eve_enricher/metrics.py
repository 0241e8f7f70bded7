"""Prometheus exposition of the enricher's counters and its lag behind Suricata.

Why lag in bytes and in seconds: bytes (the eve file's size past our read position) say the
enricher falls behind a busy sensor; seconds (now minus the last event's ``timestamp``) say the
events a SOC sees are late, also when the file is quiet. Both are computed when Prometheus
scrapes, in the HTTP server's thread, from values the follow loop keeps anyway (integer and
reference reads are atomic under the GIL), so the per-line path pays nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from eve_enricher.enrich import eve_time
from eve_enricher.follower import FileFollower
from eve_enricher.stream import LineEnricher
from normalizer.adapters.metrics import with_process_metrics

PREFIX = "eve_enricher"

_COUNTERS = (
    ("lines", "Lines read from eve.json"),
    ("enriched", "Events enriched (proxied connection or tunnel found)"),
    ("unchanged", "Events passed byte for byte"),
    ("unknown", "TCP events whose tuple the connection cache does not know"),
    ("failed", "JSON objects that could not be enriched, passed unchanged"),
    ("rejected", "Lines that are not JSON objects, or too long"),
)


class EnricherState:
    """What the collector reads: set by the command once the enricher and follower exist."""

    def __init__(self, eve: Path | None, version: str) -> None:
        self.eve = eve
        self.version = version
        self.enricher: LineEnricher | None = None
        self.follower: FileFollower | None = None


def lag_bytes(eve: Path, follower: FileFollower) -> int:
    """Bytes of the current eve file not read yet (all of it if we still read a rotated one)."""
    try:
        st = os.stat(eve)
    except OSError:
        return 0
    pos = follower.position
    if (st.st_dev, st.st_ino) != (pos.dev, pos.ino):
        return st.st_size
    return max(0, st.st_size - pos.offset)


class EnricherCollector(Collector):
    def __init__(self, state: EnricherState, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock

    def collect(self) -> Iterator[Any]:
        st = self.state
        info = InfoMetricFamily(f"{PREFIX}_build", "Version of the enricher")
        info.add_metric([], {"version": st.version})
        yield info
        enricher = st.enricher
        if enricher is None:
            return
        c = enricher.counters
        for name, doc in _COUNTERS:
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=float(getattr(c, name)))
        if st.follower is not None and st.eve is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_lag_bytes",
                "Bytes of eve.json not read yet",
                value=float(lag_bytes(st.eve, st.follower)),
            )
        ts = eve_time(enricher.last_timestamp)
        if ts is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_lag_seconds",
                "Now minus the timestamp of the last event read",
                value=max(0.0, self.clock() - ts),
            )


def serve(port: int, state: EnricherState, addr: str = "127.0.0.1") -> CollectorRegistry:
    """Start the scrape endpoint in a daemon thread."""
    registry = with_process_metrics(CollectorRegistry(auto_describe=False))
    registry.register(EnricherCollector(state))
    start_http_server(port, addr=addr, registry=registry)
    return registry
