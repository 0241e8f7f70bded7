"""A tap the process may not create fails with a message that names the device and its needs.

Why: under a sandboxed unit the bare strerror ("Operation not permitted", "Permission denied")
said nothing about which of the service's resources was refused (found under a real systemd,
tests/lab/test_systemd_real.py). Root with CAP_NET_ADMIN dropped stands in for such a unit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import sys
from normalizer.adapters.tap import Tap
try:
    Tap("snltapperm0")
except OSError as exc:
    print(exc.strerror)
    sys.exit(3)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (tap devices)")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv missing")
@pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun")
def test_tap_without_cap_net_admin_names_the_tap_and_what_it_needs() -> None:
    p = subprocess.run(
        ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", sys.executable]
        + ["-c", SCRIPT],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert p.returncode == 3, p.stdout + p.stderr
    assert "tap snltapperm0" in p.stdout and "CAP_NET_ADMIN" in p.stdout, p.stdout


def _flows() -> tuple[list[bytes], list[bytes]]:
    """Frames of a few flows from the trusted proxy, and what the Python engine forwards."""
    import random

    from bench.synth import _connection
    from normalizer.core.engine import Normalizer
    from normalizer.core.options import Options

    rng = random.Random(3)
    frames = [f for i in range(4) for f in _connection(rng, 3000 + i, b"", 5)]
    eng = Normalizer(Options(proxies=("192.0.2.1/32",)))
    for i, f in enumerate(frames):
        eng.feed(f, i)
    return frames, [bytes(f) for _ts, f in eng.drain()]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (tap devices)")
@pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun")
@pytest.mark.parametrize("compiled", [True, False], ids=["from-c", "from-python"])
def test_tap_deleted_before_a_burst_costs_one_frame_and_is_recreated(compiled: bool) -> None:
    """``ip link del`` under a running writer: the first write fails (EBADFD), is counted, the
    device is recreated and the rest of the burst goes into the new one -- the same counts
    whether the frames are written from C (``write_from``) or one by one from Python."""
    from normalizer.adapters.tap import Tap
    from normalizer.core.fastpath import CompiledNormalizer, compiled_available
    from normalizer.core.options import Options

    if compiled and not compiled_available():
        pytest.skip("the compiled engine is not built")
    frames, out = _flows()
    name = "snltapdel0"
    tap = Tap(name, 1500)
    try:
        subprocess.run(["ip", "link", "del", name], check=True)
        if compiled:
            eng = CompiledNormalizer(Options(proxies=("192.0.2.1/32",)))
            eng.set_sink(True)
            for i, f in enumerate(frames):
                eng.feed(f, i)
            tap.write_from(eng.write_tap)
        else:
            for f in out:
                tap.write(f)
        assert tap.exists()
        assert (tap.stats.write_errors, tap.stats.recreated) == (1, 1)
        assert tap.stats.frames == len(out) - 1
        assert tap.stats.bytes == sum(map(len, out[1:]))
    finally:
        tap.remove()


MULTI_QUEUE = """
import os
from normalizer.adapters.tap import IFF_MULTI_QUEUE, Tap, TapKindError, tun_flags
a, b = Tap("mq0", multi_queue=True), Tap("mq0", multi_queue=True)
assert tun_flags("mq0") & IFF_MULTI_QUEUE
assert os.write(a._fd, bytes(60)) == os.write(b._fd, bytes(60)) == 60  # a queue each
one = Tap("mq0")  # one worker on a multi-queue tap: attaches as one more queue
assert os.write(one._fd, bytes(60)) == 60
single = Tap("sq0")
assert not tun_flags("sq0") & IFF_MULTI_QUEUE
try:
    Tap("sq0", multi_queue=True)
except TapKindError as exc:
    print(exc.strerror)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (tap devices, network namespaces)")
@pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun")
def test_multi_queue_taps_take_one_queue_per_opener_and_a_single_queue_one_is_refused() -> None:
    ns = f"snltapmq{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        p = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", MULTI_QUEUE],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "tap sq0 exists as a single-queue device" in p.stdout, p.stdout
    assert "ip link del sq0" in p.stdout
