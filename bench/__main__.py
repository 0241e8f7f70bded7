"""``./run bench``: normalizer speed and memory against baselines measured in the same run.

``./run bench live [--rates ...]`` instead measures the live path in the lab (root; see
bench/live.py): packets/s, Gbit/s, CPU per packet and kernel drops next to Suricata's own capture;
``./run bench live --replay``: packets/s per core from a replayed capture (bench/live_replay.py).
``./run bench appliance``: the appliance's return and tap paths per core (bench/appliance.py).

Prints wall times, packets/s, and the ratios the core issue sets as targets: >=100x faster than
a naive scapy normalizer, <=1.5x tcprewrite's wall time, <=0.5x Suricata's wall time on the
header-free file, <=400 bytes of memory per tracked flow.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench.scapy_baseline import scapy_normalize
from bench.synth import write_pair
from bench.timing import timed_child
from normalizer.commands.rewrite import rewrite_file
from normalizer.core.fastpath import compiled_available
from normalizer.core.options import Options

PROXY_CIDR = "192.0.2.1/32"


def bytes_per_flow(flows: int, engine: str = "python") -> float:
    """Memory the engine holds per ACTIVE flow (table entry, key, state), via tracemalloc
    (which also sees the compiled engine's PyMem allocations)."""
    import random

    from bench.synth import _connection
    from normalizer.core.fastpath import make_engine
    from normalizer.proxy_headers import proxy_v2

    rng = random.Random(7)
    hdr = proxy_v2.build(
        command="PROXY", family="TCP4", src="203.0.113.1", dst="198.51.100.1", sport=1, dport=80
    )
    first = [_connection(rng, 1024 + i % 60000, hdr, 0)[:4] for i in range(flows)]
    # distinct 4-tuples beyond 60000 ports need more client addresses; keep flows <= 60000
    eng = make_engine(Options(proxies=(PROXY_CIDR,), max_flows=flows + 1), 1, engine)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for conn in first:
        for fr in conn:
            eng.feed(fr, 0)
        eng.drain()
        eng.drain_events()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(eng.table) == flows
    return (after - before) / flows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["live"]:
        from bench import live

        return live.main(argv[1:])
    if argv[:1] == ["appliance"]:
        from bench import appliance

        return appliance.main(argv[1:])
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        epilog="python -m bench live --help: the live benchmark; python -m bench appliance"
        " --help: the appliance's return and tap paths per core",
    )
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument(
        "--scapy-packets",
        type=int,
        default=3000,
        help="packets the (slow) scapy baseline processes; its rate is per packet",
    )
    ap.add_argument("--flows-for-memory", type=int, default=50_000)
    ap.add_argument("--eve-lines", type=int, default=200_000, help="enricher benchmark size")
    ap.add_argument("--keep", type=Path, help="keep the generated captures in this folder")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best one kept)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="snbench."))
    try:
        proxied, plain = work / "proxied.pcap", work / "plain.pcap"
        t0 = time.perf_counter()
        packets, flows = write_pair(proxied, plain, args.packets)
        print(
            f"capture: {packets} packets, {flows} proxied flows, "
            f"{proxied.stat().st_size / 1e6:.1f} MB (generated in {time.perf_counter() - t0:.1f}s)"
        )
        rows: list[tuple[str, float, str]] = []
        from bench import engines  # both engines vs tcprewrite and suricata, interleaved

        engines.run(work, args.packets, args.rounds)
        t0 = time.perf_counter()
        rewrite_file(proxied, work / "out.pcap", Options(proxies=(PROXY_CIDR,)))
        ours = time.perf_counter() - t0
        cli = shutil.which("suricata-normalizer") or str(
            Path(sys.executable).parent / "suricata-normalizer"
        )
        wall, _rc, rss = timed_child(
            [
                cli,
                "rewrite",
                str(proxied),
                "-o",
                str(work / "out2.pcap"),
                "--proxy",
                PROXY_CIDR,
                "-q",
            ]
        )
        rows.append(("normalizer CLI (incl. start-up)", wall, f"peak RSS {rss / 1024:.0f} MiB"))

        n = min(args.scapy_packets, packets)
        t0 = time.perf_counter()
        done = scapy_normalize(proxied, work / "scapy.pcap", PROXY_CIDR, limit=n)
        scapy_per_pkt = (time.perf_counter() - t0) / done
        rows.append(
            (
                f"naive scapy normalizer ({done} pkts, scaled)",
                scapy_per_pkt * packets,
                f"{1 / scapy_per_pkt:,.0f} pkt/s",
            )
        )

        per_flow = {
            e: bytes_per_flow(min(args.flows_for_memory, 60000), e)
            for e in (("compiled", "python") if compiled_available() else ("python",))
        }
        print()
        for name, secs, extra in rows:
            print(f"  {name:45s} {secs:8.3f} s  {extra}")
        for e, b in per_flow.items():
            print(f"  {'memory per tracked flow, ' + e + ' engine':45s} {b:8.0f} B  (<= 400)")
        print(f"  speed-up vs scapy        {scapy_per_pkt * packets / ours:8.1f}x  (>= 100x)")
        from bench import decap  # last section: VXLAN mirror capture, --decap vs suricata -r

        decap.run(work, proxied, flows)
        from bench import enricher  # eve enricher lines/s, and the cache's cost per new flow

        enricher.run(work, args.eve_lines, proxied, flows)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for p in (proxied, plain):
                shutil.copy(p, args.keep / p.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
