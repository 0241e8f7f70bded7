"""PROXY protocol version 2: the binary header HAProxy and cloud load balancers send first.

Layout: 12-byte signature, version/command byte, family/transport byte, u16 BE length of the
rest, then the address block and TLVs. The length is always honoured -- also for LOCAL and
UNSPEC -- because it is the only thing that tells the stream core where the application data
starts; everything else is validated strictly so a stream that does not carry a well-formed
header is released untouched instead of being cut at a guessed offset.

Choices where the spec leaves room (all on the strict or the simple side):

* Unknown versions, commands and family bytes are errors, for LOCAL too.
* Every header's TLVs are decoded and checked, LOCAL and UNSPEC included: the spec says a
  receiver MUST verify a CRC32C TLV, and a LOCAL header is cut from the stream like any other,
  so an unchecked one could remove up to 64 KiB Suricata should have seen.
* LOCAL (health checks) and PROXY UNSPEC report no addresses (the spec says to use the real
  endpoints). Their TLVs start after the family's address block when the length covers one,
  else right after the 16 fixed bytes (HAProxy's LOCAL UNSPEC health check with a CRC TLV).
* PROXY with an address family: the length must cover the address block.
* TLVs must tile the rest of the header exactly. A CRC32C TLV must be 4 bytes, appear once and
  match; a UNIQUE_ID is at most 128 bytes; an SSL TLV holds client, verify and sub-TLVs that
  tile its value. docs/proxy-protocol-choices.md lists every such choice and why.
* String TLVs are decoded as UTF-8 with backslashreplace, so odd bytes never invalidate a
  header; every TLV is also kept raw in ``tlvs``. For repeated TLVs ``fields`` keeps the first.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from typing import Any

from normalizer.proxy_headers.base import HeaderError, NeedMore, ProxyHeader, Tlv, split_tlvs

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED_LEN = 16

_KIND = "proxy-v2"
_COMMANDS = {0x0: "LOCAL", 0x1: "PROXY"}
# family/transport byte -> (family name, address block length)
_FAMILIES = {
    0x00: ("UNSPEC", 0),
    0x11: ("TCP4", 12),
    0x12: ("UDP4", 12),
    0x21: ("TCP6", 36),
    0x22: ("UDP6", 36),
    0x31: ("UNIX", 216),
    0x32: ("UNIX", 216),
}
_UNIX_PATH = 108

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_TYPE_NETNS = 0x30
PP2_TYPE_AWS = 0xEA
_STRING_TLVS = {PP2_TYPE_ALPN: "alpn", PP2_TYPE_AUTHORITY: "authority", PP2_TYPE_NETNS: "netns"}
# String sub-TLVs of the SSL TLV; 0x28 (the client certificate, DER) stays raw in ``tlvs`` only.
_SSL_SUBTYPES = {
    0x21: "version",
    0x22: "cn",
    0x23: "cipher",
    0x24: "sig_alg",
    0x25: "key_alg",
    0x26: "group",
    0x27: "sig_scheme",
}
_AWS_VPCE_ID = 0x01
_MAX_UNIQUE_ID = 128


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected), as the spec's CRC32C TLV uses; pure Python, no deps."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def parse(buf: bytes) -> ProxyHeader | NeedMore:
    """Parse a v2 header at the start of ``buf``; bytes after its declared length are ignored."""
    n = min(len(buf), len(SIGNATURE))
    if buf[:n] != SIGNATURE[:n]:
        raise HeaderError("not a PROXY v2 header: signature mismatch")
    if len(buf) > 12:
        if buf[12] >> 4 != 2:
            raise HeaderError(f"PROXY v2: unsupported version {buf[12] >> 4}")
        if buf[12] & 0x0F not in _COMMANDS:
            raise HeaderError(f"PROXY v2: unknown command {buf[12] & 0x0F}")
    if len(buf) > 13 and buf[13] not in _FAMILIES:
        raise HeaderError(f"PROXY v2: unknown family/transport byte 0x{buf[13]:02x}")
    if len(buf) < FIXED_LEN:
        return NeedMore(FIXED_LEN)
    command = _COMMANDS[buf[12] & 0x0F]
    family, addr_len = _FAMILIES[buf[13]]
    total = FIXED_LEN + struct.unpack_from("!H", buf, 14)[0]
    if command == "PROXY" and total < FIXED_LEN + addr_len:
        raise HeaderError(
            f"PROXY v2: length {total - FIXED_LEN} too short for the {family} address block"
        )
    if len(buf) < total:
        return NeedMore(total)
    hdr = buf[:total]
    if command == "LOCAL" or family == "UNSPEC":
        start = FIXED_LEN + addr_len if total >= FIXED_LEN + addr_len else FIXED_LEN
        tlvs, fields = _decode_tlvs(hdr, start)
        return ProxyHeader(
            kind=_KIND, length=total, command=command, family=family, tlvs=tlvs, fields=fields
        )
    src, dst, sport, dport = _addresses(hdr, family)
    tlvs, fields = _decode_tlvs(hdr, FIXED_LEN + addr_len)
    return ProxyHeader(
        kind=_KIND,
        length=total,
        command=command,
        family=family,
        src_addr=src,
        dst_addr=dst,
        src_port=sport,
        dst_port=dport,
        tlvs=tlvs,
        fields=fields,
    )


def _addresses(hdr: bytes, family: str) -> tuple[str, str, int | None, int | None]:
    o = FIXED_LEN
    if family == "UNIX":
        paths = (hdr[o : o + _UNIX_PATH], hdr[o + _UNIX_PATH : o + 2 * _UNIX_PATH])
        src, dst = (p.rstrip(b"\x00").decode("utf-8", "surrogateescape") for p in paths)
        return src, dst, None, None
    size = 4 if family.endswith("4") else 16
    ip = ipaddress.IPv4Address if size == 4 else ipaddress.IPv6Address
    sport, dport = struct.unpack_from("!HH", hdr, o + 2 * size)
    return str(ip(hdr[o : o + size])), str(ip(hdr[o + size : o + 2 * size])), sport, dport


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


def _decode_tlvs(hdr: bytes, start: int) -> tuple[tuple[Tlv, ...], dict[str, Any]]:
    fields: dict[str, Any] = {}
    tlvs = []
    for t, off, n in split_tlvs(hdr, start, "PROXY v2", "TLV"):
        value = hdr[off : off + n]
        tlvs.append(Tlv(t, value))
        if t in _STRING_TLVS:
            fields.setdefault(_STRING_TLVS[t], _text(value))
        elif t == PP2_TYPE_CRC32C:
            if n != 4:
                raise HeaderError(f"PROXY v2: CRC32C TLV has length {n}, not 4")
            if "crc32c" in fields:
                raise HeaderError("PROXY v2: more than one CRC32C TLV")
            expected = struct.unpack("!I", value)[0]
            if crc32c(hdr[:off] + bytes(4) + hdr[off + 4 :]) != expected:
                raise HeaderError("PROXY v2: CRC32C mismatch")
            fields["crc32c"] = expected
        elif t == PP2_TYPE_UNIQUE_ID:
            if n > _MAX_UNIQUE_ID:
                raise HeaderError(f"PROXY v2: UNIQUE_ID of {n} bytes exceeds {_MAX_UNIQUE_ID}")
            fields.setdefault("unique_id", value.hex())
        elif t == PP2_TYPE_SSL:
            fields.setdefault("ssl", _decode_ssl(value))
        elif t == PP2_TYPE_AWS and n >= 1 and value[0] == _AWS_VPCE_ID:
            fields.setdefault("aws_vpce_id", value[1:].decode("ascii", "backslashreplace"))
    return tuple(tlvs), fields


def _decode_ssl(value: bytes) -> dict[str, Any]:
    if len(value) < 5:
        raise HeaderError(f"PROXY v2: SSL TLV of {len(value)} bytes, need at least 5")
    client, verify = struct.unpack_from("!BI", value)
    ssl: dict[str, Any] = {"client": client, "verify": verify}
    for t, off, n in split_tlvs(value, 5, "PROXY v2", "SSL sub-TLV"):
        if t in _SSL_SUBTYPES:
            ssl.setdefault(_SSL_SUBTYPES[t], _text(value[off : off + n]))
    return ssl


def _encode_tlv(t: int, value: bytes) -> bytes:
    if not 0 <= t <= 0xFF or len(value) > 0xFFFF:
        raise ValueError(f"TLV type {t} or length {len(value)} out of range")
    return struct.pack("!BH", t, len(value)) + value


def build(
    command: str = "PROXY",
    family: str = "TCP4",
    src: str | None = None,
    dst: str | None = None,
    sport: int = 0,
    dport: int = 0,
    tlvs: Sequence[Tlv] = (),
    with_crc32c: bool = False,
) -> bytes:
    """Encode a v2 header (for tests and tools); raises ValueError for unencodable input.

    ``family`` is one of the parsed names ("UNIX" is stream; "UNIX_DGRAM" selects 0x32). The
    address block is written when addresses are given (required for PROXY with an address
    family). ``with_crc32c`` appends a CRC32C TLV computed over the finished header.
    """
    codes = {name: code for code, (name, _) in _FAMILIES.items() if code != 0x32}
    codes["UNIX_DGRAM"] = 0x32
    cmd = {v: k for k, v in _COMMANDS.items()}.get(command)
    fam = codes.get(family)
    if cmd is None or fam is None:
        raise ValueError(f"unknown command {command!r} or family {family!r}")
    body = b""
    if src is not None or dst is not None:
        if src is None or dst is None or fam == 0x00:
            raise ValueError("give both addresses, and a family that has an address block")
        body = _encode_addresses(family, src, dst, sport, dport)
    elif cmd == 1 and fam != 0x00:
        raise ValueError(f"PROXY {family} needs addresses")
    body += b"".join(_encode_tlv(t.type, t.value) for t in tlvs)
    if with_crc32c:
        body += _encode_tlv(PP2_TYPE_CRC32C, bytes(4))
    if len(body) > 0xFFFF:
        raise ValueError(f"header body of {len(body)} bytes does not fit the u16 length")
    hdr = SIGNATURE + struct.pack("!BBH", 0x20 | cmd, fam, len(body)) + body
    if with_crc32c:
        hdr = hdr[:-4] + struct.pack("!I", crc32c(hdr))
    return hdr


def _encode_addresses(family: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    if family.startswith("UNIX"):
        paths = [p.encode("utf-8", "surrogateescape") for p in (src, dst)]
        if any(len(p) > _UNIX_PATH for p in paths):
            raise ValueError(f"UNIX path longer than {_UNIX_PATH} bytes")
        return b"".join(p.ljust(_UNIX_PATH, b"\x00") for p in paths)
    version = 4 if family.endswith("4") else 6
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != version or d.version != version:
        raise ValueError(f"addresses {src} / {dst} do not match family {family}")
    if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
        raise ValueError(f"ports {sport} / {dport} out of range")
    return s.packed + d.packed + struct.pack("!HH", sport, dport)
