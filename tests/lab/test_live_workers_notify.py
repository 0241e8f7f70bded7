"""``live --workers 2`` and systemd's notify protocol (root: a network namespace, AF_PACKET).

Claims: only the parent speaks to systemd (every datagram's sender, from SCM_CREDENTIALS, is
the parent: the workers never inherit NOTIFY_SOCKET); READY=1 comes once every worker runs, with
MAINPID the parent; WATCHDOG=1 pings stop while a worker is dead and resume when it runs again
(the STATUS lines say so); SIGTERM ends with STOPPING=1 and exit 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.lab]

ROOT = Path(__file__).resolve().parents[2]
_UCRED = struct.Struct("=iII")  # pid, uid, gid


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, AF_PACKET, tap)")
    ns = f"snlwn{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        ip = ["ip", "-n", ns]
        subprocess.run([*ip, "link", "add", "a0", "type", "veth", "peer", "name", "a1"], check=True)
        for dev in ("a0", "a1"):
            subprocess.run([*ip, "link", "set", dev, "up"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


class Notify:
    """A stand-in for systemd's notify socket that records (sender pid, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.got: list[tuple[int, str]] = []

    def until(self, pred: str, timeout: float = 30) -> list[tuple[int, str]]:
        """Receive until a message matching ``pred`` (a regex); return what came, it included."""
        start = len(self.got)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except TimeoutError:
                break
            pid = next(
                _UCRED.unpack(d[: _UCRED.size])[0]
                for level, kind, d in anc
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
            )
            self.got.append((pid, data.decode()))
            if re.search(pred, data.decode()):
                return self.got[start:]
        raise AssertionError(f"no {pred!r} from the normalizer; got {self.got[start:]}")


def test_only_the_parent_notifies_and_the_watchdog_waits_for_a_restarted_worker(
    netns: str, tmp_path: Path
) -> None:
    notify = Notify(tmp_path / "notify.sock")
    log = tmp_path / "live.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "200000",  # a ping every 0.1 s
    }
    argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "normalizer", "live"]
    argv += ["--iface", "a0", "--tap", "snl0", "--proxy", "10.0.0.1/32", "--workers", "2"]
    argv += ["--warn-after", "3600"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        first = notify.until(r"READY=1")
        ready = first[-1][1]
        assert f"MAINPID={proc.pid}" in ready and "2 workers" in ready, ready
        notify.until(r"WATCHDOG=1")
        notify.until(r"WATCHDOG=1")
        m = re.search(r"pids (\d+), (\d+)\)", log.read_text())
        assert m, log.read_text()
        os.kill(int(m[2]), signal.SIGKILL)
        notify.until(r"STATUS=worker 1 restarting, 1 of 2 running")
        gap = notify.until(r"STATUS=a0 -> snl0, 2 workers")
        assert not any("WATCHDOG=1" in msg for _pid, msg in gap), gap
        notify.until(r"WATCHDOG=1")  # pings again
        proc.send_signal(signal.SIGTERM)
        notify.until(r"STOPPING=1")
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    senders = {pid for pid, _msg in notify.got}
    assert senders == {proc.pid}, notify.got
    assert sum(msg.startswith("READY=1") for _pid, msg in notify.got) == 1
    assert "restarted 1 times" in log.read_text()


def test_the_silence_warning_runs_on_the_sum_of_the_workers(netns: str, tmp_path: Path) -> None:
    """SYNs from a host that is not the trusted proxy, spread over both workers: the warning
    names it with the SYNs of both added up, and the gauge says so."""
    stats, log = tmp_path / "live.json", tmp_path / "live.log"
    ns = ["ip", "netns", "exec", netns]
    subprocess.run(["ip", "-n", netns, "addr", "add", "10.9.0.1/24", "dev", "a1"], check=True)
    neigh = ["ip", "-n", netns, "neigh", "add", "10.9.0.2", "lladdr", "02:00:00:00:00:02"]
    subprocess.run([*neigh, "dev", "a1"], check=True)  # no ARP: the SYNs leave at once
    argv = [*ns, sys.executable, "-m", "normalizer", "live", "--iface", "a0", "--tap", "snl0"]
    argv += ["--proxy", "10.0.0.1/32", "--workers", "2", "--warn-after", "2"]
    argv += ["--stats-json", str(stats)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while "live on" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        # 24 connection attempts from 24 source ports, to a host that never answers.
        syns = "import socket\nfor _ in range(24):\n    s = socket.socket()\n"
        syns += "    s.setblocking(False)\n    s.connect_ex(('10.9.0.2', 80))\n"
        subprocess.run([*ns, sys.executable, "-c", syns], check=True)
        deadline = time.monotonic() + 30
        while "no proxied flow" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    c = json.loads(stats.read_text())
    text = log.read_text()
    assert "warning: 2 s in, no proxied flow" in text, text
    assert c["no_proxied_flows"] == 1
    tcp = c["ring_frames"] - c["passed_not_tcp"]  # every TCP frame here is such a SYN
    assert tcp >= 24
    assert f"connections were opened by 10.9.0.1 ({tcp}): if one is the proxy, try --proxy" in text
    assert all(w["ring_frames"] > 0 for w in c["per_worker"]), c["per_worker"]


def test_a_capture_that_cannot_open_fails_the_start_and_removes_the_new_tap(
    netns: str, tmp_path: Path
) -> None:
    argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "normalizer", "live"]
    argv += ["--iface", "nosuch0", "--tap", "snl9", "--proxy", "10.0.0.1/32", "--workers", "2"]
    p = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert p.returncode == 1, p.stderr
    assert "AF_PACKET on nosuch0: No such device" in p.stderr, p.stderr
    assert "worker" not in p.stderr  # the rings are the parent's: it fails before any fork
    links = subprocess.run(["ip", "-n", netns, "link"], capture_output=True, text=True).stdout
    assert "snl9" not in links
