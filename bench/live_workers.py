"""How fast ``live --workers N`` drains its rings: ``python -m bench.live_workers`` (root).

Why a drain and not a rate sweep (bench/live.py): on a small machine the traffic generator
(curl, HAProxy, nginx and the kernel's forwarding) needs the cores the workers would use, so a
sweep measures the generator. Here the capturing processes are stopped (SIGSTOP) while several
parallel downloads through HAProxy (PROXY v2) fill their rings, then continued together
(SIGCONT): the time until every one is idle again is the normalizer's own speed, generator
gone. Per worker: frames, CPU time on the core and time runnable but waiting for a core
(/proc/PID/task/*/schedstat, ns); overall: frames / the slowest worker's drain time. The tap is
not read. Other load on the machine shows up as ``waited``: the numbers are noisy then.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.lab.live_demo import Live, start_live, stop_live
from tests.lab.netlab import GATEWAY_FRONT, Lab
from tests.lab.services import make_webroot, start_decoy, start_haproxy

IDLE = 0.3  # seconds without CPU progress that count as "drained"


def _sched(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting) of all threads of ``pid``."""
    run = wait = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            a, b, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        run, wait = run + int(a), wait + int(b)
    return run, wait


def _pids(live: Live, workers: int) -> list[int]:
    if workers == 1:
        return [live.proc.pid]
    m = re.search(r"fanout group \d+, pids ([\d, ]+)\)", live.log.read_text())
    assert m, live.log.read_text()
    return [int(p) for p in m[1].split(", ")]


def _drain(pids: list[int]) -> list[dict[str, float]]:
    """SIGCONT every process, then follow each one until it stops working: busy while its
    CPU time plus its time waiting for a CPU grow by more than half the wall time (an idle
    loop's tick every 0.5 s costs microseconds)."""
    start = {p: _sched(p) for p in pids}
    t0 = time.monotonic()
    for p in pids:
        os.kill(p, signal.SIGCONT)
    last = {p: sum(start[p]) for p in pids}
    done_at = {p: t0 for p in pids}
    prev = t0
    while True:
        time.sleep(0.002)
        now = time.monotonic()
        for p in pids:
            total = sum(_sched(p))
            if (total - last[p]) / 1e9 > 0.5 * (now - prev):
                done_at[p] = now
            last[p] = total
        prev = now
        if all(now - done_at[p] > IDLE for p in pids):
            break
    out = []
    for p in pids:
        run, wait = _sched(p)
        out.append(
            {
                "wall_s": round(done_at[p] - t0, 3),
                "cpu_s": round((run - start[p][0]) / 1e9, 3),
                "waited_s": round((wait - start[p][1]) / 1e9, 3),
            }
        )
    return out


def measure(lab: Lab, d: Path, workers: int, flows: int, mb: int, ring_mb: int) -> dict[str, Any]:
    name = f"w{workers}-{time.monotonic_ns()}"
    args = ("--workers", str(workers), "--ring-mb", str(ring_mb))
    live = start_live(lab, d, name, None, *args)
    pids = _pids(live, workers)
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    size = mb * 1_000_000 // flows
    url = f"http://{GATEWAY_FRONT[4]}/f{size}.bin"
    loop = f"for i in $(seq {flows}); do curl -sS -o /dev/null {url} & done; wait"
    lab.sh("attacker", "sh", "-c", loop, timeout=300)
    per = _drain(pids)
    c = stop_live(lab, live)
    frames = [w["ring_frames"] for w in c["per_worker"]] if workers > 1 else [int(c["ring_frames"])]
    for row, n in zip(per, frames, strict=True):
        row["frames"] = n
        row["pps_per_cpu_s"] = round(n / row["cpu_s"]) if row["cpu_s"] else 0
    wall = max(r["wall_s"] for r in per)
    return {
        "workers": workers,
        "frames": sum(frames),
        "kernel_drops": c["kernel_drops"],
        "headers_stripped": sum(c["headers_stripped"].values()),
        "drain_s": wall,
        "pps": round(sum(frames) / wall) if wall else 0,
        "per_worker": per,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.live_workers", description=__doc__)
    p.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    p.add_argument("--repeat", type=int, default=3, help="runs per worker count (alternating)")
    p.add_argument("--flows", type=int, default=16, help="parallel downloads (default 16)")
    p.add_argument("--mb", type=int, default=150, help="MB downloaded per run (default 150)")
    p.add_argument("--ring-mb", type=int, default=512, help="ring per worker (default 512)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep", type=Path, metavar="DIR", help="work (and leave the logs) in DIR")
    args = p.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="snl-bench-workers-") as tmp, Lab() as lab:
        d = args.keep or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        www = make_webroot(d / "www")
        size = args.mb * 1_000_000 // args.flows
        with (www / f"f{size}.bin").open("wb") as fh:
            fh.truncate(size)  # sparse: nginx sends zeros from the page cache
        start_decoy(lab, d, www, proxy_protocol=True)
        start_haproxy(lab, d, 4, "send-proxy-v2")
        for _ in range(args.repeat):
            for n in counts:
                lab.sh("sensor", "ip", "link", "del", "snl0", check=False)  # queue kind
                row = measure(lab, d, n, args.flows, args.mb, args.ring_mb)
                results.append(row)
                print(json.dumps(row), file=sys.stderr)
    for n in counts:
        rows = [r for r in results if r["workers"] == n]
        pps = sorted(r["pps"] for r in rows)
        print(f"{n} workers: drain packets/s per run {pps} (frames {rows[0]['frames']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
