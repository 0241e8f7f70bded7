"""PROXY protocol version 1: the human-readable line HAProxy, nginx and others send first.

The receiver side is deliberately strict. The stream core only calls this for connections from
configured proxies, so anything the spec does not allow means misconfiguration or a client
speaking directly: such a stream must be released untouched rather than partly eaten. The
parser also decides, on every prefix, whether the bytes can still become a valid line, so
packets are held only while that is possible and released as soon as it is not.

Grammar accepted (``SP`` is exactly one space, the whole line including CRLF <= 107 bytes)::

    "PROXY" SP ("TCP4" | "TCP6") SP src SP dst SP sport SP dport CRLF
    "PROXY" SP "UNKNOWN" [SP <any bytes but CR and LF>] CRLF

Addresses must parse with :mod:`ipaddress` as the family's version (IPv4 dotted quads without
leading zeros; IPv6 without a zone) and are reported canonically. Ports are decimal 0-65535
without sign or leading zeros. For UNKNOWN the spec says the rest of the line is ignored; we
still require it to be separated by a space and to contain no lone CR or LF.
"""

from __future__ import annotations

import ipaddress

from normalizer.proxy_headers.base import HeaderError, NeedMore, ProxyHeader

SIGNATURE = b"PROXY "
MAX_LEN = 107  # the spec's worst case ("UNKNOWN" with two full IPv6 addresses), CRLF included

_KIND = "proxy-v1"
_FAMILIES = (b"TCP4", b"TCP6", b"UNKNOWN")
_V4_CHARS = frozenset(b"0123456789.")
_V6_CHARS = frozenset(b"0123456789abcdefABCDEF:.")
_PORT_CHARS = frozenset(b"0123456789")


def parse(buf: bytes) -> ProxyHeader | NeedMore:
    """Parse a v1 line at the start of ``buf``; bytes after its CRLF are not looked at."""
    n = min(len(buf), len(SIGNATURE))
    if buf[:n] != SIGNATURE[:n]:
        raise HeaderError("not a PROXY v1 header: missing 'PROXY ' signature")
    window = buf[:MAX_LEN]
    cr, lf = window.find(b"\r"), window.find(b"\n")
    if lf != -1 and (cr == -1 or lf < cr):
        raise HeaderError("PROXY v1: bare LF in header line")
    if cr != -1:
        if cr + 2 > MAX_LEN:
            raise HeaderError(f"PROXY v1: no CRLF within {MAX_LEN} bytes")
        line = buf[:cr]
        if cr + 1 == len(buf):
            # The line can only end here: check it in full now so a bad one is rejected early.
            _check_line(line, complete=True)
            return NeedMore(len(buf) + 1)
        if buf[cr + 1] != 0x0A:
            raise HeaderError("PROXY v1: CR not followed by LF")
        header = _check_line(line, complete=True)
        assert header is not None  # a complete line yields a header or raises
        return header
    if len(buf) >= MAX_LEN:
        raise HeaderError(f"PROXY v1: no CRLF within {MAX_LEN} bytes")
    _check_line(buf, complete=False)
    return NeedMore(len(buf) + 1)


def _check_line(line: bytes, complete: bool) -> ProxyHeader | None:
    """Validate ``line`` (no CR/LF in it); if not ``complete``, its last token may be partial.

    Returns the header for a complete line, None for a valid partial one, raises otherwise.
    """
    if len(line) < len(SIGNATURE):  # only a prefix of the signature so far
        if complete:
            raise HeaderError("PROXY v1: line ends inside the signature")
        return None
    proto, sep, rest = line[len(SIGNATURE) :].partition(b" ")
    if not sep and not complete:
        if not any(f.startswith(proto) for f in _FAMILIES):
            raise HeaderError(f"PROXY v1: unknown protocol {_show(proto)}")
        return None
    if proto == b"UNKNOWN":
        if not complete:
            return None
        return ProxyHeader(kind=_KIND, length=len(line) + 2, command="PROXY", family="UNKNOWN")
    if proto not in _FAMILIES:
        raise HeaderError(f"PROXY v1: unknown protocol {_show(proto)}")
    if not sep:
        raise HeaderError(f"PROXY v1: {proto.decode()} without addresses and ports")
    tokens = rest.split(b" ")
    if b"" in (tokens if complete else tokens[:-1]):
        raise HeaderError("PROXY v1: empty field (fields are separated by exactly one space)")
    if len(tokens) > 4 or (complete and len(tokens) != 4):
        raise HeaderError(f"PROXY v1: expected 4 fields after the protocol, got {len(tokens)}")
    v6 = proto == b"TCP6"
    values: list[str | int | None] = []
    for i, tok in enumerate(tokens):
        partial = not complete and i == len(tokens) - 1
        what = ("source address", "destination address", "source port", "destination port")[i]
        values.append(_address(tok, v6, partial, what) if i < 2 else _port(tok, partial, what))
    if not complete:
        return None
    src, dst, sport, dport = values
    assert isinstance(src, str) and isinstance(dst, str)
    assert isinstance(sport, int) and isinstance(dport, int)
    return ProxyHeader(
        kind=_KIND,
        length=len(line) + 2,
        command="PROXY",
        family=proto.decode(),
        src_addr=src,
        dst_addr=dst,
        src_port=sport,
        dst_port=dport,
    )


def _address(tok: bytes, v6: bool, partial: bool, what: str) -> str | None:
    """Canonical text of a complete address, or None if a partial one can still be completed."""
    if not set(tok) <= (_V6_CHARS if v6 else _V4_CHARS):
        raise HeaderError(f"PROXY v1: invalid character in {what} {_show(tok)}")
    text = tok.decode("ascii")
    if partial:
        if not _address_prefix_ok(text, v6):
            raise HeaderError(f"PROXY v1: {what} {text!r} cannot become a valid address")
        return None
    addr = _ip(text, v6)
    if addr is None:
        raise HeaderError(f"PROXY v1: invalid IPv{6 if v6 else 4} {what} {text!r}")
    return addr


def _ip(text: str, v6: bool) -> str | None:
    try:
        return str(ipaddress.IPv6Address(text) if v6 else ipaddress.IPv4Address(text))
    except ValueError:
        return None


def _address_prefix_ok(text: str, v6: bool) -> bool:
    """Whether some completion of ``text`` is a valid address of the family.

    Instead of a grammar we try the few completions that can rescue a prefix: a trailing
    dotted-quad fragment is finished with zeros (nothing may follow it), otherwise the prefix
    is valid iff it, or it followed by "0", ":" or "::", is already a full address.
    """
    if not text:
        return True
    head, colon, last = text.rpartition(":")
    if "." in last or not v6:
        parts = last.split(".")
        if len(parts) > 4:
            return False
        finished = ".".join(parts[:-1] + [parts[-1] or "0"] + ["0"] * (4 - len(parts)))
        return _ip(head + colon + finished, v6) is not None
    return any(_ip(text + tail, v6) is not None for tail in ("", "0", ":", "::"))


def _port(tok: bytes, partial: bool, what: str) -> int | None:
    if not set(tok) <= _PORT_CHARS or (not tok and not partial):
        raise HeaderError(f"PROXY v1: {what} {_show(tok)} is not a decimal number")
    if len(tok) > 1 and tok[0] == 0x30:
        raise HeaderError(f"PROXY v1: {what} {_show(tok)} has a leading zero")
    if tok and int(tok) > 65535:
        raise HeaderError(f"PROXY v1: {what} {_show(tok)} is above 65535")
    return None if partial else int(tok)


def _show(tok: bytes) -> str:
    return repr(tok[:48].decode("ascii", "backslashreplace"))


def build(
    src: str | None,
    dst: str | None,
    sport: int | None,
    dport: int | None,
    family: str | None = None,
) -> bytes:
    """Encode a v1 line (for tests and tools); the family follows the addresses if not given.

    No addresses, or ``family="UNKNOWN"``, gives the bare ``PROXY UNKNOWN\\r\\n`` line.
    Raises ValueError for input that could not be parsed back.
    """
    if family is None:
        family = "UNKNOWN" if src is None and dst is None else None
    if family == "UNKNOWN":
        return b"PROXY UNKNOWN\r\n"
    if src is None or dst is None or sport is None or dport is None:
        raise ValueError("PROXY v1 TCP4/TCP6 needs both addresses and both ports")
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError(f"address families differ: {src} / {dst}")
    inferred = f"TCP{s.version}"
    if family is not None and family != inferred:
        raise ValueError(f"family {family} does not match addresses {src} / {dst}")
    for port in (sport, dport):
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
    return f"PROXY {inferred} {s} {d} {sport} {dport}\r\n".encode("ascii")
