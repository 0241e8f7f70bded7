"""``eve-enricher``: name the real client in Suricata's eve.json, from the connection cache.

Exit status 0 on success, 1 on I/O errors (missing or unreadable files, an unusable cache or
checkpoint), 2 on usage errors. Every error is one line on stderr; bad input lines are not
errors (they are rejected and counted), so a run over a damaged eve.json still exits 0.
"""

from __future__ import annotations

import argparse
import math
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn

from eve_enricher import runner
from eve_enricher.checkpoint import CheckpointError
from eve_enricher.follower import MAX_LINE, ChangeWaiter, FileFollower
from eve_enricher.lookup import CacheLookup, Matcher, TunnelMatcher
from eve_enricher.stream import LineEnricher, RejectSink
from normalizer.conn_cache import CacheError, ConnectionCache

PROG = "eve-enricher"


class UsageError(Exception):
    """Bad arguments: exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _seconds(text: str) -> float:
    """A non-negative duration: "2", "2.5", "2s", "500ms"."""
    t = text.strip().lower()
    scale = 1.0
    if t.endswith("ms"):
        t, scale = t[:-2], 0.001
    elif t.endswith("s"):
        t = t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}") from None
    if not 0 <= value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    return value


def _interval(text: str) -> float:
    """A polling interval: a duration above 0 (0 would spin a core) and at most an hour."""
    value = _seconds(text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not above 0 and at most 3600 seconds")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"seed {value} is not in 0..65535")
    return value


def _size(text: str) -> int:
    """A size in bytes: "1048576", "64M", "512k", "1G" (binary multiples), at least 1024."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    if scale > 1:
        t = t[:-1]
    if not (t.isascii() and t.isdigit()):
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    value = int(t) * scale
    if not 1024 <= value <= 1 << 40:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 1 KiB and 1 TiB")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sp: argparse.ArgumentParser, wait_default: float) -> None:
        sp.add_argument("eve", type=Path, metavar="EVE.json")
        sp.add_argument("--cache", type=Path, required=True, metavar="DB", help="connection cache")
        sp.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.json")
        sp.add_argument(
            "--reject", type=Path, metavar="FILE", help="bad lines as {offset, line} records"
        )
        sp.add_argument(
            "--wait",
            type=_seconds,
            default=wait_default,
            metavar="SECONDS",
            help=f"how long a fresh event waits for its cache row (default {wait_default:g})",
        )
        sp.add_argument(
            "--window",
            type=_seconds,
            default=3600.0,
            metavar="SECONDS",
            help="how long before an event its connection may have started (default 3600)",
        )
        sp.add_argument("--community-id-seed", type=_seed, default=0, metavar="N")
        sp.add_argument(
            "--max-line",
            type=_size,
            default=MAX_LINE,
            metavar="BYTES",
            help="longer lines are rejected with their offset, not held (default 64M)",
        )
        sp.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")

    common(sub.add_parser("enrich", help="enrich a finished eve.json"), 0.0)
    fp = sub.add_parser("follow", help="follow a live eve.json (rotation-safe, checkpointed)")
    common(fp, 2.0)
    fp.add_argument("--checkpoint", type=Path, metavar="FILE", help="resume position")
    fp.add_argument("--poll", type=_interval, default=1.0, metavar="SECONDS")
    fp.add_argument("--rotate-grace", type=_seconds, default=1.0, metavar="SECONDS")
    return p


def _check_paths(args: argparse.Namespace) -> None:
    paths = {"input": args.eve, "output": args.output}
    if args.reject is not None:
        paths["reject file"] = args.reject
    if getattr(args, "checkpoint", None) is not None:
        paths["checkpoint"] = args.checkpoint
    seen: dict[Path, str] = {}
    for what, path in paths.items():
        real = path.resolve()
        if real in seen:
            raise UsageError(f"the {what} and the {seen[real]} are the same file: {path}")
        seen[real] = what


def _open_cache(path: Path) -> ConnectionCache:
    if not path.is_file():
        raise CacheError(f"{path}: no such connection cache")
    return ConnectionCache(path, readonly=True)


def _summary(enricher: LineEnricher, follower: FileFollower | None = None) -> str:
    c, m = enricher.counters, enricher.matcher.counters
    text = (
        f"{c.lines} lines: {c.enriched} enriched ({c.tunneled} tunnel only),"
        f" {c.unchanged} unchanged, {c.failed} failed (passed unchanged), {c.rejected} rejected;"
        f" {m.late} late, {m.waited_unmatched} waited without a row"
    )
    if follower is not None:
        text += f"; {follower.rotations} rotations, {follower.truncations} truncations"
    return text


def _note(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def _make_enricher(
    args: argparse.Namespace, cache: ConnectionCache
) -> Callable[[RejectSink | None], LineEnricher]:
    def make(reject: RejectSink | None) -> LineEnricher:
        matcher = Matcher(CacheLookup(cache), wait=args.wait, window=args.window)
        tunnels = TunnelMatcher(cache, window=args.window)
        return LineEnricher(
            matcher, seed=args.community_id_seed, reject=reject, tunnels=tunnels, notify=_note
        )

    return make


def _enrich(args: argparse.Namespace, cache: ConnectionCache) -> LineEnricher:
    make = _make_enricher(args, cache)
    with open(args.eve, "rb") as src, runner.NamedWriter(args.output) as dst:
        if args.reject is None:
            enricher = make(None)
            runner.enrich_stream(src, dst, enricher, args.max_line)
        else:
            with runner.NamedWriter(args.reject) as rej:
                enricher = make(runner.reject_writer(rej))
                runner.enrich_stream(src, dst, enricher, args.max_line)
    return enricher


def _follow(args: argparse.Namespace, cache: ConnectionCache) -> tuple[LineEnricher, FileFollower]:
    if not args.eve.parent.is_dir():
        raise FileNotFoundError(2, "No such directory", str(args.eve.parent))
    stop = threading.Event()
    waiters: list[ChangeWaiter] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        for w in waiters:
            w.wake()

    def on_ready(waiter: ChangeWaiter, follower: FileFollower) -> None:
        waiters.append(waiter)
        if not args.quiet:
            pos = follower.position
            print(
                f"{PROG}: following {follower.path} (inode {pos.ino}) from byte {pos.offset}",
                file=sys.stderr,
                flush=True,
            )

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return runner.follow(
        args.eve,
        args.output,
        _make_enricher(args, cache),
        stop,
        reject_path=args.reject,
        checkpoint_path=args.checkpoint,
        poll=args.poll,
        rotate_grace=args.rotate_grace,
        max_line=args.max_line,
        on_ready=on_ready,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _check_paths(args)
    except UsageError as exc:
        print(f"{PROG}: usage error: {exc} (see {PROG} --help)", file=sys.stderr)
        return 2
    try:
        cache = _open_cache(args.cache)
        try:
            if args.command == "enrich":
                summary = _summary(_enrich(args, cache))
            else:
                summary = _summary(*_follow(args, cache))
        finally:
            cache.close()
    except (CacheError, CheckpointError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        print(f"{PROG}: {args.cache}: connection cache error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROG}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    if not args.quiet:
        print(f"{PROG}: {summary}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
