"""Real command-line runs: ``suricata-normalizer rewrite`` and ``eve-enricher enrich`` as a user
starts them, on hostile files, checking the documented exit status.

Exit statuses (README): 0 success; 1 I/O or capture-file errors, the packets before a corrupt
record still written; 2 usage or config errors, naming the key. Any traceback on stderr is a
finding whatever the status. Fewer of these than in-process runs: each costs a Python start-up.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import orjson

from fuzz.eve import EveSource, eve_lines, parse_reject
from fuzz.files import ERROR, OK, _accepted, hostile_file, rewrite, row_problems
from fuzz.findings import Findings, crash_class, stderr_class, traceback_head
from fuzz.packets import config_toml
from fuzz.scenarios import pick
from fuzz.sources import Capture
from normalizer.core.counters import Counters

# (config lines, the key the error must name); each must exit 2
BAD_CONFIGS: tuple[tuple[str, str], ...] = (
    ("idle_timeout = nan", "idle_timeout"),
    ("idle_timeout = inf", "idle_timeout"),
    ("closed_timeout = 1e300", "closed_timeout"),
    ("pending_timeout = -1.0", "pending_timeout"),
    ("cache_retention = nan", "cache_retention"),
    ("max_flows = 0", "max_flows"),
    ("max_hold_bytes = 1e300", "max_hold_bytes"),
    ('midstream = "maybe"', "midstream"),
    ('proxies = ["300.1.1.1/32"]', "proxies"),
    ('custom_magic = "zz"', "custom_magic"),
    ("header_kinds = []", "header_kinds"),
    ("vxlan_ports = [70000]", "vxlan_ports"),
    ("max_flows = ", ""),  # not TOML
)


def _run(argv: list[str], root: Path, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, env=env, timeout=timeout, cwd=root
    )


def cli_tier(
    seed: int,
    corpus: list[Capture],
    source: EveSource,
    n: int,
    found: Findings,
    work: Path,
    log: Callable[..., None],
    root: Path,
) -> int:
    if n == 0:
        return 0
    done = 0
    n_eve = max(1, n // 5)
    n_conf = min(len(BAD_CONFIGS), max(1, n // 5))
    n_rw = max(1, n - n_eve - n_conf)
    runs: list[Callable[[], None]] = []
    runs += [partial(rewrite_run, seed, i, corpus, found, work, root) for i in range(n_rw)]
    runs += [partial(config_run, seed, i, found, work, root) for i in range(n_conf)]
    runs += [partial(enrich_run, seed, i, source, found, work, root) for i in range(n_eve)]
    if n >= 10:  # follow mode once: it must get through a hostile file, not loop on a line
        runs.append(partial(follow_run, seed, source, found, work, root))
        runs.append(partial(output_run, found, work, root))
    for i, one in enumerate(runs):
        try:
            one()
        except Exception as exc:  # the harness's own bug: a finding too, the run goes on
            found.add("harness", crash_class(exc), traceback_head(exc), None, {"cli": i})
        done += 1
    log(f"fuzz: {done} real CLI runs, {found.total} findings so far")
    return done


def _traceback(
    found: Findings,
    tier: str,
    p: subprocess.CompletedProcess[bytes],
    files: dict[str, bytes],
    note: dict[str, object],
) -> bool:
    err = p.stderr.decode("utf-8", "replace")
    if "Traceback (most recent call last)" in err:
        found.add(tier, f"traceback: {stderr_class(err)}", err[-1500:], files, note)
        return True
    return False


def rewrite_run(
    seed: int, i: int, corpus: list[Capture], found: Findings, work: Path, root: Path
) -> None:
    rng = random.Random(f"{seed}:cli:{i}")
    run = pick(rng, corpus, cache_share=1.0)
    h = hostile_file(rng, run)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        d = Path(tmp)
        src, dst, db, cfg, stats = (
            d / "in.cap",
            d / "out.pcap",
            d / "cache.db",
            d / "n.toml",
            d / "stats.json",
        )
        src.write_bytes(h.data)
        cfg.write_text(config_toml(run.options))
        p = _run(
            [
                "-m",
                "normalizer.cli",
                "rewrite",
                str(src),
                "-o",
                str(dst),
                "--config",
                str(cfg),
                "--cache",
                str(db),
                "--stats-json",
                str(stats),
                "-q",
            ],
            root,
        )
        files = {"input.cap": h.data, "config.toml": cfg.read_bytes()}
        note = {
            "kind": h.kind,
            "returncode": p.returncode,
            "stderr": p.stderr.decode("utf-8", "replace")[-2000:],
            "command": "suricata-normalizer rewrite input.cap -o out.pcap --config config.toml"
            " --cache cache.db",
        }
        if _traceback(found, "cli", p, files, note):
            return
        expected = {0} if h.expect == {OK} else {1} if h.expect == {ERROR} else {0, 1}
        if p.returncode not in expected:
            found.add(
                "cli",
                f"rewrite exit {p.returncode}, expected {sorted(expected)}",
                f"{h.kind}: {p.stderr[-300:]!r}",
                files,
                note,
            )
            return
        problems: list[tuple[str, str]] = []
        if p.returncode == 0:
            c = json.loads(stats.read_text())
            counters = Counters(**{k: c[k] for k in Counters.__dataclass_fields__})
            problems += _accepted(h, run, dst, counters)
        elif h.prefix is not None:
            p_src, p_dst = d / "prefix.cap", d / "prefix.pcap"
            p_src.write_bytes(h.prefix)
            rewrite(p_src, p_dst, run, d / "prefix.db")
            if not dst.exists() or dst.read_bytes() != p_dst.read_bytes():
                problems.append(
                    ("rewrite exit 1 without the records before the corrupt one", h.kind)
                )
        if db.exists():
            problems += row_problems(h, run, db)
        for cls, detail in problems:
            found.add("cli", cls, detail, files, note)


def config_run(seed: int, i: int, found: Findings, work: Path, root: Path) -> None:
    rng = random.Random(f"{seed}:conf:{i}")
    line, key = BAD_CONFIGS[i % len(BAD_CONFIGS)]
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        d = Path(tmp)
        cfg = d / "n.toml"
        text = f'[normalizer]\nproxies = ["192.0.2.1/32"]\n{line}\n'.encode()
        if rng.random() < 0.15:
            text = b'[normalizer]\n# \xff\xfe not UTF-8\nproxies = ["192.0.2.1/32"]\n'
            key = ""
        cfg.write_bytes(text)
        src = root / "pcaps" / "haproxy-v1.pcap"
        p = _run(
            [
                "-m",
                "normalizer.cli",
                "rewrite",
                str(src),
                "-o",
                str(d / "o.pcap"),
                "--config",
                str(cfg),
                "-q",
            ],
            root,
        )
        files = {"config.toml": text}
        note = {
            "returncode": p.returncode,
            "stderr": p.stderr.decode("utf-8", "replace")[-2000:],
            "command": "suricata-normalizer rewrite pcaps/haproxy-v1.pcap -o o.pcap"
            " --config config.toml",
        }
        if _traceback(found, "cli", p, files, note):
            return
        err = p.stderr.decode("utf-8", "replace")
        if p.returncode != 2 or (key and key not in err):
            found.add(
                "cli",
                f"config error not exit 2 naming the key ({key or 'file'})",
                f"{line!r}: exit {p.returncode}: {err[-200:]}",
                files,
                note,
            )


def enrich_run(
    seed: int, i: int, source: EveSource, found: Findings, work: Path, root: Path
) -> None:
    lines = eve_lines(seed, source, 1500, f"cli-eve:{i}")
    if not lines:
        return
    rng = random.Random(f"{seed}:cli-eve:{i}")
    if rng.random() < 0.5:
        lines[-1] = lines[-1].rstrip(b"\n")  # a last line without its newline
    data = b"".join(lines)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        d = Path(tmp)
        eve, out, rej = d / "eve.json", d / "out.json", d / "reject.json"
        eve.write_bytes(data)
        p = _run(
            [
                "-m",
                "eve_enricher.cli",
                "enrich",
                str(eve),
                "--cache",
                str(source.db),
                "-o",
                str(out),
                "--reject",
                str(rej),
                "-q",
            ],
            root,
        )
        files = {"eve.json": data}
        note = {
            "returncode": p.returncode,
            "stderr": p.stderr.decode("utf-8", "replace")[-2000:],
            "command": "eve-enricher enrich eve.json --cache CACHE -o out.json"
            " --reject reject.json",
        }
        if _traceback(found, "cli", p, files, note):
            return
        if p.returncode != 0:
            found.add(
                "cli",
                f"enrich exit {p.returncode} on a damaged eve.json",
                p.stderr[-300:].decode("utf-8", "replace"),
                files,
                note,
            )
            return
        problem = order_problem(
            lines,
            out.read_bytes() if out.exists() else b"",
            rej.read_bytes() if rej.exists() else b"",
        )
        if problem:
            found.add("cli", problem, f"{len(lines)} lines in", files, note)


def output_run(found: Findings, work: Path, root: Path) -> None:
    """Where the output goes: through a symlink it is written in place (or refused), never
    replaced; a new file follows the umask (022 here: 0644)."""
    src = root / "pcaps" / "haproxy-v1.pcap"
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        d = Path(tmp)
        target, link, plain = d / "target.pcap", d / "link.pcap", d / "plain.pcap"
        target.write_bytes(b"")
        link.symlink_to(target)
        for out in (link, plain):
            argv = ["-m", "normalizer.cli", "rewrite", str(src), "-o", str(out), "--proxy"]
            argv += ["192.0.2.1/32", "-q"]
            env = dict(os.environ, PYTHONPATH=str(root))
            p = subprocess.run(
                [sys.executable, *argv],
                capture_output=True,
                env=env,
                cwd=root,
                timeout=120,
                preexec_fn=lambda: os.umask(0o022),  # a fork of this single-threaded process
            )
            note = {"returncode": p.returncode, "stderr": p.stderr.decode("utf-8", "replace")}
            if _traceback(found, "cli", p, {}, note):
                continue
            if out == link:
                if not link.is_symlink():
                    found.add(
                        "cli",
                        "rewrite -o SYMLINK replaced the symlink",
                        str(p.returncode),
                        {},
                        note,
                    )
                elif p.returncode == 0 and target.stat().st_size == 0:
                    found.add(
                        "cli",
                        "rewrite -o SYMLINK exit 0 but nothing written through it",
                        "",
                        {},
                        note,
                    )
            elif p.returncode == 0 and plain.stat().st_mode & 0o777 != 0o644:
                mode = oct(plain.stat().st_mode & 0o777)
                found.add(
                    "cli", "rewrite output ignores the umask", f"umask 022 gave {mode}", {}, note
                )


FOLLOW_DEADLINE = 60.0  # seconds for follow mode to get through 1500 lines (it takes ~1)


def follow_run(seed: int, source: EveSource, found: Findings, work: Path, root: Path) -> None:
    """``eve-enricher follow`` on a hostile eve.json: it must write or reject every line, then
    stop cleanly on SIGTERM (exit 0), in order, nothing twice."""
    lines = eve_lines(seed, source, 1500, "cli-follow")
    if not lines:
        return
    data = b"".join(lines)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        d = Path(tmp)
        eve, out, rej, cp = d / "eve.json", d / "out.json", d / "reject.json", d / "cp.json"
        eve.write_bytes(data)
        argv = ["-m", "eve_enricher.cli", "follow", str(eve), "--cache", str(source.db)]
        argv += ["-o", str(out), "--reject", str(rej), "--checkpoint", str(cp), "-q"]
        # the file is written before follow starts: read it from its start (default: the end)
        argv += ["--wait", "0", "--poll", "0.05", "--start-at", "beginning"]
        env = dict(os.environ, PYTHONPATH=str(root))
        proc = subprocess.Popen([sys.executable, *argv], env=env, cwd=root, stderr=subprocess.PIPE)
        deadline = time.monotonic() + FOLLOW_DEADLINE
        done = False
        while time.monotonic() < deadline and proc.poll() is None:
            if _accounted(out, rej) >= len(lines):
                done = True
                break
            time.sleep(0.1)
        running = proc.poll() is None
        if running:
            proc.send_signal(signal.SIGTERM)
        try:
            _o, err_b = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _o, err_b = proc.communicate()
        err = err_b.decode("utf-8", "replace")
        files = {"eve.json": data}
        note = {"returncode": proc.returncode, "stderr": err[-2000:], "command": " ".join(argv)}
        if "Traceback (most recent call last)" in err:
            found.add("cli", f"follow traceback: {stderr_class(err)}", err[-1500:], files, note)
        elif not running:
            found.add(
                "cli", f"follow exited by itself ({proc.returncode})", err[-300:], files, note
            )
        elif not done:
            found.add(
                "cli", "follow did not get through the file", f"{len(lines)} lines", files, note
            )
        elif proc.returncode != 0:
            found.add("cli", f"follow exit {proc.returncode} on SIGTERM", err[-300:], files, note)
        else:
            problem = order_problem(
                lines, out.read_bytes(), rej.read_bytes() if rej.exists() else b""
            )
            if problem:
                found.add("cli", f"follow: {problem}", f"{len(lines)} lines in", files, note)


def _accounted(out: Path, rej: Path) -> int:
    """Lines written plus lines rejected without being written, so far."""
    n = out.read_bytes().count(b"\n") if out.exists() else 0
    if rej.exists():
        for r in rej.read_bytes().splitlines():
            try:
                n += not parse_reject(r)[1]
            except ValueError:
                n += 1
    return n


def order_problem(lines: list[bytes], out: bytes, rej: bytes) -> str | None:
    """Every input line is an output line or a reject record, in order (a record marked
    ``passed`` goes with a line written unchanged)."""
    rejected: dict[int, bool] = {}
    for r in rej.splitlines():
        try:
            off, passed = parse_reject(r)
        except ValueError:
            return "reject file holds something that is not a reject record"
        if off in rejected:
            return f"two reject records for the line at offset {off}"
        rejected[off] = passed
    outs = out.splitlines(keepends=True)
    j = off = 0
    for raw in lines:
        if off in rejected and not rejected[off]:
            del rejected[off]
        else:
            passed = rejected.pop(off, False)
            if j >= len(outs):
                return f"line at offset {off} neither written nor rejected"
            got = outs[j]
            j += 1
            if got.rstrip(b"\n") != raw.rstrip(b"\n"):
                if passed:
                    return f"line at offset {off} recorded as passed unchanged, written changed"
                try:
                    if type(orjson.loads(got)) is not dict:
                        raise ValueError
                except (orjson.JSONDecodeError, ValueError):
                    return f"output line {j} is neither the input line at offset {off} nor an event"
        off += len(raw)
    if j != len(outs):
        return f"{len(outs) - j} output lines more than input lines kept"
    if rejected:
        return f"reject records with offsets no line starts at: {sorted(rejected)[:3]}"
    return None
