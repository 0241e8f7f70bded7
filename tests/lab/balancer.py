"""A gateway load balancer in userspace, for the appliance lab (this kernel has no geneve module).

Why a simulator: the appliance must be tested against the thing it serves, a balancer that
wraps every packet of its endpoints in GENEVE with the three class-0x0108 options, sends it to
the appliance, and delivers only what comes BACK. So protected traffic flows end to end only
if the appliance returns every packet, in both directions.

Each endpoint ("site") is a pair of veths in the balancer's namespace: one towards a client
namespace, one towards a server namespace, both without addresses (the kernel forwards
nothing). Every IPv4 frame arriving on either (AF_PACKET) is wrapped -- ENI id and attachment
id of its site, a per-flow cookie -- and sent from the balancer's underlay address (a source
port per site) to the appliance's port 6081. Returns arrive on the balancer's own port 6081
(the appliance keeps the ports): the ENI option names the site, the inner destination the
side, and the inner packet goes out there with Ethernet addresses of that link.

A mirror site (``mirror_vni``) is a balancer as traffic-mirror target: its frames go on
between client and server directly, and a copy of each, wrapped in VXLAN (the mirror session)
and then GENEVE, goes to the appliance; its returns are counted, not delivered.

Counters go to a JSON file after every change (the lab test reads it): datagrams sent,
returned per ENI id, returns it could not deliver, and ICMP errors (port unreachable while the
appliance is down) read from the send sockets' error queues.

``python -m tests.lab.balancer run CONFIG.json`` runs it; ``... hostile`` sends the lab's
hostile datagrams followed by one valid marker datagram (see ``hostile_datagrams``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normalizer.tunnels import geneve

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
ATTACHMENT_ID = bytes.fromhex("a77ac4000000beef")
MARKER_ENI = bytes.fromhex("00000000000000ff")
HOSTILE_ENI = bytes.fromhex("0000000000000bad")
_IP_RECVERR = 11


@dataclass(frozen=True)
class Site:
    eni_id: bytes
    client_if: str
    server_if: str
    client_mac: bytes  # of the client's interface (frames towards it)
    server_mac: bytes
    server_net: ipaddress.IPv4Network  # inner destinations on the server side
    sport: int  # outer UDP source port of this site's datagrams
    mirror_vni: int = 0  # > 0: a traffic-mirror site (see ``Balancer._captured``)


def cookie_for(inner: bytes) -> bytes:
    """Per-flow cookie: a CRC of protocol and sorted endpoints (both directions alike)."""
    ihl, proto = (inner[0] & 0x0F) * 4, inner[9]
    ports = inner[ihl : ihl + 4] if proto in (6, 17) and len(inner) >= ihl + 4 else bytes(4)
    a, b = inner[12:16] + ports[:2], inner[16:20] + ports[2:]
    return zlib.crc32(bytes((proto,)) + min(a, b) + max(a, b)).to_bytes(4, "big")


MIRROR_SOURCE, MIRROR_TARGET = "10.1.0.5", "10.1.0.6"  # the mirror session's VXLAN addresses


def vxlan_copy(frame: bytes, vni: int) -> bytes:
    """A mirrored Ethernet frame as the mirror session sends it: IPv4 / UDP 4789 / VXLAN."""
    vx = struct.pack("!BBHI", 0x08, 0, 0, vni << 8) + frame
    udp = struct.pack("!HHHH", 49152 + vni, 4789, 8 + len(vx), 0) + vx
    src, dst = socket.inet_aton(MIRROR_SOURCE), socket.inet_aton(MIRROR_TARGET)
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, dst)
    csum = sum(struct.unpack("!10H", head))
    csum = (csum & 0xFFFF) + (csum >> 16)
    csum = (csum & 0xFFFF) + (csum >> 16)
    return head[:10] + struct.pack("!H", ~csum & 0xFFFF) + head[12:] + udp


def wrap(inner: bytes, eni: bytes, cookie: bytes | None = None) -> bytes:
    opts = geneve.aws_options(eni, ATTACHMENT_ID, cookie_for(inner) if cookie is None else cookie)
    return geneve.build(0, geneve.PROTO_IPV4, opts) + inner


def _eni(payload: bytes) -> bytes | None:
    try:
        g = geneve.parse(payload)
    except geneve.GeneveError:
        return None
    for opt in g.options:
        if opt.cls == geneve.AWS_CLASS and opt.type == 1:
            return opt.data
    return None


class Balancer:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.appliance = (cfg["appliance"], 6081)
        self.stats_path = Path(cfg["stats"])
        self.sites = [
            Site(
                bytes.fromhex(s["eni_id"]),
                s["client_if"],
                s["server_if"],
                bytes.fromhex(s["client_mac"].replace(":", "")),
                bytes.fromhex(s["server_mac"].replace(":", "")),
                ipaddress.IPv4Network(s["server_net"]),
                int(s["sport"]),
                int(s.get("mirror_vni", 0)),
            )
            for s in cfg["sites"]
        ]
        self.stats: dict[str, Any] = {
            "sent": 0,
            "returned": 0,
            "returned_by_eni": {},
            "undeliverable": 0,
            "refused": 0,
            "send_errors": 0,
        }
        self.links: dict[int, tuple[Site, str, socket.socket]] = {}  # fd -> capture
        self.out: dict[str, tuple[socket.socket, bytes]] = {}  # ifname -> (socket, own mac)
        for site in self.sites:
            for ifname in (site.client_if, site.server_if):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                s.bind((ifname, 0))
                s.setblocking(False)
                self.links[s.fileno()] = (site, ifname, s)
                mac = Path(f"/sys/class/net/{ifname}/address").read_text().strip()
                self.out[ifname] = (s, bytes.fromhex(mac.replace(":", "")))
        self.senders: dict[bytes, socket.socket] = {}
        for site in self.sites:
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tx.bind((cfg["address"], site.sport))
            tx.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
            tx.setblocking(False)
            self.senders[site.eni_id] = tx
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind(("0.0.0.0", 6081))
        self.rx.setblocking(False)
        self._stop = False

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stop", True))
        poller = select.poll()
        for fd in self.links:
            poller.register(fd, select.POLLIN)
        for tx in self.senders.values():
            poller.register(tx.fileno(), select.POLLERR)
        poller.register(self.rx.fileno(), select.POLLIN)
        by_fd = {tx.fileno(): tx for tx in self.senders.values()}
        self._write_stats()
        print("balancer running", file=sys.stderr, flush=True)
        while not self._stop:
            changed = False
            for fd, ev in poller.poll(200):
                if fd in self.links:
                    changed |= self._captured(*self.links[fd])
                elif fd == self.rx.fileno():
                    changed |= self._returned()
                elif fd in by_fd and ev & select.POLLERR:
                    changed |= self._errors(by_fd[fd])
            if changed:
                self._write_stats()

    def _captured(self, site: Site, ifname: str, s: socket.socket) -> bool:
        n = 0
        while True:
            try:
                frame, addr = s.recvfrom(65535)
            except BlockingIOError:
                return n > 0
            if addr[2] == PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
                continue
            if site.mirror_vni:
                # A mirror target's balancer: the traffic itself goes on directly (a bridge),
                # a copy goes to the appliance as VXLAN (the mirror session) inside GENEVE.
                other = site.server_if if ifname == site.client_if else site.client_if
                peer_mac = site.server_mac if other == site.server_if else site.client_mac
                s_out, own = self.out[other]
                s_out.send(peer_mac + own + frame[12:])
                datagram = wrap(vxlan_copy(frame, site.mirror_vni), site.eni_id, bytes(4))
            else:
                datagram = wrap(frame[14:], site.eni_id)
            try:
                self.senders[site.eni_id].sendto(datagram, self.appliance)
                self.stats["sent"] += 1
            except OSError:
                self.stats["send_errors"] += 1
            n += 1

    def _returned(self) -> bool:
        n = 0
        while True:
            try:
                payload, _addr = self.rx.recvfrom(65535)
            except BlockingIOError:
                return n > 0
            n += 1
            self.stats["returned"] += 1
            eni = _eni(payload)
            key = eni.hex() if eni is not None else "none"
            by = self.stats["returned_by_eni"]
            by[key] = by.get(key, 0) + 1
            self._deliver(payload, eni)

    def _deliver(self, payload: bytes, eni: bytes | None) -> None:
        site = next((s for s in self.sites if s.eni_id == eni), None)
        if site is not None and site.mirror_vni:  # a mirrored copy: the original went on
            return
        try:
            inner = payload[geneve.parse(payload).length :]
        except geneve.GeneveError:
            inner = b""
        if site is None or len(inner) < 20:
            self.stats["undeliverable"] += 1
            return
        to_server = ipaddress.IPv4Address(inner[16:20]) in site.server_net
        ifname, mac = (
            (site.server_if, site.server_mac)
            if to_server
            else (
                site.client_if,
                site.client_mac,
            )
        )
        s, own = self.out[ifname]
        s.send(mac + own + b"\x08\x00" + inner)

    def _errors(self, tx: socket.socket) -> bool:
        n = 0
        while True:
            try:
                tx.recvmsg(65535, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, OSError):
                return n > 0
            n += 1
            self.stats["refused"] += 1

    def _write_stats(self) -> None:
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.stats))
        os.replace(tmp, self.stats_path)


def _ipv4_udp(payload: bytes, src: str = "198.51.100.10", dst: str = "192.0.2.2") -> bytes:
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    head = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0,
        64,
        17,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return head + udp


def hostile_datagrams() -> dict[str, bytes]:
    """reason (as the appliance counts it) -> a datagram that must be neither returned nor
    inspected; all but "missing" carry HOSTILE_ENI, so a return would be counted under it."""
    inner = _ipv4_udp(b"hostile")
    good = wrap(inner, HOSTILE_ENI)
    no_cookie = geneve.build(
        0, geneve.PROTO_IPV4, geneve.aws_options(HOSTILE_ENI, ATTACHMENT_ID, bytes(4))[:2]
    )
    return {
        "version": bytes([good[0] | 0x40]) + good[1:],
        "length": bytes([63]) + good[1:],  # 252 option bytes announced, 32 there
        "options": no_cookie + inner,
        "inner": good + b"trailing",  # the inner IP length does not cover these
        "short": b"\x00\x00\x08",
        "protocol": good[:2] + b"\x65\x58" + good[4:],  # Ethernet: not what a balancer sends
    }


def send_hostile(appliance: str, address: str, stranger: str) -> None:
    """Every hostile datagram from ``address``, a valid one from the ``stranger`` (not a
    configured peer), then the valid marker from ``address``: when the marker's return arrives,
    the appliance has seen everything before it (one socket, one ordered link)."""
    to = (appliance, 6081)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((stranger, 0))
        s.sendto(wrap(_ipv4_udp(b"stranger"), HOSTILE_ENI), to)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        for data in hostile_datagrams().values():
            s.sendto(data, to)
        s.sendto(wrap(_ipv4_udp(b"marker"), MARKER_ENI), to)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.balancer")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("config", type=Path)
    h = sub.add_parser("hostile")
    h.add_argument("--appliance", required=True)
    h.add_argument("--address", required=True)
    h.add_argument("--stranger", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        Balancer(json.loads(args.config.read_text())).run()
    else:
        send_hostile(args.appliance, args.address, args.stranger)
    return 0


if __name__ == "__main__":
    sys.exit(main())
