"""One named home for every wire constant the normalizer reads or writes, and the IPv6
extension-header walk.

Why: the same EtherType, protocol number or TCP flag written as a literal in three modules is
three places to get wrong; as in dpkt's ``tcp.py`` each has one name here. The hot path of
engine.py still compares a few literal bytes at fixed offsets for speed; its comments name them.
"""

from __future__ import annotations

# EtherTypes
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_8021Q = 0x8100
VLAN_TPIDS = (ETH_8021Q, 0x88A8, 0x9100)  # 802.1Q, 802.1ad, the old QinQ 0x9100
ETH_IPV4_BYTES = ETH_IPV4.to_bytes(2, "big")
ETH_IPV6_BYTES = ETH_IPV6.to_bytes(2, "big")

# IP protocol numbers
IPPROTO_TCP = 6
IPPROTO_UDP = 17

# IPv6 extension headers that may precede the transport header and carry their own length.
V6_EXT_8 = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options: (len+1)*8
V6_AH = 51  # authentication header: (len+2)*4
V6_FRAGMENT = 44

# TCP header flags (byte 13)
FIN = 0x01
SYN = 0x02
RST = 0x04
ACK = 0x10

# TCP option kinds
TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_SACK = 5


def skip_v6_extensions(
    buf: bytes | bytearray, nxt: int, off: int, ah: bool = True
) -> tuple[int, int] | None:
    """Walk the IPv6 extension headers that start at ``off`` with next-header ``nxt``.

    Skips hop-by-hop, routing and destination options (and AH when ``ah``); returns the first
    other next-header value and its offset, or None if a header to skip is cut short (less than
    its 8 fixed bytes captured). A fragment header is returned, not skipped: callers differ.
    """
    n = len(buf)
    while nxt in V6_EXT_8 or (ah and nxt == V6_AH):
        if n < off + 8:
            return None
        size = (buf[off + 1] + 2) * 4 if nxt == V6_AH else (buf[off + 1] + 1) * 8
        nxt = buf[off]
        off += size
    return nxt, off
