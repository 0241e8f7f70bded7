"""One row per TCP connection of a capture: what the normalizer did to it, and why.

Why: the summary's counters say *how many* flows were left alone; a detection engineer whose rule
did not fire needs to know *which* connection was left alone and for what reason (not from a
trusted proxy, no header, a kind ``--header`` excludes, malformed and how, cut off, over the
hold limits, started before the capture). The engine reports an outcome for each flow it
tracked (``Normalizer(outcomes=True)``, cold paths only); connections it never tracked are
seen here, on the frames handed to it (inner frames when decapsulating), so the per-packet
path of ``rewrite`` and ``live`` pays nothing.

Always the Python engine: the outcome events are its, and a report is not a hot path.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from normalizer.adapters.pcap_io import CaptureReader, PcapError
from normalizer.core.counters import Counters
from normalizer.core.engine import FlowOutcome, Normalizer
from normalizer.core.flow_key import endpoint_text, endpoints_of
from normalizer.core.frame import locate_l4, locate_tcp
from normalizer.core.options import Options
from normalizer.core.pipeline import Pipeline
from normalizer.core.restore import real_endpoints
from normalizer.proxy_headers import proxy_v1, proxy_v2
from normalizer.proxy_headers.detect import signature_kind
from normalizer.tunnels.flows import TunnelFlow

MAX_CONNECTIONS = 1_000_000  # connections a report keeps; more are counted, not listed
_PREFIX = 16  # client bytes kept per connection: enough for every header signature
_SYN, _ACK, _RST = 0x02, 0x10, 0x04

# outcome -> words for the table (and what to try, for those left alone)
WHY = {
    "stripped": "header stripped",
    "malformed": "header malformed (left as captured)",
    "excluded": "header of a kind --header excludes",
    "no-header": "from a trusted proxy, but no header",
    "missing": "ended before any client data",
    "truncated": "ended inside the header",
    "hold-overflow": "header not complete within the hold limits",
    "hold-timeout": "header not complete within pending_timeout",
    "dropped": "evicted or ports reused while waiting for the header",
    "untrusted": "starts with a header, but its source is not a trusted --proxy",
    "not-proxied": "not from a trusted proxy (plain traffic)",
    "midstream": "started before the capture (no SYN): left as captured",
}


@dataclass
class FlowRow:
    """One TCP connection as the report shows it (JSON: these keys)."""

    start: float  # epoch seconds of its first packet
    client: str  # "ip:port" of the side that sent the SYN (else the first packet's source)
    server: str
    outcome: str
    vlan: list[int] = field(default_factory=list)
    detail: str = ""
    header_kind: str | None = None
    header_length: int | None = None
    command: str | None = None
    real_client: str | None = None
    real_target: str | None = None
    bytes_removed: int = 0
    header_bytes: int = 0  # client bytes the engine had collected when it decided (offsets)
    packets: int = 0
    tunnel: dict[str, Any] | None = None

    def as_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_APPEND_NEWLINE)


def _ep(ep: tuple[str, int]) -> str:
    ip, port = ep
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _vlan_ids(vlan: bytes) -> list[int]:
    return [int.from_bytes(vlan[i : i + 2], "big") & 0x0FFF for i in range(0, len(vlan), 2)]


@dataclass
class _Conn:
    start: int
    client: bytes  # endpoint bytes (address + port)
    server: bytes
    vlan: bytes
    syn: bool  # its first packet was a SYN (from ``client``)
    isn: int
    packets: int = 0
    prefix: bytes = b""  # the client's first payload bytes


class _Tracker:
    """Every TCP connection among the frames the engine is fed, bounded; and UDP datagrams to
    tunnel ports (VXLAN/GENEVE the engine was not told to open)."""

    def __init__(self, linktype: int, tunnel_ports: frozenset[int]) -> None:
        self.linktype = linktype
        self.tunnel_ports = tunnel_ports
        self.conns: list[_Conn] = []
        self._open: dict[bytes, _Conn] = {}
        self.overflow = 0
        self.tunnel_datagrams = 0

    def see(self, frame: bytes, ts: int) -> None:
        f = locate_tcp(frame, self.linktype)
        if f is None:
            u = locate_l4(frame, self.linktype)
            if (
                u is not None
                and u.proto == 17
                and u.end >= u.l4 + 8
                and int.from_bytes(frame[u.l4 + 2 : u.l4 + 4], "big") in self.tunnel_ports
            ):
                self.tunnel_datagrams += 1
            return
        a, b = endpoints_of(frame, f)
        key = f.vlan + (a + b if a < b else b + a)
        flags = frame[f.tcp + 13]
        conn = self._open.get(key)
        isn = int.from_bytes(frame[f.tcp + 4 : f.tcp + 8], "big")
        is_syn = flags & (_SYN | _ACK | _RST) == _SYN
        if conn is None or (is_syn and conn.syn and a == conn.client and isn != conn.isn):
            if len(self.conns) >= MAX_CONNECTIONS:
                self.overflow += 1
                return
            conn = _Conn(ts, a, b, f.vlan, is_syn, isn)
            self.conns.append(conn)
            self._open[key] = conn
        conn.packets += 1
        if a == conn.client and f.end > f.payload and len(conn.prefix) < _PREFIX:
            conn.prefix += frame[f.payload : f.end][: _PREFIX - len(conn.prefix)]


def _outcome_key(vlan: bytes, client: tuple[str, int], server: tuple[str, int]) -> tuple[Any, ...]:
    return (vlan, client, server)


@dataclass
class Report:
    rows: list[FlowRow]
    overflow: int = 0  # connections past MAX_CONNECTIONS, not listed
    tunnel_datagrams: int = 0  # UDP to VXLAN/GENEVE ports not decapsulated (no --decap)
    counters: Counters = field(default_factory=Counters)


def explain(
    path: Path, options: Options, on_error: Callable[[PcapError], None] | None = None
) -> Report:
    """Every TCP connection of the capture at ``path``, in order of its first packet.
    Raises PcapError (unless ``on_error`` takes it: the rows read so far are kept) / OSError."""
    outcomes: list[FlowOutcome] = []
    tunnels: list[TunnelFlow] = []
    pipe: Pipeline | None = None
    tracker: _Tracker | None = None
    engine: Normalizer | None = None
    with path.open("rb") as fin:
        reader = CaptureReader(fin, str(path))
        try:
            for ts, frame, _origlen in reader:
                if pipe is None:
                    assert reader.linktype is not None
                    pipe, tracker, engine = _pipeline(options, reader.linktype, tunnels)
                pipe.push(frame, ts)
                pipe.take()
                assert engine is not None
                outcomes += engine.drain_outcomes()
        except PcapError as exc:
            if on_error is None:
                raise
            on_error(exc)
    if pipe is None or tracker is None or engine is None:
        return Report([])
    pipe.flush()
    pipe.take()
    outcomes += engine.drain_outcomes()
    rows = _rows(tracker, outcomes, tunnels, options)
    return Report(rows, tracker.overflow, tracker.tunnel_datagrams, pipe.counters)


def _pipeline(
    options: Options, linktype: int, tunnels: list[TunnelFlow]
) -> tuple[Pipeline, _Tracker, Normalizer]:
    # The Python engine: it is the one that emits per-flow outcome events.
    options = dataclasses.replace(options, engine="python")
    pipe = Pipeline(options, linktype, on_tunnels=tunnels.extend if options.decapsulate else None)
    # the report's own engine, with outcome events; fed through the tracker
    engine = Normalizer(options, pipe.engine.linktype, outcomes=True)
    assert isinstance(pipe.engine, Normalizer)
    engine.counters = pipe.engine.counters
    pipe.engine = engine
    ports = () if options.decapsulate else (*options.vxlan_ports, *options.geneve_ports)
    tracker = _Tracker(pipe.linktype, frozenset(ports))
    feed = engine.feed

    def observed(frame: bytes, ts: int) -> None:
        tracker.see(frame, ts)
        feed(frame, ts)

    engine.feed = observed  # type: ignore[method-assign]
    return pipe, tracker, engine


def _rows(
    tracker: _Tracker, outcomes: list[FlowOutcome], tunnels: list[TunnelFlow], options: Options
) -> list[FlowRow]:
    by_tuple: dict[tuple[Any, ...], list[FlowOutcome]] = {}
    for o in outcomes:
        by_tuple.setdefault(_outcome_key(o.vlan, o.client, o.server), []).append(o)
    tunnel_of: dict[tuple[Any, ...], dict[str, Any]] = {}
    for t in tunnels:
        tunnel_of.setdefault((t.vlan, frozenset({t.src, t.dst})), t.tunnel)
    trust = Normalizer(options).trust
    rows = []
    for conn in tracker.conns:
        client, server = endpoint_text(conn.client), endpoint_text(conn.server)
        row = FlowRow(
            start=conn.start / 1e9,
            client=_ep(client),
            server=_ep(server),
            outcome="",
            vlan=_vlan_ids(conn.vlan),
            packets=conn.packets,
            tunnel=tunnel_of.get((conn.vlan, frozenset({client, server}))),
        )
        found = by_tuple.get(_outcome_key(conn.vlan, client, server))
        if conn.syn and found:
            # the engine's outcome for this connection: the one started at its SYN
            o = min(found, key=lambda x: abs(x.ts - conn.start))
            found.remove(o)
            _fill(row, o, options)
        elif not conn.syn:
            row.outcome = "midstream"
        elif trust.contains(conn.client[:-2]):
            row.outcome = "no-header"  # tracked but never resolved: cannot happen, said plainly
            row.detail = "no outcome from the engine"
        else:
            kind = signature_kind(conn.prefix, options.custom_magic) if conn.prefix else None
            full = kind is not None and _full_signature(conn.prefix, kind.value, options)
            row.outcome = "untrusted" if full else "not-proxied"
            if full and kind is not None:
                row.header_kind = kind.value
                row.detail = f"try --proxy {client[0]}"
        rows.append(row)
    return rows


def _full_signature(prefix: bytes, kind: str, options: Options) -> bool:
    """Whether ``prefix`` holds a whole signature (a stream that only starts like one, say
    "\\r\\n", is no evidence of a header)."""
    sig = {
        "proxy-v2": proxy_v2.SIGNATURE,
        "proxy-v1": proxy_v1.SIGNATURE,
        "custom": options.custom_magic,
    }[kind]
    return prefix.startswith(sig)


def _fill(row: FlowRow, o: FlowOutcome, options: Options) -> None:
    row.outcome, row.detail = o.outcome, o.detail
    row.header_bytes = o.header_bytes
    h = o.header
    if o.outcome == "excluded":
        row.header_kind = o.detail
        row.detail = f"try --header {o.detail}"
    if h is None:
        return
    row.header_kind, row.header_length, row.command = h.kind, h.length, h.command
    row.bytes_removed = h.length
    if real_endpoints(h) is not None:  # a header naming TCP endpoints (not LOCAL, UNKNOWN)
        assert h.src_addr is not None and h.dst_addr is not None
        assert h.src_port is not None and h.dst_port is not None
        row.real_client = _ep((str(ipaddress.ip_address(h.src_addr)), h.src_port))
        row.real_target = _ep((str(ipaddress.ip_address(h.dst_addr)), h.dst_port))


def table(rows: Iterable[FlowRow]) -> str:
    """The rows as an aligned text table."""
    head = ("start", "client", "server", "outcome", "header", "real client", "target", "why")
    body = []
    for r in rows:
        header = f"{r.header_kind} {r.header_length}B" if r.header_length else r.header_kind or ""
        why = WHY.get(r.outcome, r.outcome) + (f": {r.detail}" if r.detail else "")
        if r.command == "LOCAL":
            why += " (LOCAL: a health check, addresses kept)"
        elif r.outcome in ("malformed", "truncated", "hold-overflow") and r.header_bytes:
            why += f" (after {r.header_bytes} client bytes)"
        if r.tunnel:
            why += f" [{r.tunnel.get('type')} vni {r.tunnel.get('vni')}]"
        body.append(
            (
                f"{r.start:.6f}",
                r.client,
                r.server,
                r.outcome,
                header,
                r.real_client or "",
                r.real_target or "",
                why,
            )
        )
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for cells in [head, *body]:
        cols = [c.ljust(w) for c, w in zip(cells[:-1], widths, strict=True)]
        lines.append("  ".join([*cols, cells[-1]]).rstrip())
    return "\n".join(lines)


def tally(rows: Iterable[FlowRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    return counts


def write(rows: list[FlowRow], out: IO[bytes], as_json: bool) -> None:
    """JSON lines, or the table (with a count per outcome) for a reader."""
    if as_json:
        out.writelines(r.as_json() for r in rows)
        return
    out.write(table(rows).encode() + b"\n")
    counts = ", ".join(f"{n} {k}" for k, n in sorted(tally(rows).items()))
    out.write(f"{len(rows)} connections: {counts or 'none'}\n".encode())


def is_terminal(stream: Any = None) -> bool:
    s = stream if stream is not None else sys.stdout
    return bool(getattr(s, "isatty", lambda: False)())


def advice(report: Report, options: Options) -> list[str]:
    """Why no header was stripped, in words, each with what to try (empty if one was)."""
    c = report.counters
    if sum(c.headers_stripped.values()):
        return []
    lines = []
    by = tally(report.rows)
    untrusted: dict[str, int] = {}
    for r in report.rows:
        if r.outcome == "untrusted":
            ip = r.client.rsplit(":", 1)[0].strip("[]")
            untrusted[ip] = untrusted.get(ip, 0) + 1
    for ip, n in sorted(untrusted.items(), key=lambda kv: (-kv[1], kv[0]))[:3]:
        lines.append(
            f"{n} connections from {ip} start with a proxy header, but {ip} is not a trusted"
            f" proxy ({', '.join(options.proxies)}): try --proxy {ip}"
        )
    kinds = sorted({r.header_kind or "" for r in report.rows if r.outcome == "excluded"})
    if by.get("excluded"):
        try_kinds = " ".join(f"--header {k}" for k in kinds)
        lines.append(
            f"{by['excluded']} connections carry {', '.join(kinds)} headers,"
            f" a kind --header excludes (valid, not malformed): try {try_kinds}"
        )
    if by.get("no-header"):
        lines.append(
            f"{by['no-header']} connections from trusted proxies start with no header at all:"
            " a capture without headers, or the gateway does not send one (send-proxy)"
        )
    malformed = [r for r in report.rows if r.outcome == "malformed"]
    if malformed:
        lines.append(
            f"{len(malformed)} connections start with a malformed header, the first:"
            f" {malformed[0].detail} (suricata-normalizer flows lists them)"
        )
    if report.tunnel_datagrams:
        lines.append(
            f"{report.tunnel_datagrams} UDP datagrams to VXLAN/GENEVE ports were not opened:"
            " try --decap --tunnel-peer CIDR (docs/tunnels.md)"
        )
    if by.get("midstream") and not any(r.outcome not in ("midstream",) for r in report.rows):
        lines.append(
            f"all {by['midstream']} connections began before the capture (no SYN): headers are"
            " only found from a connection's start"
        )
    if c.checksum_completed:
        lines.append(
            f"{c.checksum_completed} frames carried partial checksums (captured on the sending"
            " host, tx offload) and were completed"
        )
    if not report.rows and not report.tunnel_datagrams:
        lines.append("the capture holds no TCP connection")
    return lines


__all__ = [
    "WHY",
    "FlowRow",
    "Report",
    "advice",
    "explain",
    "is_terminal",
    "table",
    "tally",
    "write",
]
