"""Live packets/s per core from a replayed capture: ``./run bench live --replay`` (root).

Why not bench/live.py's downloads: on a 2-core machine one curl download through HAProxy and a
bridge offers far less than the 400k packets/s issue 13 asks the live path to carry; the traffic
generator, not the capture, sets the ceiling. Here a capture from bench/synth.py (proxied
HTTP-like flows with proper handshakes and TCP timestamps, PROXY v2 from the trusted proxy
192.0.2.1) is sent into one end of a veth pair by bench/replay.c (sendmmsg on an AF_PACKET
socket, paced per batch of 256; measured faster than ``tcpreplay --topspeed``), and
``suricata-normalizer live`` captures the other end and writes its tap, pinned with taskset to
``--core``. The sender runs on the other cores. Nobody reads the tap: this is our capture +
rewrite + tap write path, as bench/live.py's ``normalizer`` variant.

Where the kernel's receive work runs (``--rx``): a veth delivers in softirq on the sending CPU,
so by default (``sender``) the AF_PACKET ring fill is done by the sender's core and the capture
core carries the normalizer process alone (ring read, engine, tap write). ``--rx capture``
steers that work to the capture core with RPS: the whole receive path on one core, and the
sender, relieved of it, can offer more.

Per step: the rate asked for, the rate actually sent, frames the normalizer saw, kernel drops
(PACKET_STATISTICS, from ``--stats-json``), tap write errors, CPU time per packet of the
normalizer (utime+stime of its threads over the frames it read), ``cpu_share`` and
``waited_share`` as in bench/live.py. Steps run short and long flows, both engines, interleaved,
``--repeat`` times; the summary gives per flow kind and engine the highest sent rate with zero
drops (and none at any slower step) of each repeat, so the spread shows how noisy the machine is.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.live import _cpu, _waited, best, table
from bench.synth import write_pair
from normalizer.adapters.pcap_io import CaptureReader
from normalizer.core.fastpath import compiled_available
from tests.lab.netlab import run as run_cmd

ROOT = Path(__file__).resolve().parents[1]
RATES = (100_000, 200_000, 300_000, 400_000, 500_000, 0)  # packets/s asked for; 0 = max
SECONDS = 2.0
PACKETS = 1_000_000  # per capture; the max step sends all of it
FLOWS = {"short": (4, 24), "long": (150, 300)}  # response segments per connection (synth.py)
PROXY = "192.0.2.1/32"
TAP = "snlr0"

Row = dict[str, Any]


def build_sender(d: Path) -> Path:
    """Compile bench/replay.c (the machine builds the compiled engine, so it has a compiler)."""
    out = d / "replay"
    run_cmd(["cc", "-O2", "-Wall", "-o", str(out), str(ROOT / "bench" / "replay.c")])
    return out


class VethPair:
    """A namespace holding veth rp0 (the sender's end) and rp1 (the capture's), offloads off."""

    def __init__(self, rx_core: int | None) -> None:
        self.ns = f"snlrp{os.getpid()}"
        run_cmd(["ip", "netns", "add", self.ns])
        try:
            self.sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            self.sh("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            self.sh("ip", "link", "add", "rp0", "type", "veth", "peer", "name", "rp1")
            for dev in ("rp0", "rp1"):
                # GRO on rp1 would merge the replayed segments; partial checksums are not the
                # point here (tests/lab/test_host_live.py measures those).
                self.sh("ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off")
                self.sh("ip", "link", "set", dev, "up")
            mask = f"{1 << rx_core:x}" if rx_core is not None else "0"
            self.sh("sh", "-c", f"echo {mask} > /sys/class/net/rp1/queues/rx-0/rps_cpus")
        except BaseException:
            self.close()
            raise

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def sh(self, *argv: str) -> str:
        return run_cmd(self.cmd(*argv))

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False)


def _count(path: Path) -> tuple[int, int]:
    """Packets and SYNs (connections) of a kept capture."""
    with path.open("rb") as fh:
        frames = [f for _ts, f, _o in CaptureReader(fh, str(path))]
    return len(frames), sum(1 for f in frames if f[47] == 0x02)


def _settle(pid: int, quiet: float = 0.3, limit: float = 10.0) -> None:
    """Wait until the normalizer stops using CPU (it has read everything in its ring)."""
    deadline = time.monotonic() + limit
    last = _cpu(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = _cpu(pid)
        if now - last < 0.02:
            return
        last = now


class Runner:
    def __init__(
        self,
        pair: VethPair,
        d: Path,
        sender: Path,
        core: int,
        others: str,
        nice: int,
        baseline: Path | None = None,
    ):
        self.pair, self.d, self.sender, self.core, self.others = pair, d, sender, core, others
        self.baseline = baseline
        self.pin = ["taskset", "-c", str(core)] + (["nice", "-n", str(nice)] if nice else [])

    def step(self, kind: str, capture: Path, total: int, rate: int, engine: str) -> Row:
        """One run of a fresh ``live``; engine "baseline" is the compiled engine of the checkout
        ``--baseline`` names (an older commit, to measure before and after in one run)."""
        stats, log = self.d / "live.json", self.d / "live.log"
        stats.unlink(missing_ok=True)
        tree = self.baseline if engine == "baseline" else ROOT
        if tree is None:
            raise ValueError("engine 'baseline' needs --baseline")
        argv = [*self.pin, sys.executable, "-m", "normalizer", "live", "--iface", "rp1"]
        argv += ["--tap", TAP, "--proxy", PROXY, "--stats-json", str(stats)]
        argv += ["--engine", "compiled" if engine == "baseline" else engine]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        with log.open("wb") as fh:
            # cwd: ``-m`` puts it first on sys.path, before PYTHONPATH
            proc = subprocess.Popen(self.pair.cmd(*argv), stdout=fh, stderr=fh, env=env, cwd=tree)
        try:
            deadline = time.monotonic() + 20
            while b"live on" not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"live did not start: {log.read_text()[-2000:]}")
                time.sleep(0.05)
            packets = min(total, int(rate * SECONDS)) if rate else total
            cpu0, w0 = _cpu(proc.pid), _waited(proc.pid)
            send = ["taskset", "-c", self.others] if self.others else []
            send += [str(self.sender), "rp0", str(capture), str(rate), str(packets)]
            out = self.pair.sh(*send).split()
            sent, secs = int(out[1]), float(out[3])
            t0 = time.monotonic() - secs
            _settle(proc.pid)
            busy = time.monotonic() - t0  # sending, then until the ring is read
            cpu, waited = _cpu(proc.pid) - cpu0, _waited(proc.pid) - w0
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
        if rc != 0:
            raise RuntimeError(f"live exited {rc}: {log.read_text()[-2000:]}")
        c = json.loads(stats.read_text())
        return {
            "flows": kind,
            "engine": engine,
            "asked_pps": rate or "max",
            "pps": round(sent / secs),
            "seen": c["ring_frames"],
            "kernel_drops": c["kernel_drops"],
            "tap_frames": c["tap_frames"],
            "tap_write_errors": c["tap_write_errors"],
            "us_per_packet": round(cpu / max(1, c["ring_frames"]) * 1e6, 2),
            "cpu_share": round(cpu / busy, 2),
            "waited_share": round(waited / busy, 2),
        }


def run(
    core: int,
    rates: tuple[int, ...],
    engines: tuple[str, ...],
    kinds: tuple[str, ...],
    repeat: int,
    rx: str,
    nice: int,
    packets: int,
    baseline: Path | None = None,
    keep: Path | None = None,
) -> list[list[Row]]:
    """Every (flow kind, rate, engine) step, interleaved, ``repeat`` times: a list per repeat.
    ``keep``: write the captures there, and reuse them from an earlier run."""
    others = ",".join(str(c) for c in sorted(os.sched_getaffinity(0) - {core}))
    rounds: list[list[Row]] = []
    with tempfile.TemporaryDirectory(prefix="snl-replay-") as tmp:
        d = Path(tmp)
        sender = build_sender(d)
        captures: dict[str, tuple[Path, int]] = {}
        for kind in kinds:
            path = (keep or d) / f"{kind}-{packets}.pcap"
            t0 = time.perf_counter()
            if path.exists():
                n, flows = _count(path)
            else:
                n, flows = write_pair(path, Path(os.devnull), packets, segments=FLOWS[kind])
            size = path.stat().st_size
            print(
                f"{kind} flows: {n} packets, {flows} flows, {size / n:.0f} bytes per frame"
                f" (generated in {time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
            )
            captures[kind] = (path, n)
        pair = VethPair(core if rx == "capture" else None)
        try:
            runner = Runner(pair, d, sender, core, others, nice, baseline)
            for r in range(repeat):
                rows: list[Row] = []
                for kind in kinds:
                    for rate in rates:
                        for engine in engines:
                            row = runner.step(kind, *captures[kind], rate, engine)
                            row["repeat"] = r + 1
                            rows.append(row)
                            print(row, file=sys.stderr)
                rounds.append(rows)
        finally:
            pair.close()
    return rounds


def summary(rounds: list[list[Row]]) -> list[str]:
    """Per flow kind and engine: each repeat's zero-drop maximum, and the CPU per packet."""
    lines = []
    keys = sorted({(r["flows"], r["engine"]) for rows in rounds for r in rows})
    for kind, engine in keys:
        tops, costs = [], []
        for rows in rounds:
            mine = [r for r in rows if (r["flows"], r["engine"]) == (kind, engine)]
            mine.sort(key=lambda r: r["pps"])
            top = best(mine)
            tops.append(top["pps"] if top else 0)
            costs += [r["us_per_packet"] for r in mine if r["seen"]]
        costs.sort()
        median = costs[len(costs) // 2] if costs else 0.0
        clean = [
            r["pps"]
            for rows in rounds
            for r in rows
            if (r["flows"], r["engine"]) == (kind, engine) and r["kernel_drops"] == 0
        ]
        lines.append(
            f"{kind} flows, {engine} engine: fastest step with zero kernel drops"
            f" {max(clean, default=0):,} packets/s (any repeat; a slower one may have lost)"
        )
        lines.append(
            f"{kind} flows, {engine} engine: highest sent rate with zero kernel drops per repeat"
            f" {', '.join(f'{t:,}' for t in tops)} packets/s; CPU per packet median {median} us"
            f" (range {costs[0] if costs else 0}-{costs[-1] if costs else 0})"
            + (f" -> ~{1e6 / median:,.0f} packets/s at 100% of a core (estimate)" if median else "")
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench live --replay",
        description=(__doc__ or "").split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--core", type=int, default=(os.cpu_count() or 1) - 1, help="core to pin to")
    p.add_argument("--rates", default=",".join(map(str, RATES)), help="packets/s list, 0 = max")
    p.add_argument("--engines", default="compiled,python", help="engines to measure")
    p.add_argument("--flows", default="short,long", help="flow kinds: short (~30 packets), long")
    p.add_argument("--repeat", type=int, default=2, help="interleaved rounds")
    p.add_argument(
        "--rx",
        choices=("sender", "capture"),
        default="sender",
        help="which core does the kernel's receive work (ring fill): see above",
    )
    p.add_argument("--packets", type=int, default=PACKETS, help="packets per capture")
    p.add_argument("--nice", type=int, default=0, help="run the normalizer at this nice value")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also measure engine 'baseline': the compiled engine of the checkout in DIR"
        " (e.g. git archive of an older commit, extension built there)",
    )
    p.add_argument("--keep", type=Path, metavar="DIR", help="keep (and reuse) the captures here")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.live --replay: needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.core not in os.sched_getaffinity(0) or len(os.sched_getaffinity(0)) < 2:
        print(f"bench.live --replay: core {args.core} and another are needed", file=sys.stderr)
        return 2
    engines = tuple(e for e in args.engines.split(",") if e)
    engines += ("baseline",) if args.baseline else ()
    if "compiled" in engines and not compiled_available():
        print("bench.live --replay: the compiled engine is not built", file=sys.stderr)
        return 2
    kinds = tuple(k for k in args.flows.split(",") if k)
    if set(kinds) - set(FLOWS) or set(engines) - {"compiled", "python", "baseline"}:
        print("bench.live --replay: unknown flow kind or engine", file=sys.stderr)
        return 2
    rates = tuple(int(x) for x in args.rates.split(","))
    rounds = run(
        args.core,
        rates,
        engines,
        kinds,
        args.repeat,
        args.rx,
        args.nice,
        args.packets,
        args.baseline.resolve() if args.baseline else None,
        args.keep,
    )
    where = "ring fill on the sender's core" if args.rx == "sender" else "ring fill on it too"
    print(f"\nreplayed into a veth, normalizer live pinned to core {args.core} ({where}):")
    print(table([r for rows in rounds for r in rows]))
    print("\n".join(summary(rounds)))
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
