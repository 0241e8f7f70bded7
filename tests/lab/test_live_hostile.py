"""The live path under hostile traffic (root only): no frame stops it, nothing is lost.

Claims: (1) ``live --decap --cache`` keeps running through a replay of hostile frames sent onto
the bridge port -- the one-datagram crash of issue 11 (an inner IPv4 header with version nibble
6 and a length past the capture), tunnels from a host that is no tunnel peer carrying forged
PROXY headers, a PROXY v2 UNIX header with a non-UTF-8 path inside a peer's tunnel, and
thousands of bit-flipped real frames -- and every captured frame reaches the tap; (2) a start
that fails (the metrics port taken) removes the tap it created and leaves a running one alone.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from normalizer.adapters.pcap_io import PcapWriter
from normalizer.proxy_headers import proxy_v2
from tests import encap
from tests.lab.live_demo import NORMALIZER, TAP, start_live, stop_live
from tests.lab.netlab import DECOY, GATEWAY_BACK, Lab
from tests.normalizer.core.test_engine import V2, conversation
from tests.normalizer.packets import Conv

pytestmark = [pytest.mark.root, pytest.mark.lab]

PEER = GATEWAY_BACK[4]  # the tunnel peer: the gateway side of the bridge
STRANGER = "10.66.0.1"  # anyone else who can reach the VXLAN port


@pytest.fixture(scope="module")
def lab(lab_ready: None) -> Iterator[Lab]:
    if shutil.which("tcpreplay") is None:
        pytest.skip("tcpreplay missing")
    with Lab() as lab:
        yield lab


def _vx(inner: bytes, src: str, vni: int = 5) -> bytes:
    return encap.vxlan_frame(inner, vni, src, DECOY[4])


def hostile(seed: int = 11) -> list[bytes]:
    rng = random.Random(seed)
    proxied = conversation(Conv(), V2, coalesce=True)
    bad_ip = bytes(12) + b"\x08\x00" + b"\x65\x00" + (2000).to_bytes(2, "big") + bytes(16)
    unix = proxy_v2.build(
        "PROXY", "UNIX", src=b"/run/\xff\xfe".decode("utf-8", "surrogateescape"), dst="/x"
    )
    frames = [_vx(bad_ip, PEER)] * 3  # class 1: killed live --decap before
    frames += [_vx(f, STRANGER) for f in proxied]  # class 4: forged header, not a peer
    frames += [_vx(f, PEER, 6) for f in conversation(Conv(cport=41000), unix, coalesce=True)]
    base = proxied + [_vx(f, PEER, 7) for f in proxied] + frames
    for _ in range(3000):  # bit flips in everything above
        f = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 4)):
            f[rng.randrange(len(f))] ^= 1 << rng.randrange(8)
        frames.append(bytes(f))
    frames += [bytes(rng.randrange(256) for _ in range(rng.randint(14, 200))) for _ in range(300)]
    return frames


def test_live_decap_keeps_running_through_hostile_frames(lab: Lab, tmp_path: Path) -> None:
    frames = hostile()
    pcap = tmp_path / "hostile.pcap"
    with pcap.open("wb") as fh:
        w = PcapWriter(fh, 1)
        for i, f in enumerate(frames):
            w.write(1_700_000_000 * 10**9 + i * 10_000, f)
    extra = ("--decap", "--tunnel-peer", f"{PEER}/32", "--metrics-port", "9111")
    live = start_live(lab, tmp_path, "live", tmp_path / "c.db", *extra)
    try:
        lab.sh("gateway", "tcpreplay", "-q", "--pps=20000", "-i", "g1", str(pcap), timeout=120)
        _failed_start_leaves_no_tap(lab)
    finally:
        counters = stop_live(lab, live)  # it answers SIGTERM: still running, writes its stats
    assert counters["ring_frames"] >= len(frames), counters  # plus the sensor's own chatter
    assert counters["kernel_drops"] == 0 and counters["tap_write_errors"] == 0, counters
    assert counters["frames_failed"] == 0 and counters["internal_errors"] == 0, counters
    assert counters["tunnel_inner_malformed"] >= 3 and counters["tunnel_untrusted"] >= 8
    assert counters["cache_errors"] == 0 and counters["cache_rows"] >= 1  # the UNIX header
    dropped = counters["packets_dropped"]
    assert counters["tap_frames"] == counters["ring_frames"] - dropped, counters
    assert "Traceback" not in live.log.read_text()


def _failed_start_leaves_no_tap(lab: Lab) -> None:
    """A second live on the same metrics port fails to start: exit 1 naming the flag, the tap
    it had created removed, the running one's tap untouched."""
    argv = [*NORMALIZER, "live", "--iface", "sg", "--tap", "snlfail0", "--proxy", PEER]
    res = subprocess.run(
        lab.cmd("sensor", *argv, "--metrics-port", "9111"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and "--metrics-port 9111" in res.stderr, res.stderr
    links = lab.ip("sensor", "-o", "link", "show")
    assert "snlfail0" not in links and TAP in links
    argv[argv.index("sg")] = "nonexistent0"  # no such interface: the ring fails, not the port
    res = subprocess.run(lab.cmd("sensor", *argv), capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "nonexistent0" in res.stderr, res.stderr
    assert "snlfail0" not in lab.ip("sensor", "-o", "link", "show")
