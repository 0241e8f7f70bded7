"""``./run bench``: normalizer speed and memory against baselines measured in the same run.

``./run bench live [--rates ...]`` instead measures the live path in the lab (root; see
bench/live.py): packets/s, Gbit/s, CPU per packet and kernel drops next to Suricata's own capture.
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
from normalizer.options import Options
from normalizer.pcap_job import rewrite_file

PROXY_CIDR = "192.0.2.1/32"


def bytes_per_flow(flows: int) -> float:
    """Memory the engine holds per ACTIVE flow (table entry, key, state), via tracemalloc."""
    import random

    from bench.synth import _connection
    from normalizer.engine import Normalizer
    from normalizer.headers import proxy_v2

    rng = random.Random(7)
    hdr = proxy_v2.build(
        command="PROXY", family="TCP4", src="203.0.113.1", dst="198.51.100.1", sport=1, dport=80
    )
    first = [_connection(rng, 1024 + i % 60000, hdr, 0)[:4] for i in range(flows)]
    # distinct 4-tuples beyond 60000 ports need more client addresses; keep flows <= 60000
    eng = Normalizer(Options(proxies=(PROXY_CIDR,), max_flows=flows + 1))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for conn in first:
        for fr in conn:
            eng.feed(fr, 0)
        eng.out.clear()
        eng.events.clear()
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

        ours = 0.0
        for label, restore in (("restore addresses", True), ("--keep-addresses", False)):
            t0 = time.perf_counter()
            opts = Options(proxies=(PROXY_CIDR,), restore_addresses=restore)
            counters = rewrite_file(proxied, work / "out.pcap", opts)
            wall = time.perf_counter() - t0
            assert counters.headers_stripped.get("proxy-v2") == flows, counters
            rows.append((f"normalizer in process, {label}", wall, f"{packets / wall:,.0f} pkt/s"))
            ours = ours or wall

        cli = shutil.which("suricata-normalizer") or str(
            Path(sys.executable).parent / "suricata-normalizer"
        )
        wall, rc, rss = timed_child(
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

        tcprewrite = shutil.which("tcprewrite")
        tr = 0.0
        if tcprewrite:
            tr, rc, _ = timed_child(
                [
                    tcprewrite,
                    "--seed",
                    "1",
                    "--fixcsum",
                    "-i",
                    str(proxied),
                    "-o",
                    str(work / "tcprewrite.pcap"),
                ]
            )
            rows.append(("tcprewrite --seed 1 --fixcsum", tr, "" if rc == 0 else f"exit {rc}"))
        suricata = shutil.which("suricata")
        su = 0.0
        if suricata:
            logdir = work / "suri"
            logdir.mkdir()
            rules = Path(__file__).resolve().parent.parent / "suricata" / "rules" / "decoy.rules"
            for label, rulefile in (("no rules", "/dev/null"), ("decoy.rules", str(rules))):
                argv = [suricata, "-r", str(plain), "-k", "all", "-l", str(logdir), "-S", rulefile]
                wall, rc, _ = timed_child(argv)
                status = "" if rc == 0 else f"exit {rc}"
                rows.append((f"suricata -r header-free file, {label}", wall, status))
                su = su or wall

        per_flow = bytes_per_flow(min(args.flows_for_memory, 60000))
        print()
        for name, secs, extra in rows:
            print(f"  {name:45s} {secs:8.3f} s  {extra}")
        print(f"  {'memory per tracked flow':45s} {per_flow:8.0f} B")
        print("\nratios (target):")
        print(f"  speed-up vs scapy        {scapy_per_pkt * packets / ours:8.1f}x  (>= 100x)")
        if tr:
            print(f"  wall vs tcprewrite       {ours / tr:8.2f}x  (<= 1.5x)")
        if su:
            print(
                f"  wall vs suricata -r      {ours / su:8.2f}x  (<= 0.5x; Suricata without rules)"
            )
        print(f"  bytes per flow           {per_flow:8.0f}   (<= 400)")
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
