"""Shared test material: cache rows built the way the normalizer builds them, eve events shaped
like Suricata 7.0.10 writes them (field order, expanded IPv6, the alert's ``flow`` object)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from normalizer.cache.connections import ConnectionCache
from normalizer.core.events import HeaderEvent
from normalizer.proxy_headers import proxy_v1, proxy_v2
from normalizer.proxy_headers.base import NeedMore, ProxyHeader, Tlv

T0 = 1_700_000_000.0  # 2023-11-14: old enough that nothing ever waits for a row
PROXY = ("192.0.2.1", 40000)  # wire: proxy side (first port)
BACKEND = ("192.0.2.2", 80)
CLIENT = ("203.0.113.7", 51000)  # real attacker
TARGET = ("198.51.100.1", 443)  # the address it attacked (the gateway's front)


def eve_ts(t: float) -> str:
    """eve's timestamp format: 2023-11-14T22:13:20.000000+0000."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


def v2_header(
    client: tuple[str, int] = CLIENT,
    target: tuple[str, int] = TARGET,
    tlvs: list[Tlv] | None = None,
) -> ProxyHeader:
    family = "TCP6" if ":" in client[0] else "TCP4"
    raw = proxy_v2.build(
        "PROXY",
        family,
        client[0],
        target[0],
        client[1],
        target[1],
        tlvs=tlvs
        if tlvs is not None
        else [Tlv(0x02, b"decoy.example"), Tlv(0x01, b"h2"), Tlv(0x05, b"\x01\x02")],
        with_crc32c=True,
    )
    h = proxy_v2.parse(raw)
    assert not isinstance(h, NeedMore)
    return h


def local_header() -> ProxyHeader:
    h = proxy_v2.parse(proxy_v2.build("LOCAL", "UNSPEC"))
    assert not isinstance(h, NeedMore)
    return h


def v1_unknown_header() -> ProxyHeader:
    h = proxy_v1.parse(b"PROXY UNKNOWN\r\n")
    assert not isinstance(h, NeedMore)
    return h


def record(
    db: Path,
    header: ProxyHeader,
    wire_client: tuple[str, int] = PROXY,
    wire_server: tuple[str, int] = BACKEND,
    t: float = T0,
) -> None:
    """One cache row, written through the normalizer's own ConnectionCache.record."""
    cache = ConnectionCache(db)
    try:
        cache.record([HeaderEvent(int(t * 1e9), wire_client, wire_server, b"", header)])
    finally:
        cache.close()


def event(
    event_type: str,
    src: tuple[str, int],
    dst: tuple[str, int],
    t: float = T0 + 1,
    flow_id: int = 1234567890,
    community_id: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A Suricata-shaped event (top-level key order as Suricata writes it)."""
    ev: dict[str, Any] = {
        "timestamp": eve_ts(t),
        "flow_id": flow_id,
        "in_iface": "br0",
        "event_type": event_type,
        "src_ip": src[0],
        "src_port": src[1],
        "dest_ip": dst[0],
        "dest_port": dst[1],
        "proto": "TCP",
        "pkt_src": "wire/pcap",
    }
    if community_id:
        ev["community_id"] = "1:placeholderplaceholder0000000="
    ev.update(extra)
    return ev


def alert(
    src: tuple[str, int],
    dst: tuple[str, int],
    flow_src: tuple[str, int] = PROXY,
    flow_dst: tuple[str, int] = BACKEND,
    **kw: Any,
) -> dict[str, Any]:
    """An alert with Suricata 7's ``flow`` object (tuple in the flow's direction) and, as the
    brief's consumers expect, the packet's tuple under ``alert.flow``."""
    flow = {
        "pkts_toserver": 4,
        "pkts_toclient": 4,
        "bytes_toserver": 455,
        "bytes_toclient": 580,
        "start": eve_ts(T0 + 0.5),
        "src_ip": flow_src[0],
        "dest_ip": flow_dst[0],
        "src_port": flow_src[1],
        "dest_port": flow_dst[1],
    }
    return event(
        "alert",
        src,
        dst,
        alert={
            "action": "allowed",
            "gid": 1,
            "signature_id": 9100001,
            "rev": 1,
            "signature": "LAB SQL injection UNION SELECT in URI",
            "category": "Web Application Attack",
            "severity": 1,
            "flow": {
                "src_ip": src[0],
                "dest_ip": dst[0],
                "src_port": src[1],
                "dest_port": dst[1],
            },
        },
        http={"hostname": "decoy.example", "url": "/?id=1", "http_method": "GET"},
        app_proto="http",
        direction="to_server",
        flow=flow,
        **kw,
    )


def line(ev: dict[str, Any]) -> bytes:
    """A line as Suricata writes it: compact JSON and a newline."""
    return orjson.dumps(ev) + b"\n"
