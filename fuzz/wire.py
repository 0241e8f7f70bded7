"""Frames and capture files built and read with ``struct``, independently of the code under test.

Why not the product's reader and writer: the fuzz target feeds them hostile files and compares
what comes out record by record, so it needs its own view of what a record is. Why not scapy:
it costs about 500 µs a packet and a second to import; the target builds millions of frames.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from normalizer.core.checksum import checksum, pseudo_header_sum

MACS = bytes.fromhex("020000000002020000000001")
ETH_IPV4 = b"\x08\x00"
ETH_IPV6 = b"\x86\xdd"
SYN, FIN, RST, PSH, ACK = 0x02, 0x01, 0x04, 0x08, 0x10
NS = 1_000_000_000
VXLAN_PORT = 4789
GENEVE_PORT = 6081


def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def ip_packet(
    src: bytes, dst: bytes, proto: int, l4: bytes, ident: int = 0, extra: bytes = b""
) -> bytes:
    """An IPv4 or IPv6 packet (by the address size) around ``l4`` with a correct header sum.

    ``extra``: IPv4 options (padded to 4 bytes), or for IPv6 one hop-by-hop header's options
    (the header is built around them, padded to 8 bytes)."""
    if len(src) == 4:
        extra += b"\x00" * (-len(extra) % 4)
        ihl = 5 + len(extra) // 4
        head = bytearray(
            struct.pack(
                "!BBHHHBBH", 0x40 | ihl, 0, ihl * 4 + len(l4), ident & 0xFFFF, 0x4000, 64, proto, 0
            )
            + src
            + dst
            + extra
        )
        struct.pack_into("!H", head, 10, checksum(head))
        return bytes(head) + l4
    if extra:
        body = extra + b"\x00" * (-(len(extra) + 2) % 8)
        ext = bytes((proto, (len(body) + 2) // 8 - 1)) + body
        return struct.pack("!IHBB", 6 << 28, len(ext) + len(l4), 0, 64) + src + dst + ext + l4
    return struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + src + dst + l4


def tcp_segment(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    options: bytes = b"",
) -> bytes:
    """A TCP header plus payload with a correct checksum for ``src`` -> ``dst``."""
    options += b"\x00" * (-len(options) % 4)
    tcp = bytearray(
        struct.pack(
            "!HHIIBBHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            (5 + len(options) // 4) << 4,
            flags,
            65535,
            0,
            0,
        )
        + options
        + payload
    )
    struct.pack_into("!H", tcp, 16, checksum(tcp, pseudo_header_sum(src, dst, 6, len(tcp))))
    return bytes(tcp)


def ethernet(l3: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    etype = ETH_IPV4 if l3[:1] and l3[0] >> 4 == 4 else ETH_IPV6
    tags = b"".join(b"\x81\x00" + (v & 0x0FFF).to_bytes(2, "big") for v in vlans)
    return MACS + tags + etype + l3


def tcp_frame(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    options: bytes = b"",
    vlans: tuple[int, ...] = (),
    ip_extra: bytes = b"",
) -> bytes:
    seg = tcp_segment(src, dst, sport, dport, seq, ack, flags, payload, options)
    return ethernet(ip_packet(src, dst, 6, seg, extra=ip_extra), vlans)


def udp_frame(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    udp = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
    struct.pack_into(
        "!H", udp, 6, checksum(udp, pseudo_header_sum(src, dst, 17, len(udp))) or 0xFFFF
    )
    return ethernet(ip_packet(src, dst, 17, bytes(udp)))


# -- an independent, minimal decoder: what the oracle believes a frame is ---------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """What the oracle reads from a frame: IP endpoints, transport, TCP payload."""

    src: bytes
    dst: bytes
    proto: int
    sport: int
    dport: int
    payload: bytes  # TCP or UDP payload as captured (may be cut short)
    l4: int  # offset of the transport header in the frame


def l3_start(frame: bytes, linktype: int) -> int | None:
    """Offset of the IP header for the link types the fuzz target writes."""
    if linktype == 1:
        off, etype = 14, frame[12:14]
        tags = 0
        while etype in (b"\x81\x00", b"\x88\xa8", b"\x91\x00") and tags < 8:
            etype, off, tags = frame[off + 2 : off + 4], off + 4, tags + 1
        return off if etype in (ETH_IPV4, ETH_IPV6) else None
    if linktype in (101, 228, 229):
        return 0
    if linktype in (0, 108):
        return 4
    if linktype == 113:
        return 16 if frame[14:16] in (ETH_IPV4, ETH_IPV6) else None
    if linktype == 276:
        return 20 if frame[0:2] in (ETH_IPV4, ETH_IPV6) else None
    return None


def decode(frame: bytes, linktype: int = 1) -> Seen | None:
    """IP endpoints and transport of a frame, as loosely as possible (never raises)."""
    ip = l3_start(frame, linktype)
    if ip is None or len(frame) < ip + 1:
        return None
    v = frame[ip] >> 4
    if v == 4 and len(frame) >= ip + 20:
        ihl = (frame[ip] & 0x0F) * 4
        src, dst, proto = frame[ip + 12 : ip + 16], frame[ip + 16 : ip + 20], frame[ip + 9]
        l4 = ip + max(ihl, 20)
    elif v == 6 and len(frame) >= ip + 40:
        src, dst, proto = frame[ip + 8 : ip + 24], frame[ip + 24 : ip + 40], frame[ip + 6]
        l4 = ip + 40
        for _ in range(8):  # extension headers a transport header may follow
            if proto not in (0, 43, 60, 51) or len(frame) < l4 + 2:
                break
            size = (frame[l4 + 1] + 2) * 4 if proto == 51 else (frame[l4 + 1] + 1) * 8
            proto, l4 = frame[l4], l4 + size
    else:
        return None
    if len(frame) < l4 + 4:
        return Seen(src, dst, proto, -1, -1, b"", l4)
    sport, dport = struct.unpack_from("!HH", frame, l4)
    if proto == 6 and len(frame) >= l4 + 13:
        # up to the end of the IP packet where the capture holds it (link padding excluded)
        ip_end = (
            ip + ((frame[ip + 2] << 8) | frame[ip + 3])
            if v == 4
            else ip + 40 + ((frame[ip + 4] << 8) | frame[ip + 5])
        )
        end = ip_end if l4 + 20 <= ip_end <= len(frame) else len(frame)
        payload = frame[l4 + max(20, (frame[l4 + 12] >> 4) * 4) : end]
    elif proto == 17:
        payload = frame[l4 + 8 :]
    else:
        payload = b""
    return Seen(src, dst, proto, sport, dport, payload, l4)


# -- capture files -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    ts: int  # ns
    data: bytes
    origlen: int


def pcap_header(linktype: int, nano: bool = False, snaplen: int = 262144, e: str = "<") -> bytes:
    """A classic pcap file header; ``e`` is the struct byte order ("<" or ">")."""
    return struct.pack(
        e + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype
    )


def pcap_record(rec: Record, nano: bool = False, e: str = "<") -> bytes:
    sec, ns = divmod(rec.ts, NS)
    frac = ns if nano else ns // 1000
    return struct.pack(e + "IIII", sec & 0xFFFFFFFF, frac, len(rec.data), rec.origlen) + rec.data


def pcap_bytes(records: Iterable[Record], linktype: int = 1, nano: bool = False) -> bytes:
    return pcap_header(linktype, nano) + b"".join(pcap_record(r, nano) for r in records)


def read_pcap(data: bytes) -> tuple[int, bool, list[Record]]:
    """(linktype, nanosecond, records) of a well-formed classic pcap; ValueError otherwise."""
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        raise ValueError("not a classic pcap")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    if len(data) < 24:
        raise ValueError("truncated pcap header")
    linktype = struct.unpack_from(e + "I", data, 20)[0] & 0x0FFFFFFF
    out: list[Record] = []
    pos = 24
    while pos < len(data):
        if pos + 16 > len(data):
            raise ValueError(f"truncated record header at {pos}")
        sec, frac, caplen, origlen = struct.unpack_from(e + "IIII", data, pos)
        if pos + 16 + caplen > len(data):
            raise ValueError(f"truncated record at {pos}")
        ts = sec * NS + (frac if nano else frac * 1000)
        out.append(Record(ts, data[pos + 16 : pos + 16 + caplen], origlen))
        pos += 16 + caplen
    return linktype, nano, out


def iter_pcap_records(data: bytes) -> Iterator[Record]:
    yield from read_pcap(data)[2]


def pcapng_block(btype: int, body: bytes, e: str = "<") -> bytes:
    """A pcapng block; ``e`` is the section's byte order ("<" or ">")."""
    body += b"\x00" * (-len(body) % 4)
    total = 12 + len(body)
    return struct.pack(e + "II", btype, total) + body + struct.pack(e + "I", total)


def pcapng_option(code: int, value: bytes, e: str = "<") -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def pcapng_shb(e: str = "<") -> bytes:
    return pcapng_block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e)


def pcapng_idb(
    linktype: int, tsresol: int | None = None, tsoffset: int | None = None, e: str = "<"
) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += pcapng_option(9, bytes([tsresol]), e)
    if tsoffset is not None:
        opts += pcapng_option(14, struct.pack(e + "q", tsoffset), e)
    if opts:
        opts += pcapng_option(0, b"", e)
    return pcapng_block(1, struct.pack(e + "HHI", linktype, 0, 262144) + opts, e)


def pcapng_epb(rec: Record, ticks: int, ifid: int = 0, e: str = "<") -> bytes:
    hi, lo = (ticks >> 32) & 0xFFFFFFFF, ticks & 0xFFFFFFFF
    body = struct.pack(e + "IIIII", ifid, hi, lo, len(rec.data), rec.origlen) + rec.data
    return pcapng_block(6, body, e)
