"""Network namespaces for the appliance: two protected sites behind a simulated balancer.

Why two sites with the same addresses: endpoints of different VPCs may use overlapping ranges,
so equal inner 5-tuples behind two endpoint ENIs are real; the appliance must keep them apart.

Topology (every veth with offloads off; IPv6 off everywhere)::

    attacker c0 ==== ca [balancer] sa ==== s0 decoy        (site A, ENI_A)
    client2  c0 ==== cb [balancer] sb ==== s0 server2      (site B, ENI_B, same addresses)
    client3  c0 ==== cc [balancer] sc ==== s0 server3      (site C, ENI_C: a mirror target)
                       [balancer] u0 ==== u1 appliance     (underlay 10.98.0.0/24, MTU 9001)

The clients' and servers' gateways are static neighbour entries pointing at the balancer's
veths, which have no addresses: only the simulator (tests/lab/balancer.py, AF_PACKET) moves
their frames, wrapped in GENEVE through the appliance and back.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.lab.netlab import ATTACKER, DECOY, Lab, LabError, run, stop

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("attacker", "decoy", "client2", "server2", "client3", "server3", "balancer", "appliance")
BALANCER, STRANGER, APPLIANCE = "10.98.0.1", "10.98.0.9", "10.98.0.2"
CLIENT_GW, SERVER_GW = "198.51.100.1", "192.0.2.1"
ENI_A, ENI_B, ENI_C = "0e1a2b3c4d5e6f70", "0e99aabbccddeeff", "0e3c3c3c3c3c3c3c"
MIRROR_VNI = 100
HEALTH_PORT = 8080
TAP = "snl0"
# site: (client role, server role, balancer's client veth, balancer's server veth, ENI, sport,
# mirror VNI: site C's balancer is a mirror target, its traffic flows directly)
SITES = (
    ("attacker", "decoy", "ca", "sa", ENI_A, 50001, 0),
    ("client2", "server2", "cb", "sb", ENI_B, 50002, 0),
    ("client3", "server3", "cc", "sc", ENI_C, 50003, MIRROR_VNI),
)
_MAC = "02:00:00:00:{:02x}:{:02x}"
_SEQ = itertools.count()
NORMALIZER = ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "normalizer.cli"]


def mac(site: int, dev: int) -> str:
    return _MAC.format(site + 1, dev)


class ApplianceLab(Lab):
    def start(self) -> None:
        tag = f"snl{os.getpid()}a{next(_SEQ)}"
        atexit.register(self.close)
        for role in ROLES:
            self.ns[role] = f"{tag}{role[:3]}{role[-1]}"
            run(["ip", "netns", "add", self.ns[role]])
            self.ip(role, "link", "set", "lo", "up")
            self.sh(role, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            self.sh(role, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        for i, (client, server, cif, sif, _eni, _sport, _vni) in enumerate(SITES):
            self._veth(client, "c0", mac(i, 1), cif, mac(i, 2))
            self._veth(server, "s0", mac(i, 4), sif, mac(i, 3))
            self.ip(client, "addr", "add", f"{ATTACKER[4]}/24", "dev", "c0")
            self.ip(server, "addr", "add", f"{DECOY[4]}/24", "dev", "s0")
            self.ip(client, "neigh", "add", CLIENT_GW, "lladdr", mac(i, 2), "dev", "c0")
            self.ip(server, "neigh", "add", SERVER_GW, "lladdr", mac(i, 3), "dev", "s0")
            self.ip(client, "route", "add", "default", "via", CLIENT_GW)
            self.ip(server, "route", "add", "default", "via", SERVER_GW)
        self._veth("balancer", "u0", mac(9, 1), "appliance", "")
        self.ip("balancer", "addr", "add", f"{BALANCER}/24", "dev", "u0")
        self.ip("balancer", "addr", "add", f"{STRANGER}/24", "dev", "u0")
        self.ip("appliance", "addr", "add", f"{APPLIANCE}/24", "dev", "u1")
        for role, dev in (("balancer", "u0"), ("appliance", "u1")):
            self.ip(role, "link", "set", dev, "mtu", "9001")
        self._wait_carrier()

    def _veth(self, role: str, dev: str, addr: str, peer: str, peer_addr: str) -> None:
        """A veth from ``role`` to the balancer (or, for the underlay, balancer -> appliance)."""
        if role == "balancer":  # the underlay: u0 in the balancer, u1 in the appliance
            pair = ((role, dev, addr), (peer, "u1", mac(9, 2)))
        else:
            pair = ((role, dev, addr), ("balancer", peer, peer_addr))
        (ns1, dev1, mac1), (ns2, dev2, mac2) = pair
        run(
            ["ip", "link", "add", dev1, "netns", self.ns[ns1], "address", mac1, "type", "veth"]
            + ["peer", "name", dev2, "netns", self.ns[ns2], "address", mac2]
        )
        for ns, d in ((ns1, dev1), (ns2, dev2)):
            self.sh(ns, "ethtool", "-K", d, "tx", "off", "tso", "off", "gso", "off", "gro", "off")
            self.ip(ns, "link", "set", d, "up")

    def _wait_carrier(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not [r for r in ROLES if "NO-CARRIER" in self.ip(r, "-br", "link")]:
                return
            time.sleep(0.1)
        raise LabError(f"links not up after {timeout}s")

    # -- the pieces the test starts -------------------------------------------------------------

    def as_role(self, real: str, role: str) -> Lab:
        """A view running ``role``'s commands in ``real``'s namespace (traffic.py's attacker)."""
        return Lab(ns={role: self.ns[real]}, procs=self.procs)

    def start_balancer(self, d: Path) -> Path:
        """The simulator in the balancer namespace; returns where its counters appear."""
        stats = d / "balancer.json"
        sites = [
            {
                "eni_id": eni,
                "client_if": cif,
                "server_if": sif,
                "client_mac": mac(i, 1),
                "server_mac": mac(i, 4),
                "server_net": "192.0.2.0/24",
                "sport": sport,
                "mirror_vni": vni,
            }
            for i, (_c, _s, cif, sif, eni, sport, vni) in enumerate(SITES)
        ]
        cfg = d / "balancer-config.json"
        cfg.write_text(
            json.dumps(
                {"appliance": APPLIANCE, "address": BALANCER, "stats": str(stats), "sites": sites}
            )
        )
        argv = ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "tests.lab.balancer"]
        proc = self.spawn("balancer", [*argv, "run", str(cfg)], d / "balancer.log")
        wait_for(d / "balancer.log", "balancer running", proc, 15)
        return stats

    def start_appliance(
        self, d: Path, cache: Path, name: str, config: Path | None = None
    ) -> subprocess.Popen[bytes]:
        argv = [*NORMALIZER, "appliance", "--listen", APPLIANCE, "--tap", TAP]
        argv += ["--config", str(config)] if config is not None else []
        argv += ["--tunnel-peer", f"{BALANCER}/32", "--health-port", str(HEALTH_PORT)]
        argv += ["--cache", str(cache), "--stats-json", str(d / f"{name}.json")]
        log = d / f"{name}.log"
        proc = self.spawn("appliance", argv, log)
        wait_for(log, "appliance on", proc, 15)
        return proc

    def stop_appliance(self, proc: subprocess.Popen[bytes], d: Path, name: str) -> dict[str, Any]:
        stop(proc, timeout=15)
        self.procs.remove(proc)
        if proc.returncode != 0:
            raise LabError(f"appliance exited {proc.returncode}: {(d / f'{name}.log').read_text()}")
        data: dict[str, Any] = json.loads((d / f"{name}.json").read_text())
        return data

    def health(self) -> tuple[str, dict[str, Any]]:
        """(HTTP status, JSON body) of the health check as the balancer sees it; "000" when
        nothing answers."""
        p = subprocess.run(
            self.cmd("balancer", "curl", "-s", "--max-time", "5", "-w", "\n%{http_code}")
            + [f"http://{APPLIANCE}:{HEALTH_PORT}/"],
            capture_output=True,
            text=True,
        )
        body, _, code = p.stdout.rpartition("\n")
        return code, json.loads(body) if body.strip() else {}

    def wait_health(self, code: str, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got, body = self.health()
            if got == code:
                return body
            time.sleep(0.1)
        raise LabError(f"health check never answered {code}")


def wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise LabError(f"{proc.args!r} exited {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise LabError(f"{text!r} not in {log} after {timeout}s")


def balancer_stats(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def wait_stats(path: Path, cond: Any, timeout: float = 10) -> dict[str, Any]:
    """The simulator's counters once ``cond(stats)`` holds (a condition, not a duration)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = balancer_stats(path)
        if cond(s):
            return s
        time.sleep(0.05)
    raise LabError(f"balancer counters never satisfied the condition: {balancer_stats(path)}")
