"""``python -m fuzz [N]`` (``./run fuzz [N]``): hostile input against the normalizer and enricher.

N packets (default 10^6) go through the pure core in process, N/10 eve lines (default 10^5)
through the enricher's per-line policy; a smaller number of hostile capture files go through
``rewrite_file`` in process and a few dozen through the real CLIs (``rewrite``, ``enrich``,
``follow``). Exit status 0 when nothing was found, 1 on any finding (reproducers under
``--findings``), 2 on usage errors.

Why tiers: the checks that need the whole product (exit statuses, record headers on disk,
follow mode) cost a process start each, so most inputs go where they are cheap, the pure core,
and the adapters get a sample of the most hostile ones.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fuzz import cli_runs, eve, files
from fuzz.findings import KEEP, Findings, crash_class, traceback_head
from fuzz.minimize import ddmin
from fuzz.packets import HAS_PEERS, Problem, Run, execute
from fuzz.scenarios import pick
from fuzz.sources import Capture, load_corpus
from fuzz.wire import Record

Log = Callable[..., None]

ROOT = Path(__file__).resolve().parent.parent


def _count(text: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0])
    p.add_argument(
        "packets", nargs="?", type=_count, default=1_000_000, help="packets (default 1e6)"
    )
    p.add_argument("--eve-lines", type=_count, help="eve lines (default packets / 10)")
    p.add_argument(
        "--files", type=_count, help="hostile capture files in process (default packets / 2000)"
    )
    p.add_argument("--cli", type=_count, help="real CLI runs (default 40, 12 below 10^5 packets)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--corpus", type=Path, action="append", default=[], help="more pcaps (file or dir)"
    )
    p.add_argument("--findings", type=Path, default=ROOT / ".cache" / "fuzz-findings")
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "fuzz", help="cached eve lines")
    p.add_argument("--only", type=int, help="replay just this packet run index (debugging)")
    p.add_argument("--replay", type=Path, nargs="+", metavar="DIR", help="re-check reproducers")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.replay:
        return _replay(args)
    t_start = time.monotonic()
    if args.findings.exists():
        strangers = [p for p in args.findings.iterdir() if not (p / "finding.json").exists()]
        if strangers:  # never delete what an earlier run did not write
            print(
                f"python -m fuzz: {args.findings} holds {strangers[0].name}, which is not a"
                " finding: give an empty or earlier findings directory",
                file=sys.stderr,
            )
            return 2
        shutil.rmtree(args.findings)
    args.findings.mkdir(parents=True)
    args.work.mkdir(parents=True, exist_ok=True)
    found = Findings(args.findings)
    log: Log = _quiet if args.quiet else _say
    corpus = load_corpus([ROOT / "pcaps", *args.corpus])
    log(f"fuzz: seed {args.seed}, corpus {len(corpus)} captures, tunnel peers option: {HAS_PEERS}")
    eve_n = args.eve_lines if args.eve_lines is not None else args.packets // 10
    files_n = args.files if args.files is not None else max(20, args.packets // 2000)
    cli_n = args.cli if args.cli is not None else (40 if args.packets >= 100_000 else 12)
    stats: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="fuzz-", dir=_tmp_root()) as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        packets, runs = packet_tier(args, corpus, found, work, log)
        stats["packets"] = f"{packets} in {runs} runs, {time.monotonic() - t0:.1f} s"
        t0 = time.monotonic()
        n_files = files.file_tier(args.seed, corpus, files_n, found, work, log)
        stats["capture files"] = f"{n_files} in process, {time.monotonic() - t0:.1f} s"
        t0 = time.monotonic()
        source = eve.eve_source(args.work, ROOT, log)
        lines = eve.eve_tier(args.seed, source, eve_n, found, work, log)
        stats["eve lines"] = f"{lines}, {time.monotonic() - t0:.1f} s"
        t0 = time.monotonic()
        n_cli = cli_runs.cli_tier(args.seed, corpus, source, cli_n, found, work, log, ROOT)
        stats["CLI runs"] = f"{n_cli}, {time.monotonic() - t0:.1f} s"
    report = [f"fuzz: seed {args.seed}, {time.monotonic() - t_start:.1f} s"]
    report += [f"  {k}: {v}" for k, v in stats.items()]
    if found.total:
        report.append(
            f"findings: {found.total} in {len(found.counts)} classes"
            f" (reproducers under {args.findings})"
        )
        report += found.summary()
    else:
        report.append("findings: none (0 crashes, 0 unaccounted packets or lines)")
    print("\n".join(report))
    return 1 if found.total else 0


def _replay(args: argparse.Namespace) -> int:
    from fuzz.eve import VERSION
    from fuzz.replay import replay

    bad = 0
    with tempfile.TemporaryDirectory(prefix="fuzz-", dir=_tmp_root()) as tmp:
        for d in args.replay:
            problems = replay(d, Path(tmp), args.work / f"eve-v{VERSION}" / "cache.db")
            print(f"{d}: {'; '.join(problems) if problems else 'fixed (no problem left)'}")
            bad += bool(problems)
    return 1 if bad else 0


def _tmp_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


def _quiet(*_args: object) -> None:
    pass


def _say(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def packet_tier(
    args: argparse.Namespace, corpus: list[Capture], found: Findings, work: Path, log: Log
) -> tuple[int, int]:
    target = args.packets
    packets = runs = 0
    index = 0
    last = time.monotonic()
    while packets < target:
        if args.only is not None and index != args.only:
            index += 1
            if index > args.only:
                break
            continue
        rng = random.Random(f"{args.seed}:{index}")
        try:
            run = pick(rng, corpus, cache_share=0.3)
            problems, _out = execute(run, work)
            for p in problems:
                _report(found, run, p, index, work)
        except Exception as exc:  # the harness's own bug: a finding too, the run goes on
            found.add("harness", crash_class(exc), traceback_head(exc), None, {"run": index})
            index += 1
            continue
        packets += len(run.records)
        runs += 1
        index += 1
        if args.only is not None:
            break
        if time.monotonic() - last > 10:
            last = time.monotonic()
            log(f"fuzz: {packets} packets, {runs} runs, {found.total} findings")
    return packets, runs


def _report(found: Findings, run: Run, p: Problem, index: int, work: Path) -> None:
    key = f"pipeline: {p.cls}"
    if len(found.by_class.get(key, [])) >= KEEP:  # enough reproducers: count it only
        found.add("pipeline", p.cls, p.detail)
        return
    records = run.records[: p.index + 1] if p.index >= 0 else run.records

    def fails(subset: list[Record]) -> bool:
        cand = Run(subset, run.linktype, run.options, run.peers, run.cache)
        return any(q.cls == p.cls for q in execute(cand, work)[0])

    small = ddmin(records, fails, budget=200 if p.index >= 0 else 80)
    if not fails(small):
        small = list(records)
    mini = Run(small, run.linktype, run.options, run.peers, run.cache)
    note = {
        "run": index,
        "frames": len(small),
        "of": len(run.records),
        "trace": p.trace,
        **run.note(),
    }
    found.add(
        "pipeline",
        p.cls,
        p.detail,
        {"input.pcap": mini.pcap(), "config.toml": run.note()["config_toml"].encode()},
        note,
    )


if __name__ == "__main__":
    sys.exit(main())
