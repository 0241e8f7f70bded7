"""Picks the rewriting engine: the compiled one (``_fastpath``) when it was built, else Python.

Why two engines: ``engine.Normalizer`` is the specification -- readable, property-tested --
but costs more CPU per packet than the Suricata it feeds. ``_fastpath.c`` transcribes it to C
and is held to identical output bytes and counters by tests/normalizer/core/test_fastpath.py. The
extension is optional (a machine without a compiler installs and runs on the Python engine),
so every adapter asks ``make_engine`` and reports ``engine_name`` of what it got.

``CompiledNormalizer`` has the interface of ``Normalizer``. The C core parses the common
headers itself (_headers.c) and calls back into this module only for the others (once per
flow: ``_on_header`` runs the Python codecs), for an address family change, and for SYNs from
untrusted sources. It counts every header and queues its event; ``drain_events`` builds the
HeaderEvents, parsing the raw headers C kept with the same codecs, only when an adapter wants
them (a cache records them), so a run without a cache never pays for them.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from normalizer.core.counters import Counters
from normalizer.core.diagnostics import SourceTally
from normalizer.core.engine import Frame, HeaderEvent, Normalizer
from normalizer.core.flow_key import MEMO_BOUND, AddressTexts, make_key
from normalizer.core.frame import LINKTYPE_ETHERNET, TcpFrame
from normalizer.core.options import Options
from normalizer.core.restore import real_endpoints, restore_endpoints
from normalizer.core.trust import TrustedProxies
from normalizer.proxy_headers.base import HeaderError, ProxyHeader
from normalizer.proxy_headers.detect import HeaderKind, parse_header, signature_kind

ENGINES = ("auto", "compiled", "python")
_NS = 1_000_000_000
_KIND_INDEX = {"proxy-v1": 0, "proxy-v2": 1, "custom": 2}  # _headers.c's KIND_*


def _load() -> ModuleType | None:
    try:
        from normalizer.core import _fastpath  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _fastpath  # type: ignore[no-any-return]


_fastpath = _load()


def compiled_available() -> bool:
    return _fastpath is not None


def resolve_engine(choice: str) -> str:
    """The engine ``make_engine`` builds for ``choice``: "compiled" or "python"."""
    if choice == "auto":
        return "compiled" if _fastpath is not None else "python"
    return choice


class EngineUnavailable(RuntimeError):
    """``--engine compiled`` on an installation whose extension was not built."""


def make_engine(
    options: Options, linktype: int, choice: str | None = None
) -> Normalizer | CompiledNormalizer:
    """The engine ``choice`` (default ``options.engine``) names; auto prefers compiled."""
    choice = choice or options.engine
    if choice not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {choice!r}")
    if choice == "python" or (choice == "auto" and _fastpath is None):
        return Normalizer(options, linktype)
    if _fastpath is None:
        raise EngineUnavailable(
            "the compiled engine is not built on this installation (reinstall with a C "
            "compiler and Python headers: scripts/setup.sh), use --engine python or auto"
        )
    return CompiledNormalizer(options, linktype)


def engine_name(engine: object) -> str:
    return "compiled" if isinstance(engine, CompiledNormalizer) else "python"


class _Table:
    """``len(engine.table)``, as the live adapter's gauges read it."""

    __slots__ = ("_core", "max_flows")

    def __init__(self, core: Any, max_flows: int) -> None:
        self._core = core
        self.max_flows = max_flows

    def __len__(self) -> int:
        return len(self._core)


class CompiledNormalizer:
    """``engine.Normalizer`` with the packet path in C (see the module docstring)."""

    # The core's own methods, bound once: feed is called for every packet.
    feed: Callable[[Frame, int], None]
    tick: Callable[[int], None]
    flush: Callable[[], None]
    drain: Callable[[], list[tuple[int, Frame]]]
    # The batch path (pcap_batch.py): records of a pcap chunk in, output records into a buffer.
    feed_pcap: Callable[
        [bytes | memoryview, int, bool, int, bool, int], tuple[int, int, int, int, int]
    ]
    # live: the sink's frames written to a tap fd from C -> (frames, bytes, errno or 0).
    write_tap: Callable[[int], tuple[int, int, int]]
    write_records: Callable[[Callable[[memoryview], object]], None]
    # live (pipeline.push_block): a whole AF_PACKET ring block per call.
    feed_block: Callable[
        [Any, int, bool, int],
        tuple[int, int, int, int, int, int, tuple[int, int, bytes, Exception] | None],
    ]
    # Decapsulation in C (_decap.c; normalizer/tunnels/compiled.py attaches and drives it).
    set_decap: Callable[
        [bytes, bytes, bytes, bytes, Callable[..., Any], Callable[[int], Any], Any, bool, bool],
        None,
    ]
    feed_outer: Callable[[bytes, int], None]
    feed_released: Callable[[list[tuple[int, bytes, int]], bool], tuple[int, int]]
    decap_sweep: Callable[[int], None]
    decap_notes_sync: Callable[[int, int], None]
    decap_counters: Callable[[], dict[str, int]]

    def __init__(self, options: Options, linktype: int = LINKTYPE_ETHERNET) -> None:
        if _fastpath is None:
            raise EngineUnavailable("normalizer.core._fastpath is not built")
        if options.max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        self.opts = options
        self.linktype = linktype
        self.trust = TrustedProxies(options.proxies)
        self.untrusted_syns = SourceTally()
        self._counters = Counters()
        self._texts = AddressTexts()
        self._packs: dict[str, bytes] = {}  # address text -> bytes (real_endpoints)
        t4 = bytearray()
        t6 = bytearray()
        for net in self.trust.networks:
            block = net.network_address.packed + net.netmask.packed
            (t4 if net.version == 4 else t6).extend(block)
        self._core = _fastpath.Engine(
            linktype=linktype,
            trust4=bytes(t4),
            trust6=bytes(t6),
            midstream_drop=options.midstream == "drop",
            max_flows=options.max_flows,
            idle_ns=int(options.idle_timeout * _NS),
            closed_ns=int(options.closed_timeout * _NS),
            pending_ns=int(options.pending_timeout * _NS),
            max_hold_packets=options.max_hold_packets,
            max_hold_bytes=options.max_hold_bytes,
            max_total_hold_bytes=options.max_total_hold_bytes,
            seed=int.from_bytes(os.urandom(8), "little"),
            header_cb=self._on_header,
            family_cb=self._on_family_change,
            untrusted_cb=self.untrusted_syns.add,
            fast_v1=HeaderKind.PROXY_V1 in options.header_kinds,
            fast_v2=HeaderKind.PROXY_V2 in options.header_kinds,
            restore=options.restore_addresses,
            max_events=options.max_pending_events,
        )
        self.table = _Table(self._core, options.max_flows)
        self.feed = self._core.feed
        self.tick = self._core.tick
        self.flush = self._core.flush
        self.drain = self._core.drain
        self.feed_pcap = self._core.feed_pcap
        self.write_tap = self._core.write_tap
        self.write_records = self._core.write_records
        self.feed_block = self._core.feed_block
        self.set_decap = self._core.set_decap
        self.feed_outer = self._core.feed_outer
        self.feed_released = self._core.feed_released
        self.decap_sweep = self._core.decap_sweep
        self.decap_notes_sync = self._core.decap_notes_sync
        self.decap_counters = self._core.decap_counters

    def set_sink(self, pcap: bool, nanosecond: bool = False) -> None:
        """pcap=True: every frame forwarded from now on is appended, as a pcap record
        (microsecond or nanosecond timestamps), to what ``write_records`` hands over instead of
        to ``drain()``; live
        writes them to its tap with ``write_tap(fd)`` instead (adapters/tap.py)."""
        self._core.set_sink(pcap, nanosecond)

    @property
    def counters(self) -> Counters:
        """The one Counters object (decapsulation adds to it too), with the core's values."""
        c = self._counters
        for name, value in self._core.counters().items():
            if name == "headers_by_backend":  # keyed by address bytes ("other" past the bound)
                text = self._texts.text
                value = {k if isinstance(k, str) else text(k): n for k, n in value.items()}
            setattr(c, name, value)
        return c

    @property
    def held_packets(self) -> int:
        return int(self._core.held_packets())

    def next_deadline(self) -> int | None:
        """As ``Normalizer.next_deadline``, at sweep granularity: the core's next sweep while it
        tracks flows (timeouts act at most a second late, as on the core's own sweeps)."""
        due = self._core.next_deadline()
        return None if due is None else int(due)

    def drain_events(self) -> list[HeaderEvent]:
        o = self.opts
        events = []
        for started, vlan, client, server, isn, header in self._core.drain_events():
            if not isinstance(header, ProxyHeader):  # the raw bytes of a header C parsed
                header = parse_header(header, o.header_kinds, o.custom_magic)
                assert isinstance(header, ProxyHeader), "C accepted a header Python does not"
            events.append(
                HeaderEvent(
                    started,
                    self._texts.endpoint(client),
                    self._texts.endpoint(server),
                    vlan,
                    header,
                    isn,
                )
            )
        return events

    def discard_events(self) -> None:
        """Drop the queued events (nobody records them): they are never built."""
        self._core.discard_events()

    def pending_events(self) -> int:
        return int(self._core.pending_events())

    def resume(
        self,
        client: tuple[str, int],
        server: tuple[str, int],
        vlan: bytes,
        isn: int,
        header: ProxyHeader,
        now: int,
    ) -> bool:
        """As ``Normalizer.resume``."""
        a = ipaddress.ip_address(client[0]).packed + client[1].to_bytes(2, "big")
        b = ipaddress.ip_address(server[0]).packed + server[1].to_bytes(2, "big")
        real = real_endpoints(header) if self.opts.restore_addresses else None
        if not self._core.resume(make_key(vlan, a, b), a < b, isn, header.length, real, now):
            return False
        self._counters.flows_resumed += 1
        return True

    # -- called by the core ---------------------------------------------------------------------

    def _on_header(self, buf: bytes) -> object:
        """None: need more bytes; False: refused (counted here as the Python engine counts it:
        malformed, no header, or an excluded kind); else (header length, real endpoints, kind
        index, LOCAL?, the header), which the core counts and queues.

        ``Normalizer._resolve``'s parsing for the headers the core does not parse itself.
        """
        o = self.opts
        try:
            header = parse_header(buf, o.header_kinds, o.custom_magic)
        except HeaderError:
            kind = signature_kind(buf, o.custom_magic)
            c = self._counters
            if kind is None:
                c.header_none += 1
            elif kind not in o.header_kinds:
                c.header_excluded += 1
            else:
                c.header_malformed += 1
            return False
        if not isinstance(header, ProxyHeader):
            return None
        real = self._real_endpoints(header) if o.restore_addresses else None
        return header.length, real, _KIND_INDEX[header.kind], header.command == "LOCAL", header

    def _real_endpoints(self, h: ProxyHeader) -> tuple[bytes, bytes] | None:
        """restore.real_endpoints, the address bytes memoized."""
        if h.command != "PROXY" or h.family not in ("TCP4", "TCP6") or h.src_addr is None:
            return None
        if h.dst_addr is None or h.src_port is None or h.dst_port is None:
            return None
        src, dst = self._packed(h.src_addr), self._packed(h.dst_addr)
        sport, dport = h.src_port.to_bytes(2, "big"), h.dst_port.to_bytes(2, "big")
        return src + dst + sport + dport, dst + src + dport + sport

    def _packed(self, text: str) -> bytes:
        packed = self._packs.get(text)
        if packed is None:
            if len(self._packs) >= MEMO_BOUND:
                self._packs.clear()
            packed = self._packs[text] = ipaddress.ip_address(text).packed
        return packed

    def _on_family_change(
        self, frame: bytes, ip: int, tcp: int, payload: int, end: int, block: bytes
    ) -> bytes | None:
        out = restore_endpoints(frame, TcpFrame(ip, tcp, payload, end, b""), block, self.linktype)
        return None if out is None else bytes(out)
