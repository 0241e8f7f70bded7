"""Gateway-load-balancer appliance core: one GENEVE datagram in, the return packet and the
frame for Suricata out.

Why the appliance answers at all: a gateway load balancer sends every packet of the protected
VPCs to its appliances wrapped in GENEVE (UDP 6081) and expects each one back, or the protected
traffic stops. As an IDS the appliance returns every valid packet at once, unchanged (the
GENEVE header and its options as received, only the outer addresses swapped, the UDP ports
kept, as gwlbtun does), and hands a copy of the inner packet to Suricata: inspection never
delays or drops protected traffic.

Why so strict about what is valid: a datagram that is returned re-enters the protected VPC, and
one that is inspected writes attribution into the cache. So only datagrams from a configured
balancer address (``tunnel_peers``, checked before a byte is parsed) with version 0, an option
length that fits, a bare IPv4/IPv6 inner packet (protocol 0x0800/0x86DD) whose own length fills
the rest exactly, and each of the three options of class 0x0108 (type 1 endpoint ENI id, 8
bytes; type 2 attachment id, 8 bytes; type 3 flow cookie, 4 bytes) exactly once are either.
Anything else is counted by reason and neither returned nor inspected. An unknown option is
kept (and returned) unless its critical bit is set (RFC 8926: a receiver must drop those).

Each endpoint ENI gets its own 802.1Q id on the frame for Suricata (``VlanMap``, keyed by the
ENI id), so equal inner 5-tuples behind different endpoints (overlapping VPC ranges) stay
separate flows in the core and in Suricata; the mapping is recorded per flow in the cache.
A balancer used as a traffic-mirror target delivers VXLAN inside GENEVE: an inner IPv4/UDP
packet to a VXLAN port with a valid VXLAN header is opened too (one VLAN id per ENI and VNI),
its Ethernet frame inspected, the VXLAN layer recorded under ``mirror`` in the tunnel metadata.

Bytes in, bytes out: no sockets here (``appliance_live.py`` owns them).
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from typing import NamedTuple

from normalizer.core.frame import SYNTH_MACS
from normalizer.core.trust import TrustedProxies
from normalizer.core.wire import IPPROTO_UDP as _UDP
from normalizer.tunnels import geneve, vxlan
from normalizer.tunnels.ref import TunnelRef, VlanMap

IDLE_TIMEOUT = 350.0  # the balancer's flow idle timeout: default lifetime of flow rows
TTL = 64
_VXLAN_KEY = 1 << 24  # VlanMap key bit: ENI + VXLAN VNI, distinct from the ENI alone
_REQUIRED = {1: 8, 2: 8, 3: 4}  # class 0x0108 option type -> data size
# IPv4 header (checksum 0) + UDP header without its checksum: the return packet's outer part.
_OUTER = struct.Struct("!BBHHHBBH4s4sHHH")

# Why a datagram was neither returned nor inspected.
REASONS = (
    "peer",  # outer source not in tunnel_peers, or the appliance itself
    "short",  # shorter than a GENEVE header
    "version",  # GENEVE version other than 0
    "length",  # option length past the datagram, or options that do not fill it
    "protocol",  # inner protocol not bare IPv4 / IPv6
    "options",  # one of the three options missing, repeated, mis-sized; an unknown critical one
    "inner",  # inner IP header shorter than its minimum, wrong version, or a length that does
    # not fill the datagram exactly
)


class Rejected(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Datagram(NamedTuple):
    """A valid GENEVE datagram from the balancer."""

    header: geneve.Geneve
    eni_id: bytes
    attachment_id: bytes
    flow_cookie: bytes
    inner: int  # offset of the inner IP packet


def validate(payload: bytes) -> Datagram:
    """Check a UDP payload as the balancer sends it; raise ``Rejected`` naming the reason."""
    d = validate_header(payload)
    check_inner(payload, d.inner, d.header.protocol)
    return d


def validate_header(payload: bytes) -> Datagram:
    """The GENEVE header and its options (everything before the inner packet)."""
    n = len(payload)
    if n < geneve.BASE_LEN:
        raise Rejected("short", f"{n} bytes, a GENEVE header has 8")
    if payload[0] >> 6:
        raise Rejected("version", f"GENEVE version {payload[0] >> 6}")
    protocol = (payload[2] << 8) | payload[3]
    if protocol not in (geneve.PROTO_IPV4, geneve.PROTO_IPV6):
        raise Rejected("protocol", f"inner protocol 0x{protocol:04x}, not IPv4/IPv6")
    try:
        g = geneve.parse(payload)
    except geneve.GeneveError as exc:
        raise Rejected("length", str(exc)) from None
    found: dict[int, bytes] = {}
    for opt in g.options:
        if opt.cls == geneve.AWS_CLASS and opt.type in _REQUIRED:
            if opt.type in found or len(opt.data) != _REQUIRED[opt.type]:
                raise Rejected("options", f"option type {opt.type} repeated or mis-sized")
            found[opt.type] = opt.data
        elif opt.type & geneve.CRITICAL:
            raise Rejected("options", f"unknown critical option {opt.cls:#06x}/{opt.type:#04x}")
    if len(found) != 3:
        missing = sorted(set(_REQUIRED) - set(found))
        raise Rejected("options", f"options of class 0x0108 missing: types {missing}")
    return Datagram(g, found[1], found[2], found[3], g.length)


def check_inner(payload: bytes, at: int, protocol: int) -> None:
    """The inner IP packet at ``at`` must be one whole packet: its own length fills the rest."""
    size = len(payload) - at
    if protocol == geneve.PROTO_IPV4:
        ok = size >= 20 and payload[at] >> 4 == 4 and (payload[at] & 0x0F) >= 5
        ok = ok and (payload[at + 2] << 8 | payload[at + 3]) == size
        ok = ok and (payload[at] & 0x0F) * 4 <= size
    else:
        ok = size >= 40 and payload[at] >> 4 == 6
        ok = ok and 40 + (payload[at + 4] << 8 | payload[at + 5]) == size
    if not ok:
        raise Rejected("inner", f"inner packet of {size} bytes contradicts its IP header")


def return_packet(payload: bytes, src: bytes, sport: int, dst: bytes, dport: int) -> bytes:
    """The outer IPv4/UDP packet that hands ``payload`` back: received from ``src:sport`` at
    ``dst:dport``, sent from ``dst:sport`` to ``src:dport`` (addresses swapped, ports kept),
    the payload byte for byte as received, IP and UDP checksums complete.

    Checksums by congruence (2**16 = 1 mod 0xFFFF, so the one's complement sum of 16-bit words
    is the number the bytes spell, mod 0xFFFF): one big-integer conversion in C instead of a
    loop over words. The UDP value is never 0 ("no checksum"): a computed 0 goes out as 0xFFFF.
    """
    ulen = 8 + len(payload)
    head = _OUTER.pack(0x45, 0, 20 + ulen, 0, 0x4000, TTL, _UDP, 0, dst, src, sport, dport, ulen)
    pad = b"\x00" if ulen & 1 else b""
    udp_sum = int.from_bytes(head[12:] + payload + pad, "big") + _UDP + ulen
    ip_sum = int.from_bytes(head[:20], "big")
    return b"".join(
        (
            head[:10],
            ((0xFFFF - ip_sum % 0xFFFF) % 0xFFFF).to_bytes(2, "big"),
            head[12:],
            (0xFFFF - udp_sum % 0xFFFF).to_bytes(2, "big"),
            payload,
        )
    )


def vlan_tag(vlan: int) -> bytes:
    return b"\x81\x00" + vlan.to_bytes(2, "big")


class Mirror(NamedTuple):
    """A VXLAN packet inside the GENEVE datagram: its header fields and its Ethernet frame."""

    vni: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    frame: int  # offset of the inner Ethernet frame in the payload


def mirrored(payload: bytes, ip: int, vxlan_ports: frozenset[int]) -> Mirror | None:
    """The VXLAN layer of a mirrored packet (GENEVE -> IPv4/UDP -> VXLAN -> Ethernet), if any.

    ``ip``: offset of the inner IPv4 header. Only an unfragmented datagram to a VXLAN port,
    with a valid VXLAN header and room for an Ethernet header behind it; anything else is
    inspected as the plain inner packet it is.
    """
    if payload[ip + 9] != _UDP:
        return None
    if (payload[ip + 6] << 8 | payload[ip + 7]) & 0x3FFF:
        return None
    udp = ip + (payload[ip] & 0x0F) * 4
    if len(payload) < udp + 8 + 8 + 14:
        return None
    dport = (payload[udp + 2] << 8) | payload[udp + 3]
    if dport not in vxlan_ports:
        return None
    try:
        vni = vxlan.parse(payload, udp + 8, len(payload))
    except vxlan.VxlanError:
        return None
    sport = (payload[udp] << 8) | payload[udp + 1]
    src, dst = payload[ip + 12 : ip + 16], payload[ip + 16 : ip + 20]
    return Mirror(vni, src, dst, sport, dport, udp + 16)


@dataclass(slots=True)
class ApplianceCounters:
    received: int = 0  # datagrams read from the socket
    receive_errors: int = 0  # socket reads that failed (adapter)
    returned: int = 0  # return packets sent (adapter)
    return_errors: int = 0  # return sends that failed (adapter): protected traffic lost
    inspected: int = 0  # inner frames handed to the pipeline
    mirrored: int = 0  # of those: VXLAN inside GENEVE, opened through both layers
    vlan_collisions: int = 0  # endpoints that could not get their default VLAN id
    rejected_peer: int = 0
    rejected_short: int = 0
    rejected_version: int = 0
    rejected_length: int = 0
    rejected_protocol: int = 0
    rejected_options: int = 0
    rejected_inner: int = 0

    @property
    def rejected(self) -> int:
        return sum(getattr(self, f"rejected_{r}") for r in REASONS)

    def as_dict(self) -> dict[str, int]:
        d = asdict(self)
        d["rejected"] = self.rejected
        return d


class _Known(NamedTuple):
    protocol: int
    eni: int  # VlanMap key of the ENI
    ether: bytes  # Ethernet header with its 802.1Q tag, for the inspection frame
    ref: TunnelRef


_MAX_KNOWN = 65_536


class Verdict(NamedTuple):
    """What to do with one datagram: send ``ret`` to the balancer, inspect ``frame``."""

    ret: bytes
    frame: bytes
    ref: TunnelRef


class Appliance:
    """Validates datagrams from the balancer and builds return packets and inspection frames."""

    def __init__(
        self,
        peers: tuple[str, ...],
        address: bytes,
        port: int = geneve.GENEVE_PORT,
        vxlan_ports: tuple[int, ...] = (4789,),
        counters: ApplianceCounters | None = None,
    ) -> None:
        """``address``/``port``: where the balancer sends to (the returns' source address)."""
        self.counters = counters if counters is not None else ApplianceCounters()
        self.address = address
        self.port = port
        self.vlans = VlanMap()
        self._peers = TrustedProxies(peers)
        self._vxlan = frozenset(vxlan_ports)
        self._known: dict[bytes, _Known] = {}  # header + source port -> validated tunnel
        self._trusted: dict[bytes, bool] = {}  # outer source -> in tunnel_peers

    def receive(self, payload: bytes, src: bytes, sport: int) -> Verdict | None:
        """A datagram from ``src:sport``; None when it is rejected (counted by reason)."""
        c = self.counters
        c.received += 1
        trusted = self._trusted.get(src)
        if trusted is None:
            # Our own address never: a return that came back must not be returned again.
            trusted = src != self.address and self._peers.contains(src)
            if len(self._trusted) >= _MAX_KNOWN:
                self._trusted.clear()
            self._trusted[src] = trusted
        if not trusted:
            c.rejected_peer += 1
            return None
        # A flow's datagrams share their header (the cookie is per flow) and source port:
        # validated and turned into a TunnelRef once, then looked up.
        at = 8 + (payload[0] & 0x3F) * 4 if payload else 0
        key = payload[:at] + sport.to_bytes(2, "big")
        known = self._known.get(key)
        try:
            if known is None:
                known = self._learn(payload, src, sport, key)
            check_inner(payload, at, known.protocol)
        except Rejected as exc:
            name = f"rejected_{exc.reason}"
            setattr(c, name, getattr(c, name) + 1)
            return None
        ret = return_packet(payload, src, sport, self.address, self.port)
        c.inspected += 1
        if payload[at + 9] == _UDP and known.protocol == geneve.PROTO_IPV4:
            m = mirrored(payload, at, self._vxlan)
            if m is not None:
                return self._mirror(payload, ret, known, m)
        frame = known.ether + payload[at:]
        return Verdict(ret, frame, known.ref)

    def trusts(self, addr: bytes) -> bool:
        """Whether ``addr`` (packed IPv4) is one of the balancers (for the health server)."""
        return self._peers.contains(addr)

    def _learn(self, payload: bytes, src: bytes, sport: int, key: bytes) -> _Known:
        d = validate_header(payload)
        g = d.header
        eni = int.from_bytes(d.eni_id, "big") << 25
        vlan = self._vlan(eni)
        ref = TunnelRef("geneve", g.vni, vlan, src, self.address, sport, self.port, b"", g.options)
        ether = SYNTH_MACS + vlan_tag(vlan) + g.protocol.to_bytes(2, "big")
        known = _Known(g.protocol, eni, ether, ref)
        if len(self._known) >= _MAX_KNOWN:  # bounded: start over rather than grow
            self._known.clear()
        self._known[key] = known
        return known

    def _mirror(self, payload: bytes, ret: bytes, known: _Known, m: Mirror) -> Verdict:
        """VXLAN inside: its Ethernet frame, tagged for this ENI and VNI, both layers noted."""
        self.counters.mirrored += 1
        vlan = self._vlan(known.eni | _VXLAN_KEY | m.vni)
        eth = payload[m.frame :]
        mirror = TunnelRef("vxlan", m.vni, vlan, m.src, m.dst, m.sport, m.dport, b"")
        ref = known.ref._replace(vlan=vlan, mirror=mirror)
        return Verdict(ret, eth[:12] + vlan_tag(vlan) + eth[12:], ref)

    def _vlan(self, key: int) -> int:
        before = self.vlans.collisions
        vlan = self.vlans.vlan(key)
        self.counters.vlan_collisions += self.vlans.collisions - before
        return vlan


def healthy(loop_running: bool, tap_exists: bool, returns_failing: bool) -> bool:
    """The health check's answer: 200 only while all three hold (see appliance_live)."""
    return loop_running and tap_exists and not returns_failing
