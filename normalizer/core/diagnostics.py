"""Who opens connections the trust check ignores: the answer to "why was nothing stripped?".

A wrong ``--proxy``, or a bridge captured without promiscuous mode, shows as zero headers
stripped and nothing else. The core tallies the sources of SYNs that did not come from a
trusted proxy, so the adapters can name the likely proxy ("try --proxy 10.1.2.3") instead of
printing a row of zeros. Bounded: at most ``limit`` distinct sources are tracked (the first
ones seen; a flood of spoofed sources only fills ``others``), one dict update per SYN.
"""

from __future__ import annotations

import ipaddress


class SourceTally:
    __slots__ = ("_counts", "limit", "others")

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._counts: dict[bytes, int] = {}
        self.others = 0  # SYNs from sources past the limit

    def add(self, addr: bytes) -> None:
        counts = self._counts
        n = counts.get(addr)
        if n is not None:
            counts[addr] = n + 1
        elif len(counts) < self.limit:
            counts[addr] = 1
        else:
            self.others += 1

    def __len__(self) -> int:
        return sum(self._counts.values()) + self.others

    def top(self, n: int = 3) -> list[tuple[str, int]]:
        """The ``n`` most frequent sources as (address text, SYN count), most frequent first."""
        ranked = sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [(str(ipaddress.ip_address(a)), c) for a, c in ranked]
