"""In-place edits of TCP/IP fields with checksums kept valid.

Suricata validates checksums (``-k all``) and a tap carries no offload hints, so every edit must
leave the frame exactly as a sender would have produced it. Field edits adjust the checksum
incrementally; payload trimming changes lengths and recomputes from scratch.
"""

from __future__ import annotations

import struct

from normalizer.checksum import adjust16, adjust32, checksum, pseudo_header_sum
from normalizer.frame import TcpFrame

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_SACK = 5


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
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            break
        length = buf[i + 1]
        if length < 2 or i + length > end:
            break
        if kind == _SACK:
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
