"""What the engine tells the world about flows, and what the world tells it back after a restart.

Why a module of their own: the connection cache writes ``HeaderEvent`` rows and reads
``Resumable`` ones; keeping both types here lets it (and the adapters) depend on two plain
records instead of on the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from normalizer.proxy_headers.base import ProxyHeader


@dataclass(frozen=True, slots=True)
class HeaderEvent:
    """A proxied connection whose header was parsed: what the connection cache records."""

    ts: int  # ns, when the flow began (its first packet, normally the SYN)
    client: tuple[str, int]  # wire address of the proxy side
    server: tuple[str, int]  # wire address of the backend side
    vlan: bytes
    header: ProxyHeader
    isn: int = 0  # client initial sequence number: lets a restarted normalizer resume the flow


@dataclass(frozen=True, slots=True)
class FlowOutcome:
    """How a tracked flow (SYN from a trusted proxy) left PENDING: what ``flows`` explains.

    ``outcome``: "stripped" (``header`` set), or why the flow was released untouched:
    "malformed" (``detail``: the codec's reason), "excluded" (a signature of a kind not enabled;
    ``detail``: the kind), "no-header" (no signature of any kind), "missing" (ended before any
    client byte), "truncated" (ended or the input ended inside the header), "hold-overflow",
    "hold-timeout", "dropped" (evicted, or its ports reused, while waiting). ``header_bytes``:
    the contiguous client bytes the engine had collected.
    """

    ts: int  # ns, when the flow began
    client: tuple[str, int]  # wire address of the proxy side
    server: tuple[str, int]  # wire address of the backend side
    vlan: bytes
    outcome: str
    detail: str = ""
    header: ProxyHeader | None = None
    header_bytes: int = 0


class Resumable(NamedTuple):
    """A flow resolved by a previous run (its header came before a restart), as cached."""

    client: tuple[str, int]  # wire client (the proxy side)
    server: tuple[str, int]  # wire server (the backend side)
    vlan: bytes  # VLAN ids of the flow key
    isn: int  # client initial sequence number
    header: ProxyHeader
