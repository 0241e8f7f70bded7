"""The live path end to end: HAProxy (PROXY v2) -> bridge -> nginx decoy, with
``suricata-normalizer live`` on the gateway-side bridge port writing into a tap and a real
Suricata reading that tap with af-packet. ``python -m tests.lab.live_demo`` runs the scripted
attack and prints who the alerts name.

Why the pieces live here: the demo, tests/lab/test_live.py and bench/live.py all need the same
"start the normalizer, wait until it captures; start Suricata on the tap, wait until its
capture threads run" steps, with the same readiness checks, or they race the first packets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab.netlab import ATTACKER, DECOY, GATEWAY_BACK, Lab, LabError, stop
from tests.lab.services import make_webroot, start_decoy, start_haproxy
from tests.lab.suricata_run import RULES, alerts_by_sid
from tests.lab.traffic import expected_alerts, run_traffic

ROOT = Path(__file__).resolve().parents[2]
FRAGMENT = ROOT / "suricata" / "normalizer.yaml"
NORMALIZER = [str(ROOT / ".venv" / "bin" / "suricata-normalizer")]
TAP = "snl0"
PORT = "sg"  # the bridge port on the gateway side
Event = dict[str, Any]


@dataclass
class Live:
    """A running ``suricata-normalizer live`` and where its log and counters go."""

    proc: subprocess.Popen[bytes]
    log: Path
    stats: Path

    def counters(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stats.read_text())
        return data


def start_live(
    lab: Lab, d: Path, name: str = "live", cache: Path | None = None, *extra: str
) -> Live:
    """Start the normalizer in the sensor namespace; return once it has printed "live on"."""
    log, stats = d / f"{name}.log", d / f"{name}.json"
    stats.unlink(missing_ok=True)
    argv = [*NORMALIZER, "live", "--iface", PORT, "--tap", TAP]
    argv += ["--proxy", f"{GATEWAY_BACK[4]}/32", "--stats-json", str(stats), *extra]
    if cache is not None:
        argv += ["--cache", str(cache)]
    proc = lab.spawn("sensor", argv, log)
    _wait_for(log, "live on", proc, 15)
    return Live(proc, log, stats)


def stop_live(lab: Lab, live: Live) -> dict[str, Any]:
    """SIGTERM (the clean path) and read the counters it wrote on exit."""
    live.proc.send_signal(signal.SIGTERM)
    rc = live.proc.wait(15)
    if live.proc in lab.procs:
        lab.procs.remove(live.proc)
    if rc != 0:
        raise LabError(f"normalizer exited {rc}: {live.log.read_text()[-2000:]}")
    return live.counters()


def start_suricata(lab: Lab, d: Path, iface: str = TAP) -> subprocess.Popen[bytes]:
    """Suricata 7 on ``iface`` with the stock config plus our fragment and the lab rules."""
    out = d / f"suricata-{iface}"
    out.mkdir(exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    argv = ["suricata", "-c", "/etc/suricata/suricata.yaml", "--include", str(FRAGMENT)]
    argv += [f"--af-packet={iface}", "-S", str(RULES), "-l", str(out), "-k", "all"]
    argv += ["--set", "unix-command.enabled=no", "--set", f"af-packet.0.interface={iface}"]
    argv += ["--set", "outputs.1.eve-log.community-id=no"]
    proc = lab.spawn("sensor", argv, out / "stdout.log")
    _wait_for(out / "stdout.log", "Engine started", proc, 60)
    return proc


def stop_suricata(
    lab: Lab, proc: subprocess.Popen[bytes], d: Path, iface: str = TAP
) -> list[Event]:
    """Stop Suricata (SIGTERM flushes its flows and writes the final stats); read eve.json."""
    stop(proc, timeout=30)
    if proc in lab.procs:
        lab.procs.remove(proc)
    eve = d / f"suricata-{iface}" / "eve.json"
    return [json.loads(line) for line in eve.read_text().splitlines() if line.strip()]


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise LabError(f"{proc.args} exited {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise LabError(f"{text!r} not in {log} after {timeout}s: {log.read_text()[-2000:]}")


def settle(seconds: float = 1.5) -> None:
    """Let the last frames cross ring (block timeout), tap and Suricata before stopping."""
    time.sleep(seconds)


def kernel_drops(events: list[Event]) -> int:
    found = [e["stats"] for e in events if e["event_type"] == "stats"]
    return int(found[-1]["capture"]["kernel_drops"]) if found else -1


def alert_rows(events: list[Event], cache: Path | None) -> list[tuple[str, str, str, str]]:
    """(attacker, address attacked, proxy hop -> decoy, signature) per alert.

    Suricata's alert already names the real client and the address it attacked (the normalizer
    restored them); the hop and the decoy behind it come from the connection cache (what the
    eve enricher will add to every event).
    """
    from normalizer.conn_cache import ConnectionCache

    db = ConnectionCache(cache, readonly=True) if cache and cache.exists() else None
    rows = []
    for e in events:
        if e["event_type"] != "alert":
            continue
        src = f"{e['src_ip']}:{e['src_port']}"
        dst = f"{e['dest_ip']}:{e['dest_port']}"
        hop = "-"
        if db is not None:
            r = db._db.execute(
                "SELECT wire_src_ip, wire_src_port, wire_dst_ip, wire_dst_port, header_kind"
                " FROM connections WHERE"
                " real_src_ip=? AND real_src_port=? ORDER BY first_seen DESC LIMIT 1",
                (e["src_ip"], e["src_port"]),
            ).fetchone()
            if r:
                hop = f"{r[0]}:{r[1]} -> {r[2]}:{r[3]} ({r[4]})"
        rows.append((src, dst, hop, e["alert"]["signature"]))
    if db is not None:
        db.close()
    return rows


def table(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("attacker", "attacked", "proxy hop -> decoy (header)", "signature")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def start_services(lab: Lab, d: Path, proxy_header: bool = True) -> None:
    start_decoy(lab, d, make_webroot(d / "www"), proxy_protocol=proxy_header)
    start_haproxy(lab, d, 4, "send-proxy-v2" if proxy_header else "")


def main() -> int:
    if os.geteuid() != 0:
        print("live demo: needs root (network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="snl-live-") as tmp, Lab() as lab:
        d = Path(tmp)
        cache = d / "conn.db"
        print("lab: attacker -> HAProxy (PROXY v2) -> bridge -> nginx decoy", file=sys.stderr)
        start_services(lab, d)
        live = start_live(lab, d, "live", cache)
        suri = start_suricata(lab, d)
        print("running the scripted attack with curl ...", file=sys.stderr)
        run_traffic(lab, d)
        settle()
        counters = stop_live(lab, live)
        events = stop_suricata(lab, suri, d)
        got = alerts_by_sid(events)
        print()
        print(table(alert_rows(events, cache)))
        print()
        want = expected_alerts(False)
        print(
            f"{sum(got.values())} alerts (expected {sum(want.values())}); attacker "
            f"{ATTACKER[4]}, decoy {DECOY[4]}; normalizer: {counters['kernel_packets']} packets "
            f"captured, {counters['kernel_drops']} kernel drops, {counters['tap_write_errors']} "
            f"tap write errors, headers stripped {counters['headers_stripped']}; Suricata "
            f"kernel drops {kernel_drops(events)}"
        )
        return 0 if Counter(got) == want else 1


if __name__ == "__main__":
    sys.exit(main())
