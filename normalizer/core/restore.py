"""Address restoration: Suricata should see the real client and the address it attacked.

The header names both; every packet of the flow gets them instead of proxy and backend. When
the families differ (an IPv6 client behind an IPv4 hop, or the reverse) the IP header is
rebuilt in the client's family, which needs a link layer that can say so.
"""

from __future__ import annotations

import ipaddress

from normalizer.core.frame import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    TcpFrame,
)
from normalizer.core.tcp_edit import convert_family, replace_endpoints
from normalizer.proxy_headers.base import ProxyHeader


def real_endpoints(h: ProxyHeader) -> tuple[bytes, bytes] | None:
    """Endpoint blocks (see ``tcp_edit.replace_endpoints``) client->server and back, for
    headers that name TCP endpoints; None where the wire addresses must stay."""
    if h.command != "PROXY" or h.family not in ("TCP4", "TCP6") or h.src_addr is None:
        return None
    if h.dst_addr is None or h.src_port is None or h.dst_port is None:
        return None
    src = ipaddress.ip_address(h.src_addr).packed
    dst = ipaddress.ip_address(h.dst_addr).packed
    sport, dport = h.src_port.to_bytes(2, "big"), h.dst_port.to_bytes(2, "big")
    return src + dst + sport + dport, dst + src + dport + sport


def output_linktype(linktype: int, restore_addresses: bool) -> int:
    """The link type to write frames of a ``linktype`` input in.

    LINKTYPE_IPV4 and LINKTYPE_IPV6 promise one family, but restoring a client of the other
    family rebuilds the packet in it: such captures are written as LINKTYPE_RAW, which says the
    version in each packet (byte-identical frames, so nothing else changes).
    """
    if restore_addresses and linktype in (LINKTYPE_IPV4, LINKTYPE_IPV6):
        return LINKTYPE_RAW
    return linktype


def ethertype_at(linktype: int, ip: int) -> int | None:
    """Where the link layer names the network protocol; None for raw IP, -1 if unsupported."""
    if linktype in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL):
        return ip - 2
    if linktype == LINKTYPE_LINUX_SLL2:
        return 0
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return None
    return -1


def restore_endpoints(
    frame: bytes | bytearray, f: TcpFrame, block: bytes, linktype: int
) -> bytearray | None:
    """The frame with the endpoints of ``block``; None when the link type cannot carry the
    family change (the caller then keeps the wire addresses and counts it)."""
    if len(block) == (12 if frame[f.ip] >> 4 == 4 else 36):
        buf = frame if isinstance(frame, bytearray) else bytearray(frame)
        replace_endpoints(buf, f.ip, f.tcp, block)
        return buf
    at = ethertype_at(linktype, f.ip)
    if at == -1:
        return None
    alen = (len(block) - 4) // 2
    src = block[:alen] + block[-4:-2]
    dst = block[alen : 2 * alen] + block[-2:]
    return convert_family(frame, f, src, dst, at)
