"""Rewrite speed of both engines against the C tools doing the nearest jobs, interleaved.

Why interleaved: on a shared machine the load changes from second to second; running every
contender once per round, round after round, and keeping each one's best round compares them
under the same conditions. Contenders, per flow profile (short flows of about 30 packets, long
ones of about 350):

* the normalizer in process, compiled and Python engines, addresses restored and kept;
* ``tcprewrite --tcp-sequence=7 --fixcsum`` (shifts every sequence number and fixes checksums:
  the nearest job) and ``tcprewrite --seed 1 --fixcsum`` (rewrites addresses);
* ``suricata -r --runmode single`` on the header-free twin (what the normalizer feeds), without
  rules (its cheapest run: capture, decode, flow and stream tracking, app-layer parsing) and with
  the project's decoy.rules;
* a pure I/O floor: the capture read and written in 1 MiB chunks, in this process.

The Suricata ratio is only reported when Suricata really inspected the traffic: its stats must
show one TCP session per flow, on the header-free file and on our output, and the same alerts
on both (synth.py sends an attack on every 10th flow). Otherwise the bench says why and prints
no ratio (a capture Suricata cannot track runs fast while doing nothing). "I/O floor vs
suricata" says how far any rewrite of the file could get: on long flows Suricata without rules
costs about as much as reading and writing the capture once.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.synth import write_pair
from normalizer.commands.rewrite import rewrite_file
from normalizer.core.fastpath import compiled_available
from normalizer.core.options import Options

PROXY_CIDR = "192.0.2.1/32"
PROFILES = {"short": (4, 24), "long": (150, 300)}
RULES = Path(__file__).resolve().parent.parent / "suricata" / "rules" / "decoy.rules"


@dataclass
class Best:
    wall: float = float("inf")
    cpu: float = float("inf")
    failed: str = ""

    def add(self, wall: float, cpu: float) -> None:
        self.wall = min(self.wall, wall)
        self.cpu = min(self.cpu, cpu)


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _in_process(fn: Callable[[], object]) -> tuple[float, float]:
    c0, t0 = _self_cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, _self_cpu() - c0


def _child(cmd: list[str]) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    return (
        time.perf_counter() - t0,
        usage.ru_utime + usage.ru_stime,
        os.waitstatus_to_exitcode(status),
    )


def _ours(src: Path, dst: Path, opts: Options, flows: int) -> tuple[float, float]:
    def go() -> None:
        c = rewrite_file(src, dst, opts)
        assert c.headers_stripped.get("proxy-v2") == flows, c

    return _in_process(go)


def _io_floor(src: Path, dst: Path) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)


def suricata_view(suricata: str, pcap: Path, logdir: Path) -> tuple[int, int]:
    """(TCP sessions, alerts) Suricata reports for ``pcap`` with the decoy rules."""
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True)
    argv = [suricata, "-r", str(pcap), "-k", "all", "--runmode", "single", "-l", str(logdir)]
    subprocess.run([*argv, "-S", str(RULES)], capture_output=True, check=False)
    sessions = alerts = 0
    eve = logdir / "eve.json"
    if eve.exists():
        for line in eve.read_text().splitlines():
            ev = json.loads(line)
            if ev.get("event_type") == "alert":
                alerts += 1
            elif ev.get("event_type") == "stats":
                sessions = ev["stats"].get("tcp", {}).get("sessions", sessions)
    return sessions, alerts


def run(work: Path, packets: int, rounds: int) -> dict[str, dict[str, float]]:
    """Measure and print every profile; returns {profile: {ratio name: value}}."""
    tcprewrite = shutil.which("tcprewrite")
    suricata = shutil.which("suricata")
    engines = ["compiled", "python"] if compiled_available() else ["python"]
    results: dict[str, dict[str, float]] = {}
    for profile, segments in PROFILES.items():
        proxied, plain = work / f"{profile}.pcap", work / f"{profile}-plain.pcap"
        n, flows = write_pair(proxied, plain, packets, segments=segments)
        print(
            f"\n{profile} flows: {n} packets, {flows} proxied flows ({n / flows:.0f} per flow), "
            f"{proxied.stat().st_size / 1e6:.1f} MB"
        )
        out = work / "out.pcap"
        contenders: dict[str, Callable[[], tuple[float, float]]] = {}
        for engine in engines:
            for label, restore in (("restore addresses", True), ("--keep-addresses", False)):
                opts = Options(proxies=(PROXY_CIDR,), restore_addresses=restore, engine=engine)

                contenders[f"normalizer {engine}, {label}"] = partial(
                    _ours, proxied, out, opts, flows
                )
        if tcprewrite:
            for label, flag in (
                ("--tcp-sequence=7", ["--tcp-sequence=7"]),
                ("--seed 1", ["--seed", "1"]),
            ):
                cmd = [
                    tcprewrite,
                    *flag,
                    "--fixcsum",
                    "-i",
                    str(proxied),
                    "-o",
                    str(work / "tr.pcap"),
                ]
                contenders[f"tcprewrite {label} --fixcsum"] = lambda c=cmd: _check(_child(c))
        if suricata:
            for label, rules in (("no rules", "/dev/null"), ("decoy.rules", str(RULES))):
                cmd = [
                    suricata,
                    "-r",
                    str(plain),
                    "-k",
                    "all",
                    "--runmode",
                    "single",
                    "-l",
                    str(work / "suri-time"),
                    "-S",
                    rules,
                ]
                (work / "suri-time").mkdir(exist_ok=True)
                contenders[f"suricata -r --runmode single, header-free, {label}"] = lambda c=cmd: (
                    _check(_child(c))
                )
        contenders["I/O floor: read + write in 1 MiB chunks"] = partial(
            _in_process, partial(_io_floor, proxied, work / "floor.pcap")
        )
        best = {name: Best() for name in contenders}
        for _ in range(rounds):
            for name, measure in contenders.items():
                try:
                    best[name].add(*measure())
                except RuntimeError as exc:
                    best[name].failed = str(exc)
        for name, b in best.items():
            note = b.failed or f"{n / b.wall:>10,.0f} pkt/s  cpu {b.cpu:6.3f} s"
            print(f"  {name:55s} {b.wall:7.3f} s  {note}")
        ratios: dict[str, float] = {}
        top = "compiled" if "compiled" in engines else "python"
        for engine in engines:
            ours = best[f"normalizer {engine}, restore addresses"]
            keep = best[f"normalizer {engine}, --keep-addresses"]
            tr = best.get("tcprewrite --tcp-sequence=7 --fixcsum")
            if tr and not tr.failed:
                ratios[f"{engine} vs tcprewrite --tcp-sequence"] = tr.wall / ours.wall
                ratios[f"{engine} --keep-addresses vs tcprewrite --tcp-sequence"] = (
                    tr.wall / keep.wall
                )
                ratios[f"{engine} vs tcprewrite --tcp-sequence (cpu)"] = tr.cpu / ours.cpu
        su = best.get("suricata -r --runmode single, header-free, no rules")
        su_rules = best.get("suricata -r --runmode single, header-free, decoy.rules")
        if su and su_rules and not su.failed and not su_rules.failed and suricata:
            rewrite_file(proxied, out, Options(proxies=(PROXY_CIDR,), engine=top))
            s_plain, a_plain = suricata_view(suricata, plain, work / "suri-plain")
            s_ours, a_ours = suricata_view(suricata, out, work / "suri-ours")
            print(
                f"  suricata: {s_plain} / {s_ours} TCP sessions and {a_plain} / {a_ours} alerts "
                f"on the header-free file / our output, {flows} flows"
            )
            if s_plain == flows and s_ours == flows and a_plain == a_ours and a_plain > 0:
                ours = best[f"normalizer {top}, restore addresses"]
                ratios[f"{top} vs suricata single, no rules"] = su.wall / ours.wall
                ratios[f"{top} vs suricata single, no rules (cpu)"] = su.cpu / ours.cpu
                ratios[f"{top} vs suricata single, decoy.rules"] = su_rules.wall / ours.wall
                # What any rewrite of the file can reach: reading and writing it, nothing else.
                floor = best["I/O floor: read + write in 1 MiB chunks"]
                ratios["I/O floor vs suricata single, no rules"] = su.wall / floor.wall
            else:
                print(
                    "  suricata ratio NOT reported: Suricata did not track every session or "
                    "the alerts differ, so its time measures nothing"
                )
        floor = best["I/O floor: read + write in 1 MiB chunks"]
        ratios[f"{top} vs I/O floor"] = (
            floor.wall / best[f"normalizer {top}, restore addresses"].wall
        )
        print("  ratios (speed, higher is faster; target >= 1.0x tcprewrite, >= 3x suricata):")
        for k, v in ratios.items():
            print(f"    {k:55s} {v:6.2f}x")
        results[profile] = ratios
    return results


def _check(measured: tuple[float, float, int]) -> tuple[float, float]:
    wall, cpu, rc = measured
    if rc != 0:
        raise RuntimeError(f"exit {rc}")
    return wall, cpu
