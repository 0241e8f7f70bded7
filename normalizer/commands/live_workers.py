"""``live --workers N``: N worker processes in one PACKET_FANOUT group, supervised by the parent.

Why processes: one loop (commands/live.py) tops out at one core, and the engine is neither
thread-safe nor free of the GIL. N processes, each with its own AF_PACKET TPACKET_V3 ring, its
own engine and flow table, its own queue of a multi-queue tap and its own SQLite connection,
share nothing on the packet path; the kernel spreads the frames (PACKET_FANOUT_HASH with
PACKET_FANOUT_FLAG_DEFRAG: fragments are reassembled before hashing, so they follow their flow).

Why the parent opens the rings: the kernel indexes a fanout group by member position, and when
a member leaves it moves the last member into the gap (net/packet/af_packet.c,
__fanout_unlink); a rejoining socket is appended. Had each worker its own socket, a worker's
death and restart would re-spread every flow of the group and disturb the connections of the
workers that never died. So the parent opens the N sockets (in order, before any fork) and
keeps them open; worker i reads ring i and nothing else (it closes the others' descriptors),
and its successor after a crash takes over the same ring (``RingCapture.resync``: the oldest
block the kernel handed over). The group never changes: frames of the dead worker's share wait
in its ring (up to its size, then kernel drops, counted) and go to its successor, the other
workers see nothing of it (tests/lab/test_host_live_workers.py).

Why the flow hash works: the kernel's fanout hash is its symmetric flow hash (addresses and ports
ordered before hashing), so both directions of a TCP connection land on the same worker -- the
engine needs both (the client's segments lose the header bytes, the server's acks are shifted to
match). tests/lab/test_host_live_workers.py checks it from the per-worker counters: every
server-to-client segment found its flow on its worker (``passed_untracked`` stays 0).

Decapsulated traffic (``--decap``): the kernel hashes the OUTER header of a VXLAN/GENEVE packet
(its flow dissector does not enter UDP tunnels). An inner flow stays on one worker only if its
packets, in both directions, travel on one outer tuple; RFC 7348 asks VXLAN senders to derive the
outer source port from the inner flow's hash, and Linux's (a symmetric hash) does, but a mirror
or balancer need not (GENEVE from a balancer keeps one port per ENI, some mirrors one per
session, others per direction). An inner flow split over two workers loses its header state:
both halves pass unparsed, or the held handshake is released untouched. So the config refuses
``workers > 1`` with ``decapsulate`` (exit 2, naming ``normalizer.workers``) unless the user
says the outer hash is right for his senders (``--workers-by-outer-header``). A classic-BPF
fanout program hashing the inner tuple would lift that; it is not written.

Why ``os.fork`` and not multiprocessing's spawn: a worker is the very ``LiveNormalizer`` the
single-process command runs; fork hands it the parsed settings and the config loader (a closure
over the command line, which spawn would have to pickle or re-parse) without a second
interpreter start-up and import (~0.3 s each), so a restart is as quick as the first start. Fork
copies nothing a worker must not share: the tap is created multi-queue and closed again before
the first fork, the cache schema likewise; each ring socket is read by one worker at a time and
never by the parent. The parent also keeps its end of each worker's report socket, the signal
wake-up pipe and the metrics listener; a worker collects the garbage it inherited (while its
descriptors are still valid), closes the other rings, then every inherited descriptor but its
report socket and its ring's (as subprocess's close_fds would) and maps its ring again. The
metrics thread of the parent takes no lock a worker uses (prometheus_client's handler does not
log), so forking while it runs is safe.

Supervision: each worker sends its counters to the parent as one SOCK_SEQPACKET datagram per
tick (non-blocking; a late one is dropped, the next is newer), one when its ring and tap queue
are open, one at exit. The parent says READY=1 to systemd once every worker is ready; it pings
the watchdog only while every worker is alive and has reported within ``STUCK_AFTER`` seconds;
a worker that exits or is killed is restarted (counted, logged, after a back-off that grows
while it keeps dying young), one that stops reporting is killed and restarted. Workers die with
the parent (PR_SET_PDEATHSIG). SIGTERM/SIGINT stop every worker (each flushes, writes its queue
and reports a last time), SIGHUP is validated once by the parent and then forwarded to each.

What a crash costs: the dead worker's flow table. Its connections open at that moment continue
on its successor, which passes them as captured (the ``midstream`` policy) unless ``--cache``
lets it adopt them; frames of a block it was reading when it died may be processed twice
(Suricata takes them as retransmissions). New connections are normalized as before.

Counters: the sum over workers (and over the runs of restarted ones), except gauges of a worker
that is gone, maxima (largest frame, slowest cache write) and the promiscuous flag (all must
hold it); the "no proxied flow" warning runs in the parent on the sum, with the untrusted SYN
sources of all workers merged. ``--stats-json`` adds ``per_worker``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import json
import math
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from normalizer.adapters import sdnotify
from normalizer.adapters.afpacket import RingCapture
from normalizer.adapters.config import ConfigError
from normalizer.adapters.tap import Tap
from normalizer.cache.connections import CacheError, CacheStats, ConnectionCache
from normalizer.commands.live import (
    LiveNormalizer,
    LiveSettings,
    _log,
    open_capture,
    silence_report,
)
from normalizer.commands.rewrite import write_text
from normalizer.core.counters import Counters
from normalizer.core.options import Options

STUCK_AFTER = 30.0  # seconds without a report before a worker is taken for stuck and killed
STOP_GRACE = 20.0  # seconds the workers get to flush on SIGTERM before SIGKILL
BACKOFF_MAX = 30.0  # longest wait before restarting a worker that keeps dying young
_PR_SET_PDEATHSIG = 1
_GAUGES = ("flows_active", "held_packets")  # of the workers alive now only
_MAXIMA = ("capture_max_frame", "cache_write_seconds_max")
_MINIMA = ("capture_promisc",)
# What a worker reports, at zero: the sum names every counter before the first report arrives
# (a stop during the start), for the summary. Not capture_promisc: a minimum.
_ZERO: dict[str, Any] = (
    Counters().as_dict()
    | CacheStats().as_dict()
    | dict.fromkeys(
        (
            "kernel_packets",
            "kernel_drops",
            "kernel_freezes",
            "capture_truncated",
            "capture_oversize",
            "capture_max_frame",
            "csum_not_ready",
            "csum_completed",
            "ring_frames",
            "tap_frames",
            "tap_bytes",
            "tap_write_errors",
            "tap_recreated",
            "frames_failed",
            "internal_errors",
            "flows_active",
            "held_packets",
        ),
        0,
    )
)
PER_WORKER = (  # the per-worker counters --stats-json shows
    "ring_frames",
    "packets_in",
    "flows_created",
    "passed_untracked",
    "headers_stripped",
    "tap_frames",
    "kernel_drops",
    "reloads",
)


def combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Counters of several workers as one: sums (per kind for dicts), maxima, the minimum of
    the promiscuous flag. Pure, for the tests."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict):
                kinds = out.setdefault(key, {})
                for kind, n in value.items():
                    kinds[kind] = kinds.get(kind, 0) + n
            elif key not in out:
                out[key] = value
            elif key in _MAXIMA:
                out[key] = max(out[key], value)
            elif key in _MINIMA:
                out[key] = min(out[key], value)
            else:
                out[key] += value
    return out


def merge_sources(lists: list[list[tuple[str, int]]], n: int = 3) -> list[tuple[str, int]]:
    """The untrusted SYN sources of every worker, counts added, the ``n`` largest first."""
    total: Counter[str] = Counter()
    for sources in lists:
        for addr, count in sources:
            total[addr] += count
    return sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def fanout_group_for(pid: int) -> int:
    """A group id of this run (the kernel's ids are per network namespace, 16 bits)."""
    return pid & 0xFFFF


@dataclass
class _Slot:
    """One worker's place: the process now in it and what it reported."""

    index: int
    pid: int = 0
    sock: socket.socket | None = None
    ready: bool = False
    latest: dict[str, Any] | None = None
    sources: list[tuple[str, int]] = field(default_factory=list)
    # Earlier runs of this slot, summed: one dict however often it restarts.
    retired: list[dict[str, Any]] = field(default_factory=list)
    last_run: dict[str, Any] | None = None  # the final report of the run stopped last
    last_report: float = 0.0
    started: float = 0.0
    restart_at: float | None = None
    restarts: int = 0
    backoff: float = 1.0

    @property
    def alive(self) -> bool:
        return self.pid != 0


class Supervisor:
    """``run()`` N workers until SIGTERM; the same ``counters``/``silence``/``stripped`` as
    ``LiveNormalizer`` for the exit summary."""

    def __init__(
        self, settings: LiveSettings, load_options: Callable[[], Options], workers: int
    ) -> None:
        self.settings = settings
        self._load_options = load_options
        self.options = load_options()
        self.workers = workers
        self.group = (
            settings.fanout_group
            if settings.fanout_group is not None
            else fanout_group_for(os.getpid())
        )
        self.slots = [_Slot(i) for i in range(workers)]
        self.is_bridge = Path(f"/sys/class/net/{settings.iface}/bridge").is_dir()
        self.reloads = 0
        self.warned = False
        self._silence_checked = False
        self.exit_code = 0
        self._stop = False
        self._reload = False
        self._started = False  # every worker was ready once: later exits are restarts
        self._wakeup: tuple[int, int] | None = None
        self._poller = select.poll()
        self._rings: list[RingCapture] = []  # one per worker, held here across restarts

    # -- counters ----------------------------------------------------------------------------

    def _worker_parts(self, slot: _Slot) -> list[dict[str, Any]]:
        return [*slot.retired, *([slot.latest] if slot.latest else [])]

    def counters(self) -> dict[str, Any]:
        parts = [p for s in self.slots for p in self._worker_parts(s)]
        total = combine([_ZERO, *parts])
        total.update(
            reloads=self.reloads,
            workers=self.workers,
            worker_restarts=sum(s.restarts for s in self.slots),
            workers_alive=sum(1 for s in self.slots if s.alive and s.ready),
            no_proxied_flows=int(self.warned and not self._stripped(total)),
        )
        return total

    def per_worker(self) -> list[dict[str, Any]]:
        out = []
        for s in self.slots:
            c = combine(self._worker_parts(s))
            now = s.latest or s.last_run or {}
            out.append(
                {"worker": s.index, "pid": s.pid, "restarts": s.restarts}
                | {k: c.get(k, 0) for k in PER_WORKER}
                | {"current_run": {k: now.get(k, 0) for k in PER_WORKER}}
            )
        return out

    @staticmethod
    def _stripped(counters: dict[str, Any]) -> int:
        kinds = counters.get("headers_stripped", {})
        return sum(kinds.values()) if isinstance(kinds, dict) else 0

    def stripped(self) -> int:
        return self._stripped(self.counters())

    def silence(self, counters: dict[str, Any] | None = None) -> str:
        c = self.counters() if counters is None else counters
        sources = merge_sources([s.sources for s in self.slots])
        return silence_report(c, sources, self.options.proxies, self.settings.iface, self.is_bridge)

    # -- workers -----------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker; never returns
            parent_end.detach()
            self._child(slot.index, child_end)
        child_end.close()
        parent_end.setblocking(False)
        slot.pid, slot.sock, slot.ready = pid, parent_end, False
        slot.started = slot.last_report = time.monotonic()
        slot.restart_at = None
        self._poller.register(parent_end.fileno(), select.POLLIN)

    def _child(self, index: int, sock: socket.socket) -> None:
        code = 70
        try:
            # Garbage of the parent (the metrics server, unreachable once its thread is gone
            # here) is finalized now, while its descriptors are still its own.
            gc.collect()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop takes it
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() == 1:  # the parent died before the line above
                os._exit(1)
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(key, None)  # only the parent speaks to systemd
            ring = self._rings[index]
            for other in self._rings:
                if other is not ring:
                    other.close()
            ring.ring.close()  # its private descriptor goes below; mapped again after
            keep = sorted((sock.fileno(), ring.fileno()))
            os.closerange(3, keep[0])
            os.closerange(keep[0] + 1, keep[1])
            os.closerange(keep[1] + 1, os.sysconf("SC_OPEN_MAX"))
            ring.remap()
            settings = dataclasses.replace(
                self.settings,
                fanout_group=self.group,
                multi_queue=True,
                metrics_port=None,
                stats_json=None,
                warn_after=math.inf,
                worker=index,
            )
            sock.setblocking(False)
            live = LiveNormalizer(settings, self._load_options, report=sock, capture=ring)
            live.run()
            code = 0
        except ConfigError as exc:
            print(f"suricata-normalizer: worker {index}: config error: {exc}", file=sys.stderr)
            code = 2
        except (CacheError, OSError) as exc:
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"suricata-normalizer: worker {index}: {text}", file=sys.stderr)
            code = 1
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _receive(self, slot: _Slot) -> None:
        """Every datagram waiting on the slot's socket."""
        sock = slot.sock
        while sock is not None:
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError:
                return
            if not data:
                return
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            slot.last_report = time.monotonic()
            slot.latest = msg.get("counters") or slot.latest
            slot.sources = [(str(a), int(n)) for a, n in msg.get("sources", [])]
            if msg.get("kind") == "ready":
                slot.ready = True
                if slot.restarts:
                    _log(
                        f"suricata-normalizer: worker {slot.index} (pid {slot.pid}) running"
                        f" again (restart {slot.restarts})"
                    )

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for slot in self.slots:
                if slot.pid == pid:
                    self._exited(slot, status)

    def _exited(self, slot: _Slot, status: int) -> None:
        self._receive(slot)  # its last reports are in the socket's buffer
        if slot.sock is not None:
            self._poller.unregister(slot.sock.fileno())
            slot.sock.close()
            slot.sock = None
        if slot.latest is not None:
            last = dict(slot.latest)
            if not self._stop:  # a gone worker's flows and held frames are gone
                last.update(dict.fromkeys(_GAUGES, 0))
            slot.retired = [combine([*slot.retired, last])]
            slot.last_run, slot.latest = last, None
        pid, slot.pid = slot.pid, 0
        how = _how(status)
        if self._stop:
            return
        if not self._started:  # a worker that cannot start: the start failed
            code = os.waitstatus_to_exitcode(status)
            self.exit_code = code if code > 0 else 1
            _log(f"suricata-normalizer: worker {slot.index} (pid {pid}) {how} while starting")
            self._stop = True
            return
        now = time.monotonic()
        slot.backoff = 1.0 if now - slot.started > 2 * BACKOFF_MAX else slot.backoff
        slot.restart_at = now + slot.backoff
        slot.restarts += 1
        _log(
            f"suricata-normalizer: worker {slot.index} (pid {pid}) {how}; restarting it in"
            f" {slot.backoff:g} s (restart {slot.restarts})"
        )
        running = sum(1 for s in self.slots if s.alive)
        sdnotify.notify(
            sdnotify.message(
                STATUS=f"worker {slot.index} restarting, {running} of {self.workers} running"
            )
        )
        slot.backoff = min(BACKOFF_MAX, slot.backoff * 2)

    def _signal_all(self, sig: int) -> None:
        for slot in self.slots:
            if slot.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, sig)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    def _do_reload(self) -> None:
        self._reload = False
        try:
            options = self._load_options()
        except (ConfigError, OSError) as exc:
            print(f"suricata-normalizer: reload ignored: {exc}", file=sys.stderr)
            return
        self.reloads += 1
        if options.workers != self.workers:
            _log(
                f"suricata-normalizer: normalizer.workers is now {options.workers}, running"
                f" {self.workers}: a new count takes effect on the next start"
            )
        self.options = options
        self._signal_all(signal.SIGHUP)

    # -- the loop ----------------------------------------------------------------------------

    def _prepare(self) -> bool:
        """What the workers must find: the multi-queue tap, the cache schema. Returns whether
        this run created the tap (a failed start removes it again)."""
        tap = Tap(self.settings.tap, self.settings.tap_mtu, multi_queue=True)
        created = tap.created
        tap.close()
        try:
            if self.settings.cache is not None:
                ConnectionCache(self.settings.cache).close()
            grouped = dataclasses.replace(self.settings, fanout_group=self.group)
            for _ in range(self.workers):
                self._rings.append(open_capture(grouped, self.options))
        except BaseException:
            self._close_rings()
            self._remove_tap(created)
            raise
        return created

    def _close_rings(self) -> None:
        for ring in self._rings:
            ring.close()
        self._rings.clear()

    def _remove_tap(self, created: bool) -> None:
        if created:
            try:
                Tap(self.settings.tap, self.settings.tap_mtu, multi_queue=True).remove()
            except OSError as exc:
                _log(f"suricata-normalizer: could not remove tap {self.settings.tap}: {exc}")

    def run(self) -> int:
        settings = self.settings
        created = self._prepare()
        if settings.metrics_port is not None:
            from normalizer.adapters.metrics import serve

            try:
                serve(settings.metrics_port, self.counters, settings.metrics_addr)
            except OSError as exc:
                self._close_rings()
                self._remove_tap(created)
                raise OSError(
                    exc.errno, f"{exc.strerror or exc} (--metrics-port {settings.metrics_port})"
                ) from exc
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wfd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal if sig != signal.SIGCHLD else _nothing)
        self._poller.register(rfd, select.POLLIN)
        try:
            for slot in self.slots:
                self._spawn(slot)
            self._loop(rfd)
        finally:
            self._stop = True
            self._stop_all()
            sdnotify.notify(b"STOPPING=1")
            signal.set_wakeup_fd(old_wakeup)
            for sig in (signal.SIGCHLD,):
                signal.signal(sig, signal.SIG_DFL)
            os.close(rfd)
            os.close(wfd)
            self._close_rings()
        if not self._started:
            self._remove_tap(created)
        if settings.stats_json:
            c = self.counters() | {"per_worker": self.per_worker()}
            try:
                write_text(settings.stats_json, json.dumps(c, indent=2) + "\n")
            except OSError as exc:
                _log(f"suricata-normalizer: --stats-json: {exc.strerror}: {exc.filename}")
        return self.exit_code

    def _loop(self, rfd: int) -> None:
        settings = self.settings
        wd_every = sdnotify.watchdog_interval()
        mono = time.monotonic
        next_wd = mono() if wd_every else math.inf
        warn_at = mono() + settings.warn_after
        by_fd = {}
        was_ready = False
        while not self._stop:
            by_fd = {s.sock.fileno(): s for s in self.slots if s.sock is not None}
            wait = min(settings.tick_interval, max(0.0, next_wd - mono()))
            for fd, _ev in self._poller.poll(int(wait * 1000) + 1):
                if fd == rfd:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(rfd, 512):
                            pass
                elif fd in by_fd:
                    self._receive(by_fd[fd])
            self._reap()
            if self._stop:
                break
            now = mono()
            for slot in self.slots:
                if not slot.alive and slot.restart_at is not None and now >= slot.restart_at:
                    self._spawn(slot)
                elif slot.alive and now - slot.last_report > STUCK_AFTER:
                    _log(
                        f"suricata-normalizer: worker {slot.index} (pid {slot.pid}) sent nothing"
                        f" for {STUCK_AFTER:g} s: killing it"
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.pid, signal.SIGKILL)
                    slot.last_report = now  # once; the reap restarts it
            all_ready = all(s.alive and s.ready for s in self.slots)
            status = f"{settings.iface} -> {settings.tap}, {self.workers} workers"
            if all_ready and self._started and not was_ready:
                sdnotify.notify(sdnotify.message(STATUS=status))  # all back after a restart
            was_ready = all_ready
            if all_ready and not self._started:
                self._started = True
                sdnotify.notify(sdnotify.message(READY=1, STATUS=status, MAINPID=os.getpid()))
                print(
                    f"suricata-normalizer: live on {settings.iface} -> tap {settings.tap},"
                    f" {self.workers} workers (fanout group {self.group}, pids"
                    f" {', '.join(str(s.pid) for s in self.slots)})",
                    file=sys.stderr,
                )
            if now >= next_wd and all_ready:
                assert wd_every is not None
                next_wd = now + wd_every
                sdnotify.notify(b"WATCHDOG=1")
            if not self._silence_checked and now >= warn_at and self._started:
                self._check_silence()
            if self._reload:
                self._do_reload()

    def _check_silence(self) -> None:
        self._silence_checked = True
        c = self.counters()
        if self._stripped(c):
            return  # working: never warn
        self.warned = True
        print(
            f"suricata-normalizer: warning: {self.settings.warn_after:g} s in, no proxied flow: "
            + self.silence(c),
            file=sys.stderr,
        )

    def _stop_all(self) -> None:
        """SIGTERM every worker, let them flush and report, SIGKILL what is left after the
        grace period."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        killed = False
        while any(s.alive for s in self.slots):
            for fd, _ev in self._poller.poll(100):
                for s in self.slots:
                    if s.sock is not None and s.sock.fileno() == fd:
                        self._receive(s)
            self._reap()
            if not killed and time.monotonic() > deadline:
                _log("suricata-normalizer: workers still running after SIGTERM: killing them")
                self._signal_all(signal.SIGKILL)
                killed = True


def _nothing(_signum: int, _frame: FrameType | None) -> None:
    """SIGCHLD only wakes the poll (through the wake-up fd)."""


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"
