"""The project's own gateway header: a fixed binary prefix naming the peer and the target.

For gateways that cannot speak PROXY v2 but can prepend a few bytes. The spec a gateway
implements is docs/custom-header.md; in short (all integers big-endian)::

    0   magic (8 bytes, default 8A 47 57 31 0D 0A 1A 0A)
    8   version u8 = 1
    9   family u8 = 4 or 6
    10  total header length u16, counted from the first magic byte
    12  peer address (4/16), peer port u16, target address (4/16), target port u16
    24/48  extensions up to the total length: TLVs (type u8, length u16, value)

The default magic starts like PNG's: a non-ASCII byte, then CR LF, ^Z, LF, so it is never
mistaken for text, for a PROXY v1 line or for the PROXY v2 signature (which starts with CR).
The length field makes the header self-delimiting and lets later versions add extensions that
old receivers skip; as with PROXY v2, it is always honoured and everything else is strict.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

from normalizer.proxy_headers.base import HeaderError, NeedMore, ProxyHeader, Tlv, split_tlvs

DEFAULT_MAGIC = b"\x8aGW1\r\n\x1a\n"
MAGIC_LEN = 8
VERSION = 1
FIXED_LEN = 12  # magic, version, family, length
# family byte -> (ProxyHeader family, address size, minimum total length)
_FAMILIES = {4: ("TCP4", 4, FIXED_LEN + 12), 6: ("TCP6", 16, FIXED_LEN + 36)}
_KIND = "custom"


def parse(buf: bytes, magic: bytes = DEFAULT_MAGIC) -> ProxyHeader | NeedMore:
    """Parse a gateway header at the start of ``buf``; bytes after its length are ignored."""
    if len(magic) != MAGIC_LEN:
        raise HeaderError(f"custom header: magic must be {MAGIC_LEN} bytes, got {len(magic)}")
    n = min(len(buf), MAGIC_LEN)
    if buf[:n] != magic[:n]:
        raise HeaderError("not a custom gateway header: magic mismatch")
    if len(buf) > 8 and buf[8] != VERSION:
        raise HeaderError(f"custom header: unsupported version {buf[8]}")
    if len(buf) > 9 and buf[9] not in _FAMILIES:
        raise HeaderError(f"custom header: unknown address family {buf[9]}")
    if len(buf) < FIXED_LEN:
        return NeedMore(FIXED_LEN)
    family, size, minimum = _FAMILIES[buf[9]]
    total = struct.unpack_from("!H", buf, 10)[0]
    if total < minimum:
        raise HeaderError(f"custom header: length {total} below the {family} minimum {minimum}")
    if len(buf) < total:
        return NeedMore(total)
    ip = ipaddress.IPv4Address if size == 4 else ipaddress.IPv6Address
    o = FIXED_LEN
    src = ip(buf[o : o + size])
    (sport,) = struct.unpack_from("!H", buf, o + size)
    dst = ip(buf[o + size + 2 : o + 2 * size + 2])
    (dport,) = struct.unpack_from("!H", buf, o + 2 * size + 2)
    tlvs = _extensions(buf[:total], minimum)
    fields = {"extensions": [{"type": t.type, "value": t.value.hex()} for t in tlvs]}
    return ProxyHeader(
        kind=_KIND,
        length=total,
        command="PROXY",
        family=family,
        src_addr=str(src),
        dst_addr=str(dst),
        src_port=sport,
        dst_port=dport,
        tlvs=tlvs,
        fields=fields if tlvs else {},
    )


def _extensions(hdr: bytes, off: int) -> tuple[Tlv, ...]:
    """The extension TLVs, which must tile the area after the addresses exactly."""
    walk = split_tlvs(hdr, off, "custom header", "extension", past="end")
    return tuple(Tlv(t, hdr[at : at + n]) for t, at, n in walk)


def build(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    magic: bytes = DEFAULT_MAGIC,
    extensions: Sequence[Tlv] = (),
) -> bytes:
    """Encode a gateway header (for tests, tools and as a reference for gateway authors).

    The family follows the addresses, which must both be IPv4 or both IPv6. Raises ValueError
    for anything that could not be parsed back.
    """
    if len(magic) != MAGIC_LEN:
        raise ValueError(f"magic must be {MAGIC_LEN} bytes, got {len(magic)}")
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError(f"address families differ: {src} / {dst}")
    if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
        raise ValueError(f"ports {sport} / {dport} out of range")
    ext = b""
    for t in extensions:
        if not 0 <= t.type <= 0xFF or len(t.value) > 0xFFFF:
            raise ValueError(f"extension type {t.type} or length {len(t.value)} out of range")
        ext += struct.pack("!BH", t.type, len(t.value)) + t.value
    body = s.packed + struct.pack("!H", sport) + d.packed + struct.pack("!H", dport) + ext
    total = FIXED_LEN + len(body)
    if total > 0xFFFF:
        raise ValueError(f"header of {total} bytes does not fit the u16 length")
    return magic + struct.pack("!BBH", VERSION, s.version, total) + body
