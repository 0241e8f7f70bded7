"""Record every lab scenario (raw + baseline) into a directory.

Usage: ``python -m tests.lab.record OUTDIR [SCENARIO ...]`` (as root). Why a module and not a
shell script: it reuses the exact scenarios the tests use, so committed pcaps match the tests.
Besides the proxy-bridge scenarios, ``vxlan-haproxy-v2`` records the tunnel lab's mirrored proxy
bridge: the HAProxy -> nginx hop carried in VXLAN (VNI 100) on the underlay, and its baseline;
``host-offload`` records the host lab's bridge (gateways on the host, two decoys, offloads on).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path

from tests.lab import hostlab, tunnel_lab
from tests.lab.netlab import Lab
from tests.lab.scenarios import SCENARIOS

TUNNEL = "vxlan-haproxy-v2"
HOST = hostlab.OFFLOAD_SCENARIO


def record_tunnel(outdir: Path) -> None:
    """The mirrored proxy bridge: PROXY v2 connections inside VXLAN, as a mirror target sees."""
    work = outdir / "work" / TUNNEL
    with tunnel_lab.VxlanLab() as lab:
        raw, baseline = tunnel_lab.record_proxied(lab, work)
    shutil.copy(raw, outdir / f"{TUNNEL}.pcap")
    shutil.copy(baseline, outdir / f"{TUNNEL}.baseline.pcap")
    print(f"{TUNNEL}: raw={outdir / f'{TUNNEL}.pcap'} proxy=192.0.2.1/32 (decapsulate)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.record", description=__doc__)
    ap.add_argument("outdir", type=Path)
    ap.add_argument(
        "scenarios",
        nargs="*",
        choices=[[], *SCENARIOS, TUNNEL, HOST],
        metavar="SCENARIO",
        help=f"default: all of {', '.join(SCENARIOS)} ({TUNNEL} and {HOST} only when named)",
    )
    args = ap.parse_args(argv)
    # SIGTERM -> SystemExit, so the Lab's __exit__ removes namespaces and processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    wanted = args.scenarios or list(SCENARIOS)
    bridge = [name for name in wanted if name in SCENARIOS]
    if bridge:
        with Lab() as lab:
            for name in bridge:
                caps = SCENARIOS[name](lab, args.outdir)
                print(f"{caps.name}: raw={caps.raw} baseline={caps.baseline} proxy={caps.proxy}")
    if TUNNEL in wanted:
        record_tunnel(args.outdir)
    if HOST in wanted:
        raw, baseline = hostlab.record_offload(args.outdir)
        print(f"{HOST}: raw={raw} baseline={baseline} proxy={hostlab.BRIDGE_ADDR}/32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
