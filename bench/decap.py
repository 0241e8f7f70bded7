"""Decapsulation benchmark: a VXLAN mirror capture through ``rewrite --decap`` vs ``suricata -r``.

Why these baselines: a mirror target runs Suricata on the encapsulated traffic anyway (it
decodes VXLAN itself, just without the VNI), so the question is what putting the normalizer in
front costs relative to that. The capture is the main benchmark's proxied file, every frame
wrapped in VXLAN (UDP 4789, correct UDP checksum) over IPv4, spread over four VNIs (mirror
sessions) by connection; decap and header stripping both run, as on a mirrored proxy bridge.

``python -m bench.decap [--packets N]`` runs it alone; ``python -m bench`` prints it as its last
section, reusing the capture it generated.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.synth import write_pair
from bench.timing import timed_child
from normalizer.adapters.pcap_io import CaptureReader, PcapWriter
from normalizer.commands.rewrite import rewrite_file
from normalizer.core.fastpath import compiled_available
from normalizer.core.options import Options
from tests.encap import vxlan_frame

PROXY_CIDR = "192.0.2.1/32"
VNIS = (1001, 1002, 1003, 1004)
UNDERLAY = ("10.99.0.1", "10.99.0.2")


def write_vxlan(plain: Path, out: Path) -> int:
    """Wrap every frame of ``plain`` in VXLAN; the VNI follows the client port (one connection,
    one mirror session; the server port 80 is always the smaller). Returns the packet count."""
    n = 0
    with plain.open("rb") as fin, out.open("wb") as fout:
        reader = CaptureReader(fin, str(plain))
        writer = PcapWriter(fout, 1, reader.nanosecond)
        for ts, frame, _orig in reader:
            ports = frame[34:38]  # untagged IPv4 without options, as synth.py writes
            port = max(int.from_bytes(ports[:2], "big"), int.from_bytes(ports[2:], "big"))
            vni = VNIS[port % len(VNIS)]
            writer.write(ts, vxlan_frame(frame, vni, *UNDERLAY, sport=49152 + port % 16384))
            n += 1
    return n


def ratio(
    work: Path, encap: Path, proxied: Path, rounds: int = 5
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Best-of-``rounds`` (wall, CPU) seconds of ``rewrite --decap`` on ``encap`` and of plain
    ``rewrite`` on ``proxied`` (the same frames untunnelled), both on the compiled engine,
    interleaved so a noisy neighbour slows both alike; each minimum taken on its own."""
    plain_opts = Options(proxies=(PROXY_CIDR,), engine="compiled")
    decap_opts = Options(
        proxies=(PROXY_CIDR,),
        engine="compiled",
        decapsulate=True,
        tunnel_peers=("0.0.0.0/0", "::/0"),
    )
    best = {"decap": [float("inf")] * 2, "plain": [float("inf")] * 2}
    for _ in range(rounds):
        for name, src, opts in (("decap", encap, decap_opts), ("plain", proxied, plain_opts)):
            os.sync()  # the writeback of the last output (or the fresh capture) not in this run
            t0, c0 = time.perf_counter(), time.process_time()
            rewrite_file(src, work / f"ratio-{name}.pcap", opts)
            b = best[name]
            b[0] = min(b[0], time.perf_counter() - t0)
            b[1] = min(b[1], time.process_time() - c0)
    d, p = best["decap"], best["plain"]
    return (d[0], d[1]), (p[0], p[1])


def run(work: Path, proxied: Path, flows: int) -> list[tuple[str, float, str]]:
    """Measure and print the decap section; returns its rows (name, seconds, note)."""
    encap = work / "vxlan.pcap"
    t0 = time.perf_counter()
    packets = write_vxlan(proxied, encap)
    print(
        f"\ndecap capture: {packets} VXLAN packets, {len(VNIS)} VNIs, {flows} proxied inner flows, "
        f"{encap.stat().st_size / 1e6:.1f} MB (wrapped in {time.perf_counter() - t0:.1f}s)"
    )
    rows: list[tuple[str, float, str]] = []
    t0 = time.perf_counter()
    opts = Options(proxies=(PROXY_CIDR,), decapsulate=True, tunnel_peers=("0.0.0.0/0", "::/0"))
    c = rewrite_file(encap, work / "decap-out.pcap", opts)
    ours = time.perf_counter() - t0
    assert c.tunnel_decapsulated == packets and c.tunnel_bad_header == 0, c
    assert c.headers_stripped.get("proxy-v2") == flows, c
    rows.append(("normalizer in process, --decap (+ strip)", ours, f"{packets / ours:,.0f} pkt/s"))
    su = 0.0
    suricata = shutil.which("suricata")
    if suricata:
        logdir = work / "suri-decap"
        logdir.mkdir(exist_ok=True)
        rules = Path(__file__).resolve().parent.parent / "suricata" / "rules" / "decoy.rules"
        for label, rulefile in (("no rules", "/dev/null"), ("decoy.rules", str(rules))):
            argv = [suricata, "-r", str(encap), "-k", "all", "-l", str(logdir), "-S", rulefile]
            wall, rc, _rss = timed_child(argv)
            note = f"{packets / wall:,.0f} pkt/s" if rc == 0 else f"exit {rc}"
            rows.append((f"suricata -r VXLAN file, {label}", wall, note))
            su = su or (wall if rc == 0 else 0.0)
    for name, secs, extra in rows:
        print(f"  {name:45s} {secs:8.3f} s  {extra}")
    if su:
        print(f"  decap wall vs suricata -r {ours / su:8.2f}x  (Suricata without rules)")
    if compiled_available():
        (dw, dc), (pw, pc) = ratio(work, encap, proxied)
        print(
            f"  --decap vs plain rewrite  {dw / pw:8.2f}x wall, {dc / pc:.2f}x CPU  (compiled "
            f"engine, best of 5 interleaved: {dw:.3f} s vs {pw:.3f} s wall)"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.decap")
    ap.add_argument("--packets", type=int, default=200_000)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="snbench-decap."))
    try:
        proxied, plain = work / "proxied.pcap", work / "plain.pcap"
        _packets, flows = write_pair(proxied, plain, args.packets)
        run(work, proxied, flows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
