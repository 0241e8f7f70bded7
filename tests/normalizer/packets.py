"""Builds TCP conversations with scapy, independently of the code under test.

scapy computes lengths and checksums itself, so it serves as the oracle for what a correctly
rewritten frame looks like.
"""

from __future__ import annotations

from dataclasses import dataclass

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet

from normalizer.core.frame import locate_tcp
from normalizer.core.tcp_edit import ipv4_checksum_valid, tcp_checksum_valid

PROXY4 = "192.0.2.1"
BACKEND4 = "192.0.2.2"
PROXY6 = "2001:db8::1"
BACKEND6 = "2001:db8::2"
NS = 1_000_000_000


@dataclass
class Conv:
    """One TCP connection between a client (the proxy) and a server (the backend)."""

    client: str = PROXY4
    server: str = BACKEND4
    cport: int = 40000
    sport: int = 80
    cisn: int = 1000
    sisn: int = 5000
    vlans: tuple[int, ...] = ()

    def _l3(self, from_client: bool) -> Packet:
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        ip: Packet = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
        l2: Packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        for vid in self.vlans:
            l2 = l2 / Dot1Q(vlan=vid)
        return l2 / ip

    def seg(
        self,
        from_client: bool,
        off: int = 0,
        ack_off: int | None = 0,
        data: bytes = b"",
        flags: str = "A",
        options: list | None = None,
    ) -> bytes:
        """A segment at stream offset ``off`` acknowledging peer offset ``ack_off``."""
        if from_client:
            seq = (self.cisn + 1 + off) % 2**32
            ack = (self.sisn + 1 + (ack_off or 0)) % 2**32
            sp, dp = self.cport, self.sport
        else:
            seq = (self.sisn + 1 + off) % 2**32
            ack = (self.cisn + 1 + (ack_off or 0)) % 2**32
            sp, dp = self.sport, self.cport
        if "S" in flags:
            seq = (seq - 1) % 2**32
        if "A" not in flags:
            ack = 0
        tcp = TCP(
            sport=sp, dport=dp, seq=seq, ack=ack, flags=flags, window=65535, options=options or []
        )
        return (
            bytes(self._l3(from_client) / tcp / data)
            if data
            else bytes(self._l3(from_client) / tcp)
        )

    def handshake(self) -> list[bytes]:
        return [
            self.seg(True, -1 + 1, None, flags="S"),
            self.seg(False, 0, 0, flags="SA"),
            self.seg(True, 0, 0),
        ]


def client_stream(frames: list[bytes], conv: Conv) -> bytes:
    """Reassemble the client->server bytes from frames, checking overlaps agree and no holes."""
    data: dict[int, int] = {}
    for fr in frames:
        f = locate_tcp(fr)
        assert f is not None
        sport = int.from_bytes(fr[f.tcp : f.tcp + 2], "big")
        if sport != conv.cport:
            continue
        seq = int.from_bytes(fr[f.tcp + 4 : f.tcp + 8], "big")
        if fr[f.tcp + 13] & 0x02:
            seq += 1
        off = (seq - conv.cisn - 1) % 2**32
        for i, byte in enumerate(fr[f.payload : f.end]):
            prev = data.setdefault(off + i, byte)
            assert prev == byte, f"overlapping segments disagree at offset {off + i}"
    if not data:
        return b""
    assert sorted(data) == list(range(len(data))), "hole or bytes before the stream start"
    return bytes(data[i] for i in range(len(data)))


def assert_valid(frame: bytes) -> None:
    f = locate_tcp(frame)
    assert f is not None
    assert ipv4_checksum_valid(frame, f), "bad IPv4 header checksum"
    assert tcp_checksum_valid(frame, f), "bad TCP checksum"
    # scapy's own view, as an independent oracle: recomputing must give the stored value.
    pkt = Ether(frame)
    stored = pkt[TCP].chksum
    del pkt[TCP].chksum
    assert Ether(bytes(pkt))[TCP].chksum in (stored, 0xFFFF - stored)
    if IP in pkt:
        stored = pkt[IP].chksum
        del pkt[IP].chksum
        assert Ether(bytes(pkt))[IP].chksum == stored
