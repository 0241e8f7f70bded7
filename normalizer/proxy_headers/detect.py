"""Chooses the codec for a stream from its first bytes, among the kinds a proxy may send.

Whether a header is present at all is configuration (the spec forbids guessing); which of the
enabled kinds it is can be told apart safely because their signatures share no prefix.
"""

from __future__ import annotations

from enum import StrEnum

from normalizer.proxy_headers import custom, proxy_v1, proxy_v2
from normalizer.proxy_headers.base import HeaderError, NeedMore, ProxyHeader


class HeaderKind(StrEnum):
    PROXY_V1 = "proxy-v1"
    PROXY_V2 = "proxy-v2"
    CUSTOM = "custom"


ALL_KINDS: frozenset[HeaderKind] = frozenset(HeaderKind)


def parse_header(
    buf: bytes,
    kinds: frozenset[HeaderKind] = ALL_KINDS,
    custom_magic: bytes = custom.DEFAULT_MAGIC,
) -> ProxyHeader | NeedMore:
    """Parse the header at the start of ``buf`` with whichever enabled codec its signature names."""
    candidates: list[tuple[bytes, HeaderKind]] = []
    if HeaderKind.PROXY_V2 in kinds:
        candidates.append((proxy_v2.SIGNATURE, HeaderKind.PROXY_V2))
    if HeaderKind.PROXY_V1 in kinds:
        candidates.append((proxy_v1.SIGNATURE, HeaderKind.PROXY_V1))
    if HeaderKind.CUSTOM in kinds:
        candidates.append((custom_magic, HeaderKind.CUSTOM))
    shortest_missing = 0  # 0: no enabled signature is still possible
    for sig, kind in candidates:
        n = min(len(buf), len(sig))
        if buf[:n] != sig[:n]:
            continue
        if n < len(sig):
            need = len(sig)
            shortest_missing = need if not shortest_missing else min(shortest_missing, need)
            continue
        if kind is HeaderKind.PROXY_V2:
            return proxy_v2.parse(buf)
        if kind is HeaderKind.PROXY_V1:
            return proxy_v1.parse(buf)
        return custom.parse(buf, custom_magic)
    if shortest_missing:
        return NeedMore(shortest_missing)
    names = ", ".join(sorted(k.value for k in kinds)) or "none"
    raise HeaderError(f"stream does not start with an enabled header signature ({names})")


def signature_kind(
    buf: bytes | bytearray, custom_magic: bytes = custom.DEFAULT_MAGIC
) -> HeaderKind | None:
    """The kind whose signature ``buf`` starts with (or, if shorter, is a prefix of), enabled or
    not; None if none: tells a stream that carries no header at all from one whose header is
    of a kind excluded by configuration, when ``parse_header`` refused it."""
    for sig, kind in (
        (proxy_v2.SIGNATURE, HeaderKind.PROXY_V2),
        (proxy_v1.SIGNATURE, HeaderKind.PROXY_V1),
        (custom_magic, HeaderKind.CUSTOM),
    ):
        n = min(len(buf), len(sig))
        if n and buf[:n] == sig[:n]:
            return kind
    return None
