"""An independent reading of the PROXY protocol spec (HAProxy's doc/proxy-protocol.txt).

Why a second parser: the conformance vectors need "the spec's verdict" that does not come from
the codecs under test. This one is written from the spec text alone, in another shape (whole
buffer, regular expressions, ``socket.inet_pton``, a bitwise CRC) so a misreading in one is not
silently shared by the other. Where the spec lets a receiver choose, it takes the strict branch
and names the choice (``open``), as documented in docs/proxy-protocol-choices.md.

Used by scripts/extract-proxy-vectors.py (the stored verdicts) and by the differential property
test next to it (inputs nobody stored).
"""

from __future__ import annotations

import re
import socket
import struct
from typing import Any

SIG = b"\r\n\r\n\x00\r\nQUIT\n"

_V4 = re.compile(
    rb"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
)
_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_FAMILIES = {
    0x00: ("UNSPEC", 0),
    0x11: ("TCP4", 12),
    0x12: ("UDP4", 12),
    0x21: ("TCP6", 36),
    0x22: ("UDP6", 36),
    0x31: ("UNIX", 216),
    0x32: ("UNIX", 216),
}


def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def spec_verdict(data: bytes) -> dict[str, Any]:
    """What doc/proxy-protocol.txt says a receiver does with a stream starting with ``data``.

    ``open`` lists the choice ids (docs/proxy-protocol-choices.md) the bytes touch: points where
    the spec lets a receiver choose, or where well-known receivers read it differently. Where it
    leaves a choice, ``verdict`` is the strict reading.
    """
    if data.startswith(SIG) or (SIG.startswith(data[:12]) and len(data) < 12):
        return _spec_v2(data) if data.startswith(SIG) else {"verdict": "need-more", "open": []}
    if data.startswith(b"PROXY") or b"PROXY".startswith(data):
        return _spec_v1(data)
    return {"verdict": "invalid", "open": [], "why": "no PROXY signature"}


def _spec_v1(data: bytes) -> dict[str, Any]:
    opened: list[str] = []
    window = data[:107]
    ends = [i for i in (window.find(b"\r"), window.find(b"\n")) if i != -1]
    if not ends:
        if len(data) >= 107:
            return {"verdict": "invalid", "open": [], "why": "no CRLF within 107 bytes"}
        return {"verdict": "need-more", "open": []}
    end = min(ends)
    if window[end] == 0x0A:
        return {"verdict": "invalid", "open": [], "why": "lone LF"}
    if end + 1 >= len(data):
        return {"verdict": "need-more", "open": []}
    if data[end + 1] != 0x0A:
        return {"verdict": "invalid", "open": [], "why": "lone CR"}
    if end + 2 > 107:
        return {"verdict": "invalid", "open": [], "why": "line longer than 107 bytes"}
    line = data[:end]
    bad = {"verdict": "invalid", "open": opened}
    if not line.startswith(b"PROXY "):
        return {**bad, "why": "signature"}
    parts = line.split(b" ")
    if parts[1] == b"UNKNOWN":
        if len(parts) > 2:
            opened.append("v1-unknown-trailing")
        return {
            "verdict": "valid",
            "open": opened,
            "command": "PROXY",
            "family": "UNKNOWN",
            "length": end + 2,
        }
    if parts[1].startswith(b"UNKNOWN"):
        opened.append("v1-unknown-separator")
        return {**bad, "why": "UNKNOWN not followed by a space"}
    if parts[1] not in (b"TCP4", b"TCP6"):
        return {**bad, "why": "protocol"}
    if len(parts) != 6 or b"" in parts:
        return {
            **bad,
            "open": [*opened, "v1-strict-grammar"],
            "why": "fields are separated by exactly one space",
        }
    src, dst, sport, dport = parts[2:]
    addrs = []
    for a in (src, dst):
        if parts[1] == b"TCP4":
            if not _V4.fullmatch(a):
                return {**bad, "open": [*opened, "v1-strict-grammar"], "why": "IPv4 address"}
            addrs.append(
                socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, a.decode()))
            )
        else:
            if not re.fullmatch(rb"[0-9a-fA-F:.]+", a):
                return {**bad, "why": "IPv6 address"}
            if b"." in a:
                opened.append("v1-ipv6-dotted")
                if _V4.fullmatch(a):
                    opened.append("v1-ipv4-in-tcp6")
                    return {**bad, "why": "IPv4 literal in a TCP6 line"}
            try:
                packed = socket.inet_pton(socket.AF_INET6, a.decode())
            except OSError:
                return {**bad, "why": "IPv6 address"}
            if b"." in a:
                tail = a.rsplit(b":", 1)[1]
                if not _V4.fullmatch(tail):
                    return {**bad, "why": "IPv6 dotted tail"}
            addrs.append(socket.inet_ntop(socket.AF_INET6, packed))
    ports = []
    for p in (sport, dport):
        if not _PORT.fullmatch(p):
            if re.fullmatch(rb"[0-9]+", p):
                return {
                    **bad,
                    "open": [*opened, "v1-strict-grammar"],
                    "why": "port with a leading zero",
                }
            return {**bad, "why": "port is not a decimal number"}
        if int(p) > 65535:
            opened.append("v1-port-range")
            return {**bad, "why": "port above 65535"}
        ports.append(int(p))
    return {
        "verdict": "valid",
        "open": opened,
        "command": "PROXY",
        "family": parts[1].decode(),
        "src_addr": addrs[0],
        "dst_addr": addrs[1],
        "src_port": ports[0],
        "dst_port": ports[1],
        "length": end + 2,
    }


def _spec_v2(data: bytes) -> dict[str, Any]:
    opened: list[str] = []
    if len(data) < 16:
        return {"verdict": "need-more", "open": []}
    bad = {"verdict": "invalid", "open": opened}
    ver, cmd, fam = data[12] >> 4, data[12] & 0xF, data[13]
    if ver != 2:
        return {**bad, "why": "version"}
    if cmd not in (0, 1):
        return {**bad, "why": "command"}
    length = struct.unpack_from("!H", data, 14)[0]
    total = 16 + length
    if fam not in _FAMILIES:
        if fam >> 4 <= 3 and fam & 0xF <= 2:
            opened.append("v2-family-combination")
        if cmd == 0:
            opened.append("v2-local-family")
        return {**bad, "why": f"family/transport byte {fam:#04x}"}
    family, addr_len = _FAMILIES[fam]
    if cmd == 1 and length < addr_len:
        return {**bad, "why": "length shorter than the address block"}
    if len(data) < total:
        return {"verdict": "need-more", "open": []}
    hdr = data[:total]
    out: dict[str, Any] = {
        "verdict": "valid",
        "open": opened,
        "length": total,
        "command": "PROXY" if cmd else "LOCAL",
        "family": family,
    }
    if cmd == 1 and addr_len:
        tlv_at = 16 + addr_len
        if fam not in (0x11, 0x21):
            opened.append("v2-udp-unix")
        if family == "UNIX":
            s, d = hdr[16:124], hdr[124:232]
            out["src_addr"], out["dst_addr"] = (
                p.split(b"\0", 1)[0].decode("utf-8", "surrogateescape") for p in (s, d)
            )
            if any(
                p.split(b"\0", 1)[1:] != [bytes(len(p.split(b"\0", 1)[1]))]
                for p in (s, d)
                if b"\0" in p
            ):
                opened.append("v2-unix-path-nul")
        else:
            af, n = (socket.AF_INET, 4) if addr_len == 12 else (socket.AF_INET6, 16)
            out["src_addr"] = socket.inet_ntop(af, hdr[16 : 16 + n])
            out["dst_addr"] = socket.inet_ntop(af, hdr[16 + n : 16 + 2 * n])
            out["src_port"], out["dst_port"] = struct.unpack_from("!HH", hdr, 16 + 2 * n)
    elif cmd == 1:
        opened.append("v2-proxy-unspec")
        tlv_at = 16
    elif addr_len and length >= addr_len:
        opened.append("v2-local-address-block")
        tlv_at = 16 + addr_len
    else:
        if addr_len and length:
            opened.append("v2-local-short-block")
        tlv_at = 16
    why = _spec_tlvs(hdr, tlv_at, opened)
    if why:
        return {**bad, "why": why}
    return out


def _spec_tlvs(hdr: bytes, at: int, opened: list[str]) -> str | None:
    crcs = 0
    while at < len(hdr):
        if len(hdr) - at < 3:
            opened.append("v2-tlv-trailing")
            return "bytes after the last TLV do not form a TLV"
        t, n = hdr[at], struct.unpack_from("!H", hdr, at + 1)[0]
        v = hdr[at + 3 : at + 3 + n]
        if at + 3 + n > len(hdr):
            opened.append("v2-tlv-overrun")
            return "TLV runs past the header length"
        if t == 0x03:
            crcs += 1
            if crcs > 1:
                opened.append("v2-crc-multiple")
                return "more than one CRC32C TLV"
            if n != 4:
                opened.append("v2-crc-verify")
                return "CRC32C TLV not 4 bytes"
            zeroed = hdr[: at + 3] + bytes(4) + hdr[at + 7 :]
            if _crc32c_bitwise(zeroed) != struct.unpack("!I", v)[0]:
                opened.append("v2-crc-verify")
                return "CRC32C mismatch"
        elif t == 0x05 and n > 128:
            opened.append("v2-unique-id-length")
            return "UNIQUE_ID longer than 128 bytes"
        elif t == 0x20:
            if n < 5:
                opened.append("v2-ssl-malformed")
                return "SSL TLV shorter than client + verify"
            sub = 5
            while sub < n:
                if n - sub < 3 or sub + 3 + struct.unpack_from("!H", v, sub + 1)[0] > n:
                    opened.append("v2-ssl-malformed")
                    return "SSL sub-TLVs do not tile the SSL TLV"
                sub += 3 + struct.unpack_from("!H", v, sub + 1)[0]
        elif t == 0x02 and n > 255:
            opened.append("v2-authority-length")
        at += 3 + n
    return None
