"""Types every header codec returns.

Each codec is a strict, pure function ``parse(buf) -> ProxyHeader | NeedMore`` that raises
``HeaderError`` for anything the spec forbids. The stream core calls it repeatedly on the growing
prefix of a client->server stream, so "not enough bytes yet" must be distinguishable from "this
can never become a valid header" -- the first holds packets, the second releases them untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class HeaderError(ValueError):
    """The bytes cannot be (the start of) a valid header of the kind being parsed."""


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The prefix is valid so far; try again once ``at_least`` bytes are available."""

    at_least: int


@dataclass(frozen=True, slots=True)
class Tlv:
    """One PROXY v2 TLV (or custom-header extension) kept raw, so nothing the proxy said is lost."""

    type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header: how many stream bytes it occupies and what it says about the client.

    ``kind`` is "proxy-v1", "proxy-v2" or "custom". ``command`` is "PROXY" or "LOCAL" (v1 UNKNOWN
    and v2 LOCAL/UNSPEC carry no addresses: the address fields are then None). ``family`` is one
    of "TCP4", "TCP6", "UDP4", "UDP6", "UNIX", "UNSPEC", "UNKNOWN". Addresses are text (IPv4/IPv6
    in canonical form, UNIX paths decoded with surrogateescape). ``fields`` holds decoded TLVs
    (alpn, authority, crc32c, unique_id, ssl, netns, aws_vpce_id, custom extensions) for the
    connection cache; ``tlvs`` keeps every TLV raw, unknown ones included.
    """

    kind: str
    length: int
    command: str
    family: str
    src_addr: str | None = None
    dst_addr: str | None = None
    src_port: int | None = None
    dst_port: int | None = None
    tlvs: tuple[Tlv, ...] = ()
    fields: dict[str, Any] = field(default_factory=dict)


def split_tlvs(
    data: bytes, start: int, codec: str, what: str, past: str = "the end"
) -> list[tuple[int, int, int]]:
    """(type, value offset, value length) of TLVs (type u8, length u16, value) that tile
    ``data[start:]`` exactly; the one walker of the PROXY v2 and custom codecs.

    ``codec``, ``what`` and ``past`` only word the errors, which the conformance vectors record.
    """
    out = []
    off = start
    end = len(data)
    while off < end:
        if end - off < 3:
            raise HeaderError(f"{codec}: truncated {what} at offset {off}")
        t, n = data[off], (data[off + 1] << 8) | data[off + 2]
        if off + 3 + n > end:
            raise HeaderError(f"{codec}: {what} 0x{t:02x} at offset {off} runs past {past}")
        out.append((t, off + 3, n))
        off += 3 + n
    return out
