"""Hostile capture files through ``rewrite_file`` (the ``rewrite`` command minus argument parsing).

Each file is a packet run written as classic pcap (micro- or nanosecond) or pcapng, often with
snap-length-truncated records, then maybe corrupted at one record: truncated record header or
data, an impossible caplen, a pcapng block whose body is shorter than its fixed part, a section
header shorter than 12 bytes, an unknown interface, an odd total length; or made strange but
readable: timestamp resolutions (zero, huge, power of two), negative or huge offsets,
out-of-range timestamps and fractions, simple packet blocks, a second link type.

Checked, per file: no exception but ``PcapError``; ``PcapError`` only where the file is corrupt
(strange-but-readable files may be refused, never crash); when refused at record k, the output
holds exactly what the same options make of the first k records (``rewrite`` of the valid
prefix); when accepted, counters add up, every untouchable record comes out identical with its
record header (time at the output's resolution, captured and original length), and the cache
rows pass the same trust checks as packet runs.
"""

from __future__ import annotations

import random
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fuzz.findings import Findings, crash_class, traceback_head
from fuzz.oracle import Oracle, subsequence_gap, without_checksums
from fuzz.packets import Run, cache_rows
from fuzz.scenarios import pick
from fuzz.sources import Capture
from fuzz.wire import (
    GENEVE_PORT,
    NS,
    VXLAN_PORT,
    Record,
    decode,
    pcap_bytes,
    pcap_header,
    pcap_record,
    pcapng_block,
    pcapng_epb,
    pcapng_idb,
    pcapng_shb,
    read_pcap,
)
from normalizer.adapters.pcap_io import PcapError
from normalizer.cache.connections import ConnectionCache
from normalizer.commands.rewrite import rewrite_file

OK, ERROR = "ok", "error"


@dataclass
class Hostile:
    kind: str
    data: bytes
    expect: frozenset[str]
    prefix: bytes | None = None  # a valid file of the records before the corruption
    count: int | None = None  # records a reader must hand out when the file is accepted
    times: list[int] | None = None  # ns per record as the file states them (None: unchecked)
    nano: bool = False  # output resolution when accepted
    # the records are the run's (so the run's frames tell which bytes a proxy sent); not so
    # for a scrambled file, whose cache rows are then only checked for their wire client
    own_records: bool = True


def snap(rng: random.Random, records: list[Record]) -> list[Record]:
    """Some records cut by a snap length (caplen < origlen), as tcpdump -s writes them."""
    r = rng.random()
    if r < 0.4:
        return records
    if r < 0.7:  # the FCS (or a trailer) was on the wire but not captured: the frame is whole
        extra = rng.choice((2, 4, 4, 8))
        return [
            Record(x.ts, x.data, len(x.data) + extra) if rng.random() < 0.7 else x for x in records
        ]
    cut = rng.choice((60, 96, 128, 200))
    return [Record(r.ts, r.data[:cut], r.origlen) if rng.random() < 0.5 else r for r in records]


def hostile_file(rng: random.Random, run: Run) -> Hostile:
    recs = snap(rng, run.records[:300])
    h = _pcap(rng, recs, run.linktype) if rng.random() < 0.4 else _pcapng(rng, recs, run.linktype)
    if rng.random() < 0.2:
        return _scrambled(rng, h)
    return h


def _scrambled(rng: random.Random, h: Hostile) -> Hostile:
    """The file with a few bytes changed anywhere, mostly in headers: no expectation but that
    it is read or refused, never a crash, and what is written adds up."""
    data = bytearray(h.data)
    if not data:
        return h
    for _ in range(rng.randrange(1, 9)):
        pos = rng.randrange(min(len(data), 64)) if rng.random() < 0.4 else rng.randrange(len(data))
        op = rng.randrange(3)
        if op == 0:
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[pos] = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x01))
        else:
            data[pos : pos + 4] = rng.choice((b"\xff\xff\xff\xff", bytes(4), b"\x00\x00\x00\x80"))
    return Hostile(f"{h.kind}, scrambled", bytes(data), frozenset({OK, ERROR}), own_records=False)


def _pcap(rng: random.Random, recs: list[Record], lt: int) -> Hostile:
    e = "<" if rng.random() < 0.8 else ">"  # the writer's byte order
    nano = rng.random() < 0.5
    if not nano:
        recs = [Record(r.ts // 1000 * 1000, r.data, r.origlen) for r in recs]
    head = pcap_header(lt, nano, e=e)
    body = [pcap_record(r, nano, e=e) for r in recs]
    k = rng.randrange(len(recs) + 1)
    valid = head + b"".join(body[:k])
    kind = rng.choice(
        ("valid", "valid", "trunc_header", "trunc_data", "caplen", "frac", "sec", "head")
    )
    times = [r.ts for r in recs]
    if kind == "head":
        return Hostile(
            "pcap truncated file header", head[: rng.randrange(0, 24)], frozenset({ERROR})
        )
    if kind == "valid" or k == len(recs):
        return Hostile(
            "pcap valid", head + b"".join(body), frozenset({OK}), None, len(recs), times, nano
        )
    rec = body[k]
    if kind == "trunc_header":
        return Hostile(
            "pcap truncated record header",
            valid + rec[: rng.randrange(1, 16)],
            frozenset({ERROR}),
            valid,
        )
    if kind == "trunc_data":
        return Hostile(
            "pcap truncated record",
            valid + rec[: rng.randrange(16, max(17, len(rec)))],
            frozenset({ERROR}),
            valid,
        )
    if kind == "caplen":
        bad = bytearray(rec)
        after = b"".join(body[k + 1 :])
        # beyond any snap length, or past the end of the file
        struct.pack_into(
            "<I", bad, 8, rng.choice((0x4000001, 0xFFFFFFFF, len(rec) - 16 + len(after) + 1))
        )
        return Hostile(
            "pcap impossible caplen", valid + bytes(bad) + after, frozenset({ERROR}), valid
        )
    if kind == "frac":  # a fraction past one second: readable, odd
        bad = bytearray(rec)
        struct.pack_into(e + "I", bad, 4, rng.choice((10**6, 10**9, 0xFFFFFFFF)))
        return Hostile(
            "pcap fraction out of range",
            valid + bytes(bad) + b"".join(body[k + 1 :]),
            frozenset({OK, ERROR}),
            None,
            len(recs),
        )
    if kind == "sec":
        bad = bytearray(rec)
        struct.pack_into(e + "I", bad, 0, rng.choice((0, 0xFFFFFFFF, 0x80000000)))
        return Hostile(
            "pcap timestamp out of range",
            valid + bytes(bad) + b"".join(body[k + 1 :]),
            frozenset({OK, ERROR}),
            None,
            len(recs),
        )
    raise AssertionError(f"unhandled kind {kind}")


_RESOLUTIONS = (0, 1, 3, 6, 9, 19, 0x7F, 0x80, 0x81, 0x8A, 0x9E, 0xBF, 0xFF)


def _pcapng(rng: random.Random, recs: list[Record], lt: int) -> Hostile:
    e = "<" if rng.random() < 0.8 else ">"  # the section's byte order
    strange = rng.random() < 0.35
    resol = rng.choice(_RESOLUTIONS) if strange else rng.choice((None, 6, 9, 0x94))
    offset = (
        rng.choice((None, -1, -(2**40), 2**40, -(2**63), 2**63 - 1))
        if strange and rng.random() < 0.5
        else None
    )
    per_s = (
        10**6 if resol is None else (2 ** (resol & 0x7F) if resol & 0x80 else 10 ** (resol & 0x7F))
    )
    head = pcapng_shb(e) + pcapng_idb(lt, resol, offset, e)
    ticks = [r.ts * per_s // NS for r in recs]
    if strange and rng.random() < 0.3:
        i = rng.randrange(len(ticks)) if ticks else 0
        if ticks:
            ticks[i] = rng.choice((2**64 - 1, 2**63, 0))
    blocks = [pcapng_epb(r, t, e=e) for r, t in zip(recs, ticks, strict=True)]
    times = [t * NS // per_s + (offset or 0) * NS for t in ticks]
    if strange:
        return Hostile(
            f"pcapng odd timestamps (tsresol {resol}, tsoffset {offset})",
            head + b"".join(blocks),
            frozenset({OK, ERROR}),
            None,
            len(recs),
        )
    kind = rng.choice(
        (
            "valid",
            "valid",
            "short_body",
            "shb_short",
            "bad_total",
            "iface",
            "caplen",
            "idb_short",
            "spb",
            "trailer",
            "trunc",
            "mixed",
        )
    )
    k = rng.randrange(len(blocks) + 1)
    valid = head + b"".join(blocks[:k])
    rest = b"".join(blocks[k:])
    if kind == "mixed" and lt == 1:  # a second interface of another link type (raw IP)
        idb2 = pcapng_idb(101, resol, offset, e)
        mixed = [
            pcapng_epb(Record(r.ts, r.data[14:], r.origlen - 14), t, 1, e)
            if r.data[12:14] in (b"\x08\x00", b"\x86\xdd") and rng.random() < 0.5
            else blk
            for r, t, blk in zip(recs, ticks, blocks, strict=True)
        ]
        return Hostile(
            "pcapng two link types", head + idb2 + b"".join(mixed), frozenset({OK}), None, len(recs)
        )
    if kind == "valid" or (k == len(blocks) and kind not in ("shb_short", "idb_short", "spb")):
        return Hostile(
            "pcapng valid", head + b"".join(blocks), frozenset({OK}), None, len(recs), times, False
        )
    if kind == "short_body":
        body = rng.randbytes(rng.choice((0, 4, 8, 12, 16)))
        return Hostile(
            "pcapng packet block with a short body",
            valid + pcapng_block(6, body, e) + rest,
            frozenset({ERROR}),
            valid,
        )
    if kind == "shb_short":
        total = rng.choice((0, 4, 8))
        blk = (
            struct.pack(e + "II", 0x0A0D0D0A, total)
            + struct.pack(e + "I", 0x1A2B3C4D)
            + rng.randbytes(rng.randrange(0, 24))
        )
        return Hostile(
            f"pcapng section header of length {total}",
            valid + blk + rest,
            frozenset({ERROR}),
            valid if k else None,
        )
    if kind == "bad_total":
        edit = bytearray(blocks[k])
        struct.pack_into(e + "I", edit, 4, rng.choice((len(edit) + 1, len(edit) - 2, 9, 1 << 24)))
        return Hostile(
            "pcapng block with a bad total length",
            valid + bytes(edit) + b"".join(blocks[k + 1 :]),
            frozenset({ERROR}),
            valid,
        )
    if kind == "iface":
        bad = pcapng_epb(recs[k], ticks[k], ifid=rng.choice((1, 7, 0xFFFFFFFF)), e=e)
        return Hostile(
            "pcapng packet of an unknown interface",
            valid + bad + b"".join(blocks[k + 1 :]),
            frozenset({ERROR}),
            valid,
        )
    if kind == "caplen":
        edit = bytearray(blocks[k])
        struct.pack_into(e + "I", edit, 20, len(recs[k].data) + rng.choice((8, 100, 0x7FFFFFFF)))
        return Hostile(
            "pcapng caplen past its block",
            valid + bytes(edit) + b"".join(blocks[k + 1 :]),
            frozenset({ERROR}),
            valid,
        )
    if kind == "idb_short":
        blk = pcapng_block(1, rng.randbytes(rng.choice((0, 2, 4))), e)
        return Hostile(
            "pcapng interface block with a short body",
            valid + blk + rest,
            frozenset({ERROR}),
            valid if k else None,
        )
    if kind == "spb":  # simple packet blocks: no timestamp, origlen may exceed the data
        spbs = b"".join(
            pcapng_block(3, struct.pack(e + "I", r.origlen + rng.choice((0, 0, 40))) + r.data, e)
            for r in recs[k:]
        )
        return Hostile(
            "pcapng simple packet blocks", valid + spbs, frozenset({OK, ERROR}), None, len(recs)
        )
    if kind == "trailer":  # the trailing length disagrees: readers differ, none may crash
        edit = bytearray(blocks[k])
        struct.pack_into(e + "I", edit, len(edit) - 4, len(edit) + 4)
        return Hostile(
            "pcapng trailing length mismatch",
            valid + bytes(edit) + b"".join(blocks[k + 1 :]),
            frozenset({OK, ERROR}),
            None,
            len(recs),
        )
    cut = blocks[k][: rng.randrange(1, len(blocks[k]))]
    return Hostile("pcapng truncated block", valid + cut, frozenset({ERROR}), valid)


Rewrite = Callable[[Path, Path, Run, Path], object]


def rewrite(src: Path, dst: Path, run: Run, db: Path) -> object:
    """``rewrite_file`` with a connection cache, as ``rewrite --cache`` runs it."""
    cache = ConnectionCache(db)
    try:
        return rewrite_file(
            src,
            dst,
            run.options,
            on_events=cache.record,
            resume=cache.resumable,
            on_tunnels=cache.record_tunnels,
        )
    finally:
        cache.close()


def check_file(h: Hostile, run: Run, work: Path, restart: bool = False) -> list[tuple[str, str]]:
    """Problems (class, detail) of one hostile file through ``rewrite_file``; ``restart``: once
    accepted, rewrite it again with the same cache, as a restarted normalizer resumes the flows
    the cache holds."""
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        d = Path(tmp)
        src, dst, db = d / "in.cap", d / "out.pcap", d / "cache.db"
        src.write_bytes(h.data)
        try:
            counters = rewrite(src, dst, run, db)
            outcome = OK
        except PcapError:
            outcome, counters = ERROR, None
        except Exception as exc:
            return [(crash_class(exc), traceback_head(exc))]
        problems: list[tuple[str, str]] = []
        if outcome not in h.expect:
            what = "refused a valid file" if outcome == ERROR else "accepted a corrupt file"
            problems.append((f"rewrite {what}", h.kind))
            return problems
        if outcome == ERROR and h.prefix is not None:
            p_src, p_dst, p_db = d / "prefix.cap", d / "prefix.pcap", d / "prefix.db"
            p_src.write_bytes(h.prefix)
            try:
                rewrite(p_src, p_dst, run, p_db)
            except Exception as exc:
                return [(crash_class(exc), "on the valid prefix: " + traceback_head(exc))]
            got = dst.read_bytes() if dst.exists() else None
            if got != p_dst.read_bytes():
                problems.append(
                    (
                        "records before a corrupt one not written as they would be alone",
                        f"{h.kind}: {_first_difference(got, p_dst.read_bytes())}",
                    )
                )
        if outcome == OK:
            problems += _accepted(h, run, dst, counters)
            if restart:
                try:
                    again = rewrite(src, d / "again.pcap", run, db)
                except Exception as exc:
                    return [(crash_class(exc), "after a restart: " + traceback_head(exc))]
                problems += _accepted(h, run, d / "again.pcap", again)
        if outcome == OK or db.exists():
            problems += row_problems(h, run, db)
        return problems


def row_problems(h: Hostile, run: Run, db: Path) -> list[tuple[str, str]]:
    """The cache rows' problems, judged by the bytes the run's proxies sent."""
    oracle = Oracle(run.options.proxies, run.peers, run.options.decapsulate, run.linktype)
    for r in run.records[:300]:
        oracle.observe(r.data)
    rows = cache_rows(db, oracle, run.peers)
    if not h.own_records:  # scrambled: the file may carry bytes the run's frames do not
        rows = [p for p in rows if p.cls != "cache row names an address no trusted header carried"]
    return [(p.cls, p.detail) for p in rows]


def _first_difference(got: bytes | None, want: bytes) -> str:
    if got is None:
        return "no output file"
    try:
        a, b = read_pcap(got)[2], read_pcap(want)[2]
    except ValueError as exc:
        return f"output is not a valid pcap ({exc})"
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return (
                f"record {i}: ts {x.ts}/{y.ts}, caplen {len(x.data)}/{len(y.data)}, origlen"
                f" {x.origlen}/{y.origlen}, same bytes {x.data == y.data} (output/prefix alone)"
            )
    return f"{len(a)} records written, the prefix alone gives {len(b)}"


def _accepted(h: Hostile, run: Run, dst: Path, counters: object) -> list[tuple[str, str]]:
    from normalizer.core.counters import Counters

    assert isinstance(counters, Counters)
    problems = []
    try:
        _lt, nano, out = read_pcap(dst.read_bytes())
    except ValueError as exc:
        return [("output is not a valid pcap", f"{h.kind}: {exc}")]
    c = counters
    if h.count is not None and not run.options.decapsulate and c.packets_in != h.count:
        problems.append(
            (
                "unaccounted packets",
                f"{h.kind}: {h.count} records in the file, packets_in {c.packets_in}",
            )
        )
    if c.packets_in != c.packets_out + c.packets_dropped or len(out) != c.packets_out:
        problems.append(
            (
                "unaccounted packets",
                f"{h.kind}: in {c.packets_in}, out {c.packets_out}, dropped {c.packets_dropped},"
                f" records written {len(out)}",
            )
        )
    if h.times is not None:
        oracle = Oracle(run.options.proxies, run.peers, run.options.decapsulate, run.linktype)
        scale = 1 if nano else 1000
        recs = _records_as_stated(h, run)
        want = [(r.ts // scale * scale, r.data, r.origlen) for r in recs if oracle.observe(r.data)]
        got = [(r.ts, r.data, r.origlen) for r in out]
        if getattr(run.options, "checksums", "keep") != "keep":  # completed sums: the rest
            want = [(t, without_checksums(d, run.linktype), n) for t, d, n in want]
            got = [(t, without_checksums(d, _lt), n) for t, d, n in got]
        gap = subsequence_gap(want, got)  # type: ignore[arg-type]
        if gap >= 0:
            w = want[gap]
            near = [g for g in got if g[1] == w[1]]
            seen = decode(w[1], run.linktype)
            tunnel = (
                seen is not None and seen.proto == 17 and seen.dport in (VXLAN_PORT, GENEVE_PORT)
            )
            cls = "untrusted record not passed byte-identical (record header included)"
            if tunnel and run.options.decapsulate:
                cls = "tunnel packet from a non-peer not passed as captured"
            problems.append(
                (
                    cls,
                    f"{h.kind}: record ts {w[0]} caplen {len(w[1])} origlen {w[2]};"
                    f" output has {[(g[0], len(g[1]), g[2]) for g in near[:2]]}",
                )
            )
    return problems


def _records_as_stated(h: Hostile, run: Run) -> list[Record]:
    assert h.times is not None
    recs = run.records[:300]
    # the file was written from the snapped copy: re-read it to get exactly those records
    from fuzz.wire import iter_pcap_records

    if h.data[:4] != b"\x0a\x0d\x0d\x0a":
        return list(iter_pcap_records(h.data))
    e = "<" if h.data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    out, pos = [], 0
    data = h.data
    i = 0
    while pos + 8 <= len(data):
        btype, total = struct.unpack_from(e + "II", data, pos)
        if btype == 6:
            caplen, origlen = struct.unpack_from(e + "II", data, pos + 20)
            out.append(Record(h.times[i], data[pos + 28 : pos + 28 + caplen], origlen))
            i += 1
        pos += total
    del recs
    return out


def file_tier(
    seed: int, corpus: list[Capture], n: int, found: Findings, work: Path, log: Callable[..., None]
) -> int:
    done = 0
    for i in range(n):
        rng = random.Random(f"{seed}:file:{i}")
        try:
            run = pick(rng, corpus, cache_share=1.0)
            h = hostile_file(rng, run)
            restart = rng.random() < 0.3
            problems = check_file(h, run, work, restart)
        except Exception as exc:  # the harness's own bug: a finding too, the run goes on
            found.add("harness", crash_class(exc), traceback_head(exc), None, {"file": i})
            continue
        for cls, detail in problems:
            note = {"file": i, "kind": h.kind, "expect": sorted(h.expect), "count": h.count}
            note["restart"] = restart
            note |= {"times": h.times, "nano": h.nano, **run.note()}
            files = {"input.cap": h.data, "config.toml": run.note()["config_toml"].encode()}
            files["records.pcap"] = pcap_bytes(run.records[:300], run.linktype, nano=True)
            if h.prefix is not None:
                files["prefix.cap"] = h.prefix
            found.add("file", cls, detail, files, note)
        done += 1
    log(f"fuzz: {done} capture files through rewrite_file, {found.total} findings so far")
    return done
