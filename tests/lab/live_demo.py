"""The live path end to end: HAProxy (PROXY v2) -> bridge -> nginx decoy, with
``suricata-normalizer live`` on the gateway-side bridge port writing into a tap and a real
Suricata reading that tap with af-packet. ``./run demo`` (``python -m tests.lab.live_demo``)
runs the scripted attack, has ``eve-enricher follow`` enrich Suricata's eve.json from the
connection cache, prints the enriched alerts as a table and tears the lab down.

Why the pieces live here: the demo, tests/lab/test_live.py and bench/live.py all need the same
"start the normalizer, wait until it captures; start Suricata on the tap, wait until its
capture threads run" steps, with the same readiness checks, or they race the first packets.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normalizer.cli import main as normalizer_main
from tests.lab.netlab import ATTACKER, DECOY, GATEWAY_BACK, GATEWAY_FRONT, Lab, LabError, stop
from tests.lab.services import make_webroot, start_decoy, start_haproxy
from tests.lab.suricata_run import RULES, alerts_by_sid
from tests.lab.traffic import expected_alerts, run_traffic

ROOT = Path(__file__).resolve().parents[2]
STOCK_SURICATA = Path("/etc/suricata/suricata.yaml")
NORMALIZER = [str(ROOT / ".venv" / "bin" / "suricata-normalizer")]
ENRICHER = [str(ROOT / ".venv" / "bin" / "eve-enricher")]
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
    lab: Lab,
    d: Path,
    name: str = "live",
    cache: Path | None = None,
    *extra: str,
    wrap: Sequence[str] = (),
    role: str = "sensor",
    iface: str = PORT,
    proxy: str = f"{GATEWAY_BACK[4]}/32",
) -> Live:
    """Start the normalizer in the ``role`` namespace; return once it has printed "live on".

    ``wrap`` prefixes the command (the benchmark pins it to one core with taskset).
    """
    log, stats = d / f"{name}.log", d / f"{name}.json"
    stats.unlink(missing_ok=True)
    argv = [*wrap, *NORMALIZER, "live", "--iface", iface, "--tap", TAP]
    argv += ["--proxy", proxy, "--stats-json", str(stats), *extra]
    if cache is not None:
        argv += ["--cache", str(cache)]
    proc = lab.spawn(role, argv, log)
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


def start_suricata(
    lab: Lab,
    d: Path,
    iface: str = TAP,
    wrap: Sequence[str] = (),
    role: str = "sensor",
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Suricata 7 on ``iface`` with the stock config plus the fragment ``suricata-config``
    generates for ``iface`` (its af-packet entry: checksum validation on) and the lab rules;
    ``--af-packet=IFACE`` captures that one interface, not the stock config's eth0."""
    out = d / f"suricata-{iface}"
    out.mkdir(exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    fragment = d / f"normalizer-{iface}.yaml"
    gen = ["suricata-config", "--suricata-yaml", str(STOCK_SURICATA), "--tap", iface]
    if normalizer_main([*gen, "-o", str(fragment)]) != 0:
        raise LabError(f"suricata-config failed for {iface}")
    argv = [*wrap, "suricata", "-c", str(STOCK_SURICATA), "--include", str(fragment)]
    argv += [f"--af-packet={iface}", "-S", str(RULES), "-l", str(out), "-k", "all"]
    argv += ["--set", "unix-command.enabled=no", "--set", "outputs.1.eve-log.community-id=no"]
    argv += [*extra]
    proc = lab.spawn(role, argv, out / "stdout.log")
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
            raise LabError(f"{proc.args!r} exited {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise LabError(f"{text!r} not in {log} after {timeout}s: {log.read_text()[-2000:]}")


def settle(seconds: float = 1.5) -> None:
    """Let the last frames cross ring (block timeout), tap and Suricata before stopping."""
    time.sleep(seconds)


def kernel_drops(events: list[Event]) -> int:
    found = [e["stats"] for e in events if e["event_type"] == "stats"]
    return int(found[-1]["capture"]["kernel_drops"]) if found else -1


Row = tuple[str, str, str, str, str, str]


def alert_rows(enriched: list[Event]) -> list[Row]:
    """(attacker, address attacked, proxy hop, decoy, header, signature) per enriched alert.

    Suricata's alert already names the real client and the address it attacked (the normalizer
    restored them); the hop and the decoy behind it come from the ``proxy`` object the eve
    enricher adds (the wire tuple the bridge carried, and the header it stripped). Alerts raised
    on server-to-client packets are turned around so the attacker column is always the client.
    """
    rows = []
    for e in enriched:
        if e.get("event_type") != "alert":
            continue
        src, dst = f"{e['src_ip']}:{e['src_port']}", f"{e['dest_ip']}:{e['dest_port']}"
        proxy = e.get("proxy")
        hop = decoy = kind = "-"
        if isinstance(proxy, dict):
            w = proxy["wire"]
            hop, decoy = f"{w['src_ip']}:{w['src_port']}", f"{w['dest_ip']}:{w['dest_port']}"
            kind = str(proxy["header"].get("kind", "?"))
        if e.get("direction") == "to_client":
            src, dst, hop, decoy = dst, src, decoy, hop
        rows.append((src, dst, hop, decoy, kind, e["alert"]["signature"]))
    return rows


def table(rows: list[Row]) -> str:
    head = ("attacker", "attacked", "proxy hop", "decoy", "header", "signature")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def start_enricher(
    lab: Lab, d: Path, eve: Path, cache: Path, out: Path, role: str = "sensor"
) -> subprocess.Popen[bytes]:
    """``eve-enricher follow`` on Suricata's eve.json, as the eve-enricher.service runs it."""
    log = d / "enricher.log"
    argv = [*ENRICHER, "follow", str(eve), "--cache", str(cache), "-o", str(out)]
    argv += ["--poll", "0.2", "--checkpoint", str(d / "enricher.checkpoint")]
    argv += ["--start-at", "beginning"]  # Suricata may have written before we start
    proc = lab.spawn(role, argv, log)
    _wait_for(log, "following", proc, 15)
    return proc


def stop_enricher(
    lab: Lab, proc: subprocess.Popen[bytes], out: Path, alerts: int, timeout: float = 15
) -> list[Event]:
    """Wait until the enricher has written ``alerts`` alerts, stop it (SIGTERM), read its output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b'"event_type":"alert"') >= alerts:
            break
        time.sleep(0.1)
    stop(proc, timeout=10)
    if proc in lab.procs:
        lab.procs.remove(proc)
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def start_services(lab: Lab, d: Path, proxy_header: bool = True) -> None:
    start_decoy(lab, d, make_webroot(d / "www"), proxy_protocol=proxy_header)
    start_haproxy(lab, d, 4, "send-proxy-v2" if proxy_header else "")


@dataclass
class DemoResult:
    """What one run of the demo produced."""

    events: list[Event]  # Suricata's eve.json (on the tap)
    enriched: list[Event]  # the enricher's output
    counters: dict[str, Any]  # the normalizer's counters at exit

    def alerts(self) -> list[Event]:
        return [e for e in self.enriched if e.get("event_type") == "alert"]


def run_demo(d: Path, say: Callable[[str], None] = lambda _: None) -> DemoResult:
    """The whole lab once: bring it up, run the attack, stop everything in order, tear down.

    Order of the stops matters: the normalizer first (it flushes the cache), then Suricata (its
    final flows and stats reach eve.json), then the enricher once it has caught up with every
    alert. The namespaces and every process in them go on return and on any exception.
    """
    with Lab() as lab:
        cache, eve = d / "conn.db", d / f"suricata-{TAP}" / "eve.json"
        out = d / "eve-enriched.json"
        say(
            f"lab: attacker {ATTACKER[4]} -> HAProxy {GATEWAY_FRONT[4]} (PROXY v2) -> "
            f"bridge -> nginx decoy {DECOY[4]}"
        )
        start_services(lab, d)
        say(f"normalizer live on the bridge port {PORT}, writing tap {TAP}")
        live = start_live(lab, d, "live", cache)
        say(f"Suricata on {TAP} (af-packet), eve-enricher following its eve.json")
        suri = start_suricata(lab, d)
        enricher = start_enricher(lab, d, eve, cache, out)
        say("running the scripted attack with curl ...")
        run_traffic(lab, d)
        settle()
        counters = stop_live(lab, live)
        events = stop_suricata(lab, suri, d)
        alerts = sum(1 for e in events if e["event_type"] == "alert")
        enriched = stop_enricher(lab, enricher, out, alerts)
        say("stopped; removing the namespaces")
    return DemoResult(events, enriched, counters)


def missing_tools() -> list[str]:
    tools = ("ip", "ss", "ethtool", "haproxy", "nginx", "curl", "suricata")
    return [t for t in tools if shutil.which(t) is None]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: the same clean teardown as Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="./run demo",
        description="The live lab: real HAProxy, nginx, curl and Suricata in network namespaces, "
        "our normalizer live on the bridge and the eve enricher; prints the enriched alerts.",
    )
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep logs, eve.json and the cache")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("live demo: needs root (network namespaces)", file=sys.stderr)
        return 2
    missing = missing_tools()
    if missing:
        print(f"live demo: missing {', '.join(missing)}: run scripts/setup.sh", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="snl-live-") as tmp:
        d = Path(tmp)
        try:
            r = run_demo(d, say)
        except KeyboardInterrupt:
            say("interrupted: lab torn down")
            return 130
        except LabError as exc:
            say(f"live demo failed (lab torn down): {exc}")
            return 1
        finally:
            if args.keep:
                shutil.copytree(d, args.keep, dirs_exist_ok=True)
    print()
    print(table(alert_rows(r.enriched)))
    print()
    got, want = alerts_by_sid(r.events), expected_alerts(False)
    alerts = r.alerts()
    if alerts and "proxy" in alerts[0]:
        print(f"the enricher's proxy object on the first alert: {json.dumps(alerts[0]['proxy'])}")
    named = sum(1 for e in alerts if e["src_ip"] == ATTACKER[4] and "proxy" in e)
    c = r.counters
    print(
        f"{len(alerts)} enriched alerts (expected {sum(want.values())}), {named} naming the "
        f"attacker {ATTACKER[4]} with the proxy hop.\nnormalizer: {c['kernel_packets']} packets "
        f"captured, {c['kernel_drops']} kernel drops, {c['tap_write_errors']} tap write errors, "
        f"headers stripped {c['headers_stripped']}; Suricata kernel drops "
        f"{kernel_drops(r.events)}"
    )
    ok = Counter(got) == want and named == len(alerts) == sum(want.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
