"""Internet checksums (RFC 1071) and their incremental update (RFC 1624).

Most rewritten segments only change 32-bit sequence fields, so adjusting the existing checksum
costs a few integer operations instead of a pass over the payload; full recomputation is kept for
segments whose payload or length changes, and as the reference the tests compare against.
"""

from __future__ import annotations

import sys

_LITTLE = sys.byteorder == "little"


def ones_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """Folded 16-bit one's complement sum of ``data`` (big-endian words), plus ``start``.

    Summing native-endian words in C via ``memoryview.cast`` and swapping once at the end is
    valid because the one's complement sum commutes with byte swapping (RFC 1071, section 2B).
    """
    mv = memoryview(data)
    if len(mv) & 1:
        mv = memoryview(bytes(mv) + b"\x00")
    total = sum(mv.cast("H")) if len(mv) else 0
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    if _LITTLE:
        total = ((total & 0xFF) << 8) | (total >> 8)
    total += start
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The value to store in a checksum field (complement of the folded sum)."""
    return (~ones_sum(data, start)) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Sum of the IPv4 or IPv6 pseudo-header (RFC 793 / RFC 8200 section 8.1)."""
    if len(src) == 4:
        tail = bytes((0, proto, (length >> 8) & 0xFF, length & 0xFF))
    else:
        tail = length.to_bytes(4, "big") + bytes((0, 0, 0, proto))
    return ones_sum(src + dst + tail)


def adjust32(csum: int, old: int, new: int) -> int:
    """Update a stored checksum for one 32-bit field changing from ``old`` to ``new``.

    A one's complement sum of 16-bit words is congruent to the words' concatenation modulo
    0xFFFF, and the checksum is its negation; so RFC 1624's update reduces to one modulo.
    The result lies in 0..0xFFFE, the same value a full recomputation gives (which never
    produces 0xFFFF), so incremental and full results compare equal byte for byte.
    """
    return (csum + old - new) % 0xFFFF


def adjust16(csum: int, old: int, new: int) -> int:
    """Update a stored checksum for one 16-bit field changing from ``old`` to ``new``."""
    return (csum + old - new) % 0xFFFF
