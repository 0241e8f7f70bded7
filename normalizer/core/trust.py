"""Which source addresses are trusted proxies whose connections start with a header.

The PROXY spec forbids guessing whether a header is present: only connections opened by
configured proxies are parsed, so a client cannot forge its address by sending a header itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class TrustedProxies:
    """Membership test on raw 4- or 16-byte addresses, as they sit in the packet."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._v4: list[tuple[int, int]] = []
        self._v6: list[tuple[int, int]] = []
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for text in cidrs:
            net = ipaddress.ip_network(text, strict=False)  # ValueError names the bad entry
            self.networks.append(net)
            pair = (int(net.network_address), int(net.netmask))
            (self._v4 if net.version == 4 else self._v6).append(pair)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def contains(self, addr: bytes) -> bool:
        value = int.from_bytes(addr, "big")
        nets = self._v4 if len(addr) == 4 else self._v6
        return any(value & mask == net for net, mask in nets)
