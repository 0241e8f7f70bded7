"""A shared Suricata keeps everything it had when our include is added (issue 10, point 4).

Real Suricata runs Debian's own /etc/suricata/suricata.yaml (copied with only its paths
redirected into a temporary directory, its unix socket off) plus the fragment
``suricata-normalizer suricata-config`` generated from that copy, the way Debian's
suricata.service runs it: ``--af-packet`` without an interface, so every af-packet entry is
captured. A sensor namespace holds the stock config's interface ``eth0`` and the tap ``snl0``
(both veths to a peer namespace whose senders write complete checksums, as the normalizer does
on the tap). DNS queries cross eth0, HTTP requests that the lab rules flag cross snl0. The stock
outputs must still be written (eve.json with dns, http, flow, stats, fileinfo events; fast.log;
stats.log), both interfaces must be captured, and the alerts must fire on the tap.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from normalizer.cli import main
from tests.lab.netlab import LabError, run, stop
from tests.lab.suricata_run import RULES

pytestmark = [pytest.mark.root, pytest.mark.lab]

STOCK = Path("/etc/suricata/suricata.yaml")
TOOLS = ("ip", "ethtool", "curl", "suricata")
SENSOR = {"eth0": "198.18.1.1", "snl0": "198.18.2.1"}
PEER = {"eth0": "198.18.1.2", "snl0": "198.18.2.2"}  # addresses on the far end of each veth
QUERIES = ("decoy-one.example", "decoy-two.example", "decoy-three.example")
REQUESTS = (("/wp-login.php", "curl/8"), ("/index.html", "sqlmap/1.7"))  # sids 9100008, 9100005
Event = dict[str, Any]
_SEQ = itertools.count()

DNS_SERVER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("listening", flush=True)
while True:
    q, peer = s.recvfrom(512)
    end = q.index(b"\0", 12) + 5  # the one question: name, type, class
    head = q[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
    answer = struct.pack("!HHHLH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("192.0.2.53")
    s.sendto(head + q[12:end] + answer, peer)
"""


@pytest.fixture(scope="module")
def ready() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, veth)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing or not STOCK.exists():
        pytest.skip(f"missing {', '.join(missing) or STOCK} (run scripts/setup.sh)")


def stock_copy(d: Path) -> Path:
    """Debian's suricata.yaml, byte for byte but for where it writes and what it loads."""
    rules = d / "rules"
    rules.mkdir()
    shutil.copy(RULES, rules / "decoy.rules")
    text = STOCK.read_text()
    edits = (
        (r"^default-log-dir: .*$", f"default-log-dir: {d / 'log'}/"),
        (r"^default-rule-path: .*$", f"default-rule-path: {rules}"),
        (r"^rule-files:\n  - suricata\.rules$", "rule-files:\n  - decoy.rules"),
        (r"^unix-command:\n  enabled: .*$", "unix-command:\n  enabled: no"),
    )
    for pattern, replacement in edits:
        text, n = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert n == 1, f"stock suricata.yaml changed: {pattern!r} matched {n} times"
    (d / "log").mkdir()
    out = d / "suricata.yaml"
    out.write_text(text)
    return out


def ns_run(ns: str, *argv: str) -> str:
    return run(["ip", "netns", "exec", ns, *argv])


@contextlib.contextmanager
def namespaces(veths: tuple[str, ...] = tuple(SENSOR)) -> Iterator[tuple[str, str]]:
    """(sensor, peer): each of ``veths`` in the sensor, a veth to the peer namespace."""
    tag = f"snlinc{os.getpid()}x{next(_SEQ)}"
    sensor, peer = f"{tag}s", f"{tag}p"
    try:
        for ns in (sensor, peer):
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            # no IPv6: router and listener solicitations would only add flows to the counts
            for key in ("all", "default"):
                ns_run(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        for dev in veths:
            far = f"p{dev}"
            veth = ["type", "veth", "peer", far, "netns", peer]
            run(["ip", "-n", sensor, "link", "add", dev, *veth])
            for ns, name, addr in ((sensor, dev, SENSOR[dev]), (peer, far, PEER[dev])):
                # complete checksums on the wire, as the normalizer writes them into the tap
                ns_run(ns, "ethtool", "-K", name, "tx", "off")
                run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", name])
                run(["ip", "-n", ns, "link", "set", name, "up"])
        yield sensor, peer
    finally:
        for ns in (sensor, peer):
            for pid in run(["ip", "netns", "pids", ns], check=False).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            run(["ip", "netns", "del", ns], check=False)


def wait_for(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise LabError(f"{what} not seen after {timeout}s")
        time.sleep(0.1)


def spawn(ns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT
        )


def dns_queries(sensor: str) -> None:
    """One UDP query per name from the sensor across eth0, each answered by the peer."""
    script = (
        "import socket, struct, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n"
        "for i, name in enumerate(sys.argv[2:]):\n"
        "    q = struct.pack('!HHHHHH', 0x1000 + i, 0x0100, 1, 0, 0, 0)\n"
        "    q += b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\\0'\n"
        "    s.sendto(q + struct.pack('!HH', 1, 1), (sys.argv[1], 53))\n"
        "    assert s.recv(512)[:2] == q[:2]\n"
    )
    run(["ip", "netns", "exec", sensor, sys.executable, "-c", script, PEER["eth0"], *QUERIES])


def http_requests(sensor: str) -> None:
    for path, agent in REQUESTS:
        url = f"http://{PEER['snl0']}{path}"
        run(["ip", "netns", "exec", sensor, "curl", "-s", "-o", "/dev/null", "-A", agent, url])


def prepare(d: Path) -> tuple[Path, Path]:
    """The stock copy and the fragment the real command generates from it."""
    conf = stock_copy(d)
    fragment = d / "normalizer.yaml"
    argv = ["suricata-config", "--suricata-yaml", str(conf), "--tap", "snl0", "-o", str(fragment)]
    assert main(argv) == 0
    return conf, fragment


def start_suricata(sensor: str, d: Path, conf: Path, fragment: Path) -> subprocess.Popen[bytes]:
    """As Debian's suricata.service runs it (less -D) plus our include; back once it runs."""
    argv = ["suricata", "-c", str(conf), "--include", str(fragment), "--af-packet"]
    argv += ["--pidfile", str(d / "suricata.pid")]
    suri = spawn(sensor, argv, d / "suricata.out")
    out = d / "suricata.out"
    try:
        wait_for("Suricata's engine", lambda: "Engine started" in _text(out, suri), 90)
    except BaseException:
        stop(suri)
        raise
    return suri


def start_dns_server(peer: str, d: Path) -> subprocess.Popen[bytes]:
    dns = spawn(peer, [sys.executable, "-c", DNS_SERVER, PEER["eth0"]], d / "dns.log")
    wait_for("dns server", lambda: "listening" in _text(d / "dns.log", dns), 15)
    return dns


@pytest.fixture(scope="module")
def suricata_run(ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run it all once; return the log directory (eve.json, fast.log, stats.log)."""
    d = tmp_path_factory.mktemp("suricata-include")
    conf, fragment = prepare(d)
    log = d / "log"
    (d / "www").mkdir()
    for path, _ in REQUESTS:
        (d / "www" / path.lstrip("/")).write_text("<html>decoy page</html>\n" * 40)
    with namespaces() as (sensor, peer):
        dns = start_dns_server(peer, d)
        web = [sys.executable, "-m", "http.server", "80", "--bind", PEER["snl0"]]
        httpd = spawn(peer, [*web, "--directory", str(d / "www")], d / "httpd.log")
        wait_for("http server", lambda: "Serving" in _text(d / "httpd.log", httpd), 15)
        suri = start_suricata(sensor, d, conf, fragment)
        try:
            dns_queries(sensor)
            http_requests(sensor)
            # stats.log is written every stats.interval (8 s in the stock file)
            wait_for("stats.log", lambda: "kernel_packets" in _text(log / "stats.log"), 60)
        finally:
            stop(suri, timeout=30)  # SIGTERM: the flows are flushed into eve.json
            stop(httpd)
            stop(dns)
    return log


def _text(path: Path, proc: subprocess.Popen[bytes] | None = None) -> str:
    if proc is not None and proc.poll() is not None:
        raise LabError(f"{proc.args!r} exited {proc.returncode}: {path.read_text()[-2000:]}")
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def events(suricata_run: Path) -> list[Event]:
    lines = (suricata_run / "eve.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def by_type(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e["event_type"] == kind]


def test_stock_event_types_are_still_logged(events: list[Event]) -> None:
    kinds = {e["event_type"] for e in events}
    assert {"dns", "http", "fileinfo", "flow", "stats", "alert"} <= kinds


def test_dns_on_the_stock_interface(events: list[Event]) -> None:
    dns = by_type(events, "dns")
    assert {e["in_iface"] for e in dns} == {"eth0"}
    assert {e["dns"]["rrname"] for e in dns if e["dns"]["type"] == "query"} == set(QUERIES)
    answered = {e["dns"]["rrname"] for e in dns if e["dns"]["type"] == "answer"}
    assert answered == set(QUERIES)


def test_both_interfaces_captured(events: list[Event]) -> None:
    flows = by_type(events, "flow")
    assert {e["in_iface"] for e in flows} == {"eth0", "snl0"}
    assert {e["app_proto"] for e in flows if e["in_iface"] == "eth0"} == {"dns"}
    assert {e["app_proto"] for e in flows if e["in_iface"] == "snl0"} == {"http"}


def test_alert_rules_fire_on_the_tap(events: list[Event]) -> None:
    alerts = by_type(events, "alert")
    assert sorted(e["alert"]["signature_id"] for e in alerts) == [9100005, 9100008]
    assert {e["in_iface"] for e in alerts} == {"snl0"}
    assert all(e["dest_ip"] == PEER["snl0"] and "community_id" in e for e in alerts)
    assert len(by_type(events, "http")) == len(REQUESTS)


def test_fast_log_and_stats_log_still_written(suricata_run: Path) -> None:
    fast = (suricata_run / "fast.log").read_text()
    assert "[1:9100008:1]" in fast and "[1:9100005:1]" in fast
    stats = (suricata_run / "stats.log").read_text()
    packets = [int(line.split("|")[-1]) for line in stats.splitlines() if "kernel_packets" in line]
    assert packets and packets[-1] > 0


def test_no_packet_dropped_for_checksums(events: list[Event]) -> None:
    last = by_type(events, "stats")[-1]["stats"]
    assert last["tcp"]["invalid_checksum"] == 0
    assert last["capture"]["kernel_packets"] > 0


def test_fragment_generated_from_the_copy_only_adds(suricata_run: Path) -> None:
    """Guard on the test itself: the copy is Debian's file and the fragment came from it."""
    text = (suricata_run.parent / "normalizer.yaml").read_text()
    assert "- interface: eth0" in text and "- interface: snl0" in text
    assert "- fast:" in text and "- stats:" in text


def test_a_tap_without_its_normalizer_leaves_the_stock_capture_running(
    ready: None, tmp_path: Path
) -> None:
    """Suricata 7.0.10 starts no capture at all while an af-packet interface does not exist
    (measured: "snl0: failed to find interface", then "failed to start in time" after about a
    minute, the stock interface included). A persistent tap that exists, down and with no
    normalizer attached, is enough: Suricata starts, retries the tap and captures eth0. So the
    tap must exist before Suricata starts (normalizer.service creates it; a service drop-in can
    create it too, ``ip tuntap add dev snl0 mode tap``, which the normalizer later attaches to)."""
    conf, fragment = prepare(tmp_path)
    with namespaces(veths=("eth0",)) as (sensor, peer):
        ns_run(sensor, "ip", "tuntap", "add", "dev", "snl0", "mode", "tap")
        dns = start_dns_server(peer, tmp_path)
        suri = start_suricata(sensor, tmp_path, conf, fragment)
        try:
            dns_queries(sensor)
            eve = tmp_path / "log" / "eve.json"
            wait_for("dns events", lambda: _text(eve).count('"type":"answer"') >= len(QUERIES), 30)
        finally:
            stop(suri, timeout=30)
            stop(dns)
    assert "snl0: interface is down" in (tmp_path / "suricata.out").read_text()
    dns_events = [json.loads(line) for line in eve.read_text().splitlines() if '"dns"' in line]
    assert {e["in_iface"] for e in dns_events if e["event_type"] == "dns"} == {"eth0"}
