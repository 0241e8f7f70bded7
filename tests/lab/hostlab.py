"""The deployment the product exists for: the gateway on the HOST that owns the decoys' bridge.

Why a second topology: tests/lab/netlab.py puts the proxy behind a bridge port and turns every
offload off, which suits the code but not the field. Here, as on a real decoy host:

* the ``host`` namespace owns bridge ``br1`` (192.0.2.1, the proxies' source address) and runs
  the gateways (HAProxy send-proxy-v2, nginx stream PROXY v1 coalesced with the request);
* several ``decoy`` namespaces hang off ``br1`` as ports (veths, standing in for VM taps);
* with ``gateway_on_port`` the proxy sits in a namespace of its own behind a port instead, so
  its frames are forwarded port to port (an AF_PACKET socket on ``br1`` sees them only when the
  bridge is promiscuous);
* no ``ethtool -K`` anywhere: tx checksum offload, TSO/GSO and GRO stay at the kernel's
  defaults, so captures on ``br1`` carry partial checksums and GSO frames larger than the MTU.

The capture point is the bridge device itself, one capture for every decoy.
"""

from __future__ import annotations

import atexit
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tests.lab.netlab import Lab, LabError, run

ATTACKER = "198.51.100.10"
FRONT = "198.51.100.1"  # the host's address the attacker connects to
BRIDGE_ADDR = "192.0.2.1"  # the host's bridge address: the proxies' source address
PORT_GATEWAY = "192.0.2.254"  # the proxy's address when it sits behind a bridge port
BRIDGE = "br1"
_SEQ = itertools.count()


def decoy_addr(i: int) -> str:
    return f"192.0.2.{11 + i}"


@dataclass
class HostLab(Lab):
    """attacker -- host [gateways, br1] -- decoy0..decoyN-1 (and optionally a port gateway).

    Namespaces, processes, commands and clean-up are netlab.Lab's; only the topology differs.
    """

    decoys: int = 2
    gateway_on_port: bool = False

    @property
    def gateway_role(self) -> str:
        return "portgw" if self.gateway_on_port else "host"

    @property
    def proxy_source(self) -> str:
        return PORT_GATEWAY if self.gateway_on_port else BRIDGE_ADDR

    def start(self) -> None:
        tag = f"snh{os.getpid()}x{next(_SEQ)}"
        atexit.register(self.close)
        roles = ["attacker", "host", *(f"decoy{i}" for i in range(self.decoys))]
        if self.gateway_on_port:
            roles.append("portgw")
        for role in roles:
            self.ns[role] = f"{tag}{role[0]}{role[-1]}"
            run(["ip", "netns", "add", self.ns[role]])
            self.ip(role, "link", "set", "lo", "up")
        self.ip("host", "link", "add", BRIDGE, "type", "bridge", "stp_state", "0")
        self.ip("host", "link", "set", BRIDGE, "type", "bridge", "forward_delay", "0")
        self.ip("host", "addr", "add", f"{BRIDGE_ADDR}/24", "dev", BRIDGE)
        front = "portgw" if self.gateway_on_port else "host"
        self._veth("attacker", "a0", front, "h0")
        self.ip("attacker", "addr", "add", f"{ATTACKER}/24", "dev", "a0")
        self.ip(front, "addr", "add", f"{FRONT}/24", "dev", "h0")
        for i in range(self.decoys):
            role = f"decoy{i}"
            self._veth(role, "d0", "host", f"p{i}")
            self.ip("host", "link", "set", f"p{i}", "master", BRIDGE)
            self.ip(role, "addr", "add", f"{decoy_addr(i)}/24", "dev", "d0")
        if self.gateway_on_port:
            self._veth("portgw", "g1", "host", "pg")
            self.ip("host", "link", "set", "pg", "master", BRIDGE)
            self.ip("portgw", "addr", "add", f"{PORT_GATEWAY}/24", "dev", "g1")
        for role in roles:
            for line in self.ip(role, "-o", "link", "show").splitlines():
                name = line.split(":")[1].strip().split("@")[0]
                self.ip(role, "link", "set", name, "up")
        self._wait_links()

    def _veth(self, ns1: str, dev1: str, ns2: str, dev2: str) -> None:
        peer = ["type", "veth", "peer", "name", dev2, "netns", self.ns[ns2]]
        run(["ip", "link", "add", dev1, "netns", self.ns[ns1], *peer])
        # Offloads deliberately untouched: this is what a real host does.

    def _wait_links(self, timeout: float = 10) -> None:
        ports = self.decoys + (1 if self.gateway_on_port else 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            down = [r for r in self.ns if "NO-CARRIER" in self.ip(r, "-br", "link")]
            fwd = self.ip("host", "-d", "link", "show", "master", BRIDGE).count("state forwarding")
            if not down and fwd == ports:
                return
            time.sleep(0.1)
        raise LabError(f"links not up after {timeout}s: {self.ip('host', '-d', 'link')}")

    def offloads(self, role: str, dev: str) -> dict[str, str]:
        """``ethtool -k`` of a device: the test shows they really are on."""
        out = self.sh(role, "ethtool", "-k", dev)
        pairs = (ln.split(":", 1) for ln in out.splitlines() if ":" in ln)
        return {k.strip(): v.split()[0] for k, v in pairs if v.split()}


# -- the gateways and decoys of the host ------------------------------------------------------

HAPROXY_PORT = 80  # HAProxy, send-proxy-v2, to decoy0
NGINX_PORT = 81  # nginx stream, PROXY v1 coalesced with the first request bytes, to decoy1


def start_host_services(lab: HostLab, d: Path, headers: bool) -> dict[int, str]:
    """Decoy nginx servers and the two gateways; returns gateway port -> decoy address.

    ``headers=False`` is the baseline: the same gateways and decoys without any header.
    """
    from tests.lab.services import STREAM_MODULE, _nginx_main, make_webroot, start_decoy

    webroot = make_webroot(d / "www")
    routes = {HAPROXY_PORT: decoy_addr(0), NGINX_PORT: decoy_addr(1 % lab.decoys)}
    for i in range(lab.decoys):
        start_decoy(lab, d, webroot, headers, role=f"decoy{i}", addrs=(decoy_addr(i),))  # type: ignore[arg-type]
    gw = lab.gateway_role
    conf = (
        f"global\n  pidfile {d}/haproxy.pid\n  log stdout format raw local0 info\n"
        "defaults\n  mode tcp\n  log global\n  option tcplog\n"
        "  timeout connect 10s\n  timeout client 30s\n  timeout server 30s\n"
        f"frontend fe\n  bind {FRONT}:{HAPROXY_PORT}\n  default_backend be\n"
        f"backend be\n  server decoy {routes[HAPROXY_PORT]}:80"
        f"{' send-proxy-v2' if headers else ''}\n"
    )
    (d / "haproxy.cfg").write_text(conf)
    run(["haproxy", "-c", "-q", "-f", str(d / "haproxy.cfg")])
    lab.spawn(gw, ["haproxy", "-db", "-f", str(d / "haproxy.cfg")], d / "haproxy.log")
    stream = (
        f"load_module {STREAM_MODULE};\n" + _nginx_main(d, "gw") + "stream {\n  server {\n"
        f"    listen {FRONT}:{NGINX_PORT};\n    proxy_pass {routes[NGINX_PORT]}:80;\n"
        f"    proxy_protocol {'on' if headers else 'off'};\n    ssl_preread on;\n  }}\n}}\n"
    )
    (d / "gw-nginx.conf").write_text(stream)
    lab.spawn(
        gw, ["nginx", "-e", str(d / "gw-error.log"), "-c", str(d / "gw-nginx.conf")], d / "gw.out"
    )
    lab.wait_listen(gw, HAPROXY_PORT)
    lab.wait_listen(gw, NGINX_PORT)
    return routes


OFFLOAD_SCENARIO = "host-offload"


def record_offload(outdir: Path) -> tuple[Path, Path]:
    """Raw and baseline captures of both gateways, recorded on the bridge with offloads on.

    tcpdump there records what AF_PACKET sees: partial checksums on every locally sent or
    offloading peer's segment, and GSO frames larger than the MTU.
    """
    from tests.lab.traffic import run_traffic

    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for headers in (True, False):
        name = OFFLOAD_SCENARIO if headers else f"{OFFLOAD_SCENARIO}.baseline"
        work = outdir / "work" / name
        work.mkdir(parents=True, exist_ok=True)
        with HostLab(decoys=2) as lab:
            start_host_services(lab, work, headers)
            pcap = outdir / f"{name}.pcap"
            with lab.capture(pcap, port=BRIDGE, role="host"):
                for port in (HAPROXY_PORT, NGINX_PORT):
                    run_traffic(lab, work, url=f"http://{FRONT}:{port}")
                time.sleep(0.5)
        paths.append(pcap)
    return paths[0], paths[1]
