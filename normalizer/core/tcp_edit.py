"""In-place edits of TCP/IP fields with checksums kept valid.

Suricata validates checksums (``-k all``) and a tap carries no offload hints, so every edit must
leave the frame exactly as a sender would have produced it. Field edits adjust the checksum
incrementally; payload trimming changes lengths and recomputes from scratch.
"""

from __future__ import annotations

import struct

from normalizer.core.checksum import adjust16, adjust32, checksum, pseudo_header_sum
from normalizer.core.frame import TcpFrame
from normalizer.core.wire import TCPOPT_EOL, TCPOPT_NOP, TCPOPT_SACK

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def _addresses(buf: bytes | bytearray, f: TcpFrame) -> tuple[bytes, bytes]:
    ip = f.ip
    if buf[ip] >> 4 == 4:
        return bytes(buf[ip + 12 : ip + 16]), bytes(buf[ip + 16 : ip + 20])
    return bytes(buf[ip + 8 : ip + 24]), bytes(buf[ip + 24 : ip + 40])


def tcp_checksum(buf: bytes | bytearray, f: TcpFrame) -> int:
    """The correct TCP checksum for the segment as it stands (its own field treated as zero)."""
    src, dst = _addresses(buf, f)
    seg = bytearray(buf[f.tcp : f.end])
    seg[16:18] = b"\x00\x00"
    return checksum(seg, pseudo_header_sum(src, dst, 6, f.end - f.tcp))


def tcp_checksum_valid(buf: bytes | bytearray, f: TcpFrame) -> bool:
    """Whether a receiver would accept the segment (0x0000 and 0xFFFF both stand for zero)."""
    src, dst = _addresses(buf, f)
    total = checksum(buf[f.tcp : f.end], pseudo_header_sum(src, dst, 6, f.end - f.tcp))
    return total in (0, 0xFFFF)


def ipv4_checksum_valid(buf: bytes | bytearray, f: TcpFrame) -> bool:
    if buf[f.ip] >> 4 != 4:
        return True
    return checksum(buf[f.ip : f.tcp]) in (0, 0xFFFF)


def set_u32(buf: bytearray, f: TcpFrame, field: int, new: int) -> None:
    """Replace a 32-bit TCP field (seq at 4, ack at 8, or a SACK edge) and adjust the checksum."""
    at = f.tcp + field
    old = _U32.unpack_from(buf, at)[0]
    if old == new:
        return
    _U32.pack_into(buf, at, new)
    csum_at = f.tcp + 16
    _U16.pack_into(buf, csum_at, adjust32(_U16.unpack_from(buf, csum_at)[0], old, new))


def sack_edges(buf: bytes | bytearray, f: TcpFrame) -> list[int]:
    """Offsets (relative to the TCP header) of every SACK block edge in the options."""
    edges: list[int] = []
    i = f.tcp + 20
    end = f.payload
    while i < end:
        kind = buf[i]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            break
        length = buf[i + 1]
        if length < 2 or i + length > end:
            break
        if kind == TCPOPT_SACK:
            j = i + 2
            while j + 8 <= i + length:
                edges.append(j - f.tcp)
                edges.append(j + 4 - f.tcp)
                j += 8
        i += length
    return edges


def trim_payload(frame: bytes | bytearray, f: TcpFrame, cut: int, new_seq: int) -> bytearray:
    """Drop the first ``cut`` payload bytes, set the sequence number, fix lengths and checksums.

    Link-layer padding after the IP packet is dropped too: it would otherwise become part of the
    shorter packet's trailing bytes.
    """
    out = bytearray(frame[: f.payload])
    out += frame[f.payload + cut : f.end]
    ip = f.ip
    if out[ip] >> 4 == 4:
        old_total = _U16.unpack_from(out, ip + 2)[0]
        new_total = old_total - cut
        _U16.pack_into(out, ip + 2, new_total)
        old_csum = _U16.unpack_from(out, ip + 10)[0]
        _U16.pack_into(out, ip + 10, adjust16(old_csum, old_total, new_total))
    else:
        old_plen = _U16.unpack_from(out, ip + 4)[0]
        _U16.pack_into(out, ip + 4, old_plen - cut)
    _U32.pack_into(out, f.tcp + 4, new_seq)
    nf = f._replace(end=f.end - cut)
    _U16.pack_into(out, f.tcp + 16, tcp_checksum(out, nf))
    return out


def replace_endpoints(buf: bytearray, ip: int, t: int, block: bytes) -> None:
    """Set source and destination address and port (same IP family), checksums adjusted.

    ``block`` is laid out as the packet holds them when the IP header has no options or
    extension headers: source address, destination address, source port, destination port.
    The TCP checksum covers all of it (addresses through the pseudo-header), the IPv4 checksum
    only the addresses; the difference of the old and new values modulo 0xFFFF updates both
    (see ``checksum.adjust32``).
    """
    n = len(block) - 4
    a_at = ip + (12 if n == 8 else 8)
    old_a = int.from_bytes(buf[a_at : a_at + n], "big")
    old_p = int.from_bytes(buf[t : t + 4], "big")
    new = int.from_bytes(block, "big")
    new_a = new >> 32
    if a_at + n == t:  # contiguous: one slice assignment
        buf[a_at : t + 4] = block
    else:
        buf[a_at : a_at + n] = block[:n]
        buf[t : t + 4] = block[n:]
    csum = (buf[t + 16] << 8) | buf[t + 17]
    _U16.pack_into(buf, t + 16, (csum + old_a + old_p - new) % 0xFFFF)
    if n == 8:
        csum = (buf[ip + 10] << 8) | buf[ip + 11]
        _U16.pack_into(buf, ip + 10, (csum + old_a - new_a) % 0xFFFF)


def convert_family(
    frame: bytes | bytearray, f: TcpFrame, src: bytes, dst: bytes, ethertype_at: int | None
) -> bytearray:
    """Rebuild the IP header in the other family (IPv4 <-> IPv6) with new endpoints.

    Used when the real client is IPv6 but the proxied connection is IPv4, or the reverse:
    Suricata must see the real addresses, so the packet is re-expressed in their family.
    IPv4 options and IPv6 extension headers are dropped (they described the wire hop);
    TTL/hop limit and TOS/traffic class carry over. ``ethertype_at`` is where the link layer
    names the network protocol (None for raw-IP link types).
    """
    alen = len(src) - 2
    tcp = bytearray(frame[f.tcp : f.end])
    tcp[0:4] = src[alen:] + dst[alen:]
    if frame[f.ip] >> 4 == 4:
        tos, ttl = frame[f.ip + 1], frame[f.ip + 8]
    else:
        tos = ((frame[f.ip] & 0x0F) << 4) | (frame[f.ip + 1] >> 4)
        ttl = frame[f.ip + 7]
    if alen == 16:
        head = struct.pack("!IHBB", (6 << 28) | (tos << 20), len(tcp), 6, ttl) + src[:16] + dst[:16]
        etype = b"\x86\xdd"
    else:
        hdr = bytearray(
            struct.pack("!BBHHHBBH", 0x45, tos, 20 + len(tcp), 0, 0x4000, ttl, 6, 0)
            + src[:4]
            + dst[:4]
        )
        _U16.pack_into(hdr, 10, checksum(hdr))
        head = bytes(hdr)
        etype = b"\x08\x00"
    tcp[16:18] = b"\x00\x00"
    _U16.pack_into(tcp, 16, checksum(tcp, pseudo_header_sum(src[:alen], dst[:alen], 6, len(tcp))))
    out = bytearray(frame[: f.ip])
    if ethertype_at is not None:
        out[ethertype_at : ethertype_at + 2] = etype
    out += head
    out += tcp
    return out
