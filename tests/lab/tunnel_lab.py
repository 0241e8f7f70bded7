"""Kernel VXLAN between network namespaces: the mirror-target case of the tunnel lab test.

Why this shape: two VNIs carry the SAME inner addresses and, with curl's fixed local ports, the
same 5-tuples at the same time -- the case where flows of two mirror sessions would merge if
the VNI were lost. Each VXLAN device is created next to the underlay veth and then moved into
a namespace of its own (the kernel keeps its UDP socket in the namespace it was created in),
so both VNIs can use 192.0.2.1 -> 192.0.2.2::

    client<vni> [vx<vni>] ~ sensor: u1 ==== u2 :vtep ~ [vx<vni>] decoy<vni> (nginx)

tcpdump captures the underlay on ``u1`` (role "sensor", as in ``netlab.Lab``) and, as the
unencapsulated reference, each ``vx<vni>`` on the decoy side.

``record_proxied`` puts HAProxy (``send-proxy-v2``) in front of the decoy inside ``client<vni>``:
a proxy bridge mirrored through VXLAN. ``geneve_wrap`` is the userspace GENEVE encapsulator
(this kernel has no geneve module); it is written from RFC 8926 here rather than with the
package's own ``tests.encap`` so a misreading of the layout cannot hide in both.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from tests.lab import services, traffic
from tests.lab.netlab import DECOY, GATEWAY_FRONT, Capture, Lab, LabError
from tests.lab.traffic import WEBSHELL, connections

UNDERLAY = ("10.99.0.1", "10.99.0.2")
UNDERLAY6 = ("fd99::1", "fd99::2")
VNIS = (100, 200)
CLIENT = "192.0.2.1"
_SEQ = itertools.count()
_OFFLOADS = ("tx", "off", "tso", "off", "gso", "off", "gro", "off")


class VxlanLab(Lab):
    """Namespaces sensor, vtep, client<vni>, decoy<vni>; closed like ``netlab.Lab``."""

    underlay = UNDERLAY
    prefix = 24
    inner_mtu: int | None = None  # set: VXLAN devices get this MTU, not the underlay's - 50

    def start(self) -> None:
        tag = f"snv{os.getpid()}x{next(_SEQ)}"
        atexit.register(self.close)
        roles = ["sensor", "vtep"] + [f"{r}{v}" for v in VNIS for r in ("client", "decoy")]
        for role in roles:
            self.ns[role] = f"{tag}{role[0]}{role[-3:] if role[-1].isdigit() else ''}"
            subprocess.run(["ip", "netns", "add", self.ns[role]], check=True)
            self.ip(role, "link", "set", "lo", "up")
        for role in ("sensor", "vtep"):  # no IPv6 chatter on the underlay
            self.sh(role, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            self.sh(role, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        self.ip(
            "sensor",
            "link",
            "add",
            "u1",
            "type",
            "veth",
            "peer",
            "name",
            "u2",
            "netns",
            self.ns["vtep"],
        )
        ends = (("sensor", "u1", self.underlay[0]), ("vtep", "u2", self.underlay[1]))
        for role, dev, addr in ends:
            self.sh(role, "ethtool", "-K", dev, *_OFFLOADS)
            if ":" in addr:  # IPv6 on this port only, without a link-local address (no MLD)
                self.sh(role, "sysctl", "-qw", f"net.ipv6.conf.{dev}.addr_gen_mode=1")
                self.sh(role, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=0")
            extra = ["nodad"] if ":" in addr else []
            self.ip(role, "addr", "add", f"{addr}/{self.prefix}", "dev", dev, *extra)
            self.ip(role, "link", "set", dev, "up")
        for vni in VNIS:
            for side, role, local, remote, inner in (
                ("sensor", f"client{vni}", *self.underlay, CLIENT),
                ("vtep", f"decoy{vni}", *reversed(self.underlay), DECOY[4]),
            ):
                dev = f"vx{vni}"
                self.ip(
                    side,
                    "link",
                    "add",
                    dev,
                    "type",
                    "vxlan",
                    "id",
                    str(vni),
                    "local",
                    local,
                    "remote",
                    remote,
                    "dstport",
                    "4789",
                    # A lower device caps the MTU at its own minus 50; without one, routing
                    # picks u1/u2 anyway and any MTU is allowed.
                    *([] if self.inner_mtu else ["dev", "u1" if side == "sensor" else "u2"]),
                )
                if self.inner_mtu:
                    self.ip(side, "link", "set", dev, "mtu", str(self.inner_mtu))
                    # Inner packets without DF: the tunnel fragments them instead of sending
                    # "fragmentation needed" back (which would shrink the MSS after one packet).
                    self.sh(role, "sysctl", "-qw", "net.ipv4.ip_no_pmtu_disc=1")
                self.ip(side, "link", "set", dev, "netns", self.ns[role])
                self.sh(role, "ethtool", "-K", dev, *_OFFLOADS)
                self.ip(role, "addr", "add", f"{inner}/24", "dev", dev)
                if role.startswith("decoy"):  # the decoy's nginx also listens on its IPv6 address
                    self.ip(role, "addr", "add", f"{DECOY[6]}/64", "dev", dev, "nodad")
                self.ip(role, "link", "set", dev, "up")
                if self.inner_mtu:  # a locked route MTU: no path-MTU update shrinks the MSS
                    net = f"{inner.rsplit('.', 1)[0]}.0/24"
                    mtu = ["mtu", "lock", str(self.inner_mtu)]
                    self.ip(role, "route", "replace", net, "dev", dev, *mtu)
        deadline = time.monotonic() + 10  # veth carrier comes up to ~1 s after "set up"
        while any("NO-CARRIER" in self.ip(r, "-br", "link") for r in ("sensor", "vtep")):
            if time.monotonic() > deadline:
                raise LabError("underlay veth has no carrier after 10 s")
            time.sleep(0.1)

    def as_role(self, real: str, role: str) -> Lab:
        """A view that runs ``role``'s commands in ``real``'s namespace (for services/capture
        helpers written for the proxy lab); its processes are stopped with this lab."""
        return Lab(ns={role: self.ns[real]}, procs=self.procs)


class Vxlan6Lab(VxlanLab):
    """The same with an IPv6 underlay: the kernel's VXLAN over IPv6 (UDP checksum mandatory)."""

    underlay = UNDERLAY6
    prefix = 64


class VxlanFragLab(VxlanLab):
    """VXLAN devices with the underlay's MTU (1500): full-size inner packets make 1550-byte
    outer ones, which the kernel fragments on the underlay (VXLAN's outer DF is unset; inner
    path-MTU discovery is off) -- real outer fragments for reassembly."""

    inner_mtu = 1500


def curl_argv(conn_index: int, port: int, d: Path) -> list[str]:
    """curl for one connection of ``traffic.connections`` from a fixed local port."""
    conn = connections(False)[conn_index]
    argv = ["curl", "-sS", "--local-port", str(port)]
    for j, req in enumerate(conn.requests):
        argv += ["--next", "--local-port", str(port)] if j else []
        argv += ["--path-as-is", "--max-time", "30", "-A", req.ua, "-o", "/dev/null"]
        argv += ["-w", "%{http_code} %{local_port} %{url}\\n"]
        if req.post_size:
            body = d / f"body{conn_index}-{j}.bin"
            body.write_bytes((WEBSHELL + b"A" * req.post_size)[: req.post_size])
            argv += ["--data-binary", f"@{body}"]
        argv.append(f"http://{DECOY[4]}{req.path}")
    return argv


# Two ICMP echo requests (the kernel answers them): portless inner flows, which must be mapped
# to their tunnel too. A raw socket in Python because iputils-ping is not installed here.
_PING = (
    "import socket,struct,sys,time\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_ICMP)\n"
    "for q in (1,2):\n"
    " h=struct.pack('!BBHHH',8,0,0,0x4c41,q)+b'tunnel-lab'\n"
    " w=sum(struct.unpack('!%dH'%(len(h)//2),h));w=(w&0xffff)+(w>>16);w=~(w+(w>>16))&0xffff\n"
    " s.sendto(h[:2]+struct.pack('!H',w)+h[4:],(sys.argv[1],0));time.sleep(0.05)\n"
    "s.settimeout(2);s.recv(100);s.recv(100)\n"
)


def run_traffic(lab: VxlanLab, d: Path) -> str:
    """Each connection from both VNIs at once, same local port: identical, overlapping tuples;
    then an ICMP echo exchange in each VNI."""
    log = []
    for i in range(len(connections(False))):
        procs = [
            subprocess.Popen(
                lab.cmd(f"client{vni}", *curl_argv(i, 40000 + i, d)),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for vni in VNIS
        ]
        for p in procs:
            out, _ = p.communicate(timeout=60)
            log.append(out.decode())
            if p.returncode:
                raise RuntimeError(f"curl failed: {out.decode()}")
    for vni in VNIS:
        lab.sh(f"client{vni}", sys.executable, "-c", _PING, DECOY[4], timeout=10)
    return "".join(log)


def record(lab: VxlanLab, outdir: Path) -> tuple[Path, dict[int, Path]]:
    """Underlay capture plus one inner capture per VNI of the same traffic."""
    outdir.mkdir(parents=True, exist_ok=True)
    webroot = services.make_webroot(outdir / "www")
    for vni in VNIS:
        d = outdir / f"decoy{vni}"
        d.mkdir(exist_ok=True)
        services.start_decoy(lab.as_role(f"decoy{vni}", "decoy"), d, webroot, False)
    underlay = outdir / "underlay.pcap"
    inner = {vni: outdir / f"inner{vni}.pcap" for vni in VNIS}
    with contextlib.ExitStack() as stack:
        caps: list[Capture] = [stack.enter_context(lab.capture(underlay, "u1"))]
        for vni in VNIS:
            view = lab.as_role(f"decoy{vni}", "sensor")
            caps.append(stack.enter_context(view.capture(inner[vni], f"vx{vni}")))
        (outdir / "curl.log").write_text(run_traffic(lab, outdir))
    lab.stop_all()
    assert all(c.dropped == 0 for c in caps), caps
    return underlay, inner


def record_proxied(lab: VxlanLab, outdir: Path, vni: int = VNIS[0]) -> tuple[Path, Path]:
    """The lab's attack traffic through HAProxy in ``client<vni>`` to the decoy, on the underlay:
    once with ``send-proxy-v2`` (decoy nginx expects the header), once without (baseline).

    curl and HAProxy share the namespace (frontend on ``lo``), so the underlay carries only the
    proxy -> decoy hop, from CLIENT (the proxy's address) to the decoy: a mirrored proxy bridge.
    """
    client = lab.ns[f"client{vni}"]
    view = Lab(
        ns={"attacker": client, "gateway": client, "decoy": lab.ns[f"decoy{vni}"]},
        procs=lab.procs,
    )
    if GATEWAY_FRONT[4] not in view.ip("gateway", "-br", "addr", "show", "dev", "lo"):
        view.ip("gateway", "addr", "add", f"{GATEWAY_FRONT[4]}/32", "dev", "lo")
        view.ip("gateway", "addr", "add", f"{GATEWAY_FRONT[6]}/128", "dev", "lo", "nodad")
    webroot = services.make_webroot(outdir / "www")
    paths = {"raw": outdir / "proxied.pcap", "baseline": outdir / "proxied.baseline.pcap"}
    for variant, pcap in paths.items():
        raw = variant == "raw"
        d = outdir / f"proxied-{variant}"
        d.mkdir(parents=True, exist_ok=True)
        services.start_decoy(view, d, webroot, raw)
        services.start_haproxy(view, d, 4, "send-proxy-v2" if raw else "")
        try:
            with lab.capture(pcap, "u1") as cap:
                traffic.run_traffic(view, d)
                time.sleep(0.5)  # the last FIN/ACKs
        finally:
            lab.stop_all()
        if cap.dropped:
            raise LabError(f"tcpdump dropped {cap.dropped} packets of {pcap}")
    return paths["raw"], paths["baseline"]


# -- userspace GENEVE (RFC 8926) with gateway-load-balancer options ------------------------------

GENEVE_OUTER = ("10.98.0.1", "10.98.0.2")  # the load balancer -> the appliance
ENI_ID = bytes.fromhex("0e1a2b3c4d5e6f70")
ATTACHMENT_ID = bytes.fromhex("a77ac4000000beef")
_AWS_CLASS = 0x0108


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def cookie_for(proto: int, src: str, sport: int, dst: str, dport: int) -> bytes:
    """A per-flow cookie as a load balancer assigns one: here a CRC of the sorted endpoints
    (both directions of a flow get the same cookie). Tests recompute it from eve events."""
    a = bytes(int(x) for x in src.split(".")) + sport.to_bytes(2, "big")
    b = bytes(int(x) for x in dst.split(".")) + dport.to_bytes(2, "big")
    return zlib.crc32(bytes((proto,)) + min(a, b) + max(a, b)).to_bytes(4, "big")


def flow_cookie(frame: bytes) -> bytes:
    """``cookie_for`` the inner IPv4 packet of an Ethernet frame (ports 0 unless TCP/UDP)."""
    ip = 14
    ihl, proto = (frame[ip] & 0x0F) * 4, frame[ip + 9]
    ports = struct.unpack("!HH", frame[ip + ihl : ip + ihl + 4]) if proto in (6, 17) else (0, 0)
    src = ".".join(str(x) for x in frame[ip + 12 : ip + 16])
    dst = ".".join(str(x) for x in frame[ip + 16 : ip + 20])
    return cookie_for(proto, src, ports[0], dst, ports[1])


def geneve_packet(inner: bytes, vni: int, protocol: int, cookie: bytes, ident: int) -> bytes:
    """Outer Ethernet / IPv4 / UDP 6081 / GENEVE with the three class-0x0108 options."""
    opts = b"".join(
        struct.pack("!HBB", _AWS_CLASS, typ, len(data) // 4) + data
        for typ, data in ((1, ENI_ID), (2, ATTACHMENT_ID), (3, cookie))
    )
    # Ver 0 | OptLen (4-byte words) ; O=0 C=0 ; protocol type ; VNI (24 bits) + reserved
    gen = struct.pack("!BBHI", len(opts) // 4, 0, protocol, vni << 8) + opts
    src, dst = (bytes(int(x) for x in a.split(".")) for a in GENEVE_OUTER)
    payload = gen + inner
    udp_len = 8 + len(payload)
    udp = struct.pack("!HHHH", 50000 + vni % 1000, 6081, udp_len, 0) + payload
    pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_len)
    udp = udp[:6] + struct.pack("!H", _csum(pseudo + udp) or 0xFFFF) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, ident & 0xFFFF, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return bytes.fromhex("02000000bb0202000000bb01") + b"\x08\x00" + ip + udp


def read_pcap(path: Path) -> list[tuple[int, int, bytes]]:
    """(seconds, microseconds, frame) of a classic little-endian microsecond pcap (tcpdump's)."""
    data = path.read_bytes()
    if data[:4] != b"\xd4\xc3\xb2\xa1":
        raise LabError(f"{path}: not a little-endian microsecond pcap")
    out, off = [], 24
    while off + 16 <= len(data):
        sec, usec, incl, _orig = struct.unpack("<IIII", data[off : off + 16])
        out.append((sec, usec, data[off + 16 : off + 16 + incl]))
        off += 16 + incl
    return out


def count_udp(path: Path, port: int) -> tuple[int, int]:
    """(frames, frames of untagged IPv4/IPv6 UDP to ``port``) of a capture: what decap must take
    versus pass (an ARP or neighbour probe may share the underlay with the tunnel)."""
    frames = read_pcap(path)
    hits = 0
    for _sec, _usec, f in frames:
        if f[12:14] == b"\x08\x00" and f[23] == 17:
            if int.from_bytes(f[20:22], "big") & 0x1FFF:  # a later fragment: no UDP header
                continue
            udp = 14 + (f[14] & 0x0F) * 4
        elif f[12:14] == b"\x86\xdd" and f[20] == 17:  # no extension headers on the underlay
            udp = 54
        else:
            continue
        hits += int.from_bytes(f[udp + 2 : udp + 4], "big") == port
    return len(frames), hits


def geneve_wrap(refs: dict[int, Path], out: Path, l3_vnis: frozenset[int]) -> dict[str, int]:
    """Merge the per-VNI reference captures by time into one GENEVE capture.

    VNIs in ``l3_vnis`` carry the inner IP packet without Ethernet (protocol 0x0800 or 0x86DD,
    as a gateway load balancer sends it); the others carry Ethernet (0x6558). Frames that are
    not IP (ARP) are left out of L3 VNIs, as a load balancer never sees them. Returns counts.
    """
    frames = sorted(
        (sec, usec, i, vni, f)
        for vni, path in refs.items()
        for i, (sec, usec, f) in enumerate(read_pcap(path))
    )
    counts = {"packets": 0, "skipped": 0}
    with out.open("wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for sec, usec, _i, vni, f in frames:
            etype = int.from_bytes(f[12:14], "big")
            if etype == 0x0800:
                cookie = flow_cookie(f)
            elif etype == 0x86DD:  # the vx devices' own ICMPv6 (MLD, ND): sorted addresses
                a, b = f[22:38], f[38:54]
                cookie = zlib.crc32(min(a, b) + max(a, b)).to_bytes(4, "big")
            elif vni in l3_vnis:
                counts["skipped"] += 1
                continue
            else:
                cookie = bytes(4)
            inner, proto = (f[14:], etype) if vni in l3_vnis else (f, 0x6558)
            pkt = geneve_packet(inner, vni, proto, cookie, counts["packets"])
            fh.write(struct.pack("<IIII", sec, usec, len(pkt), len(pkt)) + pkt)
            counts["packets"] += 1
    return counts
