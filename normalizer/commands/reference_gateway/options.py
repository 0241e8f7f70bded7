"""``suricata-normalizer reference-gateway``: a small L4 proxy that writes a connection header.

Why it exists: docs/custom-header.md is only as good as the gateways that implement it, and a
gateway author needs something real to compare against; the lab needs a gateway that sends our
own header the way a real one would. This is that gateway: for every accepted client it
connects to the backend, writes a header naming the real client and the address it connected
to (our custom header, PROXY v1 or PROXY v2, or none for a header-free baseline), then splices
both directions until both have closed.

Real gateways put the header on the wire in two ways (docs/field facts: HAProxy sends it in a
segment of its own, nginx's stream proxy coalesces it with the first client bytes), so both are
offered: ``--send-separately`` (default) writes the header alone as soon as the backend
connection is up, with TCP_NODELAY so it leaves as its own segment; ``--coalesce`` waits for the
client's first bytes (at most ``--coalesce-wait`` seconds, for protocols where the server
speaks first) and writes header and bytes in one ``write``.

``--accept KIND`` makes it the receiving end instead: it reads and strictly validates the
header a gateway in front of it sent (closing the connection on a malformed one, as the spec
tells terminating receivers to), logs what it decoded with ``-v``, and forwards the rest,
optionally re-encoded as another kind. A gateway author points their gateway at it to check
their header; the lab puts it in front of a decoy that only speaks PROXY v1.

This module is the pure part: endpoint parsing, settings, header encoding with the codecs'
own ``build`` functions (so the decoders are the oracle), and the argument parser. The asyncio
adapter is ``normalizer.commands.reference_gateway.proxy``, imported only when the subcommand runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normalizer.proxy_headers import custom, proxy_v1, proxy_v2
from normalizer.proxy_headers.base import Tlv

PROG = "suricata-normalizer reference-gateway"
KINDS = ("custom", "proxy-v1", "proxy-v2", "none")
ACCEPT_KINDS = ("custom", "proxy-v1", "proxy-v2")
Endpoint = tuple[str, int]


class UsageError(ValueError):
    """An option value is invalid; the message starts with the option's name."""


def parse_endpoint(option: str, text: str) -> Endpoint:
    """``ADDR:PORT`` or ``[IPV6]:PORT`` (a host name is allowed too) -> (host, port)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host:
            raise UsageError(f"{option}: {text!r} is not [IPV6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UsageError(f"{option}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise UsageError(f"{option}: {text!r} is not ADDR:PORT")
        if ":" in host:
            raise UsageError(f"{option}: write an IPv6 address in brackets: [{host}]:{port}")
    if not port.isdigit() or int(port) > 0xFFFF:
        raise UsageError(f"{option}: port {port!r} is not a number from 0 to 65535")
    return host, int(port)


def format_endpoint(ep: Endpoint) -> str:
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_tlv(option: str, text: str) -> Tlv:
    """``TYPE:HEX`` (type decimal or 0x-prefixed) -> Tlv."""
    t, sep, value = text.partition(":")
    try:
        tlv = Tlv(int(t, 0), bytes.fromhex(value))
    except ValueError:
        raise UsageError(f"{option}: {text!r} is not TYPE:HEX (e.g. 0xe0:74656e616e74)") from None
    if not sep or not 0 <= tlv.type <= 0xFF or len(tlv.value) > 0xFFFF:
        raise UsageError(f"{option}: {text!r}: type must be 0-255, value at most 65535 bytes")
    return tlv


@dataclass(frozen=True)
class HeaderSpec:
    """Which header to write and its fixed extras; the addresses come from each connection.

    ``tlvs`` are the custom header's extensions or PROXY v2 TLVs; ``authority`` adds PROXY v2's
    AUTHORITY TLV (the host name the client asked for), ``crc32c`` its checksum TLV.
    """

    kind: str = "custom"
    magic: bytes = custom.DEFAULT_MAGIC
    tlvs: tuple[Tlv, ...] = ()
    authority: str | None = None
    crc32c: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"--header: {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind != "proxy-v2" and (self.authority is not None or self.crc32c):
            raise UsageError(f"--authority/--crc32c: only for --header proxy-v2, not {self.kind}")
        if self.kind in ("proxy-v1", "none") and self.tlvs:
            raise UsageError(f"--tlv: {self.kind} carries no TLVs")
        if len(self.magic) != custom.MAGIC_LEN or self.magic[:1] in (b"\r", b"P"):
            raise UsageError("--custom-magic: 8 bytes (16 hex digits), not starting with 0D or 50")


def header_addresses(client: Endpoint, target: Endpoint) -> tuple[str, str]:
    """The two addresses as one header family, as docs/custom-header.md asks.

    A dual-stack listener reports IPv4 clients as IPv4-mapped IPv6 (``::ffff:a.b.c.d``): those
    are written as IPv4. Zone ids (``fe80::1%eth0``) cannot be encoded and are dropped. If the
    families still differ, the IPv4 side is written IPv4-mapped in an IPv6 header.
    """
    a, b = (_plain(client[0]), _plain(target[0]))
    if a.version == b.version:
        return str(a), str(b)
    return _as_v6(a), _as_v6(b)


def _as_v6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return str(ip if ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{ip}"))


def _plain(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(addr.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def encode_header(spec: HeaderSpec, client: Endpoint, target: Endpoint) -> bytes:
    """The bytes a gateway writes first on the backend connection for this client."""
    if spec.kind == "none":
        return b""
    src, dst = header_addresses(client, target)
    sport, dport = client[1], target[1]
    if spec.kind == "custom":
        return custom.build(src, dst, sport, dport, spec.magic, spec.tlvs)
    if spec.kind == "proxy-v1":
        return proxy_v1.build(src, dst, sport, dport)
    tlvs = spec.tlvs
    if spec.authority is not None:
        tlvs += (Tlv(proxy_v2.PP2_TYPE_AUTHORITY, spec.authority.encode()),)
    family = "TCP6" if ":" in src else "TCP4"
    return proxy_v2.build("PROXY", family, src, dst, sport, dport, tlvs, spec.crc32c)


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the proxy needs; built from the command line by ``settings_from_args``."""

    listen: Endpoint
    backend: Endpoint
    header: HeaderSpec = field(default_factory=HeaderSpec)
    coalesce: bool = False
    coalesce_wait: float = 2.0
    accept: str | None = None  # header kind to strip from accepted connections first
    connect_timeout: float = 5.0  # also bounds the wait for an accepted header
    max_connections: int = 1024
    grace: float = 5.0  # seconds live connections may finish after SIGTERM
    chunk: int = 65536  # read size; buffers per direction are a few of these
    verbose: bool = False


def add_parser(sub: Any) -> None:
    """Register ``reference-gateway`` on the CLI's subparsers."""
    p = sub.add_parser(
        "reference-gateway",
        help="L4 proxy writing our custom header (or PROXY v1/v2) first, for gateway authors",
        description="Accept TCP clients, connect each to the backend, write a header naming the "
        "client and the address it hit, then splice both directions (docs/custom-header.md).",
    )
    p.add_argument("--listen", required=True, metavar="ADDR:PORT", help="e.g. 0.0.0.0:8080")
    p.add_argument("--backend", required=True, metavar="ADDR:PORT", help="e.g. 192.0.2.2:80")
    p.add_argument("--header", choices=KINDS, default="custom", help="header to write (custom)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--send-separately",
        dest="coalesce",
        action="store_false",
        default=False,
        help="write the header alone as soon as the backend is connected (default)",
    )
    mode.add_argument(
        "--coalesce",
        dest="coalesce",
        action="store_true",
        help="write the header in one segment with the client's first bytes",
    )
    p.add_argument("--coalesce-wait", type=float, default=2.0, metavar="S", help="default 2")
    p.add_argument("--custom-magic", metavar="HEX", help="8-byte magic of the custom header")
    p.add_argument("--tlv", action="append", default=[], metavar="TYPE:HEX", help="extension")
    p.add_argument("--authority", metavar="NAME", help="PROXY v2 AUTHORITY TLV")
    p.add_argument("--crc32c", action="store_true", help="PROXY v2 CRC32C TLV")
    p.add_argument(
        "--accept",
        choices=ACCEPT_KINDS,
        metavar="KIND",
        help="strip and validate this header from accepted connections (a receiver)",
    )
    p.add_argument("--connect-timeout", type=float, default=5.0, metavar="S", help="default 5")
    p.add_argument("--max-connections", type=int, default=1024, metavar="N", help="default 1024")
    p.add_argument("--grace", type=float, default=5.0, metavar="S", help="after SIGTERM, def. 5")
    p.add_argument("--stats-json", type=Path, metavar="FILE", help="write the counters on exit")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per connection")


def settings_from_args(args: argparse.Namespace) -> GatewaySettings:
    """Validate the options; every error names its option."""
    magic = custom.DEFAULT_MAGIC
    if args.custom_magic is not None:
        try:
            magic = bytes.fromhex(args.custom_magic)
        except ValueError:
            raise UsageError(f"--custom-magic: {args.custom_magic!r} is not hex") from None
    for name in ("coalesce_wait", "grace"):
        if not getattr(args, name) >= 0:
            raise UsageError(f"--{name.replace('_', '-')}: must be a number >= 0")
    if not args.connect_timeout > 0:
        raise UsageError("--connect-timeout: must be a number > 0")
    if args.max_connections < 1:
        raise UsageError("--max-connections: must be at least 1")
    return GatewaySettings(
        listen=parse_endpoint("--listen", args.listen),
        backend=parse_endpoint("--backend", args.backend),
        header=HeaderSpec(
            args.header,
            magic,
            tuple(parse_tlv("--tlv", t) for t in args.tlv),
            args.authority,
            args.crc32c,
        ),
        coalesce=args.coalesce,
        coalesce_wait=args.coalesce_wait,
        accept=args.accept,
        connect_timeout=args.connect_timeout,
        max_connections=args.max_connections,
        grace=args.grace,
        verbose=args.verbose,
    )


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT: 0 after a clean stop, 1 if it cannot listen, 2 bad options."""
    try:
        settings = settings_from_args(args)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    from normalizer.commands.reference_gateway.proxy import serve

    return serve(settings, args.stats_json)
