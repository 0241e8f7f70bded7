"""Bounded reassembly of fragmented outer UDP datagrams (VXLAN/GENEVE over a small MTU).

Why only outer UDP, and why give up by forwarding: a tunnel packet fragmented on the underlay
cannot be decapsulated until it is whole, but a datagram that never completes must not vanish.
Every fragment that cannot be reassembled (timeout, limits, overlap, truncation) or that turns
out not to belong to a tunnel packet goes to ``released`` untouched, in arrival order, for the
caller to forward as captured (Suricata can still reassemble those itself).

Keys are opaque bytes (version, addresses, protocol, identification); offsets are in bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Held = tuple[int, bytes]  # (ts, frame) as captured

MAX_DATAGRAMS = 1024
MAX_FRAGMENTS = 64  # per datagram
MAX_DATAGRAM_BYTES = 65_535
MAX_TOTAL_BYTES = 16 * 1024 * 1024  # of held frames, all datagrams together
TIMEOUT_NS = 30 * 1_000_000_000  # Linux's ipfrag_time default


@dataclass(slots=True)
class _Datagram:
    started: int
    pieces: dict[int, bytes] = field(default_factory=dict)
    frames: list[Held] = field(default_factory=list)
    held_bytes: int = 0
    total: int | None = None  # known once the last fragment (MF clear) arrived
    passing: bool = False  # the first fragment showed it is not a tunnel packet
    dead: bool = False  # given up on: its later fragments go straight out too


class Reassembler:
    def __init__(self, timeout_ns: int = TIMEOUT_NS) -> None:
        self._timeout = timeout_ns
        self._dgrams: dict[bytes, _Datagram] = {}
        self._held_total = 0
        self.released: list[Held] = []  # to forward as captured; the caller drains it
        self.reassembled = 0
        self.given_up = 0  # fragments released because of limits, timeout, overlap, truncation

    def add(
        self, key: bytes, offset: int, more: bool, data: bytes, held: Held, tunnel: bool | None
    ) -> tuple[bytes, list[Held]] | None:
        """Take one fragment; ``tunnel`` is the first fragment's verdict (None for the others).

        Returns (upper-layer bytes, the fragments they came from) once the datagram is whole.
        """
        d = self._dgrams.get(key)
        if d is None:
            if len(self._dgrams) >= MAX_DATAGRAMS:
                self._release(self._dgrams.pop(next(iter(self._dgrams))))
            d = self._dgrams[key] = _Datagram(held[0])
        if d.passing or d.dead:
            self.given_up += d.dead
            self.released.append(held)
            return None
        if tunnel is False:
            d.passing = True
            self._release(d, held)
            return None
        end = offset + len(data)
        if (
            end > MAX_DATAGRAM_BYTES
            or len(d.frames) >= MAX_FRAGMENTS
            or self._held_total + len(held[1]) > MAX_TOTAL_BYTES
            or (d.total is not None and (end > d.total or (not more and end != d.total)))
            or (not more and any(o + len(p) > end for o, p in d.pieces.items()))
        ):
            self.discard(key, held)
            return None
        duplicate = d.pieces.get(offset) == data
        if not duplicate:
            if any(o < end and offset < o + len(p) for o, p in d.pieces.items()):
                self.discard(key, held)  # overlapping with different bytes: ambiguous
                return None
            d.pieces[offset] = data
        d.frames.append(held)
        d.held_bytes += len(held[1])
        self._held_total += len(held[1])
        if not more:
            d.total = end
        if d.total is None or sum(len(p) for p in d.pieces.values()) != d.total:
            return None
        del self._dgrams[key]
        self._held_total -= d.held_bytes
        self.reassembled += 1
        return b"".join(d.pieces[o] for o in sorted(d.pieces)), d.frames

    def discard(self, key: bytes, held: Held | None = None) -> None:
        """Give up on one datagram (and ``held``, a fragment of it not added); its later
        fragments are released as they come, until the timeout forgets it."""
        d = self._dgrams.get(key)
        if d is None:
            if len(self._dgrams) >= MAX_DATAGRAMS:
                self._release(self._dgrams.pop(next(iter(self._dgrams))))
            d = self._dgrams[key] = _Datagram(held[0] if held else 0)
        self._release(d, held)
        d.dead = True

    def expire(self, now: int) -> None:
        """Give up on datagrams whose first fragment is older than the timeout."""
        for key in [k for k, d in self._dgrams.items() if now - d.started > self._timeout]:
            self._release(self._dgrams.pop(key))

    def flush(self) -> None:
        """End of input: everything still held is released as captured."""
        for d in self._dgrams.values():
            self._release(d)
        self._dgrams.clear()

    @property
    def held_frames(self) -> int:
        return sum(len(d.frames) for d in self._dgrams.values())

    def _release(self, d: _Datagram, extra: Held | None = None) -> None:
        frames = d.frames + ([extra] if extra is not None else [])
        if not d.passing:  # passing: the frames simply are not tunnel packets
            self.given_up += len(frames)
        self._held_total -= d.held_bytes
        d.frames, d.pieces, d.held_bytes = [], {}, 0
        self.released += frames
