"""The ``appliance`` command: GENEVE from a gateway load balancer on a UDP socket, every valid
packet straight back to the balancer, a copy of its inner packet through the pipeline into a
tap for Suricata, and a health check the balancer probes.

Why the return comes first and on its own socket: the protected traffic must never wait on
inspection. For each datagram the return packet is sent (a raw IPv4 socket, so the UDP ports
stay as the balancer sent them and only the addresses are swapped) before the inner frame is
given to the pipeline; the tap writes of a batch follow after all its returns. A failed return
is counted (``return_errors``) and turns the health check to 503 until a return succeeds again.

Health (``--health-port``, HTTP on the listen address; any path): 200 while the loop runs (it
went round within ``_STALE`` seconds), the tap exists and the last return send succeeded, 503
otherwise; the body is the counters as JSON. The server runs in a daemon thread and only reads
integers and a timestamp the loop writes; it is closed first on shutdown, so a stopping
appliance refuses probes before it stops answering traffic, and a stopped one refuses both.

One single-threaded loop like ``live``: the core is not thread-safe. Signals: SIGTERM/SIGINT
stop, SIGHUP re-reads the config (peers, header stripping; held frames are released first).
Under systemd: READY=1 once socket and tap exist, WATCHDOG=1 from the loop, STOPPING=1.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import select
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from normalizer.adapters import sdnotify
from normalizer.adapters.config import ConfigError
from normalizer.adapters.tap import MAX_MTU, Tap
from normalizer.cache.connections import ConnectionCache
from normalizer.commands.live import report_once
from normalizer.core.counters import sum_counters
from normalizer.core.engine import Frame
from normalizer.core.events import HeaderEvent
from normalizer.core.frame import LINKTYPE_ETHERNET
from normalizer.core.options import Options
from normalizer.core.pipeline import Pipeline
from normalizer.tunnels.appliance import Appliance, ApplianceCounters, healthy
from normalizer.tunnels.flows import TunnelFlow
from normalizer.tunnels.geneve import GENEVE_PORT

_BATCH = 256  # datagrams read before the batch's frames go to the tap
_STALE = 5.0  # seconds without a loop iteration after which the health check says 503
_EXPIRE_EVERY = 60.0
_GC_EVERY = 60.0
_RCVBUF = 8 << 20
_SO_RCVBUFFORCE = 33  # Linux; the socket module does not name them
_SO_SNDBUFFORCE = 32
_HEALTH_CLIENTS = 32  # concurrent health requests
_HEALTH_TIMEOUT = 5.0  # seconds a health client may take to send its request


@dataclass(frozen=True, slots=True)
class ApplianceSettings:
    listen: str  # the appliance's IPv4 address the balancer sends to
    tap: str
    port: int = GENEVE_PORT
    health_port: int | None = None
    cache: Path | None = None
    tap_mtu: int = MAX_MTU
    stats_json: Path | None = None
    tick_interval: float = 0.5


class ApplianceLive:
    """Owns sockets, tap, cache, core and pipeline; ``run()`` until stopped."""

    def __init__(self, settings: ApplianceSettings, load_options: Callable[[], Options]) -> None:
        self.settings = settings
        self._load_options = load_options
        self.options = load_options()
        self.address = socket.inet_aton(settings.listen)
        self.acounters = ApplianceCounters()
        # Datagrams whose inspection raised (returned all the same, passed to the tap untouched)
        # and validator failures (not returned: what to return is unknown); each kind logged once.
        self.frames_failed = self.internal_errors = 0
        self._reported: set[tuple[str, str]] = set()
        self.core = self._new_core()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            try:  # past net.core.rmem_max: bursts from the balancer must not overflow it
                self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
            except PermissionError:  # without CAP_NET_ADMIN: as much as rmem_max allows
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            self.sock.bind((settings.listen, settings.port))
            self.sock.setblocking(False)
            # Blocking returns: when the device queue is full, a return waits for the kernel
            # (never for Suricata) rather than being lost; the buffer absorbs bursts first.
            with contextlib.suppress(PermissionError):
                self.raw.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, _RCVBUF)
            self.tap = Tap(settings.tap, settings.tap_mtu)
        except BaseException:
            self.sock.close()
            self.raw.close()
            raise
        self.cache = ConnectionCache(settings.cache) if settings.cache else None
        self.cache_rows = self.cache_tunnel_rows = self.cache_errors = self.cache_expired = 0
        self.reloads = 0
        self.returns_failing = False
        self.heartbeat = time.monotonic()
        self.running = False
        self._retired: list[dict[str, object]] = []
        self._next_expiry = 0.0
        self.pipe = self._new_pipeline()
        self._stop = False
        self._reload = False
        self._health: ThreadingHTTPServer | None = None

    # -- pieces ------------------------------------------------------------------------------

    def _new_core(self) -> Appliance:
        core = Appliance(
            self.options.tunnel_peers,
            self.address,
            self.settings.port,
            self.options.vxlan_ports,
            self.acounters,
        )
        old = getattr(self, "core", None)
        if old is not None:  # a reload keeps the ENI -> VLAN mapping of the run
            core.vlans = old.vlans
        return core

    def _new_pipeline(self) -> Pipeline:
        return Pipeline(
            self.options,
            LINKTYPE_ETHERNET,
            on_events=self._record if self.cache else None,
            resume=self.cache.resumable if self.cache else None,
            on_tunnels=self._record_tunnels if self.cache else None,
            checksums="keep",  # inner packets as the protected hosts sent them
            tunnelled=True,
        )

    def _record(self, events: list[HeaderEvent]) -> None:
        self.cache_rows += self._write(self._cache().record, events)

    def _record_tunnels(self, flows: list[TunnelFlow]) -> None:
        self.cache_tunnel_rows += self._write(self._cache().record_tunnels, flows)

    def _cache(self) -> ConnectionCache:
        assert self.cache is not None
        return self.cache

    def _write(self, write: Callable[[Any], int], rows: Any) -> int:
        try:
            written: int = write(rows)
        except sqlite3.Error as exc:
            self.cache_errors += 1
            print(f"suricata-normalizer: cache write failed: {exc}", file=sys.stderr)
            return 0
        return written

    def _forward(self, frames: Iterable[tuple[int, Frame]]) -> None:
        write = self.tap.write
        for _ts, frame in frames:
            write(frame)

    def counters(self) -> dict[str, Any]:
        total: dict[str, Any] = sum_counters([*self._retired, self.pipe.counters.as_dict()])
        tap = self.tap.stats
        total.update(self.acounters.as_dict())
        total.update(
            tap_frames=tap.frames,
            tap_bytes=tap.bytes,
            tap_write_errors=tap.write_errors,
            tap_recreated=tap.recreated,
            cache_rows=self.cache_rows,
            cache_tunnel_rows=self.cache_tunnel_rows,
            cache_errors=self.cache_errors,
            cache_expired=self.cache_expired,
            reloads=self.reloads,
            frames_failed=self.frames_failed,
            internal_errors=self.internal_errors,
            flows_active=self.pipe.flows_active,
            tunnel_flows_active=len(self.pipe.tunnels) if self.pipe.tunnels is not None else 0,
        )
        return total

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, counters): what the health check answers."""
        running = self.running and time.monotonic() - self.heartbeat < _STALE
        ok = healthy(running, self.tap.exists(), self.returns_failing)
        body = self.counters()
        body.update(healthy=ok, loop_running=running, returns_failing=self.returns_failing)
        return ok, body

    # -- the loop ----------------------------------------------------------------------------

    def _serve(self) -> None:
        """Read up to a batch of datagrams: return each at once, inspect its inner packet."""
        recv, send = self.sock.recvfrom, self.raw.sendto
        receive, push = self.core.receive, self.pipe.push_inner
        c = self.acounters
        ts = time.time_ns()
        aton = socket.inet_aton
        for _ in range(_BATCH):
            try:
                data, (host, port) = recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # nothing the balancer sends should cause this: say so
                c.receive_errors += 1
                print(f"suricata-normalizer: receive failed: {exc}", file=sys.stderr)
                break
            try:
                verdict = receive(data, aton(host), port)
            except Exception as exc:  # a validator bug must not stop the protected traffic
                self.internal_errors += 1
                self._report("receive", exc)
                continue
            if verdict is None:
                continue
            try:
                send(verdict.ret, (host, 0))
            except OSError as exc:
                c.return_errors += 1
                if not self.returns_failing:
                    self.returns_failing = True
                    print(f"suricata-normalizer: return to {host} failed: {exc}", file=sys.stderr)
            else:
                c.returned += 1
                self.returns_failing = False
            try:
                push(verdict.frame, ts, verdict.ref)
            except Exception as exc:  # as live's push_guarded: counted, passed untouched
                self.frames_failed += 1
                self._report("frame", exc)
                self._forward(self.pipe.take())  # the frames before it first, in order
                self.tap.write(verdict.frame)
        self._forward(self.pipe.take())

    def _report(self, where: str, exc: Exception) -> None:
        report_once(self._reported, where, exc)

    def _tick(self) -> None:
        self.pipe.tick(time.time_ns())
        self._forward(self.pipe.take())
        if self.tap.check():
            print(f"suricata-normalizer: tap {self.tap.name} was gone, recreated", file=sys.stderr)
        now = time.time()
        if self.cache is not None and now >= self._next_expiry:
            self._next_expiry = now + _EXPIRE_EVERY
            try:
                self.cache_expired += self.cache.expire(now - self.options.cache_retention)
            except sqlite3.Error as exc:
                self.cache_errors += 1
                print(f"suricata-normalizer: cache expiry failed: {exc}", file=sys.stderr)

    def _do_reload(self) -> None:
        self._reload = False
        try:
            options = self._load_options()
        except (ConfigError, OSError) as exc:
            print(f"suricata-normalizer: reload ignored: {exc}", file=sys.stderr)
            return
        self.reloads += 1
        if options == self.options:
            return
        self.pipe.flush()
        self._forward(self.pipe.take())
        self._retired.append(self.pipe.counters.as_dict())
        self.options = options
        self.core = self._new_core()
        self.pipe = self._new_pipeline()
        print("suricata-normalizer: config reloaded", file=sys.stderr)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    def _start_health(self) -> None:
        port = self.settings.health_port
        if port is None:
            return
        owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = _HEALTH_TIMEOUT  # a client that sends nothing is dropped, not waited on

            def do_GET(self) -> None:
                self._answer(body=True)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def _answer(self, body: bool) -> None:
                ok, counters = owner.health()
                data = (json.dumps(counters, sort_keys=True) + "\n").encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the balancer probes every few seconds: no log line each time

        def trusted(host: str) -> bool:
            return host == self.settings.listen or self.core.trusts(socket.inet_aton(host))

        server = _HealthServer((self.settings.listen, port), Handler, trusted)
        threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
        self._health = server

    def run(self) -> None:
        settings = self.settings
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wfd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(rfd, select.POLLIN)
        self.running = True
        self.heartbeat = time.monotonic()
        self._start_health()
        wd_every = sdnotify.watchdog_interval()
        where = f"{settings.listen}:{settings.port} -> tap {settings.tap}"
        sdnotify.notify(sdnotify.message(READY=1, STATUS=where, MAINPID=os.getpid()))
        health = f", health on port {settings.health_port}" if settings.health_port else ""
        print(f"suricata-normalizer: appliance on {where}{health}", file=sys.stderr)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        gc.freeze()
        mono = time.monotonic
        next_tick = mono() + settings.tick_interval
        next_wd = mono() if wd_every else float("inf")
        next_gc = mono() + _GC_EVERY
        sock = self.sock.fileno()
        try:
            while not self._stop:
                wait = min(next_tick, next_wd) - mono()
                for fd, _ev in poller.poll(max(0, int(wait * 1000)) + 1):
                    if fd == rfd:
                        with contextlib.suppress(BlockingIOError):
                            while os.read(rfd, 512):
                                pass
                    elif fd == sock:
                        self._serve()
                now = mono()
                self.heartbeat = now
                if now >= next_tick:
                    next_tick = now + settings.tick_interval
                    self._tick()
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
            self.running = False
            sdnotify.notify(b"STOPPING=1")
            self._shutdown()
            signal.set_wakeup_fd(old_wakeup)
            os.close(rfd)
            os.close(wfd)
            gc.unfreeze()
            if gc_was_enabled:
                gc.enable()

    def _shutdown(self) -> None:
        """Health first (probes fail from now on), then the socket, held frames, the cache."""
        if self._health is not None:
            self._health.shutdown()
            self._health.server_close()
        self.sock.close()
        self.raw.close()
        self.pipe.flush()
        self._forward(self.pipe.take())
        if self.settings.stats_json:
            self.settings.stats_json.write_text(json.dumps(self.counters(), indent=2) + "\n")
        self.tap.close()
        if self.cache is not None:
            self.cache.close()


class _HealthServer(ThreadingHTTPServer):
    """Each request cut off after ``_HEALTH_TIMEOUT``; at most ``_HEALTH_CLIENTS`` at a time from
    hosts other than the balancers (``trusted``) and this host, whose probes are always
    answered: whoever else reaches the port can neither pile up threads nor starve the probe."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: a burst of connects must not drop the probe's SYN

    def __init__(
        self,
        addr: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        trusted: Callable[[str], bool],
    ) -> None:
        super().__init__(addr, handler)
        self._slots = threading.BoundedSemaphore(_HEALTH_CLIENTS)
        self._trusted = trusted

    def process_request(self, request: Any, client_address: Any) -> None:
        slot = not self._trusted(client_address[0])
        if slot and not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        args = (request, client_address, slot)
        threading.Thread(target=self._serve_one, args=args, daemon=True).start()

    def _serve_one(self, request: Any, client_address: Any, slot: bool) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            if slot:
                self._slots.release()


def appliance_summary(c: dict[str, Any]) -> str:
    return (
        f"appliance: {c['received']} datagrams, {c['returned']} returned"
        f" ({c['return_errors']} return errors), {c['inspected']} inspected"
        f" ({c['mirrored']} mirrored VXLAN), {c['rejected']} rejected (peer {c['rejected_peer']},"
        f" short {c['rejected_short']}, version {c['rejected_version']}, length"
        f" {c['rejected_length']}, protocol {c['rejected_protocol']}, options"
        f" {c['rejected_options']}, inner {c['rejected_inner']}); tap {c['tap_frames']} frames"
        f" ({c['tap_write_errors']} errors); cache {c['cache_tunnel_rows']} tunnel rows"
    )


def bind_error(exc: OSError, settings: ApplianceSettings) -> str:
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{settings.listen} is not an address of this host (--listen)"
    if exc.errno == errno.EADDRINUSE:
        return f"{settings.listen}:{settings.port} or the health port is already in use"
    return str(exc)
