"""The sans-I/O rewriting core: frames and timestamps in, frames and header events out.

``Normalizer.feed`` takes one captured frame and appends whatever should be forwarded to
``out`` as (timestamp_ns, frame) pairs; adapters (pcap files, AF_PACKET, tap) drain ``out`` and
``events``. No sockets, no clock reads, no logging: time only moves when the caller says so,
which is what lets the tests replay any segmentation, loss and reordering deterministically.

A flow opened by a trusted proxy is held (PENDING) from its SYN until the header is complete,
then released through the rewriting path (ACTIVE); if the header is malformed, missing, or the
hold limits are hit, the held frames are released untouched and the flow is left alone (PASSING).
flow_state.py has the whole table; each transition here is one method (``_resolve``,
``_give_up``, ``_drop_flow``) that steps it.
"""

from __future__ import annotations

import ipaddress
import struct

from normalizer.core.checksum import adjust32
from normalizer.core.counters import MAX_BACKENDS, Counters
from normalizer.core.diagnostics import SourceTally
from normalizer.core.events import FlowOutcome, HeaderEvent, Resumable
from normalizer.core.flow import (
    ACK,
    BOTH_FINS,
    CLIENT_FIN,
    FIN,
    HALF,
    MASK,
    RESET,
    RST,
    SERVER_FIN,
    SYN,
    Flow,
    Held,
)
from normalizer.core.flow_key import endpoint_text, endpoints_of, make_key, split_key
from normalizer.core.flow_state import ACTIVE, PENDING, Drop, Event, GiveUp, step
from normalizer.core.flow_table import FlowTable
from normalizer.core.frame import (
    LINKTYPE_ETHERNET,
    TcpFrame,
    locate_tcp,
)
from normalizer.core.options import Options
from normalizer.core.restore import real_endpoints, restore_endpoints
from normalizer.core.tcp_edit import (
    replace_endpoints,
    sack_edges,
    set_u32,
    trim_payload,
)
from normalizer.core.trust import TrustedProxies
from normalizer.core.wire import TCPOPT_SACK
from normalizer.proxy_headers.base import HeaderError, ProxyHeader
from normalizer.proxy_headers.detect import parse_header, signature_kind

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_NS = 1_000_000_000
_SWEEP_EVERY = _NS  # expiry sweeps run at most once per second of capture time

Frame = bytes | bytearray


__all__ = ["FlowOutcome", "Frame", "HeaderEvent", "Normalizer", "Resumable"]  # their old home


class Normalizer:
    def __init__(
        self, options: Options, linktype: int = LINKTYPE_ETHERNET, outcomes: bool = False
    ) -> None:
        """``outcomes``: also append a ``FlowOutcome`` to ``outcomes`` whenever a tracked flow
        resolves or is given up (cold paths only; bounded like ``events``)."""
        self.opts = options
        self.linktype = linktype
        self.trust = TrustedProxies(options.proxies)
        self.table: FlowTable[Flow] = FlowTable(options.max_flows)
        self._flows = self.table.flows  # bound once: the lookup is on every packet
        self._ethernet = linktype == LINKTYPE_ETHERNET
        self.counters = Counters()
        self.untrusted_syns = SourceTally()  # sources of SYNs the trust check ignored
        self.out: list[tuple[int, Frame]] = []
        self.events: list[HeaderEvent] = []
        self.outcomes: list[FlowOutcome] = []
        self._want_outcomes = outcomes
        self._held_total = 0
        self._next_sweep = 0
        # Lower bound of the earliest time ``tick`` has work (None: no flow): exact after each
        # sweep, lowered when a flow opens or closes. Packets only push deadlines later, so the
        # hot path never touches it; a stale bound only costs one early, idle sweep.
        self._deadline: int | None = None
        self._idle = int(options.idle_timeout * _NS)
        self._closed = int(options.closed_timeout * _NS)
        self._pending = int(options.pending_timeout * _NS)
        # True: every ACTIVE segment goes through ``_rewrite``, never the inline shift in
        # ``feed``. Only the differential test (test_engine_fastpath.py) sets it, to compare them.
        self._general_only = False

    # -- input -----------------------------------------------------------------------------

    def feed(self, frame: bytes, ts: int) -> None:
        """Process one captured frame taken at ``ts`` (integer nanoseconds).

        The common case -- Ethernet, IPv4 without options, a segment of an ACTIVE flow that
        needs only its seq or ack shifted -- is decoded and patched inline: at a few hundred
        thousand packets per second every function call shows in the profile. The inline shift
        repeats ``Flow.map_seq`` and the common branches of ``_rewrite`` on purpose (a call per
        packet costs more than the shift); tests/normalizer/core/test_engine_fastpath.py checks that
        both give the same bytes.
        """
        c = self.counters
        c.packets_in += 1
        if ts >= self._next_sweep:
            self.tick(ts)
        if self._ethernet and frame[12:15] == b"\x08\x00\x45" and len(frame) >= 54:
            end = 14 + ((frame[16] << 8) | frame[17])
            payload = 34 + (frame[46] >> 4) * 4
            if (
                frame[23] != 6
                or frame[20] & 0x3F
                or frame[21]
                or end > len(frame)
                or not 54 <= payload <= end
            ):
                c.passed_not_tcp += 1
                self._emit(ts, frame)
                return
            ip, t, vlan = 14, 34, b""
            a = frame[26:30] + frame[34:36]
            b = frame[30:34] + frame[36:38]
        else:
            f = locate_tcp(frame, self.linktype)
            if f is None:
                c.passed_not_tcp += 1
                self._emit(ts, frame)
                return
            ip, t, payload, end, vlan = f
            a, b = endpoints_of(frame, f)
        fwd = a < b
        key = vlan + (a + b if fwd else b + a)
        flags = frame[t + 13]
        flow = self._flows.get(key)
        if flow is None:
            if flags & (SYN | ACK | RST) == SYN:
                if self.trust.contains(a[:-2]):
                    flow = self._new_flow(key, fwd, _U32.unpack_from(frame, t + 4)[0], ts)
                else:
                    self.untrusted_syns.add(a[:-2])
                    self._untracked(frame, ts, a[:-2], b[:-2])
                    return
            else:
                self._untracked(frame, ts, a[:-2], b[:-2])
                return
        elif flags & (SYN | ACK | RST) == SYN and fwd == flow.client_first:
            seq = _U32.unpack_from(frame, t + 4)[0]
            if seq != flow.isn:  # a new connection reusing the ports
                self._drop_flow(key, flow, Drop.PORT_REUSE)
                flow = self._new_flow(key, fwd, seq, ts)
        from_client = fwd == flow.client_first
        flow.last_seen = ts
        if flags & (FIN | RST):
            self._note_close(flow, flags, from_client, ts)
        state = flow.state
        if state is ACTIVE:
            real = flow.real
            if self._general_only or (
                real is not None and len(real[0]) != (12 if frame[ip] >> 4 == 4 else 36)
            ):
                pass  # the IP header changes family: the general path rebuilds it
            elif from_client:
                if not flags & SYN:
                    seq = _U32.unpack_from(frame, t + 4)[0]
                    n = flow.hdr_len
                    if n <= (seq - flow.isn - 1) & MASK < HALF:
                        new = (seq - n) & MASK
                        out = bytearray(frame)
                        _U32.pack_into(out, t + 4, new)
                        _U16.pack_into(
                            out, t + 16, adjust32(_U16.unpack_from(out, t + 16)[0], seq, new)
                        )
                        if real is not None:
                            replace_endpoints(out, ip, t, real[0])
                        c.rewritten += 1
                        c.packets_out += 1
                        self.out.append((ts, out))
                        return
            elif flags & ACK and not (payload - t > 20 and TCPOPT_SACK in frame[t + 20 : payload]):
                ack = _U32.unpack_from(frame, t + 8)[0]
                isn = flow.isn
                off = (ack - isn - 1) & MASK
                n = flow.hdr_len
                c.rewritten += 1
                c.packets_out += 1
                out = bytearray(frame)
                if off < HALF:
                    new = (isn + 1 + (off - n if off >= n else 0)) & MASK
                    _U32.pack_into(out, t + 8, new)
                    _U16.pack_into(
                        out, t + 16, adjust32(_U16.unpack_from(out, t + 16)[0], ack, new)
                    )
                if real is not None:
                    replace_endpoints(out, ip, t, real[1])
                self.out.append((ts, out))
                return
            self._rewrite(flow, frame, TcpFrame(ip, t, payload, end, vlan), from_client, flags, ts)
        elif state is PENDING:
            self._hold(
                key, flow, frame, TcpFrame(ip, t, payload, end, vlan), from_client, flags, ts
            )
        else:
            c.passed_unparsed_flow += 1
            self._emit(ts, frame)

    def tick(self, now: int) -> None:
        """Expire idle and closed flows and give up on holds that waited too long."""
        self._next_sweep = now + _SWEEP_EVERY
        pending, closed, idle = self._pending, self._closed, self._idle
        soonest: int | None = None
        for key, flow in self.table:
            hold = flow.hold
            if hold is not None and now - hold.started > pending:
                self._give_up(flow, key, GiveUp.HOLD_TIMEOUT)
                hold = None
            if flow.closed_at and now - flow.closed_at > closed:
                self._drop_flow(key, flow, Drop.CLOSED_TIMEOUT)
                continue
            if now - flow.last_seen > idle:
                self._drop_flow(key, flow, Drop.IDLE_TIMEOUT)
                continue
            due = flow.last_seen + idle
            if flow.closed_at and flow.closed_at + closed < due:
                due = flow.closed_at + closed
            if hold is not None and hold.started + pending < due:
                due = hold.started + pending
            if soonest is None or due < soonest:
                soonest = due
        self._deadline = None if soonest is None else soonest + 1  # timeouts are strict (>)

    def next_deadline(self) -> int | None:
        """When ``tick`` next has work (ns, on the clock of the timestamps), or None.

        Like aioquic's ``get_timer``: a live loop sleeps until then instead of polling. The
        time is never later than the first hold timeout, closed or idle expiry, but may be
        earlier (then that tick finds nothing and computes the exact time).
        """
        return self._deadline

    def _soonest(self, due: int) -> None:
        if self._deadline is None or due < self._deadline:
            self._deadline = due

    def flush(self) -> None:
        """End of input: release every frame still held, untouched."""
        for key, flow in self.table:
            if flow.state is PENDING:
                self._give_up(flow, key, GiveUp.END_OF_INPUT, "the input ended inside the header")
            else:
                flow.state = step(flow.state, Event.END_OF_INPUT)

    def drain(self) -> list[tuple[int, Frame]]:
        out = self.out
        self.out = []
        return out

    def drain_events(self) -> list[HeaderEvent]:
        events = self.events
        self.events = []
        return events

    def discard_events(self) -> None:
        """Drop the queued events (nobody records them)."""
        self.events = []

    def pending_events(self) -> int:
        return len(self.events)

    def resume(
        self,
        client: tuple[str, int],
        server: tuple[str, int],
        vlan: bytes,
        isn: int,
        header: ProxyHeader,
        now: int,
    ) -> bool:
        """Adopt a flow a previous run had already resolved (its header came before a restart).

        Its later packets are then shifted (and addresses restored) exactly as before the
        restart. Returns False when the table already tracks that flow or is full.
        """
        a = ipaddress.ip_address(client[0]).packed + client[1].to_bytes(2, "big")
        b = ipaddress.ip_address(server[0]).packed + server[1].to_bytes(2, "big")
        key = make_key(vlan, a, b)
        if key in self._flows or self.table.is_full():
            return False
        real = real_endpoints(header) if self.opts.restore_addresses else None
        flow = Flow.resumed(a < b, isn, header.length, real, now)
        self.table.put(key, flow)
        self._soonest(now + self._idle + 1)
        self.counters.flows_resumed += 1
        return True

    @property
    def held_packets(self) -> int:
        return sum(len(flow.hold.frames) for _key, flow in self.table if flow.hold is not None)

    # -- flow lifecycle -----------------------------------------------------------------------

    def _new_flow(self, key: bytes, client_first: bool, isn: int, ts: int) -> Flow:
        table = self.table
        if table.is_full():
            if ts >= self._next_sweep:
                self.tick(ts)
            if table.is_full():
                old_key, old = table.oldest()
                self._drop_flow(old_key, old, Drop.EVICTED)
        flow = Flow(client_first, isn, ts)
        table.put(key, flow)
        self._soonest(ts + min(self._pending, self._idle) + 1)
        self.counters.flows_created += 1
        return flow

    def _drop_flow(self, key: bytes, flow: Flow, why: Drop) -> None:
        """Any state -> EXPIRED: the flow leaves the table (a PENDING one forwards its hold)."""
        if flow.state is PENDING:
            if self._want_outcomes:
                self._outcome(key, flow, "dropped", "evicted or its ports reused while waiting")
            self._forward_held(flow)
        flow.state = step(flow.state, why.event)
        self.table.pop(key)
        c = self.counters
        setattr(c, why.counter, getattr(c, why.counter) + 1)

    def _note_close(self, flow: Flow, flags: int, from_client: bool, ts: int) -> None:
        """FIN / RST: remembered; they choose the timeout, the state does not change."""
        if flags & RST:
            flow.closing |= RESET
        elif flags & FIN:
            flow.closing |= CLIENT_FIN if from_client else SERVER_FIN
        else:
            return
        if not flow.closed_at and (flow.closing & RESET or flow.closing & BOTH_FINS == BOTH_FINS):
            flow.closed_at = ts
            self._soonest(ts + self._closed + 1)

    def _release(self, flow: Flow) -> list[Held]:
        """The flow's held frames, no longer counted against the total hold bound."""
        if flow.hold is not None:
            self._held_total -= flow.hold.nbytes
        return flow.release()

    def _give_up(self, flow: Flow, key: bytes, why: GiveUp, detail: str = "") -> None:
        """PENDING -> PASSING: leave the flow as captured, counting ``why`` once, here (and
        telling a ``flows`` report, when one asked for outcomes)."""
        if self._want_outcomes:
            self._outcome(key, flow, why.outcome, detail)
        flow.state = step(flow.state, why.event)
        c = self.counters
        setattr(c, why.counter, getattr(c, why.counter) + 1)
        self._forward_held(flow)

    def _forward_held(self, flow: Flow) -> None:
        """Forward what was held, untouched, in arrival order."""
        held = self._release(flow)
        self.counters.passed_unparsed_flow += len(held)
        for h in held:
            self._emit(h.ts, h.frame)

    # -- PENDING: collect the header ------------------------------------------------------------

    def _hold(
        self,
        key: bytes,
        flow: Flow,
        frame: bytes,
        f: TcpFrame,
        from_client: bool,
        flags: int,
        ts: int,
    ) -> None:
        hold = flow.hold
        assert hold is not None
        hold.frames.append(Held(ts, frame, f, from_client))
        hold.nbytes += len(frame)
        self._held_total += len(frame)
        if from_client and f.end > f.payload and self._assemble(flow, frame, f, flags):
            try:
                result = parse_header(
                    bytes(hold.buf), self.opts.header_kinds, self.opts.custom_magic
                )
            except HeaderError as exc:
                kind = signature_kind(hold.buf, self.opts.custom_magic)
                if kind is None:
                    self._give_up(flow, key, GiveUp.HEADER_NONE)
                elif kind not in self.opts.header_kinds:
                    self._give_up(flow, key, GiveUp.HEADER_EXCLUDED, kind.value)
                else:
                    self._give_up(flow, key, GiveUp.HEADER_MALFORMED, str(exc))
                return
            if isinstance(result, ProxyHeader):
                self._resolve(key, flow, result, ts)
                return
        if flags & (FIN | RST):
            if hold.buf:
                self._give_up(
                    flow, key, GiveUp.CLOSED_IN_HEADER, "the connection ended inside the header"
                )
            else:
                self._give_up(flow, key, GiveUp.CLOSED_NO_HEADER)
            return
        o = self.opts
        if (
            len(hold.frames) > o.max_hold_packets
            or hold.nbytes > o.max_hold_bytes
            or self._held_total > o.max_total_hold_bytes
        ):
            self._give_up(flow, key, GiveUp.HOLD_OVERFLOW)

    def _assemble(self, flow: Flow, frame: bytes, f: TcpFrame, flags: int) -> bool:
        """Extend the contiguous header prefix with this segment and any held ones it connects."""
        hold = flow.hold
        assert hold is not None
        grew = self._extend(flow, frame, f, flags)
        progress = grew
        while progress and len(hold.frames) > 1:
            progress = False
            for h in hold.frames:
                g = h.located
                if not h.from_client or g.end == g.payload:
                    continue
                if self._extend(flow, h.frame, g, h.frame[g.tcp + 13]):
                    progress = grew = True
        return grew

    def _extend(self, flow: Flow, frame: bytes, f: TcpFrame, flags: int) -> bool:
        assert flow.hold is not None
        buf = flow.hold.buf
        seq = _U32.unpack_from(frame, f.tcp + 4)[0]
        start = (seq + (1 if flags & SYN else 0) - flow.isn - 1) & MASK
        have = len(buf)
        if start >= HALF or start > have or start + (f.end - f.payload) <= have:
            return False
        room = self.opts.max_hold_bytes - have
        if room <= 0:
            return False
        lo = f.payload + have - start
        buf += frame[lo : min(f.end, lo + room)]
        return True

    def _resolve(self, key: bytes, flow: Flow, header: ProxyHeader, ts: int) -> None:
        """PENDING -> ACTIVE: record the header, then release the hold through the rewriter."""
        c = self.counters
        flow.state = step(flow.state, Event.HEADER_COMPLETE)
        flow.hdr_len = header.length
        # The record's time is when the flow began (its SYN), as Suricata's flow.start says, not
        # when the header completed: the enricher tells connections sharing a tuple apart by it.
        hold = flow.hold
        started = hold.started if hold is not None else ts
        c.headers_stripped[header.kind] = c.headers_stripped.get(header.kind, 0) + 1
        if self.opts.restore_addresses:
            flow.real = real_endpoints(header)
            if flow.real is not None:
                c.addresses_restored += 1
        if header.command == "LOCAL":
            c.headers_local += 1
        vlan, first, second = split_key(key)
        client, server = (first, second) if flow.client_first else (second, first)
        backend = endpoint_text(server)
        per = c.headers_by_backend
        name = backend[0] if backend[0] in per or len(per) < MAX_BACKENDS else "other"
        per[name] = per.get(name, 0) + 1
        if len(self.events) < self.opts.max_pending_events:
            self.events.append(
                HeaderEvent(started, endpoint_text(client), backend, vlan, header, flow.isn)
            )
        else:
            c.events_dropped += 1
        if self._want_outcomes:
            self._outcome(key, flow, "stripped", header=header)
        for h in self._release(flow):
            g = h.located
            self._rewrite(flow, h.frame, g, h.from_client, h.frame[g.tcp + 13], h.ts)

    def _outcome(
        self,
        key: bytes,
        flow: Flow,
        outcome: str,
        detail: str = "",
        header: ProxyHeader | None = None,
    ) -> None:
        if len(self.outcomes) >= self.opts.max_pending_events:
            return
        vlan, first, second = split_key(key)
        client, server = (first, second) if flow.client_first else (second, first)
        hold = flow.hold
        self.outcomes.append(
            FlowOutcome(
                hold.started if hold is not None else flow.last_seen,
                endpoint_text(client),
                endpoint_text(server),
                vlan,
                outcome,
                detail,
                header,
                len(hold.buf) if hold is not None else 0,
            )
        )

    def drain_outcomes(self) -> list[FlowOutcome]:
        outcomes = self.outcomes
        self.outcomes = []
        return outcomes

    # -- ACTIVE: shift the stream -----------------------------------------------------------

    def _rewrite(
        self, flow: Flow, frame: bytes, f: TcpFrame, from_client: bool, flags: int, ts: int
    ) -> None:
        c = self.counters
        t = f.tcp
        if from_client:
            seq = _U32.unpack_from(frame, t + 4)[0]
            syn = 1 if flags & SYN else 0
            start = (seq + syn - flow.isn - 1) & MASK  # offset of the first payload byte
            n = flow.hdr_len
            if start >= HALF:  # before the stream: nothing of the header in it
                out: Frame = frame
            elif start >= n:
                out = bytearray(frame)
                set_u32(out, f, 4, (seq - n) & MASK)
            else:
                plen = f.end - f.payload
                new_seq = (flow.isn + 1 - syn) & MASK
                if plen == 0:
                    out = bytearray(frame)
                    set_u32(out, f, 4, new_seq)
                else:
                    cut = min(n - start, plen)
                    # A segment of nothing but header bytes goes, unless its flags matter: a
                    # SYN carrying the header (TCP Fast Open) stays, bare, or the flow has no
                    # handshake for Suricata to track.
                    if cut == plen and not flags & (FIN | RST | SYN):
                        c.header_only_dropped += 1
                        return
                    out = trim_payload(frame, f, cut, new_seq)
                    f = f._replace(end=f.end - cut)
        else:
            out = frame
            if flags & ACK:
                ack = _U32.unpack_from(frame, t + 8)[0]
                new_ack = flow.map_seq(ack)
                edges = sack_edges(frame, f) if f.payload - t > 20 else ()
                if new_ack != ack or edges:
                    out = bytearray(frame)
                    set_u32(out, f, 8, new_ack)
                    for e in edges:
                        set_u32(out, f, e, flow.map_seq(_U32.unpack_from(out, t + e)[0]))
        if flow.real is not None:
            out = self._restore(flow, out, f, from_client)
        c.rewritten += 1
        self._emit(ts, out)

    def _restore(self, flow: Flow, frame: Frame, f: TcpFrame, from_client: bool) -> Frame:
        """Show the real client and target instead of proxy and backend."""
        assert flow.real is not None
        out = restore_endpoints(frame, f, flow.real[0 if from_client else 1], self.linktype)
        if out is None:
            self.counters.restore_unsupported += 1
            return frame
        return out

    # -- everything else ------------------------------------------------------------------------

    def _untracked(self, frame: bytes, ts: int, src: bytes, dst: bytes) -> None:
        if self.opts.midstream == "drop" and (self.trust.contains(src) or self.trust.contains(dst)):
            self.counters.midstream_dropped += 1
            return
        self.counters.passed_untracked += 1
        self._emit(ts, frame)

    def _emit(self, ts: int, frame: Frame) -> None:
        self.counters.packets_out += 1
        self.out.append((ts, frame))
