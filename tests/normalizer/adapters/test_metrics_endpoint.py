"""The normalizer's scrape endpoint: bound where asked, with build and process metrics."""

from __future__ import annotations

import socket
import urllib.request

from normalizer.adapters.metrics import _version, serve
from normalizer.core.counters import Counters


def test_endpoint_has_build_and_process_metrics() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = Counters(packets_in=5)
    serve(port, c.as_dict, "127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert f'suricata_normalizer_build_info{{version="{_version()}"}} 1.0' in text
    assert 'suricata_normalizer_packets_total{direction="in"} 5.0' in text
    assert "process_cpu_seconds_total" in text and "python_info" in text
