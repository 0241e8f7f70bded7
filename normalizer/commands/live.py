"""The ``live`` command: bridge port -> AF_PACKET ring -> Pipeline -> tap, until SIGTERM.

Why one single-threaded loop: the core is not thread-safe and a packet's path (ring block ->
engine -> tap write) is short; the only other thread is prometheus_client's HTTP server, which
reads counters. Time comes from two clocks: the ring's per-packet timestamps (wall clock, ns)
drive the engine as in ``rewrite``; the loop sleeps until the engine's ``next_deadline`` (the
first held header, closed or idle flow due, like aioquic's ``get_timer``) and ticks it then,
passing the wall clock, so held headers and idle flows expire on time on a quiet bridge too (a
wall-clock step only shifts those timeouts once). Housekeeping (tap check, ring stats, cache
expiry, the silence warning, tunnel fragments) runs every ``tick_interval`` seconds, which also
bounds every sleep.

Signals: SIGTERM/SIGINT stop the loop, release held frames untouched (flush), write them, and
close the cache; SIGHUP re-reads the config file. A reload rebuilds the engine with the new
options: frames held for a header are released untouched first, and with ``--cache`` the
proxied flows already resolved are adopted by the new engine (the same path as a restart), so
in practice only flows still waiting for their header at that instant lose normalization.
Signals wake the poll through ``signal.set_wakeup_fd``, so reaction is immediate.

No silent zero: ``warn_after`` seconds after the start, if frames arrived but no header was
stripped (or no frame arrived at all), the loop says so once on stderr and in the
``no_proxied_flows`` gauge: the sources that opened the most connections (the proxy the user
probably meant to trust), what became of the trusted proxies' flows, and whether the
interface is a bridge captured without promiscuous mode (which sees only the host's own frames).

Under systemd (Type=notify): READY=1 once the ring and tap exist, WATCHDOG=1 from the loop
itself (a stuck loop stops pinging and gets restarted), STOPPING=1 on shutdown. A start that
fails (no such interface, the metrics port taken) removes the tap if it created it.

Worker mode (``--workers N``, commands/live_workers.py): this same loop runs in each worker
process, joined to one fanout group and writing one queue of a multi-queue tap; instead of
notifying systemd, serving metrics and warning about silence itself, it sends its counters to
the supervising parent (``report``: one datagram every tick, one when ready, one at exit).

No single packet can stop the sensor: a frame whose processing raises anything (a bug the
tests have not found yet) is counted (``frames_failed``), its kind logged once, and the frame
written to the tap untouched, after the output of the frames before it; the batch resumes with
the next frame. The guard is a ``try`` around the batch loop (``push_guarded``), which costs
nothing per frame until something raises. Failures outside a frame (a tick, a cache write that
raises something other than a database error) are counted as ``internal_errors`` likewise.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import mmap
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from normalizer.adapters import sdnotify
from normalizer.adapters.afpacket import RingCapture, RingStats
from normalizer.adapters.config import ConfigError
from normalizer.adapters.journal import stderr_is_journal
from normalizer.adapters.tap import MAX_MTU, Tap
from normalizer.cache.connections import CacheSink, CacheStats, ConnectionCache
from normalizer.commands.rewrite import write_text
from normalizer.core.counters import sum_counters
from normalizer.core.engine import Frame
from normalizer.core.fastpath import CompiledNormalizer
from normalizer.core.frame import LINKTYPE_ETHERNET
from normalizer.core.options import Options
from normalizer.core.pipeline import Pipeline

_EXPIRE_EVERY = 60.0  # seconds between connection cache retention runs
_GC_EVERY = 60.0  # seconds between young-generation collections (the loop makes no cycles)

Captured = tuple[int, bytes]  # (ts ns, frame) as the ring hands them over
OnFailure = Callable[[int, bytes, Exception], None]


def push_guarded(pipe: Pipeline, frames: Iterable[Captured], on_failure: OnFailure) -> None:
    """Push every frame; one that raises goes to ``on_failure`` and the rest still go in.

    The ``for`` resumes on the same iterator after the failing frame, so the ``try`` is set up
    once per failure, not once per frame (Python 3.11's try is free until it catches).
    """
    push = pipe.push
    it = iter(frames)
    while True:
        try:
            for ts, frame in it:
                push(frame, ts)
            return
        except Exception as exc:  # the whole point: no frame stops the loop
            on_failure(ts, frame, exc)


@dataclass(frozen=True, slots=True)
class LiveSettings:
    iface: str
    tap: str = "snl0"
    cache: Path | None = None
    bpf: str | None = None
    fanout_group: int | None = None
    ignore_outgoing: bool = False
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    tap_mtu: int = MAX_MTU
    ring_mb: int = 64
    block_timeout_ms: int = 10
    tick_interval: float = 0.5
    stats_json: Path | None = None
    promisc: bool = True  # PACKET_MR_PROMISC: a bridge device then shows forwarded frames too
    warn_after: float = 30.0  # seconds before "no proxied flow seen" is reported
    multi_queue: bool = False  # open one queue of a multi-queue tap (worker mode)
    worker: int | None = None  # the worker's number under live_workers.Supervisor


class LiveNormalizer:
    """Owns capture, pipeline, tap and cache; ``run()`` until stopped."""

    def __init__(
        self,
        settings: LiveSettings,
        load_options: Callable[[], Options],
        report: socket.socket | None = None,
        capture: RingCapture | None = None,
    ) -> None:
        self.settings = settings
        self._report_to = report  # worker mode: the parent's end of a SOCK_SEQPACKET pair
        self._load_options = load_options
        self.options = load_options()
        self.cache = ConnectionCache(settings.cache) if settings.cache else None
        self.sink = CacheSink(self.cache, _log) if self.cache else None
        self.tap = Tap(settings.tap, settings.tap_mtu, multi_queue=settings.multi_queue)
        try:
            # Worker mode: the supervisor opened the ring (it keeps it across restarts).
            self.capture = capture or open_capture(settings, self.options)
        except BaseException:
            self._abort_start(capture=False)
            raise
        if capture is not None:
            capture.resync()  # where the previous reader of this ring stopped
        self.is_bridge = Path(f"/sys/class/net/{settings.iface}/bridge").is_dir()
        self._warn_at = time.monotonic() + settings.warn_after
        self.warned = False
        self._retired: list[dict[str, Any]] = []  # counters of engines replaced by reloads
        self.reloads = 0
        self.frames_failed = 0  # frames passed untouched because processing them raised
        self.internal_errors = 0  # ticks, takes, reloads that raised
        self._kinds: set[tuple[str, str]] = set()  # (where, exception) already logged
        self._next_expiry = 0.0
        self.pipe = self._new_pipeline()
        self._stop = False
        self._reload = False

    # -- pieces ------------------------------------------------------------------------------

    def _new_pipeline(self) -> Pipeline:
        # The cache is written through the sink: a failing cache is counted, never stops traffic.
        sink = self.sink
        pipe = Pipeline(
            self.options,
            LINKTYPE_ETHERNET,
            on_events=sink.record if sink else None,
            resume=sink.resumable if sink else None,
            on_tunnels=sink.record_tunnels if sink else None,
            checksums="fix" if self.options.checksums == "fix" else "keep",
        )
        # The compiled engine buffers its output frames and writes them to the tap from C
        # (no Python object per frame); the Python engine's frames are written one by one.
        eng = pipe.engine
        self._write_tap: Callable[[int], tuple[int, int, int]] | None = None
        if isinstance(eng, CompiledNormalizer):
            eng.set_sink(True)
            self._write_tap = eng.write_tap
        return pipe

    def _abort_start(self, capture: bool = True) -> None:
        """A start that failed: close what was opened, remove the tap if this run created it."""
        if capture:
            self.capture.close()
        if self.tap.created:
            try:
                self.tap.remove()
            except Exception as exc:  # the start's own error matters more
                _log(f"suricata-normalizer: could not remove tap {self.tap.name}: {exc}")
        else:
            self.tap.close()
        if self.cache is not None:
            self.cache.close()

    def _emit(self) -> None:
        """Everything the pipeline has to forward, into the tap: ``_take`` first (the cache
        hears of a connection before its frames go out), then the frames, in order."""
        self._forward(self._take())
        if self._write_tap is not None:
            self.tap.write_from(self._write_tap)

    def _forward(self, frames: Iterable[tuple[int, Frame]]) -> None:
        write = self.tap.write
        for _ts, frame in frames:
            write(frame)

    def _process(self, frames: list[Captured]) -> None:
        """One batch from the ring through the pipeline into the tap (see the module doc)."""
        push_guarded(self.pipe, frames, self._frame_failed)
        self._emit()

    def _push_block(self, ring: mmap.mmap, base: int, complete: bool, stats: RingStats) -> int:
        """A ring block through the pipeline, each frame guarded as ``push_guarded`` does."""
        return self.pipe.push_block(ring, base, complete, stats, self._frame_failed)

    def _frame_failed(self, _ts: int, frame: bytes, exc: Exception) -> None:
        self.frames_failed += 1
        self._report("frame", exc)
        self._emit()  # the frames before it first, in order
        self.tap.write(frame)

    def _take(self) -> list[tuple[int, Frame]]:
        """``pipe.take()``; should recording raise, the frames still go out (rows are lost)."""
        try:
            return self.pipe.take()
        except Exception as exc:
            self.internal_errors += 1
            self._report("take", exc)
            return self.pipe.engine.drain()

    def _report(self, where: str, exc: Exception) -> None:
        report_once(self._kinds, where, exc)

    def counters(self) -> dict[str, Any]:
        """Engine counters summed over reloads, plus capture, tap and cache counters."""
        total: dict[str, Any] = sum_counters([*self._retired, self.pipe.counters.as_dict()])
        ring = self.capture.stats_acc
        tap = self.tap.stats
        total.update((self.sink.stats if self.sink else CacheStats()).as_dict())
        total.update(
            kernel_packets=ring.kernel_packets,
            kernel_drops=ring.kernel_drops,
            kernel_freezes=ring.kernel_freezes,
            capture_truncated=ring.truncated,
            capture_promisc=int(self.capture.promisc),
            capture_oversize=ring.oversize,
            capture_max_frame=ring.max_frame,
            csum_not_ready=ring.csum_not_ready,
            csum_completed=ring.csum_completed,
            no_proxied_flows=int(self.warned and not self._stripped(total)),
            ring_frames=ring.frames,
            tap_frames=tap.frames,
            tap_bytes=tap.bytes,
            tap_write_errors=tap.write_errors,
            tap_recreated=tap.recreated,
            frames_failed=self.frames_failed,
            internal_errors=self.internal_errors,
            reloads=self.reloads,
            flows_active=self.pipe.flows_active,
            held_packets=self.pipe.held_packets,
        )
        return total

    @staticmethod
    def _stripped(counters: dict[str, Any]) -> int:
        kinds = counters.get("headers_stripped", {})
        return sum(kinds.values()) if isinstance(kinds, dict) else 0

    def _check_silence(self) -> None:
        """Once, ``warn_after`` seconds in: say why nothing is being stripped, if nothing is."""
        if self.warned or time.monotonic() < self._warn_at:
            return
        c = self.counters()
        if self._stripped(c):
            self._warn_at = float("inf")  # working: never warn
            return
        self.warned = True
        print(
            f"suricata-normalizer: warning: {self.settings.warn_after:g} s in, no proxied flow: "
            + self.silence(c),
            file=sys.stderr,
        )

    def stripped(self) -> int:
        """Headers stripped so far, over reloads."""
        return self._stripped(self.counters())

    def silence(self, counters: dict[str, Any] | None = None) -> str:
        return silence_report(
            self.counters() if counters is None else counters,
            self.pipe.untrusted_syns.top(),
            self.options.proxies,
            self.settings.iface,
            self.is_bridge,
        )

    def send_report(self, kind: str = "counters") -> None:
        """Worker mode: the counters (and the top untrusted SYN sources) to the parent, as one
        datagram; dropped when the parent is behind (the next tick sends newer ones)."""
        sock = self._report_to
        if sock is None:
            return
        msg = {"kind": kind, "counters": self.counters(), "sources": self.pipe.untrusted_syns.top()}
        try:
            sock.send(json.dumps(msg).encode())
        except (BrokenPipeError, ConnectionError):  # the parent is gone: nobody supervises us
            self._stop = True
        except OSError:  # full (BlockingIOError), too large: the next tick sends newer ones
            pass

    def _tick(self) -> None:
        self._check_silence()
        self.send_report()
        try:
            self.pipe.tick(time.time_ns())
        except Exception as exc:  # expiring one flow must not stop the sensor
            self.internal_errors += 1
            self._report("tick", exc)
        self._emit()
        try:
            if self.tap.check():
                _log(f"suricata-normalizer: tap {self.tap.name} was gone, recreated")
        except OSError as exc:  # could not recreate it (yet): frames are counted as write errors
            self.internal_errors += 1
            self._report("tap", exc)
        self.capture.stats()
        now = time.time()
        if self.sink is not None and now >= self._next_expiry:
            self._next_expiry = now + _EXPIRE_EVERY
            self.sink.expire(now - self.options.cache_retention)

    def _core_due(self, now: float) -> float:
        """The monotonic time the pipeline next needs a tick (its deadline is on the wall clock)."""
        due = self.pipe.next_deadline()
        if due is None:
            return float("inf")
        return now + max(0, due - time.time_ns()) / 1e9

    def _do_reload(self) -> None:
        self._reload = False
        try:
            options = self._load_options()
        except (ConfigError, OSError) as exc:
            print(f"suricata-normalizer: {self._who()}reload ignored: {exc}", file=sys.stderr)
            return
        self.reloads += 1
        # The worker count is the supervisor's: a change takes effect on the next start.
        same = dataclasses.replace(
            options,
            workers=self.options.workers,
            workers_by_outer_header=self.options.workers_by_outer_header,
        )
        if same == self.options:
            return
        self.pipe.flush()
        self._emit()
        self._retired.append(self.pipe.counters.as_dict())
        self.options = options
        self.pipe = self._new_pipeline()
        print(f"suricata-normalizer: {self._who()}config reloaded", file=sys.stderr)

    def _who(self) -> str:
        n = self.settings.worker
        return "" if n is None else f"worker {n}: "

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        settings = self.settings
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wfd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        poller = select.poll()
        poller.register(self.capture.fileno(), select.POLLIN | select.POLLERR)
        poller.register(rfd, select.POLLIN)
        if settings.metrics_port is not None:
            self._serve_metrics(settings.metrics_port)
        wd_every = sdnotify.watchdog_interval()
        if settings.worker is None:
            sdnotify.notify(
                sdnotify.message(
                    READY=1, STATUS=f"{settings.iface} -> {settings.tap}", MAINPID=os.getpid()
                )
            )
            print(
                f"suricata-normalizer: live on {settings.iface} -> tap {settings.tap}",
                file=sys.stderr,
            )
        else:
            self.send_report("ready")
        gc_was_enabled = gc.isenabled()
        gc.disable()
        gc.freeze()  # objects from start-up are never scanned again
        mono = time.monotonic
        next_tick = mono() + settings.tick_interval
        next_core = self._core_due(mono())
        next_wd = mono() if wd_every else float("inf")
        next_gc = mono() + _GC_EVERY
        capture = self.capture
        try:
            while not self._stop:
                now = mono()
                if not capture.ready():
                    wait = min(next_tick, next_wd, next_core) - now
                    for fd, _ev in poller.poll(max(0, int(wait * 1000)) + 1):
                        if fd == rfd:
                            while True:
                                try:
                                    if not os.read(rfd, 512):
                                        break
                                except BlockingIOError:
                                    break
                        elif not capture.ready():  # readable, yet not where we look: resync
                            capture.resync()
                # One call per ring block: into the compiled core when it runs (pipeline.py).
                if capture.drain_into(self._push_block):
                    self._emit()
                now = mono()
                if now >= next_tick:
                    next_tick = now + settings.tick_interval
                    self._tick()
                elif now >= next_core:
                    self.pipe.tick(time.time_ns())
                    self._emit()
                next_core = self._core_due(now)
                if now >= next_wd:
                    assert wd_every is not None
                    next_wd = now + wd_every
                    sdnotify.notify(b"WATCHDOG=1")
                if now >= next_gc:
                    next_gc = now + _GC_EVERY
                    gc.collect(1)
                if self._reload:
                    self._do_reload()
        finally:
            if settings.worker is None:
                sdnotify.notify(b"STOPPING=1")
            self._shutdown()
            signal.set_wakeup_fd(old_wakeup)
            os.close(rfd)
            os.close(wfd)
            gc.unfreeze()
            if gc_was_enabled:
                gc.enable()

    def _serve_metrics(self, port: int) -> None:
        """Start the scrape endpoint; a port that cannot be bound is a failed start."""
        from normalizer.adapters.metrics import serve

        try:
            serve(port, self.counters, self.settings.metrics_addr)
        except BaseException as exc:
            self._abort_start()
            if isinstance(exc, OSError):
                raise OSError(exc.errno, f"{exc.strerror or exc} (--metrics-port {port})") from exc
            raise

    def _shutdown(self) -> None:
        """Drain the ring, release held frames untouched, write them, close everything.

        The block the kernel is filling reaches us only when its timeout retires it: wait for
        that (at most two timeouts), or frames that arrived just before the stop are lost."""
        select.select([self.capture.fileno()], [], [], 2 * self.settings.block_timeout_ms / 1000)
        self.capture.drain_into(self._push_block)
        try:
            self.pipe.flush()
        except Exception as exc:
            self.internal_errors += 1
            self._report("flush", exc)
        self._emit()
        self.capture.stats()
        if self.settings.stats_json:
            try:
                write_text(self.settings.stats_json, json.dumps(self.counters(), indent=2) + "\n")
            except OSError as exc:
                _log(f"suricata-normalizer: --stats-json: {exc.strerror}: {exc.filename}")
        if self._report_to is not None:
            self._report_to.setblocking(True)  # the last report must reach the parent
            self._report_to.settimeout(5.0)
            self.send_report("final")
        self.capture.close()
        self.tap.close()
        if self.cache is not None:
            self.cache.close()


def open_capture(settings: LiveSettings, options: Options) -> RingCapture:
    """The AF_PACKET ring ``settings`` describe (in the fanout group if one is given)."""
    block = 1 << 20
    return RingCapture(
        settings.iface,
        block_size=block,
        block_count=max(2, settings.ring_mb * (1 << 20) // block),
        block_timeout_ms=settings.block_timeout_ms,
        bpf=settings.bpf,
        fanout_group=settings.fanout_group,
        ignore_outgoing=settings.ignore_outgoing,
        promisc=settings.promisc,
        # The ring's CSUMNOTREADY flag names the partial checksums: completed there, and the
        # pipeline need not guess from the field ("auto"); "keep" leaves them partial.
        complete_partial=options.checksums != "keep",
    )


def report_once(kinds: set[tuple[str, str]], where: str, exc: Exception) -> None:
    """Log each (place, exception type) once, with where it was raised: a hostile flood must not
    flood the journal. ``kinds`` (at most 256) remembers what was logged."""
    kind = (where, type(exc).__name__)
    if kind in kinds or len(kinds) >= 256:
        return
    kinds.add(kind)
    tb = traceback.extract_tb(exc.__traceback__)
    at = f" at {tb[-1].filename}:{tb[-1].lineno} in {tb[-1].name}" if tb else ""
    _log(
        f"suricata-normalizer: {where} raised {type(exc).__name__}: {exc}{at}; counted, "
        "the traffic goes on (further ones of this kind are only counted)"
    )


def _log(text: str) -> None:
    """A warning for the operator: with journald's priority prefix when stderr is the journal
    (normalizer/adapters/journal.py), so ``journalctl -p warning`` shows it."""
    prefix = "<4>" if stderr_is_journal() else ""
    print(prefix + text, file=sys.stderr)


def silence_report(
    c: dict[str, Any],
    sources: list[tuple[str, int]],
    proxies: tuple[str, ...],
    iface: str,
    is_bridge: bool,
) -> str:
    """Why a live capture strips nothing, in words, with what to try."""
    parts = []
    if not c["ring_frames"]:
        parts.append(f"no frame at all was captured on {iface}")
    elif not c["flows_created"]:
        parts.append(
            f"{c['ring_frames']} frames captured, none opened a connection from a trusted proxy"
            f" ({', '.join(proxies)})"
        )
    else:
        parts.append(
            f"{c['flows_created']} connections from trusted proxies, none with a usable header"
            f" ({c['header_malformed']} malformed, {c['header_excluded']} of a kind --header"
            f" excludes, {c['header_none']} with no header, {c['header_missing']} without data,"
            f" {c['header_truncated']} truncated, {c['hold_overflow']} hold overflows;"
            " check --header and the gateway's send-proxy setting)"
        )
    if sources:
        listed = ", ".join(f"{a} ({n})" for a, n in sources)
        parts.append(
            f"connections were opened by {listed}: if one is the proxy, try --proxy {sources[0][0]}"
        )
    if is_bridge and not c.get("capture_promisc"):
        parts.append(
            f"{iface} is a bridge captured without promiscuous mode: frames forwarded between"
            " its ports (a proxy behind a port) are not seen; drop --no-promisc"
        )
    return "; ".join(parts)


def live_summary(c: dict[str, Any]) -> str:
    return (
        f"capture: {c['kernel_packets']} packets, {c['kernel_drops']} dropped by the kernel, "
        f"{c['capture_truncated']} truncated, {c.get('csum_completed', 0)} of"
        f" {c.get('csum_not_ready', 0)} offloaded checksums completed,"
        f" {c.get('capture_oversize', 0)} GSO/GRO frames (largest {c.get('capture_max_frame', 0)}"
        f" bytes); tap: {c['tap_frames']} frames written, "
        f"{c['tap_write_errors']} write errors, recreated {c['tap_recreated']} times; "
        f"cache: {c['cache_rows']} connections and {c.get('cache_tunnel_rows', 0)} tunnel flows"
        f" in {c['cache_writes']} writes (max {c['cache_write_seconds_max'] * 1000:.1f} ms),"
        f" {c.get('cache_expired', 0)} expired, {c['cache_errors']} errors; "
        f"reloads {c['reloads']}; {c.get('frames_failed', 0)} frames passed untouched after an"
        f" internal error, {c.get('internal_errors', 0)} other internal errors"
    )
