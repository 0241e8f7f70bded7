"""Locates the IP and TCP headers inside a captured frame, without copying it.

The core only ever edits a few fixed fields, so instead of decoding packets into objects it
returns byte offsets; anything it cannot rewrite safely (IP fragments, truncated captures,
non-TCP, unknown link types) yields None and is forwarded untouched.
"""

from __future__ import annotations

from typing import NamedTuple

from normalizer.core.wire import (
    ETH_IPV4,
    ETH_IPV4_BYTES,
    ETH_IPV6,
    ETH_IPV6_BYTES,
    IPPROTO_TCP,
    V6_FRAGMENT,
    VLAN_TPIDS,
    skip_v6_extensions,
)

# pcap LINKTYPE_* values the reader may hand over.
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
SUPPORTED_LINKTYPES = frozenset(
    {
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW,
        LINKTYPE_LOOP,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL2,
    }
)

_MAX_VLAN_TAGS = 4


class TcpFrame(NamedTuple):
    """Offsets of one TCP segment inside a frame.

    ``vlan`` holds the VLAN ids (12 bits each, outermost first) so flows on different VLANs
    stay apart, as Suricata keeps them apart. ``end`` is where the IP packet ends: bytes after it
    are link-layer padding.
    """

    ip: int
    tcp: int
    payload: int
    end: int
    vlan: bytes


def l3_offset(frame: bytes | bytearray, linktype: int) -> tuple[int, int, bytes] | None:
    """Return (offset of the IP header, IP version, VLAN ids) or None for non-IP frames."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return None
        etype = (frame[12] << 8) | frame[13]
        off = 14
        vlan = b""
        tags = 0
        while etype in VLAN_TPIDS:
            if tags == _MAX_VLAN_TAGS or len(frame) < off + 4:
                return None
            vlan += bytes(((frame[off] & 0x0F), frame[off + 1]))
            etype = (frame[off + 2] << 8) | frame[off + 3]
            off += 4
            tags += 1
        if etype == ETH_IPV4:
            return off, 4, vlan
        if etype == ETH_IPV6:
            return off, 6, vlan
        return None
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        off = 0
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        off = 4
    elif linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return None
        etype = (frame[14] << 8) | frame[15]
        if etype not in (ETH_IPV4, ETH_IPV6):
            return None
        off = 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            return None
        etype = (frame[0] << 8) | frame[1]
        if etype not in (ETH_IPV4, ETH_IPV6):
            return None
        off = 20
    else:
        return None
    if len(frame) <= off:
        return None
    version = frame[off] >> 4
    if version not in (4, 6):
        return None
    return off, version, b""


class L4Frame(NamedTuple):
    """Offsets of the transport header of an unfragmented IP packet (any protocol)."""

    ip: int
    l4: int
    end: int
    proto: int
    vlan: bytes


def locate_l4(frame: bytes | bytearray, linktype: int = LINKTYPE_ETHERNET) -> L4Frame | None:
    """Find the transport header of an unfragmented, fully captured IPv4/IPv6 packet.

    The one walk over IPv4 options and IPv6 extension headers: TCP rewriting and checksum
    completion (TCP and UDP) both start from it.
    """
    l3 = l3_offset(frame, linktype)
    if l3 is None:
        return None
    ip, version, vlan = l3
    n = len(frame)
    if version == 4:
        if n < ip + 20 or frame[ip] >> 4 != 4:
            return None
        ihl = (frame[ip] & 0x0F) * 4
        total = (frame[ip + 2] << 8) | frame[ip + 3]
        if ihl < 20 or total < ihl:
            return None
        if ((frame[ip + 6] << 8) | frame[ip + 7]) & 0x3FFF:  # MF flag or fragment offset
            return None
        return L4Frame(ip, ip + ihl, ip + total, frame[ip + 9], vlan)
    if n < ip + 40 or frame[ip] >> 4 != 6:
        return None
    plen = (frame[ip + 4] << 8) | frame[ip + 5]
    walked = skip_v6_extensions(frame, frame[ip + 6], ip + 40)
    if walked is None:
        return None
    nxt, l4 = walked
    if nxt == V6_FRAGMENT:  # not rewritable: its transport header may be in another fragment
        return None
    return L4Frame(ip, l4, ip + 40 + plen, nxt, vlan)


def locate_tcp(frame: bytes, linktype: int = LINKTYPE_ETHERNET) -> TcpFrame | None:
    """Find the TCP header and payload of an unfragmented, fully captured TCP/IP frame."""
    f = locate_l4(frame, linktype)
    if f is None or f.proto != IPPROTO_TCP:
        return None
    tcp, end = f.l4, f.end
    if end > len(frame) or tcp + 20 > end:
        return None
    payload = tcp + (frame[tcp + 12] >> 4) * 4
    if payload < tcp + 20 or payload > end:
        return None
    return TcpFrame(f.ip, tcp, payload, end, f.vlan)


class CutFrame(bytes):
    """A captured frame shorter than it was on the wire, carrying its original length.

    Why on the object and not in a table beside the pipeline: a frame forwarded untouched is
    the very object that was read, so its original length travels with it through holds,
    decapsulation's pass-through and the core, and nothing can attach it to another frame. A
    frame the core rewrites is a new object (and, being rewritable, was captured whole up to
    its IP length): it is written with its own length. Only truncated frames pay for the
    instance dictionary; the writer asks ``type(frame) is CutFrame``.
    """

    origlen: int

    def __new__(cls, data: bytes, origlen: int) -> CutFrame:
        self = super().__new__(cls, data)
        self.origlen = origlen
        return self


def replaced(frame: bytes, data: bytes | bytearray) -> bytes:
    """``data`` standing in for ``frame`` with the same length (checksums completed): a
    ``CutFrame`` stays one, with its original length."""
    if type(frame) is CutFrame:
        return CutFrame(bytes(data), frame.origlen)
    return bytes(data)


def original_length(frame: bytes | bytearray) -> int:
    """The frame's length on the wire: its own, unless it is a ``CutFrame``."""
    return frame.origlen if type(frame) is CutFrame else len(frame)


SYNTH_MACS = bytes.fromhex("020000000002020000000001")  # locally administered dst, src
_IPV4 = ETH_IPV4_BYTES
_IPV6 = ETH_IPV6_BYTES
_UNKNOWN = b"\x88\xb5"  # IEEE local experimental ethertype: bytes kept, decoded by nobody


def as_ethernet(frame: bytes, linktype: int) -> bytes:
    """The frame with its link header replaced by a synthesized Ethernet one (a ``CutFrame``
    stays one, its original length changed by what the header change added or removed)."""
    if linktype == LINKTYPE_ETHERNET:
        return frame
    if linktype == LINKTYPE_LINUX_SLL and len(frame) >= 16:
        out = SYNTH_MACS + frame[14:16] + frame[16:]
    elif linktype == LINKTYPE_LINUX_SLL2 and len(frame) >= 20:
        out = SYNTH_MACS + frame[0:2] + frame[20:]
    else:
        body = frame[4:] if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP) else frame
        version = body[0] >> 4 if body else 0
        etype = _IPV4 if version == 4 else _IPV6 if version == 6 else _UNKNOWN
        out = SYNTH_MACS + etype + body
    if type(frame) is CutFrame:
        return CutFrame(out, frame.origlen + len(out) - len(frame))
    return out
