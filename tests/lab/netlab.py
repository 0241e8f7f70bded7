"""Network-namespace topology for the lab: attacker -- gateway -- [sensor bridge] -- decoy.

Why namespaces: the proxy, the decoy and the capture must be real kernel TCP stacks so the pcaps
carry real segmentation, retransmissions and checksums, yet nothing may touch the host network.
Namespace names carry the pid and a counter so parallel runs and leftovers never collide; every
namespace and every process we start is removed on ``close()``, on exceptions and at exit.

Topology (the sensor namespace holds only the bridge ``br0`` and its two ports)::

    attacker a0 ==== g0 gateway g1 ==== sg [br0 in sensor] sd ==== d0 decoy

Capture happens on the bridge PORT ``sg`` (gateway side): tcpdump on ``br0`` itself only sees
forwarded frames because it puts the bridge in promiscuous mode (with ``-p`` it sees none).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ATTACKER = {4: "198.51.100.10", 6: "2001:db8:a::10"}
GATEWAY_FRONT = {4: "198.51.100.1", 6: "2001:db8:a::1"}
GATEWAY_BACK = {4: "192.0.2.1", 6: "2001:db8:b::1"}
DECOY = {4: "192.0.2.2", 6: "2001:db8:b::2"}
PREFIX = {4: 24, 6: 64}
ROLES = ("attacker", "gateway", "sensor", "decoy")
# (namespace, device, peer namespace, peer device); sg and sd become bridge ports.
VETHS = (
    ("attacker", "a0", "gateway", "g0"),
    ("gateway", "g1", "sensor", "sg"),
    ("decoy", "d0", "sensor", "sd"),
)
ADDRS = (
    ("attacker", "a0", ATTACKER),
    ("gateway", "g0", GATEWAY_FRONT),
    ("gateway", "g1", GATEWAY_BACK),
    ("decoy", "d0", DECOY),
)
_SEQ = itertools.count()


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 60) -> str:
    """Run a command, return stdout; raise LabError with stderr on failure."""
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(argv)} -> rc {p.returncode}: {p.stderr.strip()}")
    return p.stdout


@dataclass
class Capture:
    """Result of a tcpdump run: the pcap and tcpdump's own packet/drop counters."""

    path: Path
    packets: int
    dropped: int


@dataclass
class Lab:
    """The four namespaces plus every process started in them; use as a context manager."""

    ns: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Create namespaces, veths, bridge and addresses; turn offloads off everywhere."""
        tag = f"snl{os.getpid()}x{next(_SEQ)}"
        atexit.register(self.close)
        for role in ROLES:
            self.ns[role] = f"{tag}{role[0]}"
            run(["ip", "netns", "add", self.ns[role]])
            self.ip(role, "link", "set", "lo", "up")
        # No IPv6 on the bridge: its router solicitations would only add noise to captures.
        self.sh("sensor", "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        self.sh("sensor", "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        self.ip(
            "sensor", "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"
        )
        for ns1, dev1, ns2, dev2 in VETHS:
            peer = ["type", "veth", "peer", "name", dev2, "netns", self.ns[ns2]]
            run(["ip", "link", "add", dev1, "netns", self.ns[ns1], *peer])
            for ns, dev in ((ns1, dev1), (ns2, dev2)):
                # Without this, frames leave veths with partial checksums (tcpdump: "incorrect
                # cksum", Suricata -k all: tcp.invalid_checksum) and as 64 KB TSO super-frames.
                self.sh(
                    ns, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off"
                )
        for port in ("sg", "sd"):
            self.ip("sensor", "link", "set", port, "master", "br0")
        for role, dev, addrs in ADDRS:
            for fam, addr in addrs.items():
                extra = ["nodad"] if fam == 6 else []
                self.ip(role, "addr", "add", f"{addr}/{PREFIX[fam]}", "dev", dev, *extra)
        for role in ROLES:
            for dev in self.ip(role, "-o", "link", "show").split("\n"):
                if dev:
                    name = dev.split(":")[1].strip().split("@")[0]
                    self.ip(role, "link", "set", name, "up")
        self._wait_links()

    def _wait_links(self, timeout: float = 10) -> None:
        """Wait for carrier on every veth and "forwarding" on both bridge ports.

        Why: the kernel's linkwatch propagates veth carrier up to ~1 s after "link set up";
        until then the bridge port is "disabled" and silently drops frames.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            down = [r for r in ROLES if "NO-CARRIER" in self.ip(r, "-br", "link")]
            ports = self.ip("sensor", "-d", "link", "show", "master", "br0")
            if not down and ports.count("state forwarding") == 2:
                return
            time.sleep(0.1)
        raise LabError(f"links not up after {timeout}s: {self.ip('sensor', 'link')}")

    def stop_all(self) -> None:
        """Stop every process spawned so far (services of one scenario variant)."""
        for p in self.procs:
            stop(p)
        self.procs.clear()

    def close(self) -> None:
        """Stop our processes (by pid), then delete our namespaces. Idempotent."""
        self.stop_all()
        for name in list(self.ns.values()):
            # Whatever still runs inside *our* namespaces was started by us (e.g. nginx workers).
            for pid in run(["ip", "netns", "pids", name], check=False).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            run(["ip", "netns", "del", name], check=False)
        self.ns.clear()

    def cmd(self, role: str, *argv: str) -> list[str]:
        """argv that runs inside the namespace of ``role``."""
        return ["ip", "netns", "exec", self.ns[role], *argv]

    def sh(self, role: str, *argv: str, check: bool = True, timeout: float = 60) -> str:
        return run(self.cmd(role, *argv), check=check, timeout=timeout)

    def ip(self, role: str, *argv: str) -> str:
        return run(["ip", "-n", self.ns[role], *argv])

    def spawn(self, role: str, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Start a long-running process in a namespace; it is stopped on close()."""
        with log.open("ab") as out:
            p = subprocess.Popen(self.cmd(role, *argv), stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def wait_listen(self, role: str, port: int, timeout: float = 10) -> None:
        """Block until something in ``role`` listens on TCP ``port``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sh(role, "ss", "-Hltn", f"sport = :{port}").strip():
                return
            time.sleep(0.05)
        raise LabError(f"nothing listens on port {port} in {role} after {timeout}s")

    def nft(self, ruleset: str) -> None:
        """Replace the sensor namespace's nftables ruleset (only that namespace is touched)."""
        p = subprocess.run(
            self.cmd("sensor", "nft", "-f", "-"),
            input="flush ruleset\n" + ruleset,
            capture_output=True,
            text=True,
        )
        if p.returncode:
            raise LabError(f"nft: {p.stderr.strip()}")

    @contextlib.contextmanager
    def capture(
        self, path: Path, port: str = "sg", role: str = "sensor", extra: Sequence[str] = ()
    ) -> Iterator[Capture]:
        """tcpdump on a bridge port, started before and flushed after the ``with`` body.

        --immediate-mode matters: without it libpcap's TPACKET_V3 ring hands packets over per
        block, and on SIGINT a partly filled block is lost (small captures came out empty).
        -U writes each packet at once; we wait for "listening on" so no early packet is missed
        and stop with SIGINT so the pcap is complete. The yielded Capture is filled on exit.
        """
        argv = self.cmd(
            role,
            "tcpdump",
            "-i",
            port,
            "-nn",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            *extra,
            "-w",
            str(path),
        )
        p = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        self.procs.append(p)
        assert p.stderr is not None
        sel = selectors.DefaultSelector()
        sel.register(p.stderr, selectors.EVENT_READ)
        if not sel.select(timeout=10) or b"listening on" not in p.stderr.readline():
            stop(p)
            raise LabError(f"tcpdump did not start on {port}")
        result = Capture(path, 0, 0)
        try:
            yield result
        finally:
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=10)
            self.procs.remove(p)
            for line in err.decode().splitlines():
                words = line.split()
                if line.endswith("packets captured"):
                    result.packets = int(words[0])
                elif line.endswith("dropped by kernel"):
                    result.dropped = int(words[0])


def stop(p: subprocess.Popen[bytes], timeout: float = 5) -> None:
    """SIGTERM one process we started, SIGKILL it if it lingers."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
