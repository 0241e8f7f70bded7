"""What must hold whatever the input: the fuzz target's independent view of a run.

Trust, as the issue defines it: a frame is *trusted* when its IP source is a configured proxy
and, if it arrived inside a VXLAN/GENEVE tunnel, the tunnel's outer source is a configured peer.
A frame is *untouchable* when neither IP endpoint is a proxy and it is not a tunnel packet from
a peer (in decap mode): it must come out exactly as it went in. A connection-cache row may only
name addresses that some trusted frame's bytes carry: packed (v2, gateway header) or as text
(v1), in one segment or across the segments of one flow (arrival or sequence order).

This module decodes frames with ``fuzz.wire`` only, never with the normalizer's own parser.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass, field

from fuzz.wire import GENEVE_PORT, VXLAN_PORT, Seen, decode, l3_start

_TOKEN = re.compile(rb"[0-9A-Fa-f:.]{2,45}")


_ESC = re.compile(r"\\x([0-9a-fA-F]{2})")


def _unescape(text: str) -> bytes:
    """Bytes of text in which undecodable bytes were written as \\xNN."""
    out, last = bytearray(), 0
    for m in _ESC.finditer(text):
        out += text[last : m.start()].encode("utf-8", "surrogateescape")
        out.append(int(m.group(1), 16))
        last = m.end()
    return bytes(out + text[last:].encode("utf-8", "surrogateescape"))


class Nets:
    def __init__(self, cidrs: tuple[str, ...]) -> None:
        self._nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def __contains__(self, addr: bytes | str) -> bool:
        try:
            a = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(a.version == n.version and a in n for n in self._nets)


FlowId = tuple[bytes, int, bytes, int]


@dataclass
class Trusted:
    """Bytes of trusted client streams, to test cache rows against."""

    segments: list[bytes] = field(default_factory=list)
    flows: dict[FlowId, list[tuple[int, bytes]]] = field(default_factory=dict)

    def add(self, key: FlowId, seq: int, payload: bytes) -> None:
        if payload:
            self.segments.append(payload)
            self.flows.setdefault(key, []).append((seq, payload))

    def blobs(self) -> list[bytes]:
        out = list(self.segments)
        for segs in self.flows.values():
            if len(segs) > 1:
                out.append(b"".join(p for _s, p in segs))
                out += _reassembled(segs)
        return out

    def carries(self, addr: str, blobs: list[bytes]) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:  # a UNIX path: its bytes as sent, raw or with \xNN escapes undone
            forms = {addr.encode("utf-8", "surrogateescape"), _unescape(addr)}
            return any(raw in b for raw in forms for b in blobs)
        if any(ip.packed in b for b in blobs):
            return True
        text = str(ip)
        for b in blobs:
            for tok in _TOKEN.findall(b):
                try:
                    if str(ipaddress.ip_address(tok.decode())) == text:
                        return True
                except ValueError:
                    continue
        return False


_SPAN = 1 << 20  # a stream longer than this is not put together again


def _reassembled(segs: list[tuple[int, bytes]]) -> list[bytes]:
    """The stream in sequence order (modulo 2^32, around the first segment seen) with the
    first copy of overlapping bytes winning, and with the last one winning."""
    first = segs[0][0]
    rel = [((seq - first + (1 << 31)) & 0xFFFFFFFF, p) for seq, p in segs]
    lo = min(r for r, _p in rel)
    hi = max(r + len(p) for r, p in rel)
    if hi - lo > _SPAN:
        order = sorted(rel, key=lambda x: x[0])
        return [b"".join(p for _r, p in order)]
    out = []
    for chunks in (rel, rel[::-1]):
        buf, have = bytearray(hi - lo), bytearray(hi - lo)
        for r, p in chunks:
            for i, byte in enumerate(p, r - lo):
                if not have[i]:
                    buf[i], have[i] = byte, 1
        out.append(bytes(buf))
    return out


class Oracle:
    def __init__(
        self,
        proxies: tuple[str, ...],
        peers: tuple[str, ...],
        decap: bool,
        linktype: int,
    ) -> None:
        self.proxies = Nets(proxies)
        self.peers = Nets(peers)
        self.decap = decap
        self.linktype = linktype
        self.trusted = Trusted()
        self._frags: dict[FlowId, dict[int, tuple[bytes, bool]]] = {}

    def observe(self, frame: bytes) -> bool:
        """Note a frame's trusted bytes; True if it must come out byte-identical."""
        s = decode(frame, self.linktype)
        if s is None:
            return not self.decap or self.linktype == 1
        if self.decap and s.proto == 44:  # an IPv6 fragment: may be held for reassembly
            return False
        if self.decap and s.proto == 17:
            ip = l3_start(frame, self.linktype)
            assert ip is not None
            if frame[ip] >> 4 == 4 and struct.unpack_from("!H", frame, ip + 6)[0] & 0x3FFF:
                self._fragment(frame, ip, s)  # held for reassembly: order not kept
                return False
            if s.dport in (VXLAN_PORT, GENEVE_PORT):
                if s.src in self.peers:
                    self._inner(s.payload, s.dport)
                    return False
                # a tunnel from anyone else is passed as captured (given an Ethernet header when
                # the capture has another link type: decapsulated output is always Ethernet)
                return self.linktype == 1
        if not_rewritable(frame, self.linktype):
            return not self.decap or self.linktype == 1
        if s.src in self.proxies:
            if s.proto == 6 and len(frame) >= s.l4 + 8:
                seq = struct.unpack_from("!I", frame, s.l4 + 4)[0]
                self.trusted.add((s.src, s.sport, s.dst, s.dport), seq, s.payload)
            return False
        if s.dst in self.proxies:
            return False
        return not self.decap or self.linktype == 1

    def _fragment(self, frame: bytes, ip: int, s: Seen) -> None:
        """Whatever a peer's fragments reassemble to came from a peer: keep their data by
        fragment offset, so the datagram can be put together again."""
        if s.src in self.peers:
            ident = struct.unpack_from("!H", frame, ip + 4)[0]
            field = struct.unpack_from("!H", frame, ip + 6)[0]
            off = (field & 0x1FFF) * 8
            end = ip + struct.unpack_from("!H", frame, ip + 2)[0]
            data = frame[s.l4 : end if s.l4 <= end <= len(frame) else len(frame)]
            key = (s.src, ident, s.dst, -1)
            self.trusted.add(key, off, data)
            parts = self._frags.setdefault(key, {})
            parts.setdefault(off, (data, bool(field & 0x2000)))
            self._try_datagram(parts)

    def _try_datagram(self, parts: dict[int, tuple[bytes, bool]]) -> None:
        """Once a peer's fragments cover a whole datagram, read its tunnel like any other."""
        buf, at = b"", 0
        while at in parts:
            data, more = parts[at]
            buf += data
            if not more:
                if len(buf) >= 8:
                    dport = struct.unpack_from("!H", buf, 2)[0]
                    if dport in (VXLAN_PORT, GENEVE_PORT):
                        self._inner(buf[8:], dport)
                return
            if not data:
                return
            at += len(data)

    def _inner(self, udp_payload: bytes, dport: int) -> None:
        if dport == VXLAN_PORT:
            inner, lt = udp_payload[8:], 1
        else:
            if len(udp_payload) < 8:
                return
            opt = (udp_payload[0] & 0x3F) * 4
            proto = struct.unpack_from("!H", udp_payload, 2)[0]
            inner, lt = udp_payload[8 + opt :], 1 if proto == 0x6558 else 101
        s = decode(inner, lt)
        if s is None or s.proto != 6 or s.src not in self.proxies:
            return
        off = s.l4 + 4
        seq = struct.unpack_from("!I", inner, off)[0] if len(inner) >= off + 4 else 0
        self.trusted.add((s.src, s.sport, s.dst, s.dport), seq, s.payload)


_V6_WALKABLE = frozenset({6, 0, 43, 60, 51})  # TCP, or extension headers a TCP header may follow


def not_rewritable(frame: bytes, linktype: int) -> bool:
    """A frame no TCP rewrite can apply to, whoever sent it: not TCP, an IP fragment, or an IP
    packet longer than what was captured. It must pass untouched even from a proxy."""
    ip = l3_start(frame, linktype)
    if ip is None or len(frame) < ip + 20:
        return False  # the caller's own rules decide
    v = frame[ip] >> 4
    if v == 4:
        if linktype == 1 and frame[ip - 2 : ip] != b"\x08\x00":
            return False
        total = (frame[ip + 2] << 8) | frame[ip + 3]
        frag = ((frame[ip + 6] << 8) | frame[ip + 7]) & 0x3FFF
        return frame[ip + 9] != 6 or bool(frag) or ip + total > len(frame)
    if v == 6 and len(frame) >= ip + 40:
        if linktype == 1 and frame[ip - 2 : ip] != b"\x86\xdd":
            return False
        plen = (frame[ip + 4] << 8) | frame[ip + 5]
        return frame[ip + 6] not in _V6_WALKABLE or ip + 40 + plen > len(frame)
    return False


def without_checksums(frame: bytes | bytearray, linktype: int = 1) -> bytes:
    """The frame with its IPv4 header and TCP/UDP checksum fields zeroed: what must still be
    identical when the normalizer completes or recomputes checksums (``checksums`` auto/fix)."""
    s = decode(bytes(frame), linktype)
    ip = l3_start(bytes(frame), linktype)
    if s is None or ip is None:
        return bytes(frame)
    out = bytearray(frame)
    if out[ip] >> 4 == 4:
        out[ip + 10 : ip + 12] = b"\x00\x00"
    at = {6: 16, 17: 6}.get(s.proto)
    if at is not None and len(out) >= s.l4 + at + 2:
        out[s.l4 + at : s.l4 + at + 2] = b"\x00\x00"
    return bytes(out)


def subsequence_gap(needles: list[bytes], hay: list[bytes]) -> int:
    """Index into ``needles`` of the first one missing from ``hay`` in order; -1 if all there."""
    j = 0
    n = len(hay)
    for i, want in enumerate(needles):
        while j < n and hay[j] != want:
            j += 1
        if j == n:
            return i
        j += 1
    return -1
