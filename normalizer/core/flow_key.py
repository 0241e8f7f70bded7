"""Flow keys: both directions of a connection find the same table entry.

A key is the VLAN ids followed by the two endpoints (address + port, raw bytes) in ascending
order; which endpoint is the proxy is a bit stored on the flow, not part of the key.
"""

from __future__ import annotations

import ipaddress

from normalizer.core.frame import TcpFrame


def make_key(vlan: bytes, a: bytes, b: bytes) -> bytes:
    return vlan + (a + b if a < b else b + a)


def split_key(key: bytes) -> tuple[bytes, bytes, bytes]:
    """Split a flow key back into (vlan ids, endpoint, endpoint)."""
    size = 12 if len(key) <= 20 else 36
    half = size // 2
    vlan = key[: len(key) - size]
    tail = key[len(key) - size :]
    return vlan, tail[:half], tail[half:]


def endpoints_of(frame: bytes, f: TcpFrame) -> tuple[bytes, bytes]:
    """(source address + port, destination address + port) as raw bytes."""
    ip, t = f.ip, f.tcp
    if frame[ip] >> 4 == 4:
        return frame[ip + 12 : ip + 16] + frame[t : t + 2], frame[ip + 16 : ip + 20] + frame[
            t + 2 : t + 4
        ]
    return frame[ip + 8 : ip + 24] + frame[t : t + 2], frame[ip + 24 : ip + 40] + frame[
        t + 2 : t + 4
    ]


def endpoint_text(ep: bytes) -> tuple[str, int]:
    return str(ipaddress.ip_address(ep[:-2])), int.from_bytes(ep[-2:], "big")


MEMO_BOUND = 4096  # per memo: proxies, decoys and tunnel peers repeat, clients may not


class AddressTexts:
    """Address bytes -> canonical text, memoized: ``ipaddress`` costs microseconds per call and
    the same few addresses recur on every flow. Cleared when it reaches MEMO_BOUND entries, so
    hostile clients cannot grow it."""

    __slots__ = ("_texts",)

    def __init__(self) -> None:
        self._texts: dict[bytes, str] = {}

    def text(self, packed: bytes) -> str:
        text = self._texts.get(packed)
        if text is None:
            if len(self._texts) >= MEMO_BOUND:
                self._texts.clear()
            text = self._texts[packed] = str(ipaddress.ip_address(packed))
        return text

    def endpoint(self, ep: bytes) -> tuple[str, int]:
        """``endpoint_text``, memoized."""
        return self.text(ep[:-2]), int.from_bytes(ep[-2:], "big")
