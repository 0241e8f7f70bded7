"""Prometheus exposition of the live normalizer's counters on a local port.

Why a custom collector instead of prometheus_client Counter objects: the engine already counts
every outcome in plain integers on the hot path; incrementing a second, lock-protected metric
per packet would double the bookkeeping. The collector reads a snapshot when Prometheus scrapes
(in the HTTP server's thread; integer reads are atomic under the GIL, dicts are copied).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

Snapshot = Callable[[], Mapping[str, Any]]
PREFIX = "suricata_normalizer"

# snapshot key -> (metric name, help, label name, label value); one family per name.
_LABELLED = (
    ("packets_in", "packets", "Frames by direction", "direction", "in"),
    ("packets_out", "packets", "Frames by direction", "direction", "out"),
    (
        "header_only_dropped",
        "packets_dropped",
        "Frames dropped on purpose",
        "reason",
        "header_only",
    ),
    ("midstream_dropped", "packets_dropped", "Frames dropped on purpose", "reason", "midstream"),
    ("passed_not_tcp", "packets_passed", "Frames forwarded untouched", "reason", "not_tcp"),
    ("passed_untracked", "packets_passed", "Frames forwarded untouched", "reason", "untracked"),
    ("passed_unparsed_flow", "packets_passed", "Frames forwarded untouched", "reason", "no_header"),
    ("flows_created", "flows", "Flow lifecycle events", "event", "created"),
    ("flows_restarted", "flows", "Flow lifecycle events", "event", "restarted"),
    ("flows_resumed", "flows", "Flow lifecycle events", "event", "resumed"),
    ("flows_expired", "flows", "Flow lifecycle events", "event", "expired"),
    ("flows_evicted", "flows", "Flow lifecycle events", "event", "evicted"),
    ("header_malformed", "header_problems", "Headers not stripped", "problem", "malformed"),
    ("header_excluded", "header_problems", "Headers not stripped", "problem", "excluded_kind"),
    ("header_none", "header_problems", "Headers not stripped", "problem", "no_header"),
    ("header_missing", "header_problems", "Headers not stripped", "problem", "missing"),
    ("header_truncated", "header_problems", "Headers not stripped", "problem", "truncated"),
    ("hold_overflow", "header_problems", "Headers not stripped", "problem", "hold_overflow"),
    ("hold_timeout", "header_problems", "Headers not stripped", "problem", "hold_timeout"),
    ("csum_completed", "checksums", "Checksums on the way in", "outcome", "offload_completed"),
    ("checksum_completed", "checksums", "Checksums on the way in", "outcome", "recomputed"),
    ("checksum_kept", "checksums", "Checksums on the way in", "outcome", "kept"),
)
_PLAIN = (
    ("rewritten", "packets_rewritten", "Frames of proxied flows rewritten"),
    ("headers_local", "headers_local", "PROXY v2 LOCAL headers stripped"),
    ("addresses_restored", "addresses_restored", "Flows shown with the real client and target"),
    ("events_dropped", "events_dropped", "Header events lost before the cache saw them"),
    ("kernel_packets", "kernel_packets", "Packets the kernel passed to the capture ring"),
    ("kernel_drops", "kernel_drops", "Packets the kernel dropped: capture ring full"),
    ("kernel_freezes", "kernel_freezes", "Times the capture ring was frozen"),
    ("capture_truncated", "capture_truncated", "Frames larger than a ring block, cut"),
    ("capture_oversize", "capture_oversize", "GSO/GRO frames larger than a 1500-byte MTU"),
    ("tap_frames", "tap_frames", "Frames written to the tap"),
    ("tap_bytes", "tap_bytes", "Bytes written to the tap"),
    ("tap_write_errors", "tap_write_errors", "Frames that could not be written to the tap"),
    ("tap_recreated", "tap_recreated", "Times the tap device was recreated"),
    ("cache_writes", "cache_writes", "Transactions written to the connection cache"),
    ("cache_rows", "cache_rows", "Connections recorded in the cache"),
    ("cache_tunnel_rows", "cache_tunnel_rows", "Decapsulated inner flows recorded in the cache"),
    ("cache_errors", "cache_errors", "Cache writes that failed"),
    ("cache_expired", "cache_expired_rows", "Cache rows removed by retention"),
    ("cache_write_seconds", "cache_write_seconds", "Time spent in cache writes"),
    ("reloads", "reloads", "Configuration reloads (SIGHUP)"),
    ("frames_failed", "frames_failed", "Frames passed untouched because processing them raised"),
    ("internal_errors", "internal_errors", "Ticks and cache hand-offs that raised"),
    ("tunnel_untrusted", "tunnel_untrusted", "Tunnel packets from a source not in tunnel_peers"),
    ("worker_restarts", "worker_restarts", "Live workers restarted after they died (--workers)"),
)
_GAUGES = (
    ("flows_active", "flows_active", "Flows in the flow table"),
    ("held_packets", "held_packets", "Frames held waiting for a header"),
    ("cache_write_seconds_max", "cache_write_seconds_max", "Slowest cache write so far"),
    ("capture_promisc", "capture_promisc", "1 while the capture holds a promiscuous membership"),
    ("no_proxied_flows", "no_proxied_flows", "1 when frames arrive but no header was stripped"),
    ("workers_alive", "workers_alive", "Live worker processes running (--workers; 0 with one)"),
)


class NormalizerCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        info = InfoMetricFamily(f"{PREFIX}_build", "Version of the normalizer")
        info.add_metric([], {"version": _version()})
        yield info
        snap = self._snapshot()
        families: dict[str, CounterMetricFamily] = {}
        for key, name, doc, label, value in _LABELLED:
            fam = families.get(name)
            if fam is None:
                fam = families[name] = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=[label])
            fam.add_metric([value], float(snap.get(key, 0)))
        yield from families.values()
        kinds = CounterMetricFamily(
            f"{PREFIX}_headers_stripped", "Headers stripped by kind", labels=["kind"]
        )
        for kind, n in dict(snap.get("headers_stripped", {})).items():
            kinds.add_metric([str(kind)], float(n))
        yield kinds
        backends = CounterMetricFamily(
            f"{PREFIX}_headers_stripped_by_backend",
            "Headers stripped per backend (decoy) address",
            labels=["backend"],
        )
        for backend, n in dict(snap.get("headers_by_backend", {})).items():
            backends.add_metric([str(backend)], float(n))
        yield backends
        for key, name, doc in _PLAIN:
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=float(snap.get(key, 0)))
        for key, name, doc in _GAUGES:
            yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=float(snap.get(key, 0)))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("suricata-normalizer")
    except PackageNotFoundError:
        from normalizer import __version__

        return __version__


def with_process_metrics(registry: CollectorRegistry) -> CollectorRegistry:
    """Add prometheus_client's process (CPU, memory, file descriptors, start time) and
    platform (Python version) collectors to ``registry``."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def serve(port: int, snapshot: Snapshot, addr: str = "127.0.0.1") -> CollectorRegistry:
    """Start the scrape endpoint in a daemon thread on ``addr`` (default local only: the
    service is a sidecar; ``--metrics-addr`` for a Prometheus elsewhere)."""
    registry = with_process_metrics(CollectorRegistry(auto_describe=False))
    registry.register(NormalizerCollector(snapshot))
    start_http_server(port, addr=addr, registry=registry)
    return registry
