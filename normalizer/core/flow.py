"""Per-connection state of a proxied TCP flow and the sequence-space mapping it implies.

The header occupies client stream offsets [0, N). Removing it maps every client offset x to
x - N when x >= N and to 0 when x < N (bytes inside the header collapse onto the start of the
real stream), applied to client seq numbers and to the server's ack numbers and SACK edges.
All arithmetic is modulo 2**32 relative to the client's initial sequence number.
"""

from __future__ import annotations

from typing import NamedTuple

from normalizer.core.flow_state import ACTIVE, PENDING, State
from normalizer.core.frame import TcpFrame
from normalizer.core.wire import ACK, FIN, RST, SYN

__all__ = ["ACK", "FIN", "RST", "SYN"]  # re-exported: their home is wire.py

MOD = 1 << 32
MASK = MOD - 1
HALF = 1 << 31


# What ``Flow.closing`` remembers (flag bits): which FINs were seen, and whether an RST was.
CLIENT_FIN = 0x01
SERVER_FIN = 0x02
BOTH_FINS = CLIENT_FIN | SERVER_FIN
RESET = 0x04


class Held(NamedTuple):
    """A frame held while its flow waits for the header, with what was found when it arrived."""

    ts: int
    frame: bytes
    located: TcpFrame  # its offsets: releasing it does not parse it again
    from_client: bool


class Hold:
    """What a flow keeps only while it waits for its header (PENDING).

    Why a separate object: nearly every tracked flow is past its header, and these four fields
    cost 32 bytes per flow in the table for nothing; one reference that becomes None costs 8.
    """

    __slots__ = ("buf", "frames", "nbytes", "started")

    def __init__(self, now: int) -> None:
        self.buf = bytearray()  # contiguous header prefix
        self.frames: list[Held] = []  # in arrival order
        self.nbytes = 0  # bytes of the held frames
        self.started = now  # when the flow began: the hold's deadline counts from here


class Flow:
    """State of one tracked connection; slotted because the table may hold 100k of them."""

    __slots__ = (
        "client_first",
        "closed_at",
        "closing",
        "hdr_len",
        "hold",
        "isn",
        "key",
        "last_seen",
        "real",
        "state",
    )

    def __init__(self, client_first: bool, isn: int, now: int) -> None:
        """A new flow opened by a trusted proxy's SYN: PENDING, holding its packets."""
        # Whether the proxy (client) side is the first endpoint of the flow key; storing this
        # bit instead of the endpoint keeps the per-flow footprint small.
        self.client_first = client_first
        self.isn = isn
        self.state: State = PENDING
        self.hdr_len = 0
        self.hold: Hold | None = Hold(now)  # None once the flow is ACTIVE or PASSING
        self.last_seen = now
        self.closing = 0  # CLIENT_FIN | SERVER_FIN | RESET, as seen
        # (real client, real target) as address bytes + 2-byte port, when addresses are restored
        self.real: tuple[bytes, bytes] | None = None
        self.closed_at = 0
        self.key = b""  # its key in the flow table, set by ``FlowTable.put``

    @classmethod
    def resumed(
        cls, client_first: bool, isn: int, hdr_len: int, real: tuple[bytes, bytes] | None, now: int
    ) -> Flow:
        """A flow a previous run resolved: ACTIVE from the start, nothing held."""
        flow = cls.__new__(cls)
        flow.client_first = client_first
        flow.isn = isn
        flow.state = ACTIVE
        flow.hdr_len = hdr_len
        flow.hold = None
        flow.last_seen = now
        flow.closing = 0
        flow.real = real
        flow.closed_at = 0
        return flow

    def map_seq(self, seq: int) -> int:
        """Client sequence number (or server ack / SACK edge) after the header is removed."""
        off = (seq - self.isn - 1) & MASK
        if off >= HALF:  # before the stream start: SYN, or garbage; leave it
            return seq
        n = self.hdr_len
        return (self.isn + 1 + (off - n if off >= n else 0)) & MASK

    def release(self) -> list[Held]:
        """Hand back held packets in arrival order and stop holding."""
        hold = self.hold
        self.hold = None
        return hold.frames if hold is not None else []
