"""Several connections with one tuple: the event goes to the connection it falls in.

Seen in the lab with HAProxy in HTTP mode: one client connection, two backend connections in
the same millisecond, both headers naming the client's ip:port -- with restored addresses,
Suricata sees two flows with the same tuple, and each flow's events must name its own wire
connection."""

from __future__ import annotations

from pathlib import Path

from eve_enricher.enrich import enrich
from eve_enricher.lookup import CacheLookup
from normalizer.cache.connections import ConnectionCache
from tests.eve_enricher.helpers import (
    BACKEND,
    CLIENT,
    T0,
    TARGET,
    alert,
    eve_ts,
    event,
    record,
    v2_header,
)


def _wire_port(db: Path, ev: dict[str, object]) -> int:
    cache = ConnectionCache(db, readonly=True)
    try:
        out = enrich(ev, CacheLookup(cache))
    finally:
        cache.close()
    assert out is not None
    return int(out["proxy"]["wire"]["src_port"])


def test_events_pick_the_connection_they_fall_in(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    record(db, v2_header(), ("192.0.2.1", 40001), BACKEND, t=T0)
    record(db, v2_header(), ("192.0.2.1", 40002), BACKEND, t=T0 + 0.5)
    # an http event between the two starts: the first; after the second: the second
    assert _wire_port(db, event("http", CLIENT, TARGET, t=T0 + 0.2)) == 40001
    assert _wire_port(db, event("http", CLIENT, TARGET, t=T0 + 0.7)) == 40002
    # logged after the second began, but its flow started (the cache records the flow's start,
    # as Suricata's flow.start does) with the first: the first
    late = event("flow", CLIENT, TARGET, t=T0 + 0.9, flow={"start": eve_ts(T0)})
    assert _wire_port(db, late) == 40001
    second = alert(CLIENT, TARGET, flow_src=CLIENT, flow_dst=TARGET)
    second["flow"]["start"] = eve_ts(T0 + 0.5)
    assert _wire_port(db, second) == 40002
    # an event a little before any connection (clock skew): the earliest after it
    assert _wire_port(db, event("anomaly", CLIENT, TARGET, t=T0 - 0.3)) == 40001
