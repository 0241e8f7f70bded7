"""A userspace encapsulator: wraps frames in VXLAN or GENEVE as a mirror or a GWLB would send them.

Why in the package: the tests, the lab (this kernel has no geneve module) and the benchmark all
need the same outer packets, built with ``struct`` rather than scapy so 200k packets take
seconds. Outer Ethernet, optional 802.1Q tags, IPv4 or IPv6, UDP with a correct checksum, and
IP fragmentation of the result.
"""

from __future__ import annotations

import ipaddress
import struct

from normalizer.core.checksum import checksum, pseudo_header_sum
from normalizer.tunnels import geneve, vxlan

MACS = bytes.fromhex("02000000aa0202000000aa01")


def udp_frame(
    payload: bytes,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    vlan: tuple[int, ...] = (),
    ident: int = 0,
) -> bytes:
    """An Ethernet frame carrying ``payload`` in UDP over IPv4 or IPv6 (by the address family)."""
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    udp = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
    csum = checksum(udp, pseudo_header_sum(s, d, 17, len(udp))) or 0xFFFF
    struct.pack_into("!H", udp, 6, csum)
    if len(s) == 4:
        ip = bytearray(
            struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0, 64, 17, 0) + s + d
        )
        struct.pack_into("!H", ip, 10, checksum(ip))
        etype = b"\x08\x00"
    else:
        ip = bytearray(struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + s + d)
        etype = b"\x86\xdd"
    tags = b"".join(b"\x81\x00" + v.to_bytes(2, "big") for v in vlan)
    return MACS + tags + etype + bytes(ip) + bytes(udp)


def vxlan_frame(
    inner: bytes, vni: int, src: str, dst: str, sport: int = 49152, vlan: tuple[int, ...] = ()
) -> bytes:
    """``inner`` (an Ethernet frame) as a traffic mirror sends it."""
    return udp_frame(vxlan.build(vni) + inner, src, dst, sport, vxlan.VXLAN_PORT, vlan)


def geneve_frame(
    inner: bytes,
    vni: int,
    src: str,
    dst: str,
    protocol: int = geneve.PROTO_IPV4,
    options: list[geneve.GeneveOption] | tuple[geneve.GeneveOption, ...] = (),
    sport: int = 49152,
    vlan: tuple[int, ...] = (),
) -> bytes:
    """``inner`` (an IP packet, or Ethernet with PROTO_ETHERNET) as a GWLB sends it."""
    head = geneve.build(vni, protocol, tuple(options))
    return udp_frame(head + inner, src, dst, sport, geneve.GENEVE_PORT, vlan)


def fragment(frame: bytes, size: int, ident: int = 0x1234) -> list[bytes]:
    """Split the IP packet of an untagged Ethernet frame into fragments of ``size`` payload
    bytes (a multiple of 8), IPv4 or IPv6 (fragment header, next header UDP)."""
    assert size % 8 == 0 and size > 0
    eth, etype = frame[:12], frame[12:14]
    if etype == b"\x08\x00":
        head, body = bytearray(frame[14:34]), frame[34:]
    else:
        head, body = bytearray(frame[14:54]), frame[54:]
    out = []
    for off in range(0, len(body), size):
        piece, more = body[off : off + size], off + size < len(body)
        h = bytearray(head)
        if etype == b"\x08\x00":
            struct.pack_into("!HHH", h, 2, 20 + len(piece), ident, (off // 8) | (0x2000 * more))
            struct.pack_into("!H", h, 10, 0)
            struct.pack_into("!H", h, 10, checksum(h))
            out.append(eth + etype + bytes(h) + piece)
        else:
            struct.pack_into("!HB", h, 4, 8 + len(piece), 44)
            frag = struct.pack("!BBHI", 17, 0, off | more, ident)
            out.append(eth + etype + bytes(h) + frag + piece)
    return out
