"""``eve-enricher``: name the real client in Suricata's eve.json, from the connection cache.

Exit status 0 on success, 1 on I/O errors (missing or unreadable files, an unusable cache or
checkpoint), 2 on usage errors. Every error is one line on stderr; bad input lines are not
errors (they are rejected and counted), so a run over a damaged eve.json still exits 0.
``enrich`` reads stdin for ``-`` and writes stdout for ``-o -``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import BinaryIO, NoReturn

from eve_enricher import metrics, runner
from eve_enricher.checkpoint import CheckpointError
from eve_enricher.enrich import MODES
from eve_enricher.follower import MAX_LINE, ChangeWaiter, FileFollower
from eve_enricher.lookup import CacheLookup, Matcher, TunnelMatcher
from eve_enricher.stream import LineEnricher, RejectSink
from normalizer.adapters.journal import LOG_FORMATS, Log
from normalizer.cache.connections import CacheError, ConnectionCache

PROG = "eve-enricher"
STDIO = Path("-")


def version() -> str:
    """The installed distribution's version (the source tree's when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("suricata-normalizer")
    except PackageNotFoundError:
        from normalizer import __version__

        return __version__


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


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--version", action="version", version=f"{PROG} {version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sp: argparse.ArgumentParser, wait_default: float, stdio: bool) -> None:
        dash = " ('-': stdin)" if stdio else ""
        sp.add_argument("eve", type=Path, metavar="EVE.json", help=f"Suricata's eve.json{dash}")
        sp.add_argument("--cache", type=Path, required=True, metavar="DB", help="connection cache")
        sp.add_argument(
            "-o",
            "--output",
            type=Path,
            required=True,
            metavar="OUT.json",
            help="enriched eve.json" + (" ('-': stdout)" if stdio else ""),
        )
        sp.add_argument(
            "--mode",
            choices=MODES,
            default="overwrite",
            help="overwrite: the real tuple replaces Suricata's (the wire one under proxy.wire);"
            " extra-data: Suricata's keys kept, the real tuple added as proxy.real"
            " (default overwrite)",
        )
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
        sp.add_argument(
            "--log-format",
            choices=LOG_FORMATS,
            default="text",
            help="stderr lines as text (with journald priorities under systemd) or JSON",
        )
        sp.add_argument(
            "--metrics-port",
            type=_port,
            metavar="PORT",
            help="serve Prometheus metrics (lines, enriched, rejected, failed, lag) on this port",
        )
        sp.add_argument(
            "--metrics-addr",
            default="127.0.0.1",
            metavar="ADDR",
            help="address the metrics endpoint binds (default 127.0.0.1)",
        )

    common(sub.add_parser("enrich", help="enrich a finished eve.json"), 0.0, True)
    fp = sub.add_parser("follow", help="follow a live eve.json (rotation-safe, checkpointed)")
    common(fp, 2.0, False)
    fp.add_argument("--checkpoint", type=Path, metavar="FILE", help="resume position")
    fp.add_argument(
        "--start-at",
        choices=runner.START_AT,
        default="end",
        help="where to begin without a checkpoint: the end of the file as it is now (default;"
        " an old eve.json is not replayed) or its beginning",
    )
    fp.add_argument("--poll", type=_interval, default=1.0, metavar="SECONDS")
    fp.add_argument("--rotate-grace", type=_seconds, default=1.0, metavar="SECONDS")
    return p


def _check_paths(args: argparse.Namespace) -> None:
    if args.command == "follow" and STDIO in (args.eve, args.output):
        raise UsageError("follow reads and writes files, not '-' (use enrich for a pipe)")
    paths = {"input": args.eve, "output": args.output}
    if args.reject is not None:
        paths["reject file"] = args.reject
    if getattr(args, "checkpoint", None) is not None:
        paths["checkpoint"] = args.checkpoint
    seen: dict[Path, str] = {}
    for what, path in paths.items():
        if path == STDIO:
            continue
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
        f" {c.unchanged} unchanged ({c.unknown} TCP events not in the cache),"
        f" {c.failed} failed (passed unchanged), {c.rejected} rejected;"
        f" {m.late} late, {m.waited_unmatched} waited without a row"
    )
    if follower is not None:
        text += f"; {follower.rotations} rotations, {follower.truncations} truncations"
    return text


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def diagnosis(enricher: LineEnricher, cache: ConnectionCache, path: Path) -> str | None:
    """Why nothing was enriched although events had tuples, in words; None if something was
    (or no event had a TCP tuple to look up)."""
    c, m = enricher.counters, enricher.matcher.counters
    if c.enriched or not c.unknown:
        return None
    span = cache.time_range()
    if span is None:
        return (
            f"no event enriched: the connection cache {path} is empty (was the normalizer run"
            " with --cache on this file?)"
        )
    lo, hi = span
    first, last = m.first_ts, m.last_ts
    if (
        first is not None
        and last is not None
        and (last < lo or first > hi + enricher.matcher.window)
    ):
        return (
            f"no event enriched: the events ({_stamp(first)} to {_stamp(last)} UTC) and the"
            f" cache's {cache.count()} connections ({_stamp(lo)} to {_stamp(hi)} UTC) are from"
            " different times: is this the cache of the run that made this eve.json?"
        )
    return (
        f"no event enriched: none of the {c.unknown} TCP events has a tuple among the cache's"
        f" {cache.count()} connections ({_stamp(lo)} to {_stamp(hi)} UTC): was Suricata fed"
        " the normalizer's output of the same traffic?"
    )


def _make_enricher(
    args: argparse.Namespace, cache: ConnectionCache, log: Log, state: metrics.EnricherState
) -> Callable[[RejectSink | None], LineEnricher]:
    def make(reject: RejectSink | None) -> LineEnricher:
        matcher = Matcher(CacheLookup(cache), wait=args.wait, window=args.window)
        tunnels = TunnelMatcher(cache, window=args.window)
        enricher = LineEnricher(
            matcher,
            seed=args.community_id_seed,
            reject=reject,
            tunnels=tunnels,
            notify=log.warning,
            mode=args.mode,
        )
        state.enricher = enricher
        return enricher

    return make


@contextlib.contextmanager
def _input(path: Path) -> Iterator[BinaryIO]:
    if path == STDIO:
        yield sys.stdin.buffer
        return
    with open(path, "rb") as f:
        yield f


@contextlib.contextmanager
def _output(path: Path) -> Iterator[runner.NamedWriter | BinaryIO]:
    if path == STDIO:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with runner.NamedWriter(path) as f:
        yield f


def _enrich(
    args: argparse.Namespace, cache: ConnectionCache, log: Log, state: metrics.EnricherState
) -> LineEnricher:
    make = _make_enricher(args, cache, log, state)
    with _input(args.eve) as src, _output(args.output) as dst:
        if args.reject is None:
            enricher = make(None)
            runner.enrich_stream(src, dst, enricher, args.max_line)
        else:
            with runner.NamedWriter(args.reject) as rej:
                enricher = make(runner.reject_writer(rej))
                runner.enrich_stream(src, dst, enricher, args.max_line)
    return enricher


def _follow(
    args: argparse.Namespace, cache: ConnectionCache, log: Log, state: metrics.EnricherState
) -> tuple[LineEnricher, FileFollower]:
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
        state.follower = follower
        if not args.quiet:
            pos = follower.position
            log(f"following {follower.path} (inode {pos.ino}) from byte {pos.offset}", "notice")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return runner.follow(
        args.eve,
        args.output,
        _make_enricher(args, cache, log, state),
        stop,
        reject_path=args.reject,
        checkpoint_path=args.checkpoint,
        poll=args.poll,
        rotate_grace=args.rotate_grace,
        max_line=args.max_line,
        on_ready=on_ready,
        notify=log.warning,
        start_at=args.start_at,
    )


def main(argv: list[str] | None = None) -> int:
    log = Log(PROG)
    try:
        args = build_parser().parse_args(argv)
        _check_paths(args)
    except UsageError as exc:
        log.error(f"usage error: {exc} (see {PROG} --help)")
        return 2
    log = Log(PROG, args.log_format)
    state = metrics.EnricherState(None if args.eve == STDIO else args.eve, version())
    try:
        if args.metrics_port is not None:
            metrics.serve(args.metrics_port, state, args.metrics_addr)
        cache = _open_cache(args.cache)
        try:
            if args.command == "enrich":
                enricher = _enrich(args, cache, log, state)
                summary = _summary(enricher)
            else:
                enricher, follower = _follow(args, cache, log, state)
                summary = _summary(enricher, follower)
            why = diagnosis(enricher, cache, args.cache)
        finally:
            cache.close()
    except (CacheError, CheckpointError) as exc:
        log.error(str(exc))
        return 1
    except sqlite3.Error as exc:
        log.error(f"{args.cache}: connection cache error: {exc}")
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        if args.metrics_port is not None and exc.filename is None and state.enricher is None:
            where = f"metrics endpoint {args.metrics_addr}:{args.metrics_port}: "
        log.error(f"{where}{exc.strerror or exc}")
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    if not args.quiet:
        log(summary)
        if why is not None:
            log.warning(why)
    return 0


if __name__ == "__main__":
    sys.exit(main())
