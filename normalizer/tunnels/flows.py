"""Which tunnel each inner flow came through: the rows of the connection cache's ``tunnels`` table.

Why per flow and not per packet: the enricher needs one lookup per Suricata event, and an event
names a flow (its VLAN ids and 5-tuple), not a packet. The first packet of an inner flow
creates a row (written before any of the flow's frames is forwarded, like connection rows);
its metadata is the first packet's. ``last_seen`` is written when the flow goes idle, is evicted
or the input ends, and every idle timeout in between, so retention never removes the row of a
flow still running. The table of live flows is bounded like the core's flow table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from normalizer.core.flow_key import AddressTexts
from normalizer.core.flow_table import FlowTable
from normalizer.core.frame import LINKTYPE_ETHERNET, l3_offset
from normalizer.tunnels.ref import TunnelRef, tunnel_json

_NS = 1_000_000_000
_PORTS = frozenset({6, 17, 132})  # TCP, UDP, SCTP: the first 4 bytes are the ports


@dataclass(slots=True)
class TunnelFlow:
    """One inner flow: the tuple of its first packet, the VLAN ids the core and Suricata see."""

    vlan: bytes  # 12-bit ids, 2 bytes each, outermost (ours) first
    proto: int
    src: tuple[str, int]
    dst: tuple[str, int]
    tunnel: dict[str, Any]
    first_seen: int  # ns
    last_seen: int
    reported: int = 0  # last_seen as last written
    key: bytes = b""  # in the table of live flows (FlowTable sets it)


def inner_tuple(frame: bytes) -> tuple[bytes, int, bytes, bytes, int, int] | None:
    """(vlan ids, protocol, src addr, dst addr, sport, dport) of an Ethernet frame, or None."""
    l3 = l3_offset(frame, LINKTYPE_ETHERNET)
    if l3 is None:
        return None
    ip, version, vlan = l3
    if len(frame) <= ip or frame[ip] >> 4 != version:  # not the IP header its EtherType says
        return None
    if version == 4:
        if len(frame) < ip + 20:
            return None
        proto, l4 = frame[ip + 9], ip + (frame[ip] & 0x0F) * 4
        src, dst = frame[ip + 12 : ip + 16], frame[ip + 16 : ip + 20]
        first = not (frame[ip + 6] << 8 | frame[ip + 7]) & 0x1FFF
    else:
        if len(frame) < ip + 40:
            return None
        proto, l4, first = frame[ip + 6], ip + 40, True
        src, dst = frame[ip + 8 : ip + 24], frame[ip + 24 : ip + 40]
    if first and proto in _PORTS and len(frame) >= l4 + 4:
        sport, dport = (frame[l4] << 8) | frame[l4 + 1], (frame[l4 + 2] << 8) | frame[l4 + 3]
    else:
        sport = dport = 0
    return vlan, proto, src, dst, sport, dport


class TunnelFlows:
    def __init__(self, max_flows: int, idle_timeout: float) -> None:
        self._idle = int(idle_timeout * _NS)
        self._table: FlowTable[TunnelFlow] = FlowTable(max_flows)  # oldest evicted in O(1)
        self._flows = self._table.flows
        self._next_sweep = 0
        self.pending: list[TunnelFlow] = []  # rows to write (new flows, final last_seen)
        # For the compiled path (tunnels/compiled.py), which refreshes known flows itself:
        # the flow the last ``note`` created or refreshed, and a count of the events after
        # which a flow it knows may no longer be in the table (sweeps, evictions, flush).
        self.last: TunnelFlow | None = None
        self.epoch = 0
        self._texts = AddressTexts()  # a row costs four address texts

    @property
    def next_sweep(self) -> int:
        """``note`` runs ``tick`` first for a frame at or past this time (ns)."""
        return self._next_sweep

    def note(self, frame: bytes, ref: TunnelRef, ts: int) -> None:
        """An inner frame went to the core: create or refresh its flow."""
        if ts >= self._next_sweep:
            self.tick(ts)
        t = inner_tuple(frame)
        self.last = None
        if t is None:
            return
        vlan, proto, src, dst, sport, dport = t
        a, b = src + sport.to_bytes(2, "big"), dst + dport.to_bytes(2, "big")
        key = vlan + bytes((proto,)) + (a + b if a < b else b + a)
        flow = self._flows.get(key)
        if flow is not None:
            flow.last_seen = ts
            self.last = flow
            return
        if self._table.is_full():
            self.pending.append(self._table.pop_oldest()[1])
            self.epoch += 1
        flow = TunnelFlow(
            vlan,
            proto,
            (self._texts.text(src), sport),
            (self._texts.text(dst), dport),
            tunnel_json(ref, self._texts.text),
            ts,
            ts,
            ts,
        )
        self._table.put(key, flow)
        self.pending.append(flow)
        self.last = flow

    def tick(self, now: int) -> None:
        """Retire flows idle longer than the timeout (their final last_seen gets written)."""
        self._next_sweep = now + _NS
        idle = []
        for key, f in self._flows.items():
            if now - f.last_seen > self._idle:
                idle.append(key)
            elif f.last_seen - f.reported > self._idle:
                f.reported = f.last_seen
                self.pending.append(f)
        for key in idle:
            self.pending.append(self._flows[key])
            self._table.pop(key)
        self.epoch += bool(idle)

    def flush(self) -> None:
        self.epoch += 1
        self.pending += self._flows.values()
        self._table = FlowTable(self._table.max_flows)
        self._flows = self._table.flows

    def drain(self) -> list[TunnelFlow]:
        out, self.pending = self.pending, []
        return out

    def __len__(self) -> int:
        return len(self._flows)
