"""Eve lines: real ones from Suricata, mutated, through the enricher's per-line policy.

Why real Suricata: the enricher's interesting paths (a cache row found, tuples remapped in
``flow``/``alert``, community_id recomputed, tunnels) only run on events whose tuples match rows,
and only Suricata writes events exactly as Suricata does. The corpus captures are normalized
with a connection cache (addresses restored and kept) and read by ``suricata -r`` once; the eve
lines and the cache are kept under ``--work`` and reused. Without Suricata, lines are built from
the cache rows in Suricata's shape instead (and the report says so).

Checked per line (``LineEnricher.line`` with a reject sink): no exception; either an output of
exactly one newline-terminated line (the input unchanged, or a JSON object) and no reject, or
no output and exactly one reject record carrying this line's offset.
"""

from __future__ import annotations

import ipaddress
import random
import re
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from eve_enricher.lookup import CacheLookup, Matcher, TunnelMatcher
from eve_enricher.stream import LineEnricher
from fuzz.findings import Findings, crash_class, traceback_head
from fuzz.mutate import mutate
from normalizer.cache.connections import ConnectionCache
from normalizer.commands.rewrite import rewrite_file
from normalizer.core.options import Options

VERSION = 2  # of the cached material; bump when what is cached changes


@dataclass
class EveSource:
    db: Path
    lines: list[bytes]
    origin: str  # "suricata" or "synthesized"


def eve_source(work: Path, root: Path, log: Callable[..., None]) -> EveSource:
    d = work / f"eve-v{VERSION}"
    lines_file, db = d / "eve.json", d / "cache.db"
    if lines_file.exists() and db.exists():
        cached = [ln for ln in lines_file.read_bytes().splitlines() if ln]
        origin = (d / "origin").read_text().strip() if (d / "origin").exists() else "suricata"
        return EveSource(db, cached, origin)
    d.mkdir(parents=True, exist_ok=True)
    db.unlink(missing_ok=True)
    lines: list[bytes] = []
    origin = "suricata"
    with tempfile.TemporaryDirectory() as tmp:
        for pcap in sorted((root / "pcaps").glob("*.pcap")):
            manifest = pcap.with_suffix(".yaml")
            if not manifest.exists():
                continue
            proxies, decap = _manifest(manifest)
            for restore in (True, False):
                out = Path(tmp) / f"{pcap.stem}-{restore}.pcap"
                cache = ConnectionCache(db)
                try:
                    opts = Options(proxies=proxies, decapsulate=decap, restore_addresses=restore)
                    rewrite_file(
                        pcap, out, opts, on_events=cache.record, on_tunnels=cache.record_tunnels
                    )
                finally:
                    cache.close()
                got = _suricata(out, Path(tmp) / f"{pcap.stem}-{restore}", root)
                if got is None:
                    origin = "synthesized"
                else:
                    lines += got
    lines = canonical_flow_ids(lines)
    if origin != "suricata" or not lines:
        origin = "synthesized"
        lines = synthesized(db)
    log(f"fuzz: {len(lines)} eve lines ({origin}) cached in {d}")
    lines_file.write_bytes(b"\n".join(lines) + b"\n")
    (d / "origin").write_text(origin + "\n")
    return EveSource(db, lines, origin)


def _manifest(path: Path) -> tuple[tuple[str, ...], bool]:
    import yaml

    m = yaml.safe_load(path.read_text())
    opts = m.get("options") or {}
    return tuple(m.get("proxies") or ()), bool(opts.get("decapsulate", False))


def _suricata(pcap: Path, outdir: Path, root: Path) -> list[bytes] | None:
    exe = shutil.which("suricata")
    if exe is None:
        return None
    outdir.mkdir(parents=True, exist_ok=True)
    rules = root / "suricata" / "rules" / "decoy.rules"
    argv = [exe, "-r", str(pcap), "-k", "all", "-l", str(outdir), "--runmode", "single"]
    if rules.exists():
        argv += ["-S", str(rules)]
    p = subprocess.run(argv, capture_output=True, timeout=300)
    eve = outdir / "eve.json"
    if p.returncode != 0 or not eve.exists():
        return None
    return [ln for ln in eve.read_bytes().splitlines() if ln.strip()]


def synthesized(db: Path) -> list[bytes]:
    """Events in Suricata's shape naming the cache's wire and real tuples."""
    con = sqlite3.connect(db)
    rows = con.execute(
        "SELECT wire_src_ip, wire_src_port, wire_dst_ip, wire_dst_port, real_src_ip,"
        " real_src_port, real_dst_ip, real_dst_port, first_seen FROM connections"
    ).fetchall()
    con.close()
    out = []
    for i, (ws, wsp, wd, wdp, rs, rsp, rd, rdp, t) in enumerate(rows):
        from datetime import UTC, datetime

        stamp = datetime.fromtimestamp(t + 0.5, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")
        for src, sp, dst, dp in ((ws, wsp, wd, wdp), (rs, rsp, rd, rdp)):
            if src is None:
                continue
            ev = {
                "timestamp": stamp,
                "flow_id": 1000 + i,
                "event_type": "alert",
                "src_ip": src,
                "src_port": sp,
                "dest_ip": dst,
                "dest_port": dp,
                "proto": "TCP",
                "community_id": "1:x",
                "alert": {
                    "signature_id": 1,
                    "flow": {"src_ip": src, "src_port": sp, "dest_ip": dst, "dest_port": dp},
                },
                "flow": {
                    "start": stamp,
                    "src_ip": src,
                    "src_port": sp,
                    "dest_ip": dst,
                    "dest_port": dp,
                },
            }
            out.append(orjson.dumps(ev))
    return out


def canonical_flow_ids(lines: list[bytes]) -> list[bytes]:
    """Suricata's flow ids hash with a random seed per run: number them by first appearance, so
    one seed gives the same lines on every machine."""
    ids: dict[bytes, bytes] = {}

    def sub(m: re.Match[bytes]) -> bytes:
        new = ids.setdefault(m.group(1), str(1_000_000 + len(ids)).encode())
        return b'"flow_id":' + new

    return [_FLOW_ID.sub(sub, ln) for ln in lines]


_FLOW_ID = re.compile(rb'"flow_id":(\d+)')


# -- mutation -----------------------------------------------------------------------------

HOSTILE: tuple[Any, ...] = (
    [],
    {},
    [1, 2],
    {"a": 1},
    None,
    True,
    False,
    0,
    -1,
    65536,
    2**63 - 1,
    -(2**63),
    1.5,
    1e308,
    "",
    "x" * 3000,
    "\u0661\u0667",
    "6\u0966",
    "TCP",
    "tcp",
    "17",
    "\u0663",
    "::",
    "999.1.1.1",
    "fe80::1%eth0",
    "2001:db8::1",
    "1.2.3.4",
    "\u00e9t\u00e9",
    "2026-13-45T99:99:99",
    "nan",
    [None],
    [[]],
    {"start": 5},
    {"src_ip": 1},
    [4096, "x"],
    "\u202e",
    "\u00b2",
    "6\u00b2",
    "\u2460",
    "\u0663\u0660\u0660",
    "9999",
    " 6",
    "0x11",
)
KEYS = (
    "flow_id",
    "proto",
    "src_ip",
    "src_port",
    "dest_ip",
    "dest_port",
    "timestamp",
    "flow",
    "vlan",
    "community_id",
    "event_type",
    "alert",
    "tunnel",
    "app_proto",
    "in_iface",
    "proxy",
)
NESTED = (
    ("flow", "start"),
    ("flow", "src_ip"),
    ("flow", "src_port"),
    ("flow", "dest_port"),
    ("alert", "flow"),
    ("alert", "source"),
    ("alert", "target"),
    ("alert", "signature_id"),
)


def mutate_line(rng: random.Random, line: bytes) -> bytes:
    if rng.random() < 0.25:
        return line
    out = line
    for _ in range(1 + (rng.random() < 0.3)):
        out = _one(rng, out)
    return out.replace(b"\n", b" ")


def _one(rng: random.Random, line: bytes) -> bytes:
    op = rng.randrange(13)
    if op == 12:
        return _respell(rng, line)
    if op <= 5:
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            return mutate(rng, line, -1)
        if type(ev) is not dict:
            return line
        if op <= 2:
            ev[rng.choice(KEYS)] = rng.choice(HOSTILE)
            if rng.random() < 0.5:
                ev.setdefault("community_id", "1:placeholder=")
        elif op <= 4:
            a, b = rng.choice(NESTED)
            sub = ev.get(a)
            if type(sub) is dict:
                sub[b] = rng.choice(HOSTILE)
            else:
                ev[a] = {b: rng.choice(HOSTILE)}
        elif ev:
            ev.pop(rng.choice(list(ev)))
        try:
            return orjson.dumps(ev)
        except TypeError:  # nested deeper than orjson writes: keep the line as it was
            return line
    if op == 6:  # nesting deeper than encoders (and maybe decoders) accept
        d = rng.choice((100, 250, 255, 256, 300, 1000, 1100))
        deep = b"[" * d + b"]" * d if rng.random() < 0.5 else b'{"a":' * d + b"1" + b"}" * d
        key = rng.choice((b"deep", b"flow", b"alert", b"src_ip", b"proto"))
        return _insert(line, b'"' + key + b'":' + deep + b",")
    if op == 7:
        return mutate(rng, line, -1, rounds=rng.randrange(1, 4))
    if op == 8:
        return rng.choice(
            (
                b"",
                b"[]",
                b"1",
                b'"s"',
                b"null",
                b"{",
                b"}",
                b"\xef\xbb\xbf" + line,
                line + b"\r",
                b"{}" * 3,
            )
        )
    if op == 9:  # bytes that are not UTF-8 inside a string
        i = line.find(b'":"')
        return (
            line
            if i < 0
            else line[: i + 3] + rng.choice((b"\xff\xfe", b"\xc3", b"\xed\xa0\x80")) + line[i + 3 :]
        )
    if op == 10:  # escapes JSON allows and decoders may not
        esc = rng.choice((b"\\ud800", b"\\udfff\\ud800", b"\\u0000", b"\\\\", b"\\/"))
        return _insert(line, b'"src_ip":"' + esc + b'",')
    big = rng.choice(
        (b"123456789012345678901234567890", b"-0", b"1e400", b"1E-400", b"0.0000000000000000001")
    )
    key = rng.choice((b"flow_id", b"src_port", b"dest_port", b"proto"))
    return _insert(line, b'"' + key + b'":' + big + b",")


def _respell(rng: random.Random, line: bytes) -> bytes:
    """An address of the event written another way Suricata never writes it (but a reader
    might): compressed or exploded IPv6, upper case, IPv4-mapped, padded, with a zone."""
    try:
        ev = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if type(ev) is not dict:
        return line
    key = rng.choice(("src_ip", "dest_ip"))
    addr = ev.get(key)
    if type(addr) is not str or "%" in addr:  # scoped: ipaddress cannot explode those
        return line
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return line
    if ip.version == 6:
        forms = [ip.compressed, ip.exploded.upper(), ip.compressed + "%eth0", " " + ip.compressed]
    else:
        forms = ["::ffff:" + str(ip), "0" + str(ip), str(ip) + " ", str(ip).replace(".", ".0", 1)]
    ev[key] = rng.choice(forms)
    try:
        return orjson.dumps(ev)
    except TypeError:  # nested deeper than orjson writes: keep the line as it was
        return line


def _insert(line: bytes, member: bytes) -> bytes:
    """Put a member first in the object (a later duplicate overrides it) or last (it wins)."""
    body = line.rstrip()
    if not body.startswith(b"{") or not body.endswith(b"}"):
        return line
    if len(line) % 2:
        inner = body[:-1].rstrip()
        return inner + (b"," if inner != b"{" else b"") + member.rstrip(b",") + b"}"
    return b"{" + member + line[1:]


# -- the tier ---------------------------------------------------------------------------------


class RejectLog:
    """A reject sink for either form of ``LineEnricher``'s: ``(offset, line)`` (records are
    ``{"offset", "line"}``, the line is not written) or ``(record bytes)`` (records carry
    ``passed``: true when the line was also written unchanged). Keeps (offset, passed)."""

    def __init__(self) -> None:
        self.records: list[tuple[int, bool]] = []

    def __call__(self, *args: Any) -> None:
        if len(args) == 2:
            self.records.append((int(args[0]), False))
        else:
            self.records.append(parse_reject(args[0]))


def parse_reject(record: bytes) -> tuple[int, bool]:
    """(offset, passed) of a reject record; ValueError if it is not one."""
    try:
        rec = orjson.loads(record)
        return int(rec["offset"]), bool(rec.get("passed", False))
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not a reject record: {record[:80]!r}") from exc


def make_enricher(cache: ConnectionCache, reject: RejectLog) -> LineEnricher:
    matcher = Matcher(CacheLookup(cache), wait=0.0)
    return LineEnricher(matcher, seed=0, reject=reject, tunnels=TunnelMatcher(cache))


def eve_lines(seed: int, source: EveSource, n: int, salt: str = "eve") -> list[bytes]:
    rng = random.Random(f"{seed}:{salt}")
    base = source.lines
    return [mutate_line(rng, rng.choice(base)) + b"\n" for _ in range(n)] if base else []


def eve_tier(
    seed: int, source: EveSource, n: int, found: Findings, work: Path, log: Callable[..., None]
) -> int:
    cache = ConnectionCache(source.db, readonly=True)
    rejects = RejectLog()
    done = 0
    try:
        chunk = 20_000
        for start in range(0, n, chunk):
            try:
                lines = eve_lines(seed, source, min(chunk, n - start), f"eve:{start}")
            except Exception as exc:  # the harness's own bug: a finding too, the run goes on
                found.add("harness", crash_class(exc), traceback_head(exc), None, {"eve": start})
                continue
            enricher = make_enricher(cache, rejects)
            offset = 0
            for raw in lines:
                rejects.records.clear()
                try:
                    out = enricher.line(raw, offset)
                except Exception as exc:
                    _found(found, crash_class(exc), traceback_head(exc), raw)
                    out = None
                if out is not None:
                    problem = line_problem(raw, out, rejects.records, offset)
                    if problem:
                        _found(found, problem, f"offset {offset}: output {out[:80]!r}", raw)
                offset += len(raw)
                done += 1
    finally:
        cache.close()
    log(
        f"fuzz: {done} eve lines through the enricher ({source.origin} base of"
        f" {len(source.lines)}), {found.total} findings so far"
    )
    return done


def line_problem(
    raw: bytes, out: bytes, rejects: list[tuple[int, bool]], offset: int
) -> str | None:
    """Exactly one of: written (unchanged, or a JSON object), or rejected (one record with this
    offset, not passed); a line written unchanged may also have one passed record."""
    if any(off != offset for off, _p in rejects) or len(rejects) > 1:
        return "reject record with the wrong offset, or several for one line"
    if out == b"":
        if rejects != [(offset, False)]:
            return "line neither written nor rejected" if not rejects else "passed line not written"
        return None
    if rejects and not rejects[0][1]:
        return "line both written and rejected"
    if not out.endswith(b"\n") or out.count(b"\n") != 1:
        return "output is not exactly one line"
    if out == raw or out == raw + b"\n":
        return None
    if rejects:
        return "line recorded as passed unchanged, but written changed"
    try:
        if type(orjson.loads(out)) is dict:
            return None
    except orjson.JSONDecodeError:
        pass
    return "changed line is not a JSON object"


def _found(found: Findings, cls: str, detail: str, raw: bytes) -> None:
    found.add("enricher", cls, detail, {"line.json": raw}, {"line_hex_head": raw[:200].hex()})
