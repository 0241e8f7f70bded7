"""The reference gateway on loopback: real sockets, a backend that decodes the header it gets.

Every test runs a real gateway (in-process, or the CLI as a subprocess) between a client and a
small asyncio backend that reads the header with our own decoder, records it, and echoes. The
checks: the header names the client's real address and the address it connected to; both
directions carry every byte (several MB each way), EOF in one direction leaves the other open
(half-close); the header goes out alone or coalesced as asked; failures close and are counted.
Only 127.0.0.1 and ::1 are used. Waits are for events, bounded only to fail instead of hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from normalizer.commands.reference_gateway.options import GatewaySettings, HeaderSpec
from normalizer.commands.reference_gateway.proxy import ReferenceGateway
from normalizer.proxy_headers.base import ProxyHeader
from normalizer.proxy_headers.detect import HeaderKind, parse_header

HANG = 60.0  # only ever reached when something is broken


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


LOOPBACKS = [
    "127.0.0.1",
    pytest.param(
        "::1",
        marks=pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here"),
    ),
]


def data_segs_in(sock: Any) -> int:
    """tcp_info.tcpi_data_segs_in (Linux >= 4.6): data segments received on ``sock``."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, 152)[0])


@dataclass
class Backend:
    """Decodes the header of each connection, then echoes; at EOF sends a digest and closes."""

    kind: str
    host: str
    port: int = 0
    headers: list[ProxyHeader] = field(default_factory=list)
    first_chunks: list[bytes] = field(default_factory=list)
    first_segments: list[int] = field(default_factory=list)  # data segments in first_chunks
    header_seen: asyncio.Event = field(default_factory=asyncio.Event)
    reading: asyncio.Event = field(default_factory=asyncio.Event)  # cleared: stop reading
    done: list[int] = field(default_factory=list)  # bytes received per finished connection

    def __post_init__(self) -> None:
        self.reading.set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            buf = await reader.read(65536)
            self.first_chunks.append(buf)
            self.first_segments.append(data_segs_in(writer.get_extra_info("socket")))
            while True:
                got = parse_header(buf, frozenset({HeaderKind(self.kind)}))
                if isinstance(got, ProxyHeader):
                    break
                buf += await reader.readexactly(got.at_least - len(buf))
            self.headers.append(got)
            self.header_seen.set()
            data, digest, n = buf[got.length :], hashlib.sha256(), 0
            while True:
                if data:
                    digest.update(data)
                    n += len(data)
                    writer.write(data)
                    await writer.drain()
                await self.reading.wait()
                data = await reader.read(65536)
                if not data:
                    break
            # EOF from the gateway: the client half-closed. This direction must still work.
            writer.write(b"EOF:" + digest.digest())
            await writer.drain()
            self.done.append(n)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the gateway reset or closed early: done stays without this connection
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def running(
    kind: str = "custom", host: str = "127.0.0.1", **settings: Any
) -> AsyncIterator[tuple[ReferenceGateway, Backend]]:
    """A backend and a gateway in front of it, both on ``host`` with ephemeral ports."""
    backend = Backend(kind, host)
    server = await asyncio.start_server(backend.handle, host, 0)
    backend.port = server.sockets[0].getsockname()[1]
    gw = ReferenceGateway(
        GatewaySettings(
            listen=(host, 0), backend=(host, backend.port), header=HeaderSpec(kind), **settings
        )
    )
    await gw.start()
    try:
        yield gw, backend
    finally:
        await gw.close(grace=HANG)  # returns once every connection task has ended
        server.close()


async def connect(gw: ReferenceGateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert gw._server is not None
    host, port = gw._server.sockets[0].getsockname()[:2]
    return await asyncio.open_connection(host, port)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), HANG))


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while chunk := await reader.read(1 << 20):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("host", LOOPBACKS)
@pytest.mark.parametrize("kind", ["custom", "proxy-v1", "proxy-v2"])
def test_backend_sees_the_real_client(kind: str, host: str) -> None:
    async def go() -> None:
        async with running(kind, host) as (gw, backend):
            reader, writer = await connect(gw)
            me = writer.get_extra_info("sockname")
            hit = writer.get_extra_info("peername")
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"hello"
            writer.write_eof()
            assert await read_to_eof(reader) == b"EOF:" + hashlib.sha256(b"hello").digest()
            writer.close()
        (h,) = backend.headers
        assert h.kind == kind
        assert (h.src_addr, h.src_port) == (me[0], me[1])
        assert (h.dst_addr, h.dst_port) == (hit[0], hit[1])
        assert h.family == ("TCP6" if ":" in host else "TCP4")
        assert gw.stats.completed == gw.stats.accepted == gw.stats.headers_written == 1
        assert (gw.stats.bytes_to_backend, gw.stats.bytes_to_client) == (5, 5 + 4 + 32)

    run(go)


@pytest.mark.parametrize("coalesce", [False, True], ids=["separate", "coalesce"])
def test_large_transfer_both_ways_and_half_close(coalesce: bool) -> None:
    """8 MB up, echoed 8 MB down while still sending; after the client's EOF the backend still
    answers (its digest of everything), and its close reaches the client as EOF."""
    payload = random.Random(7).randbytes(8 << 20)

    async def go() -> None:
        async with running(coalesce=coalesce) as (gw, backend):
            reader, writer = await connect(gw)

            async def send() -> None:
                for i in range(0, len(payload), 100_000):
                    writer.write(payload[i : i + 100_000])
                    await writer.drain()
                writer.write_eof()

            sender = asyncio.create_task(send())
            got = await read_to_eof(reader)
            await sender
            writer.close()
        assert got == payload + b"EOF:" + hashlib.sha256(payload).digest()
        assert backend.done == [len(payload)]
        assert gw.stats.completed == 1 and gw.stats.aborted == 0

    run(go)


def test_slow_backend_stops_the_client_instead_of_growing_buffers() -> None:
    """A backend that stops reading: the gateway must stop reading the client (drain) instead
    of buffering. Its write buffers stay within their bound at every look while the client
    pushes 64 MB, and once nothing moves any more the rest is still in the client."""
    total, chunk = 64 << 20, 16384
    bound = 2 * 5 * chunk  # per direction: the high-water mark plus one read

    async def go() -> None:
        async with running(chunk=chunk) as (gw, backend):
            backend.reading.clear()
            reader, writer = await connect(gw)
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            writer.write(bytes(total))  # asyncio keeps what the socket does not take
            last, unchanged = -1, 0
            while unchanged < 20:  # until the transfer has stalled
                await asyncio.sleep(0.01)
                assert gw.buffered() <= bound, gw.buffered()
                unchanged = unchanged + 1 if gw.stats.bytes_to_backend == last else 0
                last = gw.stats.bytes_to_backend
            assert last < total and writer.transport.get_write_buffer_size() > 0
            backend.reading.set()
            writer.write_eof()
            got = await read_to_eof(reader)
            writer.close()
        assert got == bytes(total) + b"EOF:" + hashlib.sha256(b"x" + bytes(total)).digest()
        assert gw.stats.bytes_to_backend == 1 + total

    run(go)


def test_separate_header_is_sent_before_any_client_byte() -> None:
    async def go() -> None:
        async with running() as (gw, backend):
            reader, writer = await connect(gw)
            await backend.header_seen.wait()  # the client has sent nothing yet
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
        (h,) = backend.headers
        assert len(backend.first_chunks[0]) == h.length
        assert backend.first_segments == [1]

    run(go)


def test_coalesced_header_arrives_with_the_first_client_bytes() -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

    async def go() -> None:
        async with running(coalesce=True, coalesce_wait=HANG) as (gw, backend):
            reader, writer = await connect(gw)
            writer.write(request)
            assert await reader.readexactly(len(request)) == request
            writer.close()
        (h,) = backend.headers
        assert backend.first_chunks[0][h.length :] == request
        assert backend.first_segments == [1]  # one segment carried header and request

    run(go)


def test_coalesce_gives_up_waiting_when_the_server_speaks_first() -> None:
    async def go() -> None:
        async with running(coalesce=True, coalesce_wait=0.05) as (gw, backend):
            _reader, writer = await connect(gw)
            await backend.header_seen.wait()  # came without any client byte
            writer.close()
        (h,) = backend.headers
        assert len(backend.first_chunks[0]) == h.length

    run(go)


def test_accept_mode_strips_and_translates() -> None:
    """client -> gateway (custom) -> receiver (--accept custom, writes PROXY v1) -> backend: the
    backend learns the first client and the address it hit, not the gateway's."""

    async def go() -> None:
        async with running("proxy-v1", accept="custom") as (receiver, backend):
            assert receiver._server is not None
            rport = receiver._server.sockets[0].getsockname()[1]
            front = ReferenceGateway(
                GatewaySettings(("127.0.0.1", 0), ("127.0.0.1", rport), HeaderSpec("custom"))
            )
            await front.start()
            try:
                reader, writer = await connect(front)
                me, hit = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
                writer.write(b"abc")
                assert await reader.readexactly(3) == b"abc"
                writer.close()
            finally:
                await front.close(grace=HANG)
        (h,) = backend.headers
        assert (h.kind, h.src_addr, h.src_port, h.dst_port) == ("proxy-v1", *me[:2], hit[1])
        assert receiver.stats.headers_accepted == 1 and receiver.stats.headers_rejected == 0

    run(go)


@pytest.mark.parametrize(
    "sent",
    [b"GET / HTTP/1.1\r\n\r\n", b"\x8aGW1\r\n\x1a\n\x02\x04\x00\x18", b"\x8aGW1\r\n"],
    ids=["no-header", "bad-version", "eof-inside-header"],
)
def test_accept_mode_closes_on_a_bad_header(sent: bytes) -> None:
    async def go() -> None:
        async with running("proxy-v1", accept="custom") as (receiver, backend):
            reader, writer = await connect(receiver)
            writer.write(sent)
            writer.write_eof()
            with contextlib.suppress(ConnectionResetError):
                assert await read_to_eof(reader) == b""
            writer.close()
        assert receiver.stats.headers_rejected == 1 and backend.headers == []

    run(go)


def test_backend_down_closes_the_client(capsys: pytest.CaptureFixture[str]) -> None:
    async def go() -> None:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        gw = ReferenceGateway(GatewaySettings(("127.0.0.1", 0), ("127.0.0.1", dead)))
        await gw.start()
        reader, writer = await connect(gw)
        with contextlib.suppress(ConnectionResetError):
            assert await read_to_eof(reader) == b""
        writer.close()
        await gw.close(grace=HANG)
        assert gw.stats.backend_failed == 1 and gw.stats.headers_written == 0

    run(go)
    assert ": Connection refused" in capsys.readouterr().err


def test_backend_that_never_answers_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    """A listener whose accept queue is full drops SYNs: the connect can only time out."""

    async def go() -> None:
        with socket.socket() as full, socket.socket() as filler:
            full.bind(("127.0.0.1", 0))
            full.listen(0)  # one queued connection fills it; nobody accepts
            filler.connect(full.getsockname())
            settings = GatewaySettings(
                ("127.0.0.1", 0), full.getsockname()[:2], connect_timeout=0.2
            )
            gw = ReferenceGateway(settings)
            await gw.start()
            reader, writer = await connect(gw)
            with contextlib.suppress(ConnectionResetError):
                assert await read_to_eof(reader) == b""
            writer.close()
            await gw.close(grace=HANG)
        assert gw.stats.backend_failed == 1 and gw.stats.headers_written == 0

    run(go)
    assert ": timed out" in capsys.readouterr().err


def test_connections_beyond_the_limit_are_refused() -> None:
    async def go() -> None:
        async with running(max_connections=1) as (gw, _backend):
            r1, w1 = await connect(gw)
            w1.write(b"1")
            assert await r1.readexactly(1) == b"1"
            r2, w2 = await connect(gw)
            with contextlib.suppress(ConnectionResetError):
                assert await read_to_eof(r2) == b""
            w2.close()
            w1.write(b"2")  # the first one is unaffected
            assert await r1.readexactly(1) == b"2"
            w1.close()
        assert (gw.stats.accepted, gw.stats.refused) == (1, 1)

    run(go)


def test_client_reset_aborts_the_backend_side() -> None:
    async def go() -> None:
        async with running() as (gw, backend):
            reader, writer = await connect(gw)
            writer.write(b"data")
            assert await reader.readexactly(4) == b"data"
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST
        assert gw.stats.aborted == 1 and gw.stats.completed == 0
        assert backend.done == []  # the backend saw a reset, not a clean end of stream

    run(go)


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    """The subcommand as a user runs it: listens (port 0 reported), proxies, and on SIGTERM
    stops, exits 0 and writes its counters."""
    stats = tmp_path / "stats.json"

    async def go() -> None:
        backend = Backend("custom", "127.0.0.1")
        server = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
        bport = server.sockets[0].getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "normalizer.cli",
            "reference-gateway",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            f"127.0.0.1:{bport}",
            "--stats-json",
            str(stats),
            "--grace",
            "0.2",
            "-v",
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert proc.stderr is not None
        line = (await proc.stderr.readline()).decode()
        assert "listening on 127.0.0.1:" in line, line
        port = int(line.split("listening on 127.0.0.1:")[1].split(",")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hi")
        writer.write_eof()
        assert (await read_to_eof(reader))[:2] == b"hi"
        writer.close()
        idle_reader, idle = await asyncio.open_connection("127.0.0.1", port)
        idle.write(b"x")  # proxied, then left open past the grace time
        assert await idle_reader.readexactly(1) == b"x"
        proc.send_signal(signal.SIGTERM)
        err = (await proc.stderr.read()).decode()
        assert await proc.wait() == 0, err
        with contextlib.suppress(ConnectionResetError):
            assert await read_to_eof(idle_reader) == b""  # ended by the gateway's exit
        idle.close()
        server.close()
        assert "custom header, 24 bytes" in err and "completed 1" in err, err

    run(go)
    got = json.loads(stats.read_text())
    assert got["accepted"] == got["headers_written"] == 2 and got["completed"] == 1


def test_cli_cannot_listen_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    from normalizer.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        argv = ["reference-gateway", "--listen", f"127.0.0.1:{port}", "--backend", "127.0.0.1:9"]
        assert main(argv) == 1
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err
