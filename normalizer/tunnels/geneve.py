"""GENEVE (RFC 8926) header codec, with the options a gateway load balancer adds.

Why decode options at all: Suricata skips them, yet they are what names the VPC endpoint and the
appliance flow behind an alert. Layout::

    Ver(2) OptLen(6) | O(1) C(1) Rsvd(6) | Protocol Type(16) | VNI(24) | Rsvd(8) | options

OptLen and each option's length count 4-byte words. An option is Class(16) | Type(8, high bit =
critical) | Rsvd(3) Length(5) | data. Version 0 only; the option list must fill OptLen exactly.
Unknown options are kept raw; a structurally invalid header raises ``GeneveError``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from normalizer.core.wire import ETH_IPV4, ETH_IPV6

GENEVE_PORT = 6081
BASE_LEN = 8
PROTO_ETHERNET = 0x6558
PROTO_IPV4 = ETH_IPV4
PROTO_IPV6 = ETH_IPV6
PROTOCOLS = frozenset({PROTO_ETHERNET, PROTO_IPV4, PROTO_IPV6})
CRITICAL = 0x80  # high bit of an option's type

# Gateway load balancer options (class 0x0108): type -> (name in metadata, data size).
AWS_CLASS = 0x0108
AWS_OPTIONS = {1: ("eni_id", 8), 2: ("attachment_id", 8), 3: ("flow_cookie", 4)}


class GeneveError(ValueError):
    """Not a GENEVE header we can decapsulate (version, lengths, protocol type)."""


class GeneveOption(NamedTuple):
    cls: int
    type: int  # including the critical bit
    data: bytes


class Geneve(NamedTuple):
    vni: int
    protocol: int  # of the inner packet: Ethernet, IPv4 or IPv6
    options: tuple[GeneveOption, ...]
    oam: bool  # O bit: a control packet of the tunnel itself
    length: int  # header bytes including options: the inner packet starts here


def parse(buf: bytes | bytearray, off: int = 0, end: int | None = None) -> Geneve:
    """Decode the header at ``off`` (the UDP payload); ``end`` bounds the captured bytes."""
    end = len(buf) if end is None else end
    if end - off < BASE_LEN:
        raise GeneveError(f"truncated GENEVE header ({max(end - off, 0)} of 8 bytes)")
    version = buf[off] >> 6
    if version != 0:
        raise GeneveError(f"GENEVE version {version}, only 0 is defined")
    length = BASE_LEN + (buf[off] & 0x3F) * 4
    if end - off < length:
        raise GeneveError(f"GENEVE options run past the packet ({length} > {end - off} bytes)")
    protocol = (buf[off + 2] << 8) | buf[off + 3]
    if protocol not in PROTOCOLS:
        raise GeneveError(f"GENEVE protocol type 0x{protocol:04x} is not Ethernet, IPv4 or IPv6")
    options = []
    i, stop = off + BASE_LEN, off + length
    while i < stop:
        if stop - i < 4:
            raise GeneveError(f"GENEVE option header cut at byte {i - off}")
        size = (buf[i + 3] & 0x1F) * 4
        if i + 4 + size > stop:
            raise GeneveError(f"GENEVE option at byte {i - off} overruns the option length")
        cls = (buf[i] << 8) | buf[i + 1]
        options.append(GeneveOption(cls, buf[i + 2], bytes(buf[i + 4 : i + 4 + size])))
        i += 4 + size
    vni = (buf[off + 4] << 16) | (buf[off + 5] << 8) | buf[off + 6]
    return Geneve(vni, protocol, tuple(options), bool(buf[off + 1] & 0x80), length)


def build(
    vni: int,
    protocol: int = PROTO_ETHERNET,
    options: tuple[GeneveOption, ...] | list[GeneveOption] = (),
    oam: bool = False,
) -> bytes:
    """Encode a header (tests, benchmark). The C bit is set when an option is critical."""
    if not 0 <= vni < 1 << 24:
        raise ValueError(f"VNI {vni} does not fit in 24 bits")
    body = b""
    for opt in options:
        if len(opt.data) % 4 or len(opt.data) > 124:
            raise ValueError(f"option data must be a multiple of 4 bytes up to 124: {opt}")
        body += opt.cls.to_bytes(2, "big") + bytes((opt.type, len(opt.data) // 4)) + opt.data
    if len(body) > 63 * 4:
        raise ValueError(f"options take {len(body)} bytes, at most 252 fit")
    critical = any(o.type & CRITICAL for o in options)
    flags = (0x80 if oam else 0) | (0x40 if critical else 0)
    head = bytes((len(body) // 4, flags)) + protocol.to_bytes(2, "big")
    return head + vni.to_bytes(3, "big") + b"\x00" + body


def aws_options(eni_id: bytes, attachment_id: bytes, flow_cookie: bytes) -> list[GeneveOption]:
    """The three gateway-load-balancer options, in the order the appliance receives them."""
    return [
        GeneveOption(AWS_CLASS, 1, eni_id),
        GeneveOption(AWS_CLASS, 2, attachment_id),
        GeneveOption(AWS_CLASS, 3, flow_cookie),
    ]


def describe(options: tuple[GeneveOption, ...]) -> dict[str, Any]:
    """Options as JSON-ready metadata: the AWS ones by name (hex), all others raw.

    An AWS option with an unexpected size is not guessed at: it stays in the raw list.
    """
    out: dict[str, Any] = {}
    raw = []
    for opt in options:
        known = AWS_OPTIONS.get(opt.type & ~CRITICAL) if opt.cls == AWS_CLASS else None
        if known is not None and len(opt.data) == known[1] and known[0] not in out:
            out[known[0]] = opt.data.hex()
        else:
            raw.append({"class": opt.cls, "type": opt.type, "data": opt.data.hex()})
    if raw:
        out["options"] = raw
    return out
