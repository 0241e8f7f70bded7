"""The naive way to do the job, as the speed baseline: scapy per packet, dict of flows.

It strips a PROXY v2 header at the start of each trusted client stream and shifts seq/ack the
way our core does, letting scapy recompute lengths and checksums. Kept deliberately simple: it is
what a first attempt looks like, and what the core must beat by two orders of magnitude.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.utils import PcapReader, PcapWriter

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def scapy_normalize(src: Path, dst: Path, proxy_cidr: str, limit: int) -> int:
    net = ipaddress.ip_network(proxy_cidr)
    shift: dict[tuple[str, int, str, int], int] = {}
    done = 0
    with PcapReader(str(src)) as reader, PcapWriter(str(dst), sync=False) as writer:
        for pkt in reader:
            if done >= limit:
                break
            done += 1
            if IP in pkt and TCP in pkt:
                ip, tcp = pkt[IP], pkt[TCP]
                key = (ip.src, tcp.sport, ip.dst, tcp.dport)
                rkey = (ip.dst, tcp.dport, ip.src, tcp.sport)
                payload = bytes(tcp.payload)
                if ipaddress.ip_address(ip.src) in net and payload.startswith(SIG):
                    n = 16 + int.from_bytes(payload[14:16], "big")
                    shift[key] = n
                    if len(payload) == n:
                        continue
                    tcp.remove_payload()
                    tcp.add_payload(payload[n:])
                elif key in shift:
                    tcp.seq = (tcp.seq - shift[key]) % 2**32
                elif rkey in shift:
                    tcp.ack = (tcp.ack - shift[rkey]) % 2**32
                del ip.len, ip.chksum, tcp.chksum
            writer.write(pkt)
    return done
