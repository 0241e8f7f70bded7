"""Live throughput in the lab: ``./run bench live`` or ``python -m bench live`` (root).

HAProxy (PROXY v2) -> bridge -> nginx, offloads off on every veth (netlab), one curl download
per rate step (``--limit-rate``, 1448-byte segments), from a sparse file so disk never limits.
Three variants per step, one after the other (each with its own download), all pinned to the
same core with taskset:

* ``normalizer``: ``suricata-normalizer live`` alone, writing the tap (nobody reads it, so this
  measures our capture + rewrite + tap write path);
* ``suricata``: Suricata 7 itself with af-packet on the bridge port (the capture it would do
  without us), with the lab rules;
* ``pipeline``: the deployment, the normalizer plus Suricata reading its tap, sharing the core;
  a step is lossy if either ring dropped, a tap write failed, or Suricata saw fewer frames than
  were written into the tap (``suricata_missing``).

HAProxy, nginx and curl run on the other cores (``--no-isolate``: anywhere).

Per step: the offered rate, packets/s on the bridge port (both directions: 1448-byte data
segments and the ACKs), Gbit/s of HTTP payload (what "1 Gbit/s of 1448-byte segments" means)
and of whole frames, kernel drops of the capture, and CPU time per packet of the capturing
process (utime+stime of all its threads, from /proc). "Highest rate with zero drops" is the
fastest step whose kernel drop counter (and, for us, tap write errors) stayed 0.

On a small machine the "max" step may be bounded by the traffic generator rather than by the
capture; ``cpu_share`` (CPU seconds per second of the capturing process) shows how much
headroom the capture had, ``waited_share`` (seconds per second its threads were runnable but
had no CPU, from /proc/PID/task/*/schedstat) shows when other load starved it: drops with a low
``cpu_share`` and a high ``waited_share`` are the machine, not the capture's speed. Other load on
the machine makes every number noisy; ``--nice -10`` gives the captures priority.

``--replay`` measures packets/s per core from a replayed capture instead, fast enough to load
one core (bench/live_replay.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.lab.live_demo import TAP, start_live, start_suricata, stop_live, stop_suricata
from tests.lab.netlab import GATEWAY_FRONT, Lab, LabError, stop
from tests.lab.netlab import run as run_cmd
from tests.lab.services import make_webroot, start_decoy, start_haproxy

RATES_MB = (25, 50, 100, 150, 200, 0)  # MB/s of HTTP payload; 0 = unlimited
SECONDS = 5.0


def _waited(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that just ended
    return total / 1e9


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


def lab_stop_extra(lab: Lab) -> None:
    """Stop what a failed variant left running (normalizer, Suricata), keep HAProxy and nginx."""
    for p in list(lab.procs):
        if any(name in str(p.args) for name in ("suricata", "snl0")):
            stop(p)
            lab.procs.remove(p)


def _pin_lab(lab: Lab, others: str) -> None:
    """Move every process of the gateway and decoy namespaces (HAProxy, nginx) to ``others``.

    The kernel's veth and bridge work runs in softirq on the sending CPU, so this also keeps
    forwarding and the AF_PACKET ring fill off the capture's core: the capture gets its core to
    itself (other users of the machine aside).
    """
    for role in ("gateway", "decoy"):
        for pid in run_cmd(["ip", "netns", "pids", lab.ns[role]]).split():
            run_cmd(["taskset", "-a", "-p", "-c", others, pid])


Row = dict[str, Any]


def _suricata_stats(events: list[dict[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = [e["stats"] for e in events if e["event_type"] == "stats"][-1]
    return found


class _Step:
    """One rate step: the download, and how each capture variant is measured on it."""

    def __init__(
        self,
        lab: Lab,
        d: Path,
        mb: int,
        size: int,
        others: str,
        pin: list[str],
        suricata_pin: list[str],
    ):
        self.lab, self.d, self.mb, self.size, self.others, self.pin = lab, d, mb, size, others, pin
        self.suricata_pin = suricata_pin

    def _row(self, elapsed: float, packets: int, wire_bytes: int) -> Row:
        return {
            "offered_MBps": self.mb or "max",
            "seconds": round(elapsed, 2),
            "pps": round(packets / elapsed),
            "payload_gbps": round(self.size * 8 / elapsed / 1e9, 3),
            "wire_gbps": round(wire_bytes * 8 / elapsed / 1e9, 3),
        }

    def _download(self) -> float:
        return _download(self.lab, self.size, self.mb * 1_000_000, self.others)

    def normalizer(self) -> Row:
        """Our capture alone (the tap is not read), pinned to the core."""
        live = start_live(self.lab, self.d, f"live{self.mb}", None, wrap=self.pin)
        cpu0, w0 = _cpu(live.proc.pid), _waited(live.proc.pid)
        elapsed = self._download()
        time.sleep(0.3)  # ring block timeout + last tap writes
        cpu, waited = _cpu(live.proc.pid) - cpu0, _waited(live.proc.pid) - w0
        c = stop_live(self.lab, live)
        row = self._row(elapsed, c["kernel_packets"], c["tap_bytes"])
        row["kernel_drops"] = c["kernel_drops"]
        row["tap_write_errors"] = c["tap_write_errors"]
        row["us_per_packet"] = round(cpu / max(1, c["ring_frames"]) * 1e6, 2)
        row["cpu_share"] = round(cpu / elapsed, 2)
        row["waited_share"] = round(waited / elapsed, 2)
        return row

    def suricata(self) -> Row:
        """Suricata's own af-packet capture of the same bridge port, pinned to the core."""
        suri = start_suricata(self.lab, self.d, iface="sg", wrap=self.pin)
        cpu0, w0 = _cpu(suri.pid), _waited(suri.pid)
        elapsed = self._download()
        time.sleep(0.3)
        cpu, waited = _cpu(suri.pid) - cpu0, _waited(suri.pid) - w0
        stats = _suricata_stats(stop_suricata(self.lab, suri, self.d, iface="sg"))
        cap = stats["capture"]
        row = self._row(elapsed, cap["kernel_packets"], stats["decoder"]["bytes"])
        row["kernel_drops"] = cap["kernel_drops"]
        row["us_per_packet"] = round(cpu / max(1, cap["kernel_packets"]) * 1e6, 2)
        row["cpu_share"] = round(cpu / elapsed, 2)
        row["waited_share"] = round(waited / elapsed, 2)
        return row

    def _tap_frames(self, port: str) -> int:
        text = self.lab.sh("sensor", "curl", "-sS", f"http://127.0.0.1:{port}/metrics")
        for line in text.splitlines():
            if line.startswith("suricata_normalizer_tap_frames_total "):
                return int(float(line.split()[1]))
        raise LabError(f"no tap_frames metric in {text[:300]!r}")

    def pipeline(self) -> Row:
        """The deployment: the normalizer and Suricata reading its tap, both on the one core.

        Losses anywhere count: the normalizer's ring, its tap writes, Suricata's ring on the tap.
        """
        port = "9109"
        live = start_live(
            self.lab, self.d, f"pipe{self.mb}", None, "--metrics-port", port, wrap=self.pin
        )
        suri = start_suricata(self.lab, self.d, iface=TAP, wrap=self.suricata_pin)
        # Frames written before Suricata's capture ran (IPv6 chatter of the lab's veths) are
        # not Suricata's to see: count from here.
        before = self._tap_frames(port)
        n0, s0, w0 = _cpu(live.proc.pid), _cpu(suri.pid), _waited(live.proc.pid)
        elapsed = self._download()
        time.sleep(0.5)
        ncpu, scpu = _cpu(live.proc.pid) - n0, _cpu(suri.pid) - s0
        waited = _waited(live.proc.pid) - w0
        c = stop_live(self.lab, live)
        stats = _suricata_stats(stop_suricata(self.lab, suri, self.d, iface=TAP))
        seen = stats["capture"]["kernel_packets"]
        row = self._row(elapsed, c["kernel_packets"], c["tap_bytes"])
        row["kernel_drops"] = c["kernel_drops"]
        row["tap_write_errors"] = c["tap_write_errors"]
        row["suricata_drops"] = stats["capture"]["kernel_drops"]
        row["suricata_missing"] = c["tap_frames"] - before - seen
        row["us_per_packet"] = round((ncpu + scpu) / max(1, c["ring_frames"]) * 1e6, 2)
        row["normalizer_us"] = round(ncpu / max(1, c["ring_frames"]) * 1e6, 2)
        row["suricata_us"] = round(scpu / max(1, seen) * 1e6, 2)
        row["cpu_share"] = round((ncpu + scpu) / elapsed, 2)
        row["waited_share"] = round(waited / elapsed, 2)  # the normalizer's
        return row


VARIANTS = ("normalizer", "suricata", "pipeline")


def run(
    core: int,
    seconds: float,
    rates: tuple[int, ...],
    isolate: bool = True,
    nice: int = 0,
    variants: tuple[str, ...] = VARIANTS,
    pipeline_suricata_cpus: str = "",
) -> dict[str, list[Row]]:
    results: dict[str, list[Row]] = {v: [] for v in variants}
    cpus = os.sched_getaffinity(0)
    others = ",".join(str(c) for c in sorted(cpus - {core})) if isolate else ""
    pin = ["taskset", "-c", str(core)] + (["nice", "-n", str(nice)] if nice else [])
    suricata_pin = (
        ["taskset", "-c", pipeline_suricata_cpus] + pin[3:] if pipeline_suricata_cpus else []
    )
    with tempfile.TemporaryDirectory(prefix="snl-bench-") as tmp, Lab() as lab:
        d = Path(tmp)
        www = make_webroot(d / "www")
        start_decoy(lab, d, www, proxy_protocol=True)
        start_haproxy(lab, d, 4, "send-proxy-v2")
        if others:
            _pin_lab(lab, others)
        for mb in rates:
            size = int((mb * 1_000_000 or 400_000_000) * seconds)
            _file(www, size)
            step = _Step(lab, d, mb, size, others, pin, suricata_pin or pin)
            for variant in variants:
                try:
                    row = getattr(step, variant)()
                except (LabError, subprocess.SubprocessError) as exc:
                    # A start-up timeout on a loaded machine should not cost the whole run.
                    print(f"{variant} at {mb} MB/s failed, once more: {exc}", file=sys.stderr)
                    lab_stop_extra(lab)
                    row = getattr(step, variant)()
                results[variant].append(row)
                print(f"{variant:10s}", row, file=sys.stderr)
            (www / f"f{size}.bin").unlink()
    return results


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    out = ["  ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True))]
    out += ["  ".join(str(r[k]).rjust(w) for k, w in zip(keys, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _clean(row: dict[str, Any]) -> bool:
    losses = ("tap_write_errors", "suricata_drops", "suricata_missing")
    return row["kernel_drops"] == 0 and not any(row.get(k) for k in losses)


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
    argv = sys.argv[1:] if argv is None else argv
    if "--replay" in argv:  # a replayed capture instead of downloads: bench/live_replay.py
        from bench import live_replay

        return live_replay.main([a for a in argv if a != "--replay"])
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
        "--variants",
        default=",".join(VARIANTS),
        help=f"which captures to measure (default {','.join(VARIANTS)})",
    )
    p.add_argument(
        "--pipeline-suricata-cpus",
        default="",
        metavar="CPUS",
        help="taskset list for Suricata in the pipeline variant (default: the --core)",
    )
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
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        print(f"bench.live: unknown variants {sorted(unknown)}", file=sys.stderr)
        return 2
    results = run(
        args.core,
        args.seconds,
        rates,
        isolate=not args.no_isolate,
        nice=args.nice,
        variants=variants,
        pipeline_suricata_cpus=args.pipeline_suricata_cpus,
    )
    for name, rows in results.items():
        where = "" if args.no_isolate else ", HAProxy/nginx/curl on the other cores"
        where += f", nice {args.nice}" if args.nice else ""
        what = {
            "normalizer": "normalizer alone on the bridge port",
            "suricata": "Suricata's own capture of the bridge port",
            "pipeline": "normalizer + Suricata on its tap (us_per_packet, cpu_share: both)",
        }[name]
        pinned = f"pinned to core {args.core}"
        if name == "pipeline" and args.pipeline_suricata_cpus:
            pinned += f", Suricata to {args.pipeline_suricata_cpus}"
        print(f"\n{what}, {pinned}{where}:")
        print(table(rows))
        print(report(rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
