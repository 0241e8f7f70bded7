"""The Decapsulator behind the compiled engine: what ``_decap.c`` does not open itself.

Why split: the compiled core opens the common tunnel packet in C (see the comment at the top of
normalizer/core/_decap.c) and would lose most of that speed if Python saw every packet, but
fragments, odd headers and trimmed inner packets need the reassembler and the rules of
``decap.Decapsulator``, which stays the one specification. So the C path calls back here for
exactly those frames (and for the first packet of each VNI, whose VLAN id the decapsulator's
``VlanMap`` assigns), feeds what the decapsulator hands on in order, and counts the frames it
decided itself; ``merge`` adds those counts to the decapsulator's, so the totals are what the
Python path counts. With tunnel rows recorded (``TunnelFlows``), C hands an inner frame it
opened to ``_note`` with its tunnel's metadata when its flow is new to C or a sweep is due, and
for a flow ``_note`` handed back sets ``last_seen`` itself -- all ``TunnelFlows.note`` does for
a known flow -- until the table's ``epoch`` moves (a sweep, an eviction, the flush), which every
Python entry point that notes reports to C (``_sync``).

Only for Ethernet captures (the C path reads outer Ethernet); other link types, and a
checksum policy other than the core's own, keep Pipeline's Python path.
"""

from __future__ import annotations

import ipaddress
from dataclasses import fields

from normalizer.core.counters import Counters
from normalizer.core.fastpath import CompiledNormalizer
from normalizer.core.frame import CutFrame
from normalizer.core.options import Options
from normalizer.tunnels import geneve
from normalizer.tunnels.decap import Decapsulator, Out
from normalizer.tunnels.flows import TunnelFlow, TunnelFlows
from normalizer.tunnels.ref import TunnelRef

# The counters the decapsulator owns.
TUNNEL_FIELDS = tuple(f.name for f in fields(Counters) if f.name.startswith("tunnel_"))
Released = list[tuple[int, bytes, int]]  # (ts, frame, original length or -1), for the core
_KINDS = ("vxlan", "geneve")


def _ports(ports: tuple[int, ...]) -> bytes:
    return b"".join(p.to_bytes(2, "big") for p in ports if 0 <= p < 65536)


class CompiledDecap:
    """Attaches decapsulation to ``engine`` (its feed_pcap, feed_block and feed_outer)."""

    def __init__(
        self,
        engine: CompiledNormalizer,
        decap: Decapsulator,
        tunnels: TunnelFlows | None,
        options: Options,
        auto: bool = False,
    ) -> None:
        """``auto``: checksums "auto" on the frames handed to the core (Pipeline's policy, done
        in C); pcap_batch passes its own to feed_pcap instead."""
        self.engine = engine
        self.auto = auto
        self._kept = self._completed = 0  # of frames released by tick and flush, under auto
        self.decap = decap
        self.tunnels = tunnels
        p4 = bytearray()
        p6 = bytearray()
        for text in options.tunnel_peers:
            net = ipaddress.ip_network(text, strict=False)
            block = net.network_address.packed + net.netmask.packed
            (p4 if net.version == 4 else p6).extend(block)
        engine.set_decap(
            _ports(options.vxlan_ports),
            _ports(options.geneve_ports),
            bytes(p4),
            bytes(p6),
            self._fallback,
            decap.tag_for,
            self._note if tunnels is not None else None,
            True,  # False would hand every frame to _fallback
            auto,
        )

    def _fallback(self, frame: bytes, origlen: int, ts: int) -> tuple[int, Released]:
        if origlen > len(frame) and type(frame) is not CutFrame:
            frame = CutFrame(frame, origlen)
        out = self.decap.feed(frame, ts)
        return self.decap.next_sweep, self._released(out)

    def _released(self, out: list[Out]) -> Released:
        tunnels = self.tunnels
        frames: Released = []
        for ts, frame, ref in out:
            if ref is not None and tunnels is not None:
                tunnels.note(frame, ref, ts)
            frames.append((ts, frame, frame.origlen if type(frame) is CutFrame else -1))
        if tunnels is not None:
            self._sync()
        return frames

    def _sync(self) -> None:
        """The tunnel rows changed here: C forgets its flows if their epoch moved."""
        t = self.tunnels
        assert t is not None
        self.engine.decap_notes_sync(t.epoch, t.next_sweep)

    def rows_changed(self) -> None:
        """Pipeline ticked or flushed the tunnel rows."""
        if self.tunnels is not None:
            self._sync()

    def _note(
        self,
        inner: bytes,
        ts: int,
        kind: int,
        vni: int,
        vlan: int,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        outer_vlan: bytes,
        options: bytes,
    ) -> tuple[TunnelFlow | None, int, int]:
        """An inner frame C opened, for the tunnel rows (as Pipeline._inner notes it); returns
        the flow it is in (for C to refresh), the table's epoch and next sweep."""
        t = self.tunnels
        assert t is not None
        opts: tuple[geneve.GeneveOption, ...] = ()
        if options:  # the raw GENEVE options C validated: decoded as geneve.parse does
            head = bytes((len(options) // 4, 0)) + b"\x65\x58\x00\x00\x00\x00"
            opts = geneve.parse(head + options).options
        ref = TunnelRef(_KINDS[kind], vni, vlan, src, dst, sport, dport, outer_vlan, opts)
        t.note(inner, ref, ts)
        return t.last, t.epoch, t.next_sweep

    def tick(self, now: int) -> None:
        out = self.decap.tick(now)
        self.engine.decap_sweep(self.decap.next_sweep)
        self._feed(out, self.auto)

    def flush(self, auto: bool | None = None) -> tuple[int, int]:
        """End of input: the fragments still held, to the core; returns the checksum stats
        (kept, completed) of those frames under ``auto`` (default: the policy given)."""
        return self._feed(self.decap.flush(), self.auto if auto is None else auto)

    def _feed(self, out: list[Out], auto: bool) -> tuple[int, int]:
        kept, completed = self.engine.feed_released(self._released(out), auto)
        if auto and self.auto:
            self._kept += kept
            self._completed += completed
        return kept, completed

    def merge(self, c: Counters) -> None:
        """The tunnel counters into ``c``: the decapsulator's plus the frames C decided; under
        ``auto`` the checksum stats of the policy applied in C are added too."""
        d = self.decap.counters
        extra = self.engine.decap_counters()
        for name in TUNNEL_FIELDS:
            setattr(c, name, getattr(d, name) + extra.get(name, 0))
        if self.auto:
            c.checksum_kept += extra["checksum_kept"] + self._kept
            c.checksum_completed += extra["checksum_completed"] + self._completed
