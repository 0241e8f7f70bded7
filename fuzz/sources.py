"""What the fuzz target feeds the normalizer before mutation: real captures and hostile traffic.

Real captures are the corpus (``pcaps/*.pcap``, recorded with real HAProxy and nginx) and any
capture a test wrote (``--corpus``). Generated traffic is proxied TCP conversations whose first
bytes are a PROXY v1/v2 or gateway header, valid or hostile, segmented the ways gateways and
lossy links segment them; the same from hosts that are not proxies (a header there is payload);
and VXLAN/GENEVE tunnels around them, from the configured tunnel peers and from anyone else.

Address plan (the oracle does not rely on it, but it keeps reproducers readable): proxies
192.0.2.1 and 2001:db8:b::1, backends .2 / ::2; untrusted hosts 198.18.0.0/15; tunnel peers
10.99.0.0/24, forged tunnel sources 10.66.0.0/16; addresses headers claim are random.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from dataclasses import dataclass
from pathlib import Path

from fuzz.mutate import mutate
from fuzz.wire import (
    ACK,
    FIN,
    GENEVE_PORT,
    PSH,
    RST,
    SYN,
    VXLAN_PORT,
    Record,
    packed,
    read_pcap,
    tcp_frame,
    udp_frame,
)
from normalizer.proxy_headers import custom, proxy_v1, proxy_v2
from normalizer.proxy_headers.base import Tlv
from tests.encap import fragment

PROXIES = ("192.0.2.1/32", "2001:db8:b::1/128")
ALT_MAGIC = b"\x8aFZ1\r\n\x1a\n"  # a deployment's own gateway-header magic (custom_magic)
PEERS = ("10.99.0.0/24",)
PROXY4, BACKEND4 = packed("192.0.2.1"), packed("192.0.2.2")
PROXY6, BACKEND6 = packed("2001:db8:b::1"), packed("2001:db8:b::2")
T0 = 1_700_000_000 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class Capture:
    name: str
    linktype: int
    records: list[Record]
    decap: bool = False  # the capture is mirrored traffic: rewrite it with --decap


def load_corpus(paths: list[Path]) -> list[Capture]:
    """Every readable classic pcap under ``paths`` (files or directories)."""
    files: list[Path] = []
    for p in paths:
        files += sorted(p.glob("*.pcap")) if p.is_dir() else [p]
    out = []
    for f in files:
        try:
            linktype, _nano, records = read_pcap(f.read_bytes())
        except (OSError, ValueError):
            continue
        if records:
            out.append(Capture(f.name, linktype, records, decap=f.name.startswith("vxlan")))
    return out


# -- addresses ------------------------------------------------------------------------------


def rand_v4(rng: random.Random) -> str:
    return str(ipaddress.IPv4Address(rng.getrandbits(32)))


def rand_v6(rng: random.Random) -> str:
    return str(ipaddress.IPv6Address(rng.getrandbits(128)))


def untrusted_host(rng: random.Random, v6: bool) -> bytes:
    if v6:
        return packed("2001:db8:ff::")[:12] + rng.randbytes(4)
    return bytes([198, 18 + rng.randrange(2), rng.randrange(256), rng.randrange(1, 255)])


# -- headers --------------------------------------------------------------------------------


def valid_header(rng: random.Random) -> bytes:
    """A well-formed header of a random kind, family and set of TLVs."""
    kind = rng.randrange(10)
    v6 = rng.random() < 0.3
    src, dst = (rand_v6(rng), rand_v6(rng)) if v6 else (rand_v4(rng), rand_v4(rng))
    sport, dport = rng.randrange(65536), rng.randrange(65536)
    if kind <= 1:
        return proxy_v1.build(src, dst, sport, dport) if kind == 0 else b"PROXY UNKNOWN\r\n"
    if kind <= 3:
        exts = [
            Tlv(rng.randrange(256), rng.randbytes(rng.randrange(12)))
            for _ in range(rng.randrange(3))
        ]
        magic = rng.choice((custom.DEFAULT_MAGIC, custom.DEFAULT_MAGIC, ALT_MAGIC))
        return custom.build(src, dst, sport, dport, magic, extensions=exts)
    if kind == 4:
        return proxy_v2.build("LOCAL", "UNSPEC", tlvs=_tlvs(rng), with_crc32c=rng.random() < 0.5)
    if kind == 5:  # UNIX sockets: paths are arbitrary bytes, not text
        paths = [
            rng.randbytes(rng.randrange(1, 108)).decode("utf-8", "surrogateescape") for _ in "ab"
        ]
        paths = [p.rstrip("\x00") or "x" for p in paths]
        try:
            return proxy_v2.build("PROXY", "UNIX", paths[0], paths[1], tlvs=_tlvs(rng))
        except ValueError:
            return proxy_v2.build("PROXY", "UNIX", "/a", "/b")
    family = rng.choice(("TCP6", "UDP6") if v6 else ("TCP4", "UDP4"))
    return proxy_v2.build(
        "PROXY", family, src, dst, sport, dport, tlvs=_tlvs(rng), with_crc32c=rng.random() < 0.4
    )


def _tlvs(rng: random.Random) -> list[Tlv]:
    out = []
    for _ in range(rng.randrange(5)):
        t = rng.choice((0x01, 0x02, 0x04, 0x05, 0x20, 0x30, 0xEA, 0xE0, rng.randrange(256)))
        if t == 0x20:  # SSL: client, verify, sub-TLVs
            sub = b"".join(
                struct.pack("!BH", st, len(v)) + v
                for st, v in (
                    (rng.choice((0x21, 0x22, 0x23, 0x24, 0x25)), rng.randbytes(rng.randrange(20))),
                )
            )
            value = bytes([rng.randrange(8)]) + rng.randbytes(4) + sub
        elif t == 0xEA:
            value = b"\x01vpce-" + rng.randbytes(rng.randrange(20))
        elif t == 0x05:
            value = rng.randbytes(rng.choice((0, 16, 128, 129)))
        else:
            value = rng.randbytes(rng.randrange(40))
        out.append(Tlv(t, value))
    return out


def hostile_header(rng: random.Random) -> bytes:
    """A header as an attacker or a broken gateway would send it."""
    r = rng.random()
    if r < 0.35:
        return mutate(rng, valid_header(rng), linktype=-1, rounds=rng.randrange(1, 4))
    if r < 0.45:  # a signature, then garbage
        sig = rng.choice((proxy_v2.SIGNATURE, b"PROXY ", custom.DEFAULT_MAGIC))
        return sig + rng.randbytes(rng.randrange(200))
    if r < 0.55:  # v2 whose length promises more than ever comes
        body = rng.randbytes(rng.randrange(40))
        return (
            proxy_v2.SIGNATURE
            + bytes([0x21, rng.choice((0x11, 0x21, 0x31, 0x00))])
            + struct.pack("!H", rng.choice((0xFFFF, 12, 11, 0, 216, 300)))
            + body
        )
    if r < 0.65:  # v1 with odd tokens
        toks = [
            b"PROXY",
            rng.choice((b"TCP4", b"TCP6", b"UNKNOWN", b"tcp4", b"TCP5")),
            rng.choice(
                (
                    rand_v4(rng).encode(),
                    rand_v6(rng).encode(),
                    b"1.2.3.4.5",
                    b"::ffff:1.2.3.4",
                    b"0x7f.1.1.1",
                    rng.randbytes(8),
                )
            ),
            rng.choice((rand_v4(rng).encode(), b"999.1.1.1", b"::")),
            str(rng.randrange(-5, 70000)).encode(),
            rng.choice((b"80", b"080", b"+80", b"65536")),
        ]
        sep = rng.choice((b" ", b"  ", b"\t"))
        end = rng.choice((b"\r\n", b"\n", b"\r", b"", b"\r\n\r\n"))
        return sep.join(toks[: rng.randrange(2, 7)]) + end
    if r < 0.75:  # custom with bad extension area or length
        h = bytearray(custom.build(rand_v4(rng), rand_v4(rng), 1, 2))
        struct.pack_into("!H", h, 10, rng.choice((0, 23, 24, 25, 27, 48, 0xFFFF)))
        return bytes(h) + rng.randbytes(rng.randrange(30))
    if r < 0.85:  # two headers: only the first may be stripped
        return valid_header(rng) + valid_header(rng)
    if r < 0.92:  # v2 UNIX with non-UTF-8 paths
        block = rng.randbytes(216)
        return proxy_v2.SIGNATURE + b"\x21\x31" + struct.pack("!H", 216) + block
    return valid_header(rng)


# -- conversations --------------------------------------------------------------------------

Frames = list[bytes]


def _sack(rng: random.Random, base: int, span: int) -> bytes:
    lo = (base + rng.randrange(max(span, 1) + 1)) & 0xFFFFFFFF
    hi = (lo + rng.randrange(1, 3000)) & 0xFFFFFFFF
    if rng.random() < 0.3:  # options a stack would refuse: lengths that lie, no end
        return rng.choice(
            (
                b"\x05\xff" + struct.pack("!II", lo, hi),
                b"\x05\x00\x05\x01",
                b"\x05\x0b" + struct.pack("!II", lo, hi) + b"\x00",
                b"\x01" * 3 + b"\x05\x12" + struct.pack("!IIII", lo, hi, hi, lo),
                b"\x08\x0a" + bytes(8) + b"\x05",
                b"\x05\x22" + bytes(32),
            )
        )
    return b"\x01\x01\x05\x0a" + struct.pack("!II", lo, hi)


def conversation(
    rng: random.Random,
    client: bytes,
    server: bytes,
    header: bytes,
    cport: int | None = None,
    vlans: tuple[int, ...] = (),
) -> Frames:
    """One TCP connection client -> server whose client stream starts with ``header``."""
    cport = cport or rng.randrange(1024, 65536)
    sport = rng.choice((80, 443, 22, 8080))
    ci = rng.getrandbits(32) if rng.random() < 0.8 else 0xFFFFFFFF - rng.randrange(200)
    si = rng.getrandbits(32)
    req = rng.choice(
        (
            b"GET /?id=1%20UNION%20SELECT HTTP/1.1\r\nHost: decoy\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.0\r\n",
            b"\x16\x03\x01\x00\x05hello",
            rng.randbytes(rng.randrange(1, 300)),
        )
    )
    n = len(header)

    # IP options (record route) or an IPv6 hop-by-hop header on some connections
    x = (
        b""
        if rng.random() < 0.85
        else (b"\x01\x07\x07\x04" + bytes(4))
        if len(client) == 4
        else b"\x01\x02\x00\x00"
    )

    def c(off: int, ack: int, fl: int, data: bytes = b"", opts: bytes = b"") -> bytes:
        return tcp_frame(
            client, server, cport, sport, ci + 1 + off, si + 1 + ack, fl, data, opts, vlans, x
        )

    def s(off: int, ack: int, fl: int, data: bytes = b"", opts: bytes = b"") -> bytes:
        return tcp_frame(
            server, client, sport, cport, si + 1 + off, ci + 1 + ack, fl, data, opts, vlans, x
        )

    style = rng.randrange(8)
    out: Frames = []
    if style == 7 and header:  # TCP Fast Open: the header rides in the SYN
        out.append(tcp_frame(client, server, cport, sport, ci, 0, SYN, header, b"", vlans, x))
    else:
        out.append(
            tcp_frame(client, server, cport, sport, ci, 0, SYN, b"", b"\x02\x04\x05\xb4", vlans, x)
        )
    out.append(tcp_frame(server, client, sport, cport, si, ci + 1, SYN | ACK, b"", b"", vlans, x))
    out.append(c(0, 0, ACK))
    if style == 7 and header:
        out.append(c(n, 0, ACK | PSH, req))
    elif style == 0 or not header:  # own segment, as HAProxy sends it
        if header:
            out.append(c(0, 0, ACK | PSH, header))
        out.append(c(n, 0, ACK | PSH, req))
    elif style == 1:  # coalesced with the request, as nginx sends it
        out.append(c(0, 0, ACK | PSH, header + req))
    elif style in (2, 3):  # split into pieces, maybe out of order
        cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randrange(1, 4)))) if n > 1 else []
        pieces, last = [], 0
        for cut in [*cuts, n]:
            pieces.append((last, header[last:cut]))
            last = cut
        if style == 3:
            rng.shuffle(pieces)
        out += [c(off, 0, ACK | PSH, p) for off, p in pieces]
        out.append(c(n, 0, ACK | PSH, req))
    elif style == 4:  # request first, header retransmitted after (header segment lost)
        out.append(c(n, 0, ACK | PSH, req))
        out.append(c(0, 0, ACK | PSH, header))
    elif style == 5:  # header twice, overlapping
        out.append(c(0, 0, ACK | PSH, header))
        k = rng.randrange(n)
        out.append(c(k, 0, ACK | PSH, header[k:] + req))
    else:  # header never arrives: a flow ending inside it
        out.append(c(0, 0, ACK | PSH, header[: rng.randrange(n + 1)]))
    got = n + len(req)
    sent = 0
    for i in range(rng.randrange(0, 6)):
        body = rng.randbytes(rng.randrange(0, 1448))
        opts = _sack(rng, ci + 1, got) if rng.random() < 0.2 else b""
        out.append(s(sent, got, ACK | PSH, body, opts))
        sent += len(body)
        if i % 2:
            out.append(
                c(got, sent, ACK, b"", _sack(rng, si + 1, sent) if rng.random() < 0.1 else b"")
            )
    end = rng.randrange(4)
    if end == 0:
        out += [c(got, sent, FIN | ACK), s(sent, got + 1, FIN | ACK), c(got + 1, sent + 1, ACK)]
    elif end == 1:
        out.append(rng.choice((c, s))(got, sent, RST | ACK))
    elif end == 2:  # a new connection reusing the ports right away
        out.append(tcp_frame(client, server, cport, sport, ci + 99999, 0, SYN, b"", b"", vlans, x))
    return out


def proxied_traffic(rng: random.Random, flows: int, hostile: float) -> Frames:
    """Interleaved conversations: proxied (valid or hostile headers) and from untrusted hosts."""
    convs: list[Frames] = []
    for _ in range(flows):
        v6 = rng.random() < 0.25
        header = hostile_header(rng) if rng.random() < hostile else valid_header(rng)
        if rng.random() < 0.3:  # not from a proxy: whatever it sends is payload
            a, b = untrusted_host(rng, v6), untrusted_host(rng, v6)
            if rng.random() < 0.3:  # to the proxy or the backend, from outside
                b = PROXY6 if v6 else PROXY4
            convs.append(conversation(rng, a, b, header))
        else:
            r = rng.random()
            vlans = (rng.randrange(4096),) if r < 0.1 else tuple(range(1, 6)) if r < 0.12 else ()
            convs.append(
                conversation(
                    rng, PROXY6 if v6 else PROXY4, BACKEND6 if v6 else BACKEND4, header, vlans=vlans
                )
            )
        if rng.random() < 0.05:  # other traffic on the wire
            convs.append(
                [
                    udp_frame(untrusted_host(rng, False), PROXY4, 53, 53, rng.randbytes(30)),
                    b"\xff" * rng.randrange(60),
                ]
            )
    return interleave(rng, convs)


def interleave(rng: random.Random, convs: list[Frames]) -> Frames:
    """Merge conversations, each keeping its own order (mostly)."""
    pos = [0] * len(convs)
    live = [i for i, c in enumerate(convs) if c]
    out: Frames = []
    while live:
        k = rng.randrange(len(live))
        i = live[k]
        out.append(convs[i][pos[i]])
        pos[i] += 1
        if pos[i] == len(convs[i]):
            live[k] = live[-1]
            live.pop()
    return out


# -- tunnels --------------------------------------------------------------------------------


def tunnelled(rng: random.Random, frames: Frames, trusted: bool) -> Frames:
    """The frames inside VXLAN or GENEVE, from a tunnel peer or from a forged outer source."""
    src = (
        bytes([10, 99, 0, 1 + rng.randrange(4)])
        if trusted
        else bytes([10, 66, rng.randrange(256), rng.randrange(1, 255)])
    )
    dst = bytes([10, 99, 0, 200])
    vni = rng.choice((100, 200, rng.randrange(1 << 24)))
    kind = rng.randrange(3)
    out = []
    for f in frames:
        if kind == 0:
            out.append(
                udp_frame(
                    src,
                    dst,
                    49152,
                    VXLAN_PORT,
                    b"\x08\x00\x00\x00" + vni.to_bytes(3, "big") + b"\x00" + f,
                )
            )
        else:
            inner_eth = kind == 1
            proto = 0x6558 if inner_eth else (0x0800 if f[12:14] == b"\x08\x00" else 0x86DD)
            body = f if inner_eth else f[14:] if f[12:14] in (b"\x08\x00", b"\x86\xdd") else f[18:]
            opts = b""
            if rng.random() < 0.5:  # the gateway load balancer's three options
                opts = (
                    b"\x01\x08\x01\x02"
                    + rng.randbytes(8)
                    + b"\x01\x08\x02\x02"
                    + rng.randbytes(8)
                    + b"\x01\x08\x03\x01"
                    + rng.randbytes(4)
                )
            head = (
                bytes((len(opts) // 4, 0))
                + proto.to_bytes(2, "big")
                + vni.to_bytes(3, "big")
                + b"\x00"
                + opts
            )
            out.append(udp_frame(src, dst, 49152, GENEVE_PORT, head + body))
    if rng.random() < 0.15:  # the underlay fragments the outer datagrams (MTU)
        size = rng.choice((64, 128, 512))
        out = [
            p
            for f in out
            for p in (fragment(f, size, rng.randrange(1 << 16)) if len(f) > 34 + size else [f])
        ]
        if rng.random() < 0.5:
            rng.shuffle(out)
    return out


def inconsistent_inner(rng: random.Random) -> bytes:
    """An inner frame whose IP header disagrees with itself or with what was captured."""
    f = bytearray(tcp_frame(PROXY4, BACKEND4, 40000, 80, 1, 0, SYN))
    choice = rng.randrange(4)
    if choice == 0:
        f[14] = (rng.choice((6, 0, 5, 15)) << 4) | (f[14] & 0x0F)
    elif choice == 1:
        f[16:18] = rng.choice((0xFFFF, 200, 61)).to_bytes(2, "big")
    elif choice == 2:
        f[14] = 0x60 | rng.randrange(16)
        f[16:18] = (1000).to_bytes(2, "big")
    else:
        f[12:14] = b"\x86\xdd"
    return bytes(f[: rng.randrange(20, len(f) + 1)])


def tunnel_traffic(rng: random.Random, flows: int, hostile: float) -> Frames:
    """Mirrored traffic: tunnels from peers and from forged sources, plus stray frames."""
    parts: list[Frames] = []
    for _ in range(max(1, flows // 3)):
        inner = proxied_traffic(rng, 3, hostile)
        parts.append(tunnelled(rng, inner, trusted=rng.random() < 0.6))
    if rng.random() < 0.5:
        parts.append(
            tunnelled(rng, [inconsistent_inner(rng) for _ in range(3)], rng.random() < 0.5)
        )
    if rng.random() < 0.3:
        parts.append(proxied_traffic(rng, 2, hostile))  # not tunnelled at all
    return interleave(rng, parts)


# -- link types -----------------------------------------------------------------------------


def relink(frame: bytes, linktype: int) -> bytes:
    """An Ethernet frame (untagged) under another link type's header."""
    if linktype == 1:
        return frame
    etype, l3 = frame[12:14], frame[14:]
    if linktype in (101, 228, 229):
        return l3
    if linktype in (0, 108):
        fam = 2 if etype == b"\x08\x00" else 30
        return (fam.to_bytes(4, "little") if linktype == 0 else fam.to_bytes(4, "big")) + l3
    if linktype == 113:
        return b"\x00\x00\x00\x01\x00\x06" + frame[6:12] + b"\x00\x00" + etype + l3
    if linktype == 276:
        return (
            etype
            + b"\x00\x00"
            + b"\x00\x00\x00\x02"
            + b"\x00\x01\x00\x06"
            + frame[6:12]
            + b"\x00\x00"
            + l3
        )
    return frame
