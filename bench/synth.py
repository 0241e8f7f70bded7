"""Fast synthetic captures for the benchmark: many proxied HTTP-like connections.

Built with struct and the project's checksum helper rather than scapy, because 200k packets
through scapy would take minutes. Each connection is written twice, once with the PROXY v2
header in the client stream and once without, so the two files carry the same application data.

TCP timestamps are consistent: each side's TSval is its own clock, and its TSecr echoes the last
TSval it received (0 on the SYN). Suricata drops a SYN/ACK whose TSecr does not echo the SYN and
then tracks no session at all -- and runs very fast doing nothing (field-facts.md).
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

from normalizer.adapters.pcap_io import PcapWriter
from normalizer.core.checksum import checksum, pseudo_header_sum
from normalizer.proxy_headers import proxy_v2

PROXY = bytes([192, 0, 2, 1])
BACKEND = bytes([192, 0, 2, 2])
_ETH = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
MSS = 1448
ATTACK_EVERY = 10  # every 10th client port sends a sqlmap User-Agent (decoy.rules sid 9100005)


def _frame(
    src: bytes,
    dst: bytes,
    sp: int,
    dp: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes,
    tsval: int = 1,
    tsecr: int = 0,
) -> bytes:
    opts = b"\x01\x01\x08\x0a" + struct.pack("!II", tsval & 0xFFFFFFFF, tsecr & 0xFFFFFFFF)
    tcp = bytearray(
        struct.pack(
            "!HHIIBBHHH",
            sp,
            dp,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            (5 + len(opts) // 4) << 4,
            flags,
            65535,
            0,
            0,
        )
        + opts
        + payload
    )
    struct.pack_into("!H", tcp, 16, checksum(tcp, pseudo_header_sum(src, dst, 6, len(tcp))))
    ip = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    )
    struct.pack_into("!H", ip, 10, checksum(ip))
    return _ETH + bytes(ip) + bytes(tcp)


def _connection(rng: random.Random, cport: int, header: bytes, resp_segs: int) -> list[bytes]:
    ci, si = rng.getrandbits(32), rng.getrandbits(32)
    req = b"GET /file?id=%d HTTP/1.1\r\nHost: decoy\r\nUser-Agent: bench\r\n\r\n" % cport
    if cport % ATTACK_EVERY == 0:  # an attack a decoy rule names: alerts count, in the bench
        req = b"GET /file?id=%d HTTP/1.1\r\nHost: decoy\r\nUser-Agent: sqlmap/1.7\r\n\r\n" % cport
    n = len(header)
    # Timestamp clocks [client, server]: each packet ticks its sender's clock and echoes the
    # peer's current value (what the peer last sent).
    clock = [rng.getrandbits(31) + 1, rng.getrandbits(31) + 1]

    def stamp(side: int) -> tuple[int, int]:
        clock[side] += 1
        return clock[side], clock[1 - side]

    def c(seq, ack, fl, data=b""):
        return _frame(PROXY, BACKEND, cport, 80, ci + 1 + seq, si + 1 + ack, fl, data, *stamp(0))

    def s(seq, ack, fl, data=b""):
        return _frame(BACKEND, PROXY, 80, cport, si + 1 + seq, ci + 1 + ack, fl, data, *stamp(1))

    out = [_frame(PROXY, BACKEND, cport, 80, ci, 0, 0x02, b"", clock[0], 0)]
    out.append(_frame(BACKEND, PROXY, 80, cport, si, ci + 1, 0x12, b"", *stamp(1)))
    out.append(c(0, 0, 0x10))
    if header:
        out.append(c(0, 0, 0x18, header))
        out.append(s(0, n, 0x10))
    out.append(c(n, 0, 0x18, req))
    sent = 0
    body = bytes(MSS)
    for i in range(resp_segs):
        out.append(s(sent, n + len(req), 0x10, body))
        sent += MSS
        if i % 2:
            out.append(c(n + len(req), sent, 0x10))
    out.append(c(n + len(req), sent, 0x11))
    out.append(s(sent, n + len(req) + 1, 0x11))
    out.append(c(n + len(req) + 1, sent + 1, 0x10))
    return out


def write_pair(
    proxied: Path,
    plain: Path,
    min_packets: int,
    seed: int = 1,
    segments: tuple[int, int] = (4, 24),
) -> tuple[int, int]:
    """Write the proxied capture and its header-free twin; returns (packets proxied, flows).

    Both files replay the same random draws, so every connection has the same ISNs and sizes.
    ``segments`` bounds the response segments per connection: the default gives short flows
    (about 30 packets on average), (150, 300) long ones (about 350).
    """
    count = flows = 0
    for path, with_header in ((proxied, True), (plain, False)):
        rng = random.Random(seed)
        ts = 1_700_000_000 * 1_000_000_000
        written = 0
        with path.open("wb") as fh:
            w = PcapWriter(fh, 1)
            i = 0
            while (with_header and written < min_packets) or (not with_header and i < flows):
                cport = 1024 + i % 60000
                i += 1
                hdr = b""
                if with_header:
                    hdr = proxy_v2.build(
                        command="PROXY",
                        family="TCP4",
                        src=f"203.0.113.{i % 250 + 1}",
                        dst="198.51.100.1",
                        sport=cport,
                        dport=80,
                    )
                segs = rng.randint(*segments)
                for fr in _connection(rng, cport, hdr, segs):
                    ts += 20_000
                    w.write(ts, fr)
                    written += 1
        if with_header:
            count, flows = written, i
    return count, flows
