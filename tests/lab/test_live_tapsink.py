"""The frames ``live`` writes into its tap are the same whichever engine writes them (root only).

Why: with the compiled engine the output frames no longer pass through Python -- the core
buffers them and writes them to the tap from C (normalizer/core/_tapsink.c) -- while the Python
engine still writes one frame per ``os.write``. Claim: replaying one capture (proxied flows from
bench/synth.py, PROXY v2 from the trusted proxy) into a veth that ``live`` captures puts on the
tap, as tcpdump records it there, exactly the frames ``rewrite`` makes of that capture, frame for
frame and in order, for both engines; and the counters say every frame was written.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.synth import write_pair
from normalizer.adapters.pcap_io import CaptureReader
from normalizer.commands.rewrite import rewrite_file
from normalizer.core.fastpath import compiled_available
from normalizer.core.options import Options
from tests.lab.live_demo import TAP, start_live, stop_live
from tests.lab.netlab import Lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

PROXY = "192.0.2.1/32"  # synth.py's proxy address


@pytest.fixture(scope="module")
def lab(lab_ready: None) -> Iterator[Lab]:
    if shutil.which("tcpreplay") is None:
        pytest.skip("tcpreplay missing")
    with Lab() as lab:
        lab.ip("sensor", "link", "add", "rp0", "type", "veth", "peer", "name", "rp1")
        for dev in ("rp0", "rp1"):
            lab.sh("sensor", "ethtool", "-K", dev, "tx", "off", "gso", "off", "gro", "off")
            lab.ip("sensor", "link", "set", dev, "up")
        yield lab


def _frames(path: Path) -> list[bytes]:
    with path.open("rb") as fh:
        return [frame for _ts, frame, _orig in CaptureReader(fh, str(path))]


def _live_tap(lab: Lab, d: Path, capture: Path, engine: str) -> tuple[list[bytes], dict[str, int]]:
    """Replay ``capture`` into rp0 while ``live --engine ENGINE`` captures rp1; the tap's frames."""
    live = start_live(lab, d, f"live-{engine}", None, "--engine", engine, iface="rp1", proxy=PROXY)
    out = d / f"tap-{engine}.pcap"
    try:
        # -s/-B: a tap's MTU makes libpcap's ring slots 64 KiB each; bursts would overflow it
        with lab.capture(out, port=TAP, extra=("-s", "2000", "-B", "16384")) as cap:
            lab.sh("sensor", "tcpreplay", "-q", "-i", "rp0", "--pps", "4000", str(capture))
            counters = stop_live(lab, live)  # SIGTERM: the last frames are written, then exit
    finally:
        if live.proc.poll() is None:
            live.proc.kill()
    assert cap.dropped == 0, "tcpdump lost frames on the tap: the comparison would be void"
    return _frames(out), counters


@pytest.mark.parametrize("engine", ["compiled", "python"])
def test_tap_frames_equal_rewrite_output_frame_for_frame(
    lab: Lab, tmp_path: Path, engine: str
) -> None:
    if engine == "compiled" and not compiled_available():
        pytest.skip("the compiled engine is not built")
    src, rewritten = tmp_path / "in.pcap", tmp_path / "rewritten.pcap"
    packets, flows = write_pair(src, Path("/dev/null"), 2500)
    rewrite_file(src, rewritten, Options(proxies=(PROXY,)))
    want = _frames(rewritten)
    assert len(want) < packets  # header segments were dropped: rewritten flows are in the mix

    got, c = _live_tap(lab, tmp_path, src, engine)

    assert c["kernel_drops"] == 0 and c["ring_frames"] == packets
    assert c["headers_stripped"] == {"proxy-v2": flows}
    assert c["tap_write_errors"] == 0 and c["tap_frames"] == c["packets_out"] == len(want)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"frame {i} differs"


STOP_SCRIPT = """
import sys
from pathlib import Path
from normalizer.commands.live import LiveNormalizer, LiveSettings
from normalizer.core.options import Options
settings = LiveSettings(
    iface="rp1", tap="snlstop0", block_timeout_ms=1000, stats_json=Path(sys.argv[1])
)
LiveNormalizer(settings, lambda: Options(proxies=("192.0.2.1/32",))).run()
"""


def test_frames_just_before_sigterm_are_not_lost(lab: Lab, tmp_path: Path) -> None:
    """The ring hands a block over only when its timeout retires it; a SIGTERM right after the
    last frames must still get them (a one-second block timeout makes the window wide)."""
    src = tmp_path / "in.pcap"
    write_pair(src, Path("/dev/null"), 5)
    stats, log = tmp_path / "stats.json", tmp_path / "live.log"
    proc = lab.spawn("sensor", [sys.executable, "-c", STOP_SCRIPT, str(stats)], log)
    try:
        deadline = time.monotonic() + 30
        while b"live on" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        lab.sh("sensor", "tcpreplay", "-q", "-i", "rp0", "--topspeed", str(src))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc in lab.procs:
            lab.procs.remove(proc)
        lab.sh("sensor", "ip", "link", "del", "snlstop0", check=False)
    c = json.loads(stats.read_text())
    sent = len(_frames(src))
    assert c["kernel_drops"] == 0 and c["kernel_packets"] == sent
    assert c["ring_frames"] == sent, "frames of the last, unretired block were lost"
