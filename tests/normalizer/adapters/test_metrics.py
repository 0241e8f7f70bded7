"""The Prometheus collector renders the live counters it is given, per label."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from normalizer.adapters.metrics import NormalizerCollector
from normalizer.core.counters import Counters


def test_collector_exposes_checksum_backend_and_silence_metrics() -> None:
    snap = Counters().as_dict()
    snap.update(
        headers_by_backend={"192.0.2.11": 3, "192.0.2.12": 4},
        csum_completed=7,
        checksum_kept=2,
        capture_promisc=1,
        no_proxied_flows=0,
        capture_oversize=5,
    )
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NormalizerCollector(lambda: snap))
    text = generate_latest(reg).decode()
    assert 'suricata_normalizer_headers_stripped_by_backend_total{backend="192.0.2.12"} 4.0' in text
    assert 'suricata_normalizer_checksums_total{outcome="offload_completed"} 7.0' in text
    assert 'suricata_normalizer_checksums_total{outcome="kept"} 2.0' in text
    assert "suricata_normalizer_capture_promisc 1.0" in text
    assert "suricata_normalizer_no_proxied_flows 0.0" in text
    assert "suricata_normalizer_capture_oversize_total 5.0" in text
