"""The frames ``live`` writes into its tap are the same whichever engine writes them (root only).

Why: with the compiled engine the output frames no longer pass through Python -- the core
buffers them and writes them to the tap from C (normalizer/core/_tapsink.c) -- while the Python
engine still writes one frame per ``os.write``. Claim: replaying one capture (proxied flows from
bench/synth.py, PROXY v2 from the trusted proxy) into a veth that ``live`` captures puts on the
tap, as tcpdump records it there, exactly the frames ``rewrite`` makes of that capture, frame for
frame and in order, for both engines; and the counters say every frame was written.
"""

from __future__ import annotations

import shutil
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
