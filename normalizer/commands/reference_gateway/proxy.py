"""The reference gateway's asyncio adapter: sockets, splicing, backpressure and shutdown.

Kept apart from ``normalizer.commands.reference_gateway.options`` (options, header bytes) so
that module stays pure and the other subcommands do not pay for importing asyncio.

Why each mechanism:

* Half-close: a client that shuts down its write side (``curl -T``, ``nc -N``) still waits for
  the answer, so EOF in one direction becomes ``shutdown(SHUT_WR)`` on the other side and the
  other direction keeps flowing; the connection ends when both directions have seen EOF.
* Bounded buffers: reads are at most ``chunk`` bytes, a StreamReader pauses its socket beyond
  twice that, and a writer above four chunks makes its pump wait in ``drain()``. A slow reader
  on either side therefore stops the reads on the other instead of growing memory; at most
  ``max_connections`` are served at once (more are closed on accept and counted).
* A reset or error in one direction aborts both sockets, so the peer sees the failure instead
  of a clean end of stream that never happened.
* SIGTERM stops listening at once, lets live connections finish for ``grace`` seconds, then
  aborts what is left, and prints the counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from normalizer.commands.reference_gateway.options import (
    PROG,
    Endpoint,
    GatewaySettings,
    encode_header,
    format_endpoint,
)
from normalizer.proxy_headers.base import HeaderError, ProxyHeader
from normalizer.proxy_headers.detect import HeaderKind, parse_header


@dataclass
class GatewayStats:
    """Counters of one gateway run; printed on exit and written by ``--stats-json``."""

    accepted: int = 0
    refused: int = 0  # over max_connections: closed on accept
    backend_failed: int = 0  # connect refused, unreachable or timed out
    headers_written: int = 0
    headers_accepted: int = 0  # --accept: valid incoming headers stripped
    headers_rejected: int = 0  # --accept: malformed or incomplete: connection closed
    aborted: int = 0  # a reset or error in one direction ended both
    completed: int = 0  # both directions reached EOF
    bytes_to_backend: int = 0  # client bytes forwarded (headers not counted)
    bytes_to_client: int = 0


class ReferenceGateway:
    """Accepts clients on ``settings.listen`` and proxies each to ``settings.backend``."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.stats = GatewayStats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> list[Endpoint]:
        """Listen; returns the bound addresses (so port 0 can be used)."""
        host, port = self.settings.listen
        self._server = await asyncio.start_server(
            self._handle, host, port, limit=self.settings.chunk, reuse_address=True
        )
        return [_endpoint(s.getsockname()) for s in self._server.sockets]

    def buffered(self) -> int:
        """Bytes waiting in the gateway's write buffers, over all connections (bounded)."""
        return sum(w.transport.get_write_buffer_size() for w in self._writers)

    async def close(self, grace: float = 0.0) -> None:
        """Stop listening, give live connections ``grace`` seconds, then abort the rest."""
        if self._server is not None:
            self._server.close()
        tasks = set(self._tasks)
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # start_server runs each callback as a task
        if len(self._tasks) >= self.settings.max_connections:
            self.stats.refused += 1
            _reset(cwriter)
            return
        self._tasks.add(task)
        self.stats.accepted += 1
        _tune(cwriter, self.settings.chunk)
        client = _endpoint(cwriter.get_extra_info("peername"))
        writers = [cwriter]
        self._writers.add(cwriter)
        clean = False
        try:
            clean = await self._connection(creader, cwriter, client, writers)
        except OSError as exc:
            self.stats.aborted += 1
            self._log(f"{format_endpoint(client)}: {_oserror(exc)}")
        finally:
            self._tasks.discard(task)
            for w in writers:
                self._writers.discard(w)
                if clean:
                    w.close()  # after what is still buffered
                else:
                    _reset(w)

    async def _connection(
        self,
        creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        client: Endpoint,
        writers: list[asyncio.StreamWriter],
    ) -> bool:
        """Header in (with --accept), backend, header out, splice; True if both sides ended."""
        s = self.settings
        target = _endpoint(cwriter.get_extra_info("sockname"))
        first = b""
        if s.accept is not None:
            got = await self._accept_header(creader, client)
            if got is None:
                return False
            header_in, first = got
            if header_in.src_addr is not None and header_in.src_port is not None:
                client = (header_in.src_addr, header_in.src_port)
                target = (header_in.dst_addr or target[0], header_in.dst_port or 0)
        if s.coalesce and not first:
            with contextlib.suppress(TimeoutError):  # the server speaks first: header alone
                first = await asyncio.wait_for(creader.read(s.chunk), s.coalesce_wait)
        header = encode_header(s.header, client, target)
        try:
            breader, bwriter = await asyncio.wait_for(
                asyncio.open_connection(*s.backend, limit=s.chunk), s.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            self.stats.backend_failed += 1
            why = "timed out" if isinstance(exc, TimeoutError) else _oserror(exc)
            self._log(f"{format_endpoint(client)}: backend {format_endpoint(s.backend)}: {why}")
            return False
        writers.append(bwriter)
        self._writers.add(bwriter)
        _tune(bwriter, s.chunk)
        if s.coalesce:
            bwriter.write(header + first)  # one write: one segment (up to the MSS)
        else:
            bwriter.write(header)  # TCP_NODELAY: it leaves now, alone
            if first:
                bwriter.write(first)
        self.stats.headers_written += bool(header)
        self.stats.bytes_to_backend += len(first)
        if s.verbose:
            self._log(
                f"{format_endpoint(client)} -> {format_endpoint(target)}: {s.header.kind} "
                f"header, {len(header)} bytes, to {format_endpoint(s.backend)}"
            )
        return await self._splice(creader, cwriter, breader, bwriter, client)

    async def _accept_header(
        self, reader: asyncio.StreamReader, client: Endpoint
    ) -> tuple[ProxyHeader, bytes] | None:
        """Read the incoming header strictly (bounded by its own length field and a timeout)."""
        s = self.settings
        assert s.accept is not None
        kinds = frozenset({HeaderKind(s.accept)})
        buf = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.connect_timeout
        try:
            while True:
                got = parse_header(buf, kinds, s.header.magic)
                if isinstance(got, ProxyHeader):
                    self.stats.headers_accepted += 1
                    if s.verbose:
                        self._log(f"{format_endpoint(client)}: accepted {_describe(got)}")
                    return got, buf[got.length :]
                more = await asyncio.wait_for(
                    reader.read(max(1, got.at_least - len(buf))), deadline - loop.time()
                )
                if not more:
                    raise HeaderError(f"connection closed after {len(buf)} bytes of the header")
                buf += more
        except (HeaderError, TimeoutError) as exc:
            self.stats.headers_rejected += 1
            why = "no complete header in time" if isinstance(exc, TimeoutError) else exc
            self._log(f"{format_endpoint(client)}: rejected {s.accept} header: {why}")
            return None

    async def _splice(
        self,
        creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        breader: asyncio.StreamReader,
        bwriter: asyncio.StreamWriter,
        client: Endpoint,
    ) -> bool:
        """Copy both directions until both saw EOF (True) or one failed (False, counted)."""
        pumps = [
            asyncio.create_task(self._pump(creader, bwriter, "bytes_to_backend")),
            asyncio.create_task(self._pump(breader, cwriter, "bytes_to_client")),
        ]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in pumps:
                t.cancel()
        failed = [t.exception() for t in done if not t.cancelled() and t.exception()]
        if failed:
            self.stats.aborted += 1
            if self.settings.verbose:
                self._log(f"{format_endpoint(client)}: {failed[0]}")
            return False
        self.stats.completed += 1
        return True

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: str
    ) -> None:
        while data := await reader.read(self.settings.chunk):
            writer.write(data)
            setattr(self.stats, counter, getattr(self.stats, counter) + len(data))
            await writer.drain()
        if writer.can_write_eof() and not writer.transport.is_closing():
            writer.write_eof()  # half-close: the other direction keeps flowing

    def _log(self, message: str) -> None:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _tune(writer: asyncio.StreamWriter, chunk: int) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    writer.transport.set_write_buffer_limits(high=4 * chunk)


def _oserror(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), so the peer cannot take the end for a clean one."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.fileno() != -1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _endpoint(name: tuple[str, int] | tuple[str, int, int, int]) -> Endpoint:
    return name[0], name[1]


def _describe(h: ProxyHeader) -> str:
    ends = ""
    if h.src_addr is not None:
        ends = f" {h.src_addr}:{h.src_port} -> {h.dst_addr}:{h.dst_port}"
    extra = f" {h.fields}" if h.fields else ""
    return f"{h.kind} {h.command} {h.family} ({h.length} bytes){ends}{extra}"


def summary(stats: GatewayStats) -> str:
    return f"{PROG}: " + ", ".join(f"{k} {v}" for k, v in asdict(stats).items())


async def _main(settings: GatewaySettings, stats_json: Path | None) -> int:
    gw = ReferenceGateway(settings)
    try:
        bound = await gw.start()
    except OSError as exc:
        print(
            f"{PROG}: cannot listen on {format_endpoint(settings.listen)}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    mode = "coalesced with the first client bytes" if settings.coalesce else "in its own segment"
    print(
        f"{PROG}: listening on {', '.join(map(format_endpoint, bound))}, backend "
        f"{format_endpoint(settings.backend)}, {settings.header.kind} header {mode}",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    await gw.close(settings.grace)
    print(summary(gw.stats), file=sys.stderr, flush=True)
    if stats_json is not None:
        stats_json.write_text(json.dumps(asdict(gw.stats), indent=2) + "\n")
    return 0


def serve(settings: GatewaySettings, stats_json: Path | None = None) -> int:
    """Run the gateway until SIGTERM or SIGINT; the exit status of the subcommand."""
    return asyncio.run(_main(settings, stats_json))
