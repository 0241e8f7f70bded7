"""Community ID v1 (corelight/community-id-spec): the flow hash Suricata writes as ``community_id``.

An enriched event names other endpoints than the packets Suricata hashed, so its community_id
must be recomputed, or it would still join the event to the proxy's wire flow in every tool that
correlates by it (Zeek, Elastic, Arkime). Definition: SHA-1 over seed (u16 BE), the two addresses
in a canonical order, protocol (u8), one zero byte and, for port protocols, the two ports (u16 BE)
in the same order; base64, prefixed "1:". The order makes both directions hash alike; ICMP types
are mapped to port equivalents so a request and its reply do too.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct
from functools import lru_cache

TCP, UDP, ICMP, ICMP6, SCTP = 6, 17, 1, 58, 132
_PORT_PROTOS = frozenset({TCP, UDP, SCTP, ICMP, ICMP6})

# ICMP type -> the type of its counterpart (request <-> reply); unmapped types are one-way.
# As in the spec's reference implementation: router solicitation maps to advertisement, not back.
_ICMP4_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 17: 18, 18: 17}
_ICMP6_PAIRS = {
    128: 129,
    129: 128,
    133: 134,
    134: 133,
    135: 136,
    136: 135,
    130: 131,
    131: 130,
    139: 140,
    140: 139,
    144: 145,
    145: 144,
}

# eve's "proto" strings (Suricata prints known protocols by name, others as the number)
EVE_PROTOS = {"TCP": TCP, "UDP": UDP, "ICMP": ICMP, "IPV6-ICMP": ICMP6, "SCTP": SCTP}
_BY_NAME = EVE_PROTOS | {"IPv6-ICMP": ICMP6}  # as Suricata spells them: no upper() per event


def proto_number(proto: object) -> int | None:
    """eve's ``proto`` value ("TCP", "IPv6-ICMP", "47", 6) as a protocol number, None if unknown."""
    known = _BY_NAME.get(proto) if type(proto) is str else None
    return known if known is not None else _proto_number(proto)


def _proto_number(proto: object) -> int | None:
    """eve's ``proto`` value ("TCP", "IPv6-ICMP", "47", 6) as a protocol number, None if unknown."""
    if type(proto) is int:  # not bool: ``true`` is no protocol
        return proto if 0 <= proto <= 255 else None
    if isinstance(proto, str):
        if proto.isascii() and proto.isdigit():  # "²" and "٦" are digits int() may refuse
            n = int(proto)
            return n if n <= 255 else None
        return EVE_PROTOS.get(proto.upper())
    return None


@lru_cache(maxsize=65536)
def _packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


# Every event of a flow in one direction hashes the same tuple: memoized, the hash costs one
# dict lookup per event instead of two address parses and a SHA-1.
@lru_cache(maxsize=65536)
def community_id(
    proto: int,
    saddr: str,
    daddr: str,
    sport: int | None = None,
    dport: int | None = None,
    seed: int = 0,
) -> str:
    """The v1 Community ID of a flow; for ICMP/ICMPv6 pass the type as sport and code as dport.

    Raises ValueError for an unparsable address, mixed address families or an out-of-range port.
    """
    src = _packed(saddr)
    dst = _packed(daddr)
    if len(src) != len(dst):
        raise ValueError(f"{saddr} and {daddr} are of different address families")
    ports = proto in _PORT_PROTOS and sport is not None and dport is not None
    p1, p2 = (sport or 0), (dport or 0)
    one_way = False
    if ports and proto in (ICMP, ICMP6):
        pairs = _ICMP4_PAIRS if proto == ICMP else _ICMP6_PAIRS
        if p1 in pairs:
            p2 = pairs[p1]
        else:
            one_way = True
    if not one_way and (src > dst or (src == dst and p1 > p2)):
        src, dst, p1, p2 = dst, src, p2, p1
    data = struct.pack("!H", seed) + src + dst + struct.pack("!BB", proto, 0)
    if ports:
        data += struct.pack("!HH", p1, p2)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")
