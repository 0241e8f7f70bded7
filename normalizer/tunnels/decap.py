"""Decapsulation in front of the core: VXLAN / GENEVE packets in, tagged inner Ethernet out.

Why here and not in the core: a mirror target or a gateway-load-balancer appliance receives
tunnel packets; once the inner frame is out, everything downstream (header stripping, the flow
table, Suricata) works on it unchanged. Each inner frame gets an 802.1Q tag for its VNI
(``tunnel.VlanMap``) so equal 5-tuples from different mirror sessions stay separate flows.

Sans-I/O like the core: ``feed(frame, ts)`` returns the frames to hand on, each with the
``TunnelRef`` it came through (None for frames passed as captured). Output is always Ethernet:
frames of other link types are given a synthesized Ethernet header, as are inner IPv4/IPv6
packets of GENEVE (no Ethernet inside). Nothing is dropped: what cannot be decapsulated (not a
tunnel, bad header, fragments given up on) is forwarded as captured and counted.

Only tunnels whose outer source is a configured peer (``tunnel_peers``: the mirror sources, the
load balancer) are opened. Anyone can send a UDP datagram to port 4789, and its inner frame
could claim to come from a trusted proxy: the core would honour its header, and the cache and
the enricher would then name a client the sender made up. So the outer source is checked
before any byte of the tunnel header is parsed, and a stranger's packet (or outer fragment) is
forwarded as captured, counted as ``tunnel_untrusted`` (Suricata still sees it as it was).

Truncated mirror packets (the mirror or the snap length cut them): the inner packet's IP length
is lowered to what was captured and its IP and TCP/UDP checksums recomputed, so Suricata still
tracks the flow (and sees a gap) instead of discarding the packet as malformed. Only a header
consistent with itself and with the EtherType in front of it is trimmed: the inner frame is the
sender's to choose (any host can send a datagram to the tunnel port), so a version nibble or a
length that contradicts the rest is handed on untouched and counted, never trusted for offsets.
"""

from __future__ import annotations

from normalizer.core.checksum import checksum, pseudo_header_sum
from normalizer.core.counters import Counters
from normalizer.core.frame import (
    LINKTYPE_ETHERNET,
    SYNTH_MACS,
    as_ethernet,
    l3_offset,
)
from normalizer.core.options import Options
from normalizer.core.trust import TrustedProxies
from normalizer.core.wire import (
    ETH_IPV4_BYTES,
    ETH_IPV6_BYTES,
    IPPROTO_TCP,
    IPPROTO_UDP,
    V6_FRAGMENT,
    skip_v6_extensions,
)
from normalizer.tunnels import geneve, vxlan
from normalizer.tunnels.ipfrag import Held, Reassembler
from normalizer.tunnels.ref import TunnelRef, VlanMap

Out = tuple[int, bytes, TunnelRef | None]

_NS = 1_000_000_000


class Decapsulator:
    def __init__(self, options: Options, linktype: int, counters: Counters | None = None) -> None:
        self.linktype = linktype
        self.counters = counters if counters is not None else Counters()
        self.vlans = VlanMap(dict(options.vni_vlan))
        self._vxlan = frozenset(options.vxlan_ports)
        self._geneve = frozenset(options.geneve_ports)
        self._peers = TrustedProxies(options.tunnel_peers)
        self._tags: dict[int, tuple[int, bytes]] = {}  # vni -> (vlan id, 802.1Q tag bytes)
        self._frag = Reassembler()
        self._next_sweep = 0

    # -- input -----------------------------------------------------------------------------

    def feed(self, frame: bytes, ts: int) -> list[Out]:
        """One captured frame in; the frames to hand to the core out (often exactly one)."""
        out = self.tick(ts) if ts >= self._next_sweep else []
        l3 = l3_offset(frame, self.linktype)
        if l3 is None:
            return out + self._passed([(ts, frame)])
        ip, version, vlan = l3
        n = len(frame)
        # A version nibble contradicting the link layer's EtherType: not an IP header we read.
        if version == 4:
            if n < ip + 20 or frame[ip + 9] != IPPROTO_UDP or frame[ip] >> 4 != 4:
                return out + self._passed([(ts, frame)])
            ihl = (frame[ip] & 0x0F) * 4
            total = (frame[ip + 2] << 8) | frame[ip + 3]
            if ihl < 20 or total < ihl or n < ip + ihl:
                return out + self._passed([(ts, frame)])
            src, dst = frame[ip + 12 : ip + 16], frame[ip + 16 : ip + 20]
            end = ip + total
            frag = (frame[ip + 6] << 8) | frame[ip + 7]
            if frag & 0x3FFF:
                key = b"\x04" + src + dst + frame[ip + 4 : ip + 6]
                off, more = (frag & 0x1FFF) * 8, bool(frag & 0x2000)
                if not self._peers.contains(src):
                    return out + self._stranger(frame, ts, off, ip + ihl)
                return out + self._fragment(frame, ts, key, off, more, ip + ihl, end, vlan)
            udp = ip + ihl
        else:
            if n < ip + 40 or frame[ip] >> 4 != 6:
                return out + self._passed([(ts, frame)])
            src, dst = frame[ip + 8 : ip + 24], frame[ip + 24 : ip + 40]
            end = ip + 40 + ((frame[ip + 4] << 8) | frame[ip + 5])
            nxt, udp = frame[ip + 6], ip + 40
            while True:
                walked = skip_v6_extensions(frame, nxt, udp, ah=False)
                if walked is None:
                    return out + self._passed([(ts, frame)])
                nxt, udp = walked
                if nxt == IPPROTO_UDP:
                    break
                if n < udp + 8:
                    return out + self._passed([(ts, frame)])
                if nxt == V6_FRAGMENT and frame[udp] == IPPROTO_UDP:
                    frag = (frame[udp + 2] << 8) | frame[udp + 3]
                    if frag & 0xFFF9 == 0:  # an atomic fragment: a whole datagram
                        nxt, udp = IPPROTO_UDP, udp + 8
                        continue
                    key = b"\x06" + src + dst + frame[udp + 4 : udp + 8]
                    more = bool(frag & 1)
                    if not self._peers.contains(src):
                        return out + self._stranger(frame, ts, frag & 0xFFF8, udp + 8)
                    return out + self._fragment(
                        frame, ts, key, frag & 0xFFF8, more, udp + 8, end, vlan
                    )
                else:
                    return out + self._passed([(ts, frame)])
        return out + self._udp(frame, udp, end, src, dst, vlan, ts, [(ts, frame)])

    def tick(self, now: int) -> list[Out]:
        """Give up on fragments that waited too long (their frames go out as captured)."""
        self._next_sweep = now + _NS
        self._frag.expire(now)
        return self._released()

    def flush(self) -> list[Out]:
        """End of input: release every fragment still held."""
        self._frag.flush()
        return self._released()

    @property
    def held_frames(self) -> int:
        return self._frag.held_frames

    @property
    def next_sweep(self) -> int:
        """``feed`` runs ``tick`` first for a frame at or past this time (ns)."""
        return self._next_sweep

    def tag_for(self, vni: int) -> tuple[int, bool]:
        """The VLAN id of ``vni`` as ``_udp`` gets it, and whether it is now cached (then a
        later lookup of the same VNI has no side effect: the compiled path may cache it too)."""
        tag = self._tags.get(vni)
        if tag is None:
            tag = self._tag(vni)
        return tag[0], vni in self._tags

    # -- tunnels ------------------------------------------------------------------------------

    def _udp(
        self,
        buf: bytes,
        udp: int,
        end: int,
        src: bytes,
        dst: bytes,
        outer_vlan: bytes,
        ts: int,
        originals: list[Held],
    ) -> list[Out]:
        """Decapsulate the UDP datagram at ``udp`` (ending at ``end`` as its IP header says)."""
        c = self.counters
        cut = end > len(buf)  # the outer packet itself was truncated
        end = min(end, len(buf))
        if end - udp < 8:
            return self._passed(originals)
        dport = (buf[udp + 2] << 8) | buf[udp + 3]
        ulen = (buf[udp + 4] << 8) | buf[udp + 5]
        if ulen >= 8:
            end = min(end, udp + ulen)
        is_vxlan = dport in self._vxlan
        if not is_vxlan and dport not in self._geneve:
            return self._passed(originals)
        if not self._peers.contains(src):  # before a single byte of the tunnel is parsed
            c.tunnel_untrusted += len(originals)
            return [(t, as_ethernet(f, self.linktype), None) for t, f in originals]
        options: tuple[geneve.GeneveOption, ...] = ()
        try:
            if is_vxlan:
                kind, vni, start, proto = "vxlan", vxlan.parse(buf, udp + 8, end), udp + 16, 0
            else:
                g = geneve.parse(buf, udp + 8, end)
                kind, vni, start, options = "geneve", g.vni, udp + 8 + g.length, g.options
                proto = 0 if g.protocol == geneve.PROTO_ETHERNET else g.protocol
        except (vxlan.VxlanError, geneve.GeneveError):
            return self._bad(originals, cut)
        if end - start < (1 if proto else 14):  # no inner packet at all
            return self._bad(originals, cut)
        tag = self._tags.get(vni)
        if tag is None:
            tag = self._tag(vni)
        if proto:
            inner = SYNTH_MACS + tag[1] + proto.to_bytes(2, "big") + buf[start:end]
        else:
            inner = buf[start : start + 12] + tag[1] + buf[start + 12 : end]
        sport = (buf[udp] << 8) | buf[udp + 1]
        ref = TunnelRef(kind, vni, tag[0], src, dst, sport, dport, outer_vlan, options)
        c.tunnel_decapsulated += 1
        return [(ts, self._fit(inner), ref)]

    def _tag(self, vni: int) -> tuple[int, bytes]:
        before = self.vlans.collisions
        vlan = self.vlans.vlan(vni)
        self.counters.tunnel_vlan_collisions += self.vlans.collisions - before
        tag = (vlan, b"\x81\x00" + vlan.to_bytes(2, "big"))
        if len(self._tags) < 65_536:  # the map itself is bounded; beyond, recompute
            self._tags[vni] = tag
        return tag

    def _fit(self, frame: bytes) -> bytes:
        """Trim an inner packet that claims more bytes than were captured (see module doc).

        The link layer's EtherType says which IP version follows; a header whose version nibble
        or lengths contradict it (or each other) is not trimmed but handed on as it came, and
        counted: the core then passes it untouched, and Suricata flags it itself.
        """
        etype = frame[16:18]
        if etype in (ETH_IPV4_BYTES, ETH_IPV6_BYTES):  # our own tag, no inner VLAN
            ip, version = 18, 4 if etype == ETH_IPV4_BYTES else 6
        else:
            l3 = l3_offset(frame, LINKTYPE_ETHERNET)
            if l3 is None:
                return frame
            ip, version = l3[0], l3[1]
        declared = ip_declared_length(frame, ip, version)
        if declared is None:
            self.counters.tunnel_inner_malformed += 1
            return frame
        if declared <= len(frame) - ip:
            return frame
        self.counters.tunnel_truncated += 1
        return frame if declared == HEADER_CUT else trim(frame, ip)

    # -- fragments and pass-through -------------------------------------------------------------

    def _fragment(
        self,
        frame: bytes,
        ts: int,
        key: bytes,
        off: int,
        more: bool,
        at: int,
        end: int,
        vlan: bytes,
    ) -> list[Out]:
        c = self.counters
        c.tunnel_fragments += 1
        data = frame[at:end]
        if end > len(frame) or not data or (more and len(data) % 8):
            # Truncated by the capture, or not a valid fragment: cannot be reassembled.
            c.tunnel_truncated += end > len(frame)
            self._frag.discard(key, (ts, frame))
            return self._released()
        tunnel = None
        if off == 0:  # the UDP header is here: a tunnel packet only if it goes to our ports
            dport = (data[2] << 8) | data[3] if len(data) >= 8 else -1
            tunnel = dport in self._vxlan or dport in self._geneve
        done = self._frag.add(key, off, more, data, (ts, frame), tunnel)
        out = self._released()
        if done is not None:
            l4, originals = done
            c.tunnel_reassembled += 1
            v = 4 if key[0] == 4 else 16
            src, dst = key[1 : 1 + v], key[1 + v : 1 + 2 * v]
            out += self._udp(l4, 0, len(l4), src, dst, vlan, ts, originals)
        return out

    def _stranger(self, frame: bytes, ts: int, off: int, at: int) -> list[Out]:
        """An outer fragment from a host that is not a tunnel peer: never reassembled (it cannot
        become a tunnel packet we open), forwarded at once; untrusted if it shows a tunnel port."""
        port = (frame[at + 2] << 8) | frame[at + 3] if off == 0 and len(frame) >= at + 4 else -1
        if port in self._vxlan or port in self._geneve:
            self.counters.tunnel_untrusted += 1
            return [(ts, as_ethernet(frame, self.linktype), None)]
        return self._passed([(ts, frame)])

    def _released(self) -> list[Out]:
        fr = self._frag
        if not fr.released:
            return []
        frames, fr.released = fr.released, []
        self.counters.tunnel_frag_limit = fr.given_up
        return [(t, as_ethernet(f, self.linktype), None) for t, f in frames]

    def _bad(self, originals: list[Held], cut: bool) -> list[Out]:
        self.counters.tunnel_bad_header += 1
        self.counters.tunnel_truncated += cut
        return [(t, as_ethernet(f, self.linktype), None) for t, f in originals]

    def _passed(self, frames: list[Held]) -> list[Out]:
        self.counters.tunnel_passed += len(frames)
        return [(t, as_ethernet(f, self.linktype), None) for t, f in frames]


HEADER_CUT = 1 << 17  # ``ip_declared_length`` of a header the capture cut: more than any packet


def ip_declared_length(frame: bytes, ip: int, version: int) -> int | None:
    """Bytes the IP header at ``ip`` says its packet has, ``HEADER_CUT`` when the header itself
    was not captured whole, None when it contradicts itself: a version nibble that is not the
    ``version`` the link layer declared, an IPv4 header length below 20, or a total length
    below the header's own. Only a header this accepts is given to ``trim``."""
    avail = len(frame) - ip
    if avail < 1 or frame[ip] >> 4 != version:
        return None if avail >= 1 else HEADER_CUT
    if version == 4:
        ihl = (frame[ip] & 0x0F) * 4
        if ihl < 20:
            return None
        if avail < ihl:
            return HEADER_CUT
        total = (frame[ip + 2] << 8) | frame[ip + 3]
        return total if total >= ihl else None
    if avail < 40:
        return HEADER_CUT
    return 40 + ((frame[ip + 4] << 8) | frame[ip + 5])


def trim(frame: bytes, ip: int) -> bytes:
    """Lower the IP length to the captured bytes; recompute IP and TCP/UDP checksums.

    The caller checked the header with ``ip_declared_length`` first.
    """
    buf = bytearray(frame)
    avail = len(buf) - ip
    if buf[ip] >> 4 == 4:
        ihl = (buf[ip] & 0x0F) * 4
        buf[ip + 2 : ip + 4] = avail.to_bytes(2, "big")
        buf[ip + 10 : ip + 12] = b"\x00\x00"
        buf[ip + 10 : ip + 12] = checksum(buf[ip : ip + ihl]).to_bytes(2, "big")
        if (buf[ip + 6] << 8 | buf[ip + 7]) & 0x1FFF:  # a non-first fragment: no L4 header
            return bytes(buf)
        l4, proto = ip + ihl, buf[ip + 9]
        src, dst = bytes(buf[ip + 12 : ip + 16]), bytes(buf[ip + 16 : ip + 20])
    else:
        buf[ip + 4 : ip + 6] = (avail - 40).to_bytes(2, "big")
        l4, proto = ip + 40, buf[ip + 6]
        src, dst = bytes(buf[ip + 8 : ip + 24]), bytes(buf[ip + 24 : ip + 40])
    size = len(buf) - l4
    if proto == IPPROTO_TCP and size >= 20 and (buf[l4 + 12] >> 4) * 4 <= size:
        buf[l4 + 16 : l4 + 18] = b"\x00\x00"
        csum = checksum(buf[l4:], pseudo_header_sum(src, dst, IPPROTO_TCP, size))
        buf[l4 + 16 : l4 + 18] = csum.to_bytes(2, "big")
    elif proto == IPPROTO_UDP and size >= 8:
        buf[l4 + 4 : l4 + 6] = size.to_bytes(2, "big")
        was_zero = len(src) == 4 and buf[l4 + 6 : l4 + 8] == b"\x00\x00"
        buf[l4 + 6 : l4 + 8] = b"\x00\x00"
        if not was_zero:  # IPv4 UDP may go without a checksum; keep it that way
            csum = checksum(buf[l4:], pseudo_header_sum(src, dst, IPPROTO_UDP, size)) or 0xFFFF
            buf[l4 + 6 : l4 + 8] = csum.to_bytes(2, "big")
    return bytes(buf)
