"""VXLAN (RFC 7348) header codec: what a traffic-mirroring target receives.

Only the 8-byte header is decoded; the inner Ethernet frame follows it. The I flag must be set
(the VNI is only meaningful then). Other reserved bits are ignored as the RFC asks, except the
VXLAN-GPE P bit: with it the inner packet need not be Ethernet, so it is accepted only when its
next-protocol byte says Ethernet. Anything else raises ``VxlanError`` and the caller forwards the
outer packet untouched.
"""

from __future__ import annotations

VXLAN_PORT = 4789
HEADER_LEN = 8
_I = 0x08  # VNI valid
_P = 0x04  # VXLAN-GPE: next-protocol byte present
_GPE_ETHERNET = 3


class VxlanError(ValueError):
    """Not a VXLAN header we can decapsulate (flags, length)."""


def parse(buf: bytes | bytearray, off: int = 0, end: int | None = None) -> int:
    """Return the VNI of the header at ``off``; the inner frame starts at ``off + HEADER_LEN``."""
    end = len(buf) if end is None else end
    if end - off < HEADER_LEN:
        raise VxlanError(f"truncated VXLAN header ({max(end - off, 0)} of 8 bytes)")
    flags = buf[off]
    if not flags & _I:
        raise VxlanError(f"VXLAN I flag not set (flags 0x{flags:02x})")
    if flags & _P and buf[off + 3] != _GPE_ETHERNET:
        raise VxlanError(f"VXLAN-GPE next protocol {buf[off + 3]} is not Ethernet")
    return (buf[off + 4] << 16) | (buf[off + 5] << 8) | buf[off + 6]


def build(vni: int) -> bytes:
    """The header for ``vni`` (tests and the benchmark put it in front of an Ethernet frame)."""
    if not 0 <= vni < 1 << 24:
        raise ValueError(f"VNI {vni} does not fit in 24 bits")
    return bytes((_I, 0, 0, 0)) + vni.to_bytes(3, "big") + b"\x00"
