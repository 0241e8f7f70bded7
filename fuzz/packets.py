"""Packet runs: a sequence of frames through the pure core (``Pipeline``), then every check.

Why in process: a run of a thousand frames costs milliseconds here and half a second as a CLI
start-up, and the million-packet default must fit in a few minutes on two shared cores. The
adapters are exercised too, but fewer times (``fuzz.files``, ``fuzz.cli``).

Counter accounting (normalizer/core/counters.py), checked after ``flush``:

* nothing is still held: ``Normalizer.held_packets == 0`` (and no outer fragment is held);
* ``packets_in == packets_out + packets_dropped`` (dropped: header-only segments, midstream);
* ``packets_out == passed_not_tcp + passed_untracked + passed_unparsed_flow + rewritten``;
* the frames handed back number exactly ``packets_out``;
* without decapsulation ``packets_in`` is the number of frames pushed; with it, frames pushed
  == ``tunnel_decapsulated + tunnel_passed + tunnel_bad_header + tunnel_fragments -
  tunnel_reassembled`` (the relation counters.py documents).
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fuzz.findings import crash_class, traceback_head
from fuzz.oracle import Nets, Oracle, subsequence_gap, without_checksums
from fuzz.sources import ALT_MAGIC
from fuzz.wire import GENEVE_PORT, VXLAN_PORT, Record, decode, pcap_bytes
from normalizer.cache.connections import ConnectionCache
from normalizer.core.counters import Counters
from normalizer.core.options import Options
from normalizer.core.pipeline import Pipeline
from normalizer.proxy_headers.custom import DEFAULT_MAGIC

_IP_FAMILIES = ("TCP4", "TCP6", "UDP4", "UDP6")
HAS_PEERS = "tunnel_peers" in {f.name for f in fields(Options)}
# main after a353748: checksums completed (auto) or recomputed (fix) on the way in
HAS_CHECKSUMS = "checksums" in {f.name for f in fields(Options)}


@dataclass
class Problem:
    cls: str
    detail: str
    index: int = -1  # frame that raised, for crashes
    trace: str = ""


@dataclass
class Run:
    """One input: timestamped frames of one link type and the options to process them with."""

    records: list[Record]
    linktype: int
    options: Options
    peers: tuple[str, ...]
    cache: bool

    def pcap(self) -> bytes:
        return pcap_bytes(self.records, self.linktype, nano=True)

    def note(self) -> dict[str, Any]:
        return {
            "linktype": self.linktype,
            "peers": self.peers,
            "cache": self.cache,
            "config_toml": config_toml(self.options),
        }


def make_options(
    rng: random.Random, proxies: tuple[str, ...], peers: tuple[str, ...], decap: bool
) -> Options:
    from normalizer.proxy_headers.detect import ALL_KINDS, HeaderKind

    kinds = ALL_KINDS
    if rng.random() < 0.2:
        kinds = frozenset(k for k in HeaderKind if rng.random() < 0.6) or frozenset(
            {HeaderKind.PROXY_V2}
        )
    small = rng.random() < 0.25
    kw: dict[str, Any] = dict(
        proxies=proxies,
        header_kinds=kinds,
        midstream=rng.choice(("pass", "pass", "drop")),
        restore_addresses=rng.random() < 0.7,
        max_flows=rng.choice((4, 64)) if small else 100_000,
        pending_timeout=rng.choice((0.001, 5.0)) if small else 5.0,
        max_hold_packets=rng.choice((1, 3, 64)) if small else 64,
        max_hold_bytes=rng.choice((30, 200, 262_144)) if small else 262_144,
        max_total_hold_bytes=rng.choice((500, 1 << 26)) if small else 1 << 26,
        decapsulate=decap,
        custom_magic=ALT_MAGIC if rng.random() < 0.2 else DEFAULT_MAGIC,
    )
    if HAS_PEERS and decap:
        kw["tunnel_peers"] = peers
    if HAS_CHECKSUMS:
        kw["checksums"] = rng.choice(("keep", "keep", "keep", "auto", "auto", "fix"))
    return Options(**kw)


def config_toml(o: Options) -> str:
    """The options as a ``[normalizer]`` config file, so a reproducer runs through the CLI."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, bytes):
            return f'"{v.hex()}"'
        if isinstance(v, tuple | list | frozenset):
            return (
                "["
                + ", ".join(
                    val(str(x) if not isinstance(x, int) else x) for x in sorted(v, key=str)
                )
                + "]"
            )
        return repr(v)

    keys = [
        "proxies",
        "header_kinds",
        "midstream",
        "restore_addresses",
        "max_flows",
        "pending_timeout",
        "max_hold_packets",
        "max_hold_bytes",
        "max_total_hold_bytes",
        "decapsulate",
        "custom_magic",
    ]
    if HAS_PEERS:
        keys.append("tunnel_peers")
    if HAS_CHECKSUMS:
        keys.append("checksums")
    lines = ["[normalizer]"]
    for k in keys:
        v = getattr(o, k)
        if k == "tunnel_peers" and not v:
            continue
        lines.append(f"{k} = {val(v)}")
    return "\n".join(lines) + "\n"


def execute(run: Run, workdir: Path | None = None) -> tuple[list[Problem], int]:
    """Run the frames through a Pipeline; the problems found and the frames out."""
    o = run.options
    oracle = Oracle(o.proxies, run.peers, o.decapsulate, run.linktype)
    tmp = None
    cache = None
    db = None
    if run.cache:
        tmp = tempfile.TemporaryDirectory(dir=workdir)
        db = Path(tmp.name) / "cache.db"
        cache = ConnectionCache(db)
    try:
        return _execute(run, oracle, cache, db)
    finally:
        if cache is not None:
            cache.close()
        if tmp is not None:
            tmp.cleanup()


def _execute(
    run: Run, oracle: Oracle, cache: ConnectionCache | None, db: Path | None
) -> tuple[list[Problem], int]:
    problems: list[Problem] = []
    events: list[Any] = []
    o = run.options
    pipe = Pipeline(
        o,
        run.linktype,
        on_events=cache.record if cache is not None else events.extend,
        on_tunnels=cache.record_tunnels if cache is not None else None,
    )
    out: list[Any] = []
    needles: list[bytes] = []
    stage = "push"
    i = -1
    try:
        for i, rec in enumerate(run.records):
            if oracle.observe(rec.data):
                needles.append(rec.data)
            pipe.push(rec.data, rec.ts)
            if i & 255 == 255:
                out += pipe.take()
        stage = "flush"
        pipe.flush()
        out += pipe.take()
    except Exception as exc:  # a crash: the finding itself
        problems.append(Problem(crash_class(exc), f"during {stage}", i, traceback_head(exc)))
        return problems, len(out)
    problems += accounting(pipe, len(run.records), len(out))
    hay = [f for _ts, f in out]
    if getattr(o, "checksums", "keep") != "keep":  # checksums may be completed: compare the rest
        lt = pipe.linktype
        needles = [without_checksums(f, run.linktype) for f in needles]
        hay = [without_checksums(f, lt) for f in hay]
    gap = subsequence_gap(needles, hay)
    if gap >= 0:
        seen = decode(needles[gap], run.linktype)
        tunnel = seen is not None and seen.proto == 17 and seen.dport in (VXLAN_PORT, GENEVE_PORT)
        problems.append(
            Problem(
                "tunnel packet from a non-peer not passed as captured"
                if tunnel and o.decapsulate
                else "untrusted frame not passed byte-identical",
                f"untouchable frame #{gap} of {len(needles)} missing or altered:"
                f" {needles[gap][:64].hex()}",
            )
        )
    if db is not None:
        problems += cache_rows(db, oracle, run.peers)
    else:
        problems += event_addresses(events, oracle)
    return problems, len(out)


def accounting(pipe: Pipeline, pushed: int, taken: int) -> list[Problem]:
    c: Counters = pipe.counters
    bad = []
    held = pipe.engine.held_packets
    if held:
        bad.append(f"{held} frames still held after flush")
    if pipe.decap is not None:
        if pipe.decap.held_frames:
            bad.append(f"{pipe.decap.held_frames} fragments still held after flush")
        outer = (
            getattr(c, "tunnel_untrusted", 0)  # counted from the tunnel_peers fix on
            + c.tunnel_decapsulated
            + c.tunnel_passed
            + c.tunnel_bad_header
            + c.tunnel_fragments
            - c.tunnel_reassembled
        )
        if outer != pushed:
            bad.append(f"decap: {pushed} frames pushed but counters account for {outer}")
    elif c.packets_in != pushed:
        bad.append(f"packets_in {c.packets_in} != {pushed} frames pushed")
    if c.packets_in != c.packets_out + c.packets_dropped:
        bad.append(
            f"packets_in {c.packets_in} != out {c.packets_out} + dropped {c.packets_dropped}"
        )
    parts = c.passed_not_tcp + c.passed_untracked + c.passed_unparsed_flow + c.rewritten
    if c.packets_out != parts:
        bad.append(f"packets_out {c.packets_out} != sum of pass/rewrite categories {parts}")
    if taken != c.packets_out:
        bad.append(f"{taken} frames handed back, packets_out says {c.packets_out}")
    return [Problem("unaccounted packets", "; ".join(bad))] if bad else []


def cache_rows(db: Path, oracle: Oracle, peers: tuple[str, ...]) -> list[Problem]:
    """Every row's wire client is a proxy, every named address came from a trusted header."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT wire_src_ip, real_src_ip, real_dst_ip, family FROM connections"
        ).fetchall()
        tunnels = con.execute("SELECT outer_src_ip FROM tunnels").fetchall()
    finally:
        con.close()
    return _check_rows(rows, oracle) + _check_tunnels([t[0] for t in tunnels], peers)


def event_addresses(events: list[Any], oracle: Oracle) -> list[Problem]:
    rows = [
        (ev.client[0], ev.header.src_addr, ev.header.dst_addr, ev.header.family) for ev in events
    ]
    return _check_rows(rows, oracle)


def _check_rows(rows: list[tuple[Any, ...]], oracle: Oracle) -> list[Problem]:
    problems = []
    blobs: list[bytes] | None = None
    for wire, src, dst, family in rows:
        if wire not in oracle.proxies:
            problems.append(
                Problem("cache row for a connection not from a proxy", f"wire client {wire}")
            )
        for addr in (src, dst):
            if addr is None or (family not in _IP_FAMILIES and family != "UNIX"):
                continue
            if blobs is None:
                blobs = oracle.trusted.blobs()
            if not oracle.trusted.carries(addr, blobs):
                problems.append(
                    Problem(
                        "cache row names an address no trusted header carried",
                        f"{family} address {addr!r} (wire client {wire})",
                    )
                )
    return problems[:3]


def _check_tunnels(outer: list[str], peers: tuple[str, ...]) -> list[Problem]:
    nets = Nets(peers)
    bad = [a for a in outer if a not in nets]
    if bad:
        return [
            Problem("tunnel row for an outer source that is not a peer", f"outer source {bad[0]}")
        ]
    return []
