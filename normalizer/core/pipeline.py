"""What every input does with a frame, whatever the adapter: normalize, record, hand back.

Adapters (pcap files, AF_PACKET + tap) push captured frames and take what to forward; the
pipeline makes sure the connection cache hears about a connection before any of its rewritten
frames are taken. Decapsulation of mirrored traffic slots in here too, in front of the engine.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable

from normalizer.adapters.afpacket import RingStats, first_timestamp, parse_block
from normalizer.core.counters import Counters
from normalizer.core.diagnostics import SourceTally
from normalizer.core.engine import Frame, Normalizer
from normalizer.core.events import HeaderEvent, Resumable
from normalizer.core.fastpath import CompiledNormalizer, make_engine
from normalizer.core.frame import LINKTYPE_ETHERNET
from normalizer.core.offload import ChecksumPolicy
from normalizer.core.options import Options
from normalizer.core.restore import output_linktype
from normalizer.tunnels.compiled import TUNNEL_FIELDS, CompiledDecap
from normalizer.tunnels.decap import Decapsulator, Out
from normalizer.tunnels.flows import TunnelFlow, TunnelFlows
from normalizer.tunnels.ref import TunnelRef

EventSink = Callable[[list[HeaderEvent]], object]
RingBuffer = bytes | bytearray | memoryview | mmap.mmap  # an AF_PACKET ring, or a test's copy
OnFailure = Callable[[int, bytes, Exception], None]  # (ts, frame, what it raised)
# Given the first packet's time (epoch seconds), the flows to adopt from a previous run.
ResumeSource = Callable[[float], list[Resumable]]
# Rows of the cache's ``tunnels`` table (options.decapsulate): new inner flows, final last_seen.
TunnelSink = Callable[[list[TunnelFlow]], object]


class Pipeline:
    def __init__(
        self,
        options: Options,
        linktype: int,
        on_events: EventSink | None = None,
        resume: ResumeSource | None = None,
        on_tunnels: TunnelSink | None = None,
        checksums: str | None = None,
        tunnelled: bool = False,
    ) -> None:
        """``tunnelled``: the caller decapsulates (the appliance) and hands inner Ethernet
        frames with their ``TunnelRef`` to ``push_inner``; no Decapsulator then.

        ``checksums`` overrides ``options.checksums``: the live adapter passes "keep" for
        "auto", because there the ring's CSUMNOTREADY flag already said which frames were
        partial (afpacket.py completes them), so guessing from the field again is wasted work.
        """
        # Decapsulation hands the core Ethernet frames whatever the input's link type.
        decap = options.decapsulate and not tunnelled
        inner = decap or tunnelled
        # The compiled engine or the Python one, as options.engine says (fastpath.py).
        self.engine = make_engine(options, LINKTYPE_ETHERNET if inner else linktype)
        # Of the frames ``take`` returns: raw IP may change family when addresses are restored.
        self.linktype = output_linktype(self.engine.linktype, options.restore_addresses)
        # The decapsulator counts into its own Counters (only tunnel_* fields); ``counters``
        # merges them, so neither stage writes into the other's record.
        self.decap = Decapsulator(options, linktype) if decap else None
        # Which tunnel each inner flow came through, only kept when someone records it.
        self.tunnels = (
            TunnelFlows(options.max_flows, options.idle_timeout) if inner and on_tunnels else None
        )
        self._on_tunnels = on_tunnels
        self._on_events = on_events
        self._resume = resume
        self._window = options.idle_timeout
        mode = options.checksums if checksums is None else checksums
        # Checksums are settled on the frames the core sees (inner frames when decapsulating):
        # from then on its incremental updates are exact.
        self._checksums = ChecksumPolicy(mode, self.linktype) if mode != "keep" else None
        self._check = self._checksums.apply if self._checksums is not None else None
        # The compiled engine opens the common tunnel packet itself (tunnels/compiled.py):
        # outer Ethernet only; checksums "keep" or "auto" (then done in C, not by _check).
        self._cdecap = None
        eng = self.engine
        if (
            self.decap is not None
            and isinstance(eng, CompiledNormalizer)
            and linktype == LINKTYPE_ETHERNET
            and mode in ("keep", "auto")
        ):
            self._cdecap = CompiledDecap(eng, self.decap, self.tunnels, options, mode == "auto")

    @property
    def counters(self) -> Counters:
        c = self.engine.counters
        if self._checksums is not None:
            st = self._checksums.stats
            c.checksum_completed, c.checksum_kept = st.completed, st.kept
            c.checksum_unchecked = st.unchecked
        if self._cdecap is not None:
            self._cdecap.merge(c)
        elif self.decap is not None:
            d = self.decap.counters
            for name in TUNNEL_FIELDS:
                setattr(c, name, getattr(d, name))
        return c

    def stats(self) -> dict[str, int]:
        """Gauges of the moment, for adapters' status and metrics."""
        return {"flows_active": self.flows_active, "held_packets": self.held_packets}

    @property
    def flows_active(self) -> int:
        return len(self.engine.table)

    @property
    def held_packets(self) -> int:
        return self.engine.held_packets

    @property
    def untrusted_syns(self) -> SourceTally:
        """Sources of SYNs the trust check ignored (what the silence warning names)."""
        return self.engine.untrusted_syns

    def next_deadline(self) -> int | None:
        """When the core next needs ``tick`` (ns, on the frames' clock), or None.

        The engine's timeouts only; tunnel fragments and tunnel rows expire at the caller's
        regular housekeeping tick, which bounds every sleep anyway.
        """
        return self.engine.next_deadline()

    def push(self, frame: bytes, ts: int) -> None:
        if self._resume is not None:
            self._adopt(ts)
        if self.decap is None:
            if self._check is not None:
                frame = self._check(frame)
            self.engine.feed(frame, ts)
        elif self._cdecap is not None:
            self._cdecap.engine.feed_outer(frame, ts)
        else:
            self._inner(self.decap.feed(frame, ts))

    def push_block(
        self,
        ring: RingBuffer,
        base: int,
        complete_partial: bool,
        stats: RingStats,
        on_failure: OnFailure | None = None,
    ) -> int:
        """Every frame of the AF_PACKET ring block at ``base``: ``afpacket.parse_block`` and
        ``push`` for each, or -- on the compiled engine, without a checksum policy (with one
        when _decap.c decapsulates: it applies "auto") -- one call into the core for the block. A
        frame whose processing raises goes to ``on_failure(ts, frame, exc)`` (live's guard)
        and the rest of the block still goes in; without ``on_failure`` the exception
        propagates. Returns the frame count."""
        eng = self.engine
        compiled = self._cdecap is not None or (self.decap is None and self._check is None)
        if compiled and isinstance(eng, CompiledNormalizer):
            if self._resume is not None:
                first = first_timestamp(ring, base)
                if first is not None:
                    self._adopt(first)
            total = start = 0
            while True:
                n, cut, partial, done, big, biggest, failed = eng.feed_block(
                    ring, base, complete_partial, start
                )
                total += n
                stats.truncated += cut
                stats.csum_not_ready += partial
                stats.csum_completed += done
                stats.oversize += big
                stats.max_frame = max(stats.max_frame, biggest)
                if failed is None:
                    return total
                slot, ts, frame, exc = failed
                if on_failure is None:
                    raise exc
                on_failure(ts, frame, exc)
                start = slot + 1
        captured = parse_block(ring, base, stats, complete_partial)
        it = iter(captured)
        while True:  # as live.push_guarded: the try is set up once per failure, not per frame
            try:
                for ts, frame in it:
                    self.push(frame, ts)
                return len(captured)
            except Exception as exc:
                if on_failure is None:
                    raise
                on_failure(ts, frame, exc)

    def push_inner(self, frame: bytes, ts: int, ref: TunnelRef) -> None:
        """An inner frame the caller decapsulated itself (``tunnelled``), with its tunnel."""
        if self._resume is not None:
            self._adopt(ts)
        self._inner([(ts, frame, ref)])

    def _inner(self, frames: list[Out]) -> None:
        """Decapsulated (or passed) frames to the core; inner flows noted for the cache."""
        tunnels, feed, check = self.tunnels, self.engine.feed, self._check
        for ts, frame, ref in frames:
            if ref is not None and tunnels is not None:
                tunnels.note(frame, ref, ts)
            feed(frame if check is None else check(frame), ts)

    def _adopt(self, ts: int) -> None:
        """On the first frame: take over flows a previous run resolved within the idle timeout."""
        source, self._resume = self._resume, None
        assert source is not None
        for client, server, vlan, isn, header in source(ts / 1e9 - self._window):
            self.engine.resume(client, server, vlan, isn, header, ts)

    def tick(self, now: int) -> None:
        if self._cdecap is not None:
            self._cdecap.tick(now)
        elif self.decap is not None:
            self._inner(self.decap.tick(now))
        if self.tunnels is not None:
            self.tunnels.tick(now)
            if self._cdecap is not None:
                self._cdecap.rows_changed()
        self.engine.tick(now)

    def flush(self) -> None:
        if self._cdecap is not None:
            self._cdecap.flush()
        elif self.decap is not None:
            self._inner(self.decap.flush())
        if self.tunnels is not None:
            self.tunnels.flush()
            if self._cdecap is not None:
                self._cdecap.rows_changed()
        self.engine.flush()

    def take(self) -> list[tuple[int, Frame]]:
        """Frames to forward, in order; their connections (and tunnels) are recorded first."""
        hand_over(self.engine, self.tunnels, self._on_tunnels, self._on_events)
        return self.engine.drain()


def hand_over(
    engine: Normalizer | CompiledNormalizer,
    tunnels: TunnelFlows | None,
    on_tunnels: TunnelSink | None,
    on_events: EventSink | None,
) -> None:
    """Hand the cache what the frames about to be forwarded need: tunnel rows first (connection
    rows refer to them), then header events; without a cache the events are dropped (the
    compiled engine then never builds them). Every output path calls this before it writes."""
    if tunnels is not None and tunnels.pending:
        assert on_tunnels is not None
        on_tunnels(tunnels.drain())
    if engine.pending_events():
        if on_events is None:
            engine.discard_events()
        else:
            on_events(engine.drain_events())
