"""``write_tap``: the compiled engine's frames written from C, one ``write()`` each (_tapsink.c).

Why: live hands the tap fd to the core instead of writing each frame from Python. A datagram
socket stands in for the tap here (one ``write()`` is one datagram, as one is one frame on a
tap), so the test needs no root: the datagrams must be the frames the engine hands ``drain()``
in list mode, in order; a write that fails must come back with its errno, cost exactly that one
frame, and the next call must resume with the frame after it (tap.py counts and recreates).
"""

from __future__ import annotations

import errno
import random
import socket

import pytest

from bench.synth import _connection
from normalizer.adapters.tap import Tap, TapStats
from normalizer.commands.live import LiveNormalizer
from normalizer.core.engine import Normalizer
from normalizer.core.fastpath import CompiledNormalizer, compiled_available
from normalizer.core.frame import LINKTYPE_ETHERNET
from normalizer.core.options import Options
from normalizer.core.pipeline import Pipeline
from normalizer.proxy_headers import proxy_v2

pytestmark = pytest.mark.skipif(
    not compiled_available(), reason="normalizer.core._fastpath is not built (no C compiler?)"
)

OPTIONS = Options(proxies=("192.0.2.1/32",))  # synth.py's proxy


def _frames(flows: int = 12) -> list[bytes]:
    rng = random.Random(5)
    out: list[bytes] = []
    for i in range(flows):
        hdr = proxy_v2.build(
            command="PROXY",
            family="TCP4",
            src="203.0.113.9",
            dst="198.51.100.1",
            sport=i + 1,
            dport=80,
        )
        out += _connection(rng, 2000 + i, hdr if i % 3 else b"", rng.randint(2, 9))
    return out


def _want(frames: list[bytes]) -> list[bytes]:
    """What the Python engine (the specification) forwards for these frames."""
    eng = Normalizer(OPTIONS, LINKTYPE_ETHERNET)
    for i, f in enumerate(frames):
        eng.feed(f, i * 1000)
    return [bytes(f) for _ts, f in eng.drain()]


def _sink_engine(frames: list[bytes]) -> CompiledNormalizer:
    eng = CompiledNormalizer(OPTIONS, LINKTYPE_ETHERNET)
    eng.set_sink(True)
    for i, f in enumerate(frames):
        eng.feed(f, i * 1000)
    assert eng.drain() == []  # everything went to the sink
    return eng


def _recv_all(s: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(s.recv(65536))
        except BlockingIOError:
            return got


def test_written_frames_are_the_forwarded_frames_in_order() -> None:
    frames = _frames()
    want = _want(frames)
    assert len(want) < len(frames)  # headers were stripped: rewritten frames are in the mix
    eng = _sink_engine(frames)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        b.setblocking(False)
        n, nbytes, err = eng.write_tap(a.fileno())
        got = _recv_all(b)
        assert (n, nbytes, err) == (len(want), sum(map(len, want)), 0)
        assert got == want
        assert eng.write_tap(a.fileno()) == (0, 0, 0)  # the sink was emptied


def test_a_failed_write_costs_that_frame_only_and_the_next_call_resumes() -> None:
    frames = _frames()
    want = _want(frames)
    eng = _sink_engine(frames)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.setblocking(False)  # a full peer queue: EAGAIN, as a tap write can fail mid-burst
        b.setblocking(False)
        got: list[bytes] = []
        lost: list[int] = []
        while True:
            _n, _nbytes, err = eng.write_tap(a.fileno())
            got += _recv_all(b)
            if not err:
                break
            assert err == errno.EAGAIN
            lost.append(len(got) + len(lost))  # the failed frame's index: after those written
        assert lost, "the peer queue never filled: the error path went untested"
        assert got == [f for i, f in enumerate(want) if i not in set(lost)]
        assert len(got) + len(lost) == len(want)


def test_bad_fd_fails_each_frame_once_and_empties_the_sink() -> None:
    frames = _frames(3)
    want = _want(frames)
    eng = _sink_engine(frames)
    errors = 0
    while True:
        n, _nbytes, err = eng.write_tap(-1)
        assert n == 0
        if not err:
            break
        assert err == errno.EBADF
        errors += 1
    assert errors == len(want)


def test_write_tap_needs_the_sink() -> None:
    eng = CompiledNormalizer(OPTIONS, LINKTYPE_ETHERNET)
    with pytest.raises(RuntimeError, match="set_sink"):
        eng.write_tap(1)


def _socket_tap(fd: int) -> Tap:
    """tap.Tap's write paths on a datagram socket instead of a device (one write = one frame)."""
    tap = Tap.__new__(Tap)
    tap.name, tap.stats, tap._fd = "socket", TapStats(), fd
    return tap


def _live_run(block: bytes, sink: bool) -> tuple[list[bytes], LiveNormalizer]:
    """LiveNormalizer's own block, failure and emit code on one ring block, into a socket."""
    from normalizer.adapters.afpacket import RingStats
    from tests.normalizer.core.test_fastpath import _BuggyCompiled

    opts = Options(proxies=("192.0.2.1/32",), engine="compiled")
    live = LiveNormalizer.__new__(LiveNormalizer)
    live.pipe = Pipeline(opts, LINKTYPE_ETHERNET, checksums="keep")
    eng = live.pipe.engine = _BuggyCompiled(opts, LINKTYPE_ETHERNET)
    live._write_tap = None
    if sink:
        eng.set_sink(True)
        live._write_tap = eng.write_tap
    live.frames_failed, live.internal_errors, live._kinds = 0, 0, set()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        b.setblocking(False)
        live.tap = _socket_tap(a.fileno())
        live._push_block(block, 0, True, RingStats())
        live._emit()
        return _recv_all(b), live


def test_a_failing_frame_goes_out_after_the_frames_before_it_as_on_the_list_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """live's guard with the sink: the frames buffered before a frame that raised are written
    first, then that frame untouched, then the rest -- the order the list path gives."""
    from tests.normalizer.adapters.test_afpacket import make_block

    rng = random.Random(8)
    hdr = proxy_v2.build(
        command="PROXY", family="TCP4", src="203.0.113.9", dst="198.51.100.1", sport=1, dport=80
    )
    good, bad = _connection(rng, 4000, hdr, 3), _connection(rng, 4001, b"poison" + hdr, 3)
    frames = good[:4] + bad[:4] + good[4:] + bad[4:]
    block = make_block([(1, i, fr, len(fr), 0, 0, 0) for i, fr in enumerate(frames)])
    got, live = _live_run(block, sink=True)
    want, reference = _live_run(block, sink=False)
    assert live.frames_failed == reference.frames_failed >= 1
    assert "ZeroDivisionError" in capsys.readouterr().err  # logged, as before
    assert live.tap.stats.frames == len(got) == len(want)
    assert got == want
    assert frames[7] in got  # the failing (poisoned header) frame itself went out untouched
