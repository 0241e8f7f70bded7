"""Live throughput in the lab: ``./run bench live`` or ``python -m bench live`` (root).

HAProxy (PROXY v2) -> bridge -> nginx, offloads off on every veth (netlab), one curl download
per rate step (``--limit-rate``, 1448-byte segments), from a sparse file so disk never limits.
Two captures of the same bridge port, one after the other, never competing for the CPU:

* ``normalizer``: ``suricata-normalizer live`` pinned to one core with taskset, writing the tap
  (nobody reads it, so this measures our capture + rewrite + tap write path alone);
* ``suricata``: Suricata 7 itself with af-packet on the bridge port (the capture it would do
  without us), with the lab rules, pinned to the same core.

HAProxy, nginx and curl run on the other cores (``--no-isolate``: anywhere).

Per step: the offered rate, packets/s on the bridge port (both directions: 1448-byte data
segments and the ACKs), Gbit/s of HTTP payload (what "1 Gbit/s of 1448-byte segments" means)
and of whole frames, kernel drops of the capture, and CPU time per packet of the capturing
process (utime+stime of all its threads, from /proc). "Highest rate with zero drops" is the
fastest step whose kernel drop counter (and, for us, tap write errors) stayed 0.

On a small machine the "max" step may be bounded by the traffic generator rather than by the
capture; ``cpu_share`` (CPU seconds per second of the capturing process) shows how much
headroom the capture had. Other load on the machine makes every number noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.lab.live_demo import start_live, start_suricata, stop_live, stop_suricata
from tests.lab.netlab import GATEWAY_FRONT, Lab
from tests.lab.netlab import run as run_cmd
from tests.lab.services import make_webroot, start_decoy, start_haproxy

RATES_MB = (25, 50, 100, 150, 200, 0)  # MB/s of HTTP payload; 0 = unlimited
SECONDS = 5.0


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _download(lab: Lab, size: int, rate: int, others: str) -> float:
    argv = ["taskset", "-c", others] if others else []
    argv += ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total}"]
    argv += ["--limit-rate", str(rate)] if rate else []
    out = lab.sh("attacker", *argv, f"http://{GATEWAY_FRONT[4]}/f{size}.bin", timeout=300)
    return float(out.strip())


def _file(www: Path, size: int) -> None:
    path = www / f"f{size}.bin"
    if not path.exists():
        with path.open("wb") as fh:
            fh.truncate(size)  # sparse: nginx sends zeros from the page cache


def _pin_lab(lab: Lab, others: str) -> None:
    """Move every process of the gateway and decoy namespaces (HAProxy, nginx) to ``others``.

    The kernel's veth and bridge work runs in softirq on the sending CPU, so this also keeps
    forwarding and the AF_PACKET ring fill off the capture's core: the capture gets its core to
    itself (other users of the machine aside).
    """
    for role in ("gateway", "decoy"):
        for pid in run_cmd(["ip", "netns", "pids", lab.ns[role]]).split():
            run_cmd(["taskset", "-a", "-p", "-c", others, pid])


def run(
    core: int, seconds: float, rates: tuple[int, ...], isolate: bool = True, nice: int = 0
) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {"normalizer": [], "suricata": []}
    cpus = os.sched_getaffinity(0)
    others = ",".join(str(c) for c in sorted(cpus - {core})) if isolate else ""
    pin = ["taskset", "-c", str(core)] + (["nice", "-n", str(nice)] if nice else [])
    with tempfile.TemporaryDirectory(prefix="snl-bench-") as tmp, Lab() as lab:
        d = Path(tmp)
        www = make_webroot(d / "www")
        start_decoy(lab, d, www, proxy_protocol=True)
        start_haproxy(lab, d, 4, "send-proxy-v2")
        if others:
            _pin_lab(lab, others)
        for mb in rates:
            rate = mb * 1_000_000
            size = int((rate or 400_000_000) * seconds)
            _file(www, size)
            # Our capture, pinned to one core.
            live = start_live(lab, d, f"live{mb}", None, wrap=pin)
            cpu0 = _cpu(live.proc.pid)
            elapsed = _download(lab, size, rate, others)
            time.sleep(0.3)  # ring block timeout + last tap writes
            cpu1 = _cpu(live.proc.pid)
            c = stop_live(lab, live)
            pkts = c["kernel_packets"]
            results["normalizer"].append(
                {
                    "offered_MBps": mb or "max",
                    "seconds": round(elapsed, 2),
                    "pps": round(pkts / elapsed),
                    "payload_gbps": round(size * 8 / elapsed / 1e9, 3),
                    "wire_gbps": round(c["tap_bytes"] * 8 / elapsed / 1e9, 3),
                    "kernel_drops": c["kernel_drops"],
                    "tap_write_errors": c["tap_write_errors"],
                    "us_per_packet": round((cpu1 - cpu0) / max(1, c["ring_frames"]) * 1e6, 2),
                    "cpu_share": round((cpu1 - cpu0) / elapsed, 2),
                }
            )
            print("normalizer", results["normalizer"][-1], file=sys.stderr)
            # Suricata's own capture of the same bridge port, same traffic.
            suri = start_suricata(lab, d, iface="sg", wrap=pin)
            scpu0 = _cpu(suri.pid)
            elapsed = _download(lab, size, rate, others)
            time.sleep(0.3)
            scpu1 = _cpu(suri.pid)
            events = stop_suricata(lab, suri, d, iface="sg")
            stats = [e["stats"] for e in events if e["event_type"] == "stats"][-1]
            cap = stats["capture"]
            results["suricata"].append(
                {
                    "offered_MBps": mb or "max",
                    "seconds": round(elapsed, 2),
                    "pps": round(cap["kernel_packets"] / elapsed),
                    "payload_gbps": round(size * 8 / elapsed / 1e9, 3),
                    "wire_gbps": round(stats["decoder"]["bytes"] * 8 / elapsed / 1e9, 3),
                    "kernel_drops": cap["kernel_drops"],
                    "us_per_packet": round(
                        (scpu1 - scpu0) / max(1, cap["kernel_packets"]) * 1e6, 2
                    ),
                    "cpu_share": round((scpu1 - scpu0) / elapsed, 2),
                }
            )
            print("suricata  ", results["suricata"][-1], file=sys.stderr)
            (www / f"f{size}.bin").unlink()
    return results


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    out = ["  ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True))]
    out += ["  ".join(str(r[k]).rjust(w) for k, w in zip(keys, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _clean(row: dict[str, Any]) -> bool:
    return row["kernel_drops"] == 0 and not row.get("tap_write_errors")


def best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest zero-drop step of those before the first step with drops (in rate order):
    a clean fast step after a lossy slower one is luck, not a rate the capture holds."""
    top = None
    for row in rows:
        if not _clean(row):
            break
        if top is None or row["pps"] > top["pps"]:
            top = row
    return top


def report(rows: list[dict[str, Any]]) -> str:
    """The summary lines under a table: sustained zero-drop rate, lossy steps, one-core estimate."""
    lines = []
    top = best(rows)
    if top:
        lines.append(
            f"highest rate with zero kernel drops (and none at any slower step): {top['pps']} "
            f"packets/s, {top['payload_gbps']} Gbit/s of payload ({top['wire_gbps']} Gbit/s of "
            f"frames), {top['us_per_packet']} us CPU per packet, {top['cpu_share']} of the core"
        )
    else:
        lines.append("the slowest step already had kernel drops")
    lossy = [f"{r['offered_MBps']} MB/s ({r['kernel_drops']} drops)" for r in rows if not _clean(r)]
    if lossy:
        lines.append("steps with drops: " + ", ".join(lossy))
    costs = sorted(r["us_per_packet"] for r in rows)
    median = costs[len(costs) // 2]
    lines.append(
        f"CPU per packet, median over the steps: {median} us -> one core at 100% would carry "
        f"~{1e6 / median:,.0f} packets/s (an estimate, not a measurement)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench live",
        description=(__doc__ or "").split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--core", type=int, default=(os.cpu_count() or 1) - 1, help="core to pin to")
    p.add_argument("--seconds", type=float, default=SECONDS, help="per rate step")
    p.add_argument("--rates", default=",".join(map(str, RATES_MB)), help="MB/s list, 0 = max")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run both captures at this nice value (e.g. -10 on a machine others load too)",
    )
    p.add_argument(
        "--no-isolate",
        action="store_true",
        help="leave HAProxy, nginx and curl on every core (default: on all cores but --core)",
    )
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.live: needs root (network namespaces)", file=sys.stderr)
        return 2
    rates = tuple(int(x) for x in args.rates.split(","))
    if args.core not in os.sched_getaffinity(0):
        print(f"bench.live: core {args.core} is not available", file=sys.stderr)
        return 2
    results = run(args.core, args.seconds, rates, isolate=not args.no_isolate, nice=args.nice)
    for name, rows in results.items():
        where = "" if args.no_isolate else ", HAProxy/nginx/curl on the other cores"
        where += f", nice {args.nice}" if args.nice else ""
        print(f"\n{name} capture of the bridge port, pinned to core {args.core}{where}:")
        print(table(rows))
        print(report(rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
