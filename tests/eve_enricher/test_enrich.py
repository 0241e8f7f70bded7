"""Enrichment of hand-written eve events against real cache rows (ConnectionCache.record)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import orjson
import pytest

from eve_enricher.community_id import community_id
from eve_enricher.enrich import Connection, apply, enrich, eve_addr
from eve_enricher.lookup import CacheLookup, Matcher
from eve_enricher.stream import LineEnricher
from normalizer.cache.connections import ConnectionCache
from normalizer.proxy_headers.base import Tlv
from tests.eve_enricher.helpers import (
    BACKEND,
    CLIENT,
    PROXY,
    T0,
    TARGET,
    alert,
    event,
    line,
    local_header,
    record,
    v1_unknown_header,
    v2_header,
)


def _enricher(db: Path, wait: float = 0.0) -> LineEnricher:
    return LineEnricher(Matcher(CacheLookup(ConnectionCache(db, readonly=True)), wait=wait))


def _run(db: Path, ev: dict[str, Any]) -> dict[str, Any]:
    out = _enricher(db).line(line(ev), 0)
    result = orjson.loads(out)
    assert isinstance(result, dict)
    return result


def _tuple(ev: dict[str, Any]) -> tuple[str, int, str, int]:
    return (ev["src_ip"], ev["src_port"], ev["dest_ip"], ev["dest_port"])


# the wire hop's community_id (symmetric: both directions share it), for joins with sensors
# that see the proxy-backend hop
WIRE_CID = community_id(6, PROXY[0], BACKEND[0], PROXY[1], BACKEND[1])
WIRE_FWD = {
    "src_ip": PROXY[0],
    "src_port": PROXY[1],
    "dest_ip": BACKEND[0],
    "dest_port": 80,
    "community_id": WIRE_CID,
}
WIRE_REV = {
    "src_ip": BACKEND[0],
    "src_port": 80,
    "dest_ip": PROXY[0],
    "dest_port": PROXY[1],
    "community_id": WIRE_CID,
}


def test_alert_gets_real_tuple_everywhere_and_proxy(db: Path) -> None:
    out = _run(db, alert(PROXY, BACKEND))
    assert _tuple(out) == (*CLIENT, *TARGET)
    assert out["alert"]["flow"] == {
        "src_ip": CLIENT[0],
        "dest_ip": TARGET[0],
        "src_port": CLIENT[1],
        "dest_port": TARGET[1],
    }
    # Suricata 7 logs the flow's tuple in the alert's top-level ``flow`` object
    flow = out["flow"]
    assert (flow["src_ip"], flow["src_port"], flow["dest_ip"], flow["dest_port"]) == (
        *CLIENT,
        *TARGET,
    )
    assert flow["pkts_toserver"] == 4
    assert out["community_id"] == community_id(6, CLIENT[0], TARGET[0], CLIENT[1], TARGET[1])
    assert out["proxy"] == {
        "wire": WIRE_FWD,
        "header": {
            "kind": "proxy-v2",
            "command": "PROXY",
            "family": "TCP4",
            "length": out["proxy"]["header"]["length"],
            "authority": "decoy.example",
            "alpn": "h2",
            "unique_id": "0102",
            "crc32c": out["proxy"]["header"]["crc32c"],
        },
    }
    # everything else is untouched, in Suricata's order, with proxy last
    assert list(out)[:-1] == list(alert(PROXY, BACKEND))
    assert out["http"] == alert(PROXY, BACKEND)["http"]


def test_reversed_direction_keeps_direction(db: Path) -> None:
    """fileinfo / to_client alerts have src = backend: src becomes the real target."""
    ev = event("fileinfo", BACKEND, PROXY, fileinfo={"filename": "/", "size": 153})
    out = _run(db, ev)
    assert _tuple(out) == (*TARGET, *CLIENT)
    assert out["proxy"]["wire"] == WIRE_REV
    # the community id does not depend on the direction
    assert out["community_id"] == community_id(6, CLIENT[0], TARGET[0], CLIENT[1], TARGET[1])
    # a to_client alert: packet reversed, its flow object still in the flow's direction
    out = _run(db, alert(BACKEND, PROXY))
    assert _tuple(out) == (*TARGET, *CLIENT)
    assert out["alert"]["flow"]["src_ip"] == TARGET[0]
    assert out["flow"]["src_ip"] == CLIENT[0]


@pytest.mark.parametrize(
    "ev",
    [
        event("flow", PROXY, BACKEND, flow={"pkts_toserver": 6, "start": "x", "state": "closed"}),
        event("http", PROXY, BACKEND, tx_id=0, http={"hostname": "decoy.example", "url": "/"}),
        event("tls", PROXY, BACKEND, tls={"sni": "decoy.example", "version": "TLS 1.3"}),
        event("anomaly", PROXY, BACKEND, anomaly={"type": "applayer", "event": "X"}),
        event("fileinfo", PROXY, BACKEND, fileinfo={"size": 1}),
    ],
    ids=["flow", "http", "tls", "anomaly", "fileinfo"],
)
def test_every_event_type_with_addresses(db: Path, ev: dict[str, Any]) -> None:
    out = _run(db, ev)
    assert _tuple(out) == (*CLIENT, *TARGET)
    assert out["proxy"]["wire"] == WIRE_FWD
    kind = ev["event_type"]
    assert out[kind] == ev[kind]


def test_non_proxied_and_addressless_lines_pass_byte_for_byte(db: Path) -> None:
    enr = _enricher(db)
    # odd spacing and key order that a re-serialization would change
    other = b'{"timestamp": "2023-11-14T22:13:21.000000+0000", "flow_id": 9,  "event_type":"alert",'
    other += (
        b'"src_ip":"192.0.2.9","src_port":40000,"dest_ip":"192.0.2.2","dest_port":80,"x":1.50}\n'
    )
    stats = (
        b'{"timestamp":"2023-11-14T22:13:21.000000+0000","event_type":"stats","stats":{"a":1}}\n'
    )
    icmp = line(event("flow", PROXY, BACKEND, proto="ICMP"))
    icmp = icmp.replace(b'"src_port":40000,', b"").replace(b'"dest_port":80,', b"")
    for raw in (other, stats, icmp):
        assert enr.line(raw, 0) == raw
    assert enr.line(other.rstrip(b"\n"), 0) == other  # a last line without newline gets one
    assert enr.counters.unchanged == 4 and enr.counters.enriched == 0


def test_same_wire_port_on_another_backend_is_not_matched(db: Path) -> None:
    out = _enricher(db).line(line(event("alert", PROXY, ("192.0.2.3", 80))), 0)
    assert b"proxy" not in out


def test_event_before_the_connection_or_past_the_window(db: Path) -> None:
    enr = _enricher(db)
    early = line(event("alert", PROXY, BACKEND, t=T0 - 10))
    late = line(event("alert", PROXY, BACKEND, t=T0 + 7200, flow_id=2))
    assert enr.line(early, 0) == early
    assert enr.line(late, 0) == late
    # a flow event logged long after its start still finds its row through flow.start
    ev = event(
        "flow",
        PROXY,
        BACKEND,
        t=T0 + 7200,
        flow_id=3,
        flow={"start": "2023-11-14T22:13:20.5+00:00"},
    )
    assert "proxy" in _run(db, ev)


def test_port_reuse_picks_the_connection_running_at_the_event(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    record(path, v2_header(client=("203.0.113.7", 1111)), t=T0)
    record(path, v2_header(client=("203.0.113.8", 2222)), t=T0 + 100)
    first = _run(path, event("http", PROXY, BACKEND, t=T0 + 50, flow_id=1))
    second = _run(path, event("http", PROXY, BACKEND, t=T0 + 150, flow_id=2))
    assert first["src_ip"] == "203.0.113.7" and second["src_ip"] == "203.0.113.8"


def test_ipv6_suricata_spelling(tmp_path: Path) -> None:
    """Suricata writes IPv6 expanded; the cache holds it compressed; output is expanded."""
    path = tmp_path / "c.db"
    wire_c, wire_s = ("2001:db8:b::1", 42508), ("2001:db8:b::2", 80)
    real_c, real_t = ("2001:db8:a::10", 41652), ("2001:db8:a::1", 80)
    record(path, v2_header(real_c, real_t), wire_c, wire_s)
    exp = [(ipaddress.IPv6Address(a).exploded, p) for a, p in (wire_c, wire_s, real_c, real_t)]
    assert exp[0][0] == "2001:0db8:000b:0000:0000:0000:0000:0001"
    out = _run(path, alert(exp[0], exp[1], flow_src=exp[0], flow_dst=exp[1]))
    assert _tuple(out) == (*exp[2], *exp[3])
    assert out["flow"]["src_ip"] == exp[2][0]
    assert out["proxy"]["wire"]["src_ip"] == exp[0][0]
    assert out["community_id"] == community_id(6, real_c[0], real_t[0], real_c[1], real_t[1])


def test_ipv6_client_behind_ipv4_hop(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    real_c, real_t = ("2001:db8:a::10", 41652), ("2001:db8:a::1", 443)
    record(path, v2_header(real_c, real_t))
    out = _run(path, event("http", PROXY, BACKEND))
    assert out["src_ip"] == eve_addr(real_c[0]) and out["dest_ip"] == eve_addr(real_t[0])
    assert out["proxy"]["header"]["family"] == "TCP6"


@pytest.mark.parametrize("header", [local_header(), v1_unknown_header()], ids=["LOCAL", "UNKNOWN"])
def test_header_without_addresses_keeps_wire_tuple(tmp_path: Path, header: Any) -> None:
    path = tmp_path / "c.db"
    record(path, header)
    ev = event("http", PROXY, BACKEND, http={"url": "/healthz"})
    out = _run(path, ev)
    assert _tuple(out) == _tuple(ev)
    assert out["community_id"] == community_id(6, PROXY[0], BACKEND[0], PROXY[1], BACKEND[1])
    assert out["proxy"]["wire"] == WIRE_FWD
    assert out["proxy"]["header"]["command"] == header.command
    assert out["proxy"]["header"]["family"] == header.family


def test_real_tuple_events_give_the_same_document(db: Path) -> None:
    """The normalizer restoring addresses or not must not change what the enricher writes."""
    for wire_ev, real_ev in [
        (alert(PROXY, BACKEND), alert(CLIENT, TARGET, flow_src=CLIENT, flow_dst=TARGET)),
        (alert(BACKEND, PROXY), alert(TARGET, CLIENT, flow_src=CLIENT, flow_dst=TARGET)),
        (event("flow", PROXY, BACKEND), event("flow", CLIENT, TARGET)),
        (event("fileinfo", BACKEND, PROXY), event("fileinfo", TARGET, CLIENT)),
    ]:
        real_ev["community_id"] = community_id(6, CLIENT[0], TARGET[0], CLIENT[1], TARGET[1])
        a = _enricher(db).line(line(wire_ev), 0)
        b = _enricher(db).line(line(real_ev), 0)
        assert a == b
        assert b"proxy" in a


def test_event_without_community_id_gets_none(db: Path) -> None:
    out = _run(db, event("http", PROXY, BACKEND, community_id=False))
    assert "community_id" not in out and "proxy" in out


def test_alert_source_and_target_objects(db: Path) -> None:
    ev = alert(PROXY, BACKEND)
    ev["alert"]["source"] = {"ip": PROXY[0], "port": PROXY[1]}
    ev["alert"]["target"] = {"ip": BACKEND[0], "port": BACKEND[1]}
    out = _run(db, ev)
    assert out["alert"]["source"] == {"ip": CLIENT[0], "port": CLIENT[1]}
    assert out["alert"]["target"] == {"ip": TARGET[0], "port": TARGET[1]}


def test_apply_is_pure_and_ssl_fields_appear(tmp_path: Path) -> None:
    ssl = bytes([0x07]) + bytes(4) + b"\x21\x00\x07TLSv1.3" + b"\x22\x00\x03bob"
    header = v2_header(tlvs=[Tlv(0x20, ssl), Tlv(0xEA, b"\x01vpce-0123")])
    path = tmp_path / "c.db"
    record(path, header)
    row = ConnectionCache(path, readonly=True).lookup_wire(*PROXY, *BACKEND, ts=T0 + 1)
    assert row is not None
    conn = Connection.from_row(row)
    ev = alert(PROXY, BACKEND)
    before = orjson.dumps(ev)
    out = apply(ev, conn)
    assert orjson.dumps(ev) == before
    assert out is not None
    assert out["proxy"]["header"]["ssl"] == {
        "client": 7,
        "verify": 0,
        "version": "TLSv1.3",
        "cn": "bob",
    }
    assert out["proxy"]["header"]["aws_vpce_id"] == "vpce-0123"
    # an event of another connection is left alone
    assert apply(event("http", ("192.0.2.9", 1), BACKEND), conn) is None
    # enrich() composes lookup and apply
    assert enrich(ev, lambda t, ts, w: conn) == out
    assert enrich(ev, lambda t, ts, w: None) is None


def test_memo_one_lookup_per_flow(db: Path) -> None:
    enr = _enricher(db)
    for i in range(50):
        enr.line(line(event("http", PROXY, BACKEND, tx_id=i)), 0)
        enr.line(line(event("http", ("192.0.2.9", 5), BACKEND, flow_id=7, tx_id=i)), 0)
    m = enr.matcher.counters
    assert (m.lookups, m.memo_hits) == (2, 98)
    assert enr.counters.enriched == 50


def test_late_row_waits_then_matches(tmp_path: Path) -> None:
    """A fresh event whose row is not visible yet waits (bounded) and is counted late."""
    path = tmp_path / "c.db"
    ConnectionCache(path).close()
    clock = [T0 + 1.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        clock[0] += s
        if len(sleeps) == 3:
            record(path, v2_header())

    matcher = Matcher(
        CacheLookup(ConnectionCache(path, readonly=True)),
        wait=2.0,
        clock=lambda: clock[0],
        sleep=sleep,
    )
    enr = LineEnricher(matcher)
    out = orjson.loads(enr.line(line(event("http", PROXY, BACKEND, t=T0 + 1.0)), 0))
    assert "proxy" in out and matcher.counters.late == 1
    # a non-proxied fresh event waits its full 2 s, then passes unchanged, counted
    raw = line(event("http", ("192.0.2.9", 5), BACKEND, t=clock[0], flow_id=8))
    before = clock[0]
    assert enr.line(raw, 0) == raw
    assert clock[0] - before == pytest.approx(2.0)
    assert matcher.counters.waited_unmatched == 1
    # an old event does not wait at all
    raw = line(event("http", ("192.0.2.9", 6), BACKEND, t=T0 - 100, flow_id=9))
    before = clock[0]
    assert enr.line(raw, 0) == raw and clock[0] == before
