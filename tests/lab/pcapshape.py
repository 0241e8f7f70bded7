"""What a lab capture contains, per TCP connection: header kind, SYN retransmissions, duplicates.

Why: the lab must prove its own captures are what the scenario claims (headers present, the SYN
really retransmitted, loss really visible at the capture point) before Suricata results mean
anything. A tiny reader for classic Ethernet pcaps keeps this independent of the code under test
and of scapy's 1 s import.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
CUSTOM_MAGIC = b"\x8aGW1\r\n\x1a\n"  # docs/custom-header.md, the default magic


@dataclass
class Shape:
    """Counts over one pcap; ``headers`` maps a header description to the number of flows."""

    packets: int = 0
    flows: int = 0
    syn_retrans: int = 0
    dup_segments: int = 0
    sack_blocks: int = 0
    headers: Counter[str] = field(default_factory=Counter)
    endpoints: Counter[tuple[str, str]] = field(default_factory=Counter)  # TCP (src, dst) packets


def _packets(path: Path) -> list[bytes]:
    data = path.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack(endian + "I", data[off + 8 : off + 12])[0]
        out.append(data[off + 16 : off + 16 + incl])
        off += 16 + incl
    return out


def header_kind(payload: bytes) -> str:
    """Describe the first client payload of a flow: PROXY v1/v2 or custom (alone or +data)."""
    if payload.startswith(b"PROXY "):
        end = payload.find(b"\r\n") + 2
        kind = "v1 " + payload.split(b" ")[1].decode()
    elif payload.startswith(V2_SIG) and len(payload) >= 16:
        end = 16 + int.from_bytes(payload[14:16], "big")
        cmd = "LOCAL" if payload[12] & 0x0F == 0 else "PROXY"
        kind = f"v2 {cmd} fam=0x{payload[13]:02x} len={end}"
    elif payload.startswith(CUSTOM_MAGIC) and len(payload) >= 12:
        end = int.from_bytes(payload[10:12], "big")
        kind = f"custom fam={payload[9]} len={end}"
    else:
        return "none"
    return kind + (" +data" if len(payload) > end else " alone")


def shape(path: Path, server_port: int = 80) -> Shape:
    """Parse Ethernet/IPv4|IPv6/TCP frames of ``path`` and count what the lab cares about."""
    s = Shape()
    syns: Counter[tuple[bytes, int, bytes, int]] = Counter()
    segs: Counter[tuple[bytes, int, int, int]] = Counter()
    first: dict[tuple[bytes, int], bytes] = {}
    ends: Counter[tuple[bytes, bytes]] = Counter()
    for frame in _packets(path):
        s.packets += 1
        etype = int.from_bytes(frame[12:14], "big")
        if etype == 0x0800 and frame[23] == 6:
            ihl = (frame[14] & 0x0F) * 4
            src, dst, ip_end = frame[26:30], frame[30:34], 14 + int.from_bytes(frame[16:18], "big")
            tcp = 14 + ihl
        elif etype == 0x86DD and frame[20] == 6:
            src, dst, tcp = frame[22:38], frame[38:54], 54
            ip_end = 54 + int.from_bytes(frame[18:20], "big")
        else:
            continue
        sport, dport, seq = struct.unpack("!HHI", frame[tcp : tcp + 8])
        ends[(src, dst)] += 1
        doff, flags = (frame[tcp + 12] >> 4) * 4, frame[tcp + 13]
        payload = frame[tcp + doff : ip_end]
        s.sack_blocks += _sack_blocks(frame[tcp + 20 : tcp + doff])
        if flags & 0x12 == 0x02:
            syns[(src, sport, dst, dport)] += 1
        if payload:
            segs[(src + dst, sport, seq, len(payload))] += 1
            if dport == server_port and (src, sport) not in first:
                first[(src, sport)] = payload
    s.flows = len(first)
    s.syn_retrans = sum(n - 1 for n in syns.values())
    s.dup_segments = sum(1 for n in segs.values() if n > 1)
    s.headers = Counter(header_kind(p) for p in first.values())
    for (a, b), n in ends.items():
        s.endpoints[(str(ipaddress.ip_address(a)), str(ipaddress.ip_address(b)))] = n
    return s


def _sack_blocks(opts: bytes) -> int:
    n, i = 0, 0
    while i < len(opts):
        kind = opts[i]
        if kind in (0, 1):
            i += 1
            continue
        if i + 1 >= len(opts) or opts[i + 1] < 2:
            break
        n += (opts[i + 1] - 2) // 8 if kind == 5 else 0
        i += opts[i + 1]
    return n
