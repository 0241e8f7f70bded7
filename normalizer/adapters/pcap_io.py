"""pcap / pcapng reading and pcap writing: the file adapters around the core.

Written with ``struct`` rather than a capture library so reading costs one unpack per record and
nothing is decoded that the core does not need. Timestamps are integer nanoseconds throughout,
so nanosecond captures keep their precision.

A capture file is input like any other: every length is checked against what the block can
hold before it is used, and a timestamp the output cannot carry (before 1970 or past 2106: the
pcap record's seconds are an unsigned 32-bit field) makes its record corrupt. Either raises
``PcapError`` naming the file and the record, after every record before it was handed out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Protocol

from normalizer.core.frame import (
    LINKTYPE_ETHERNET,
    SUPPORTED_LINKTYPES,
    CutFrame,
    as_ethernet,
    original_length,
)


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes | bytearray, /) -> int: ...

    def writelines(self, parts: Iterable[bytes | bytearray], /) -> None: ...


class PcapError(Exception):
    """The capture file is not something we can read (or write) correctly."""


_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
_PCAPNG_SHB = 0x0A0D0D0A
_CHUNK = 1 << 20
_MAX_RECORD = 0x4000000  # 64 MiB: no link layer captures more; a larger length is corruption
TS_LIMIT = (1 << 32) * 1_000_000_000  # ns: first instant a pcap record cannot hold
# Smallest body (after the 8-byte block header, without the trailing length) of the blocks read.
_MIN_BODY = {_PCAPNG_SHB: 16, 1: 8, 6: 20, 3: 4}


class CaptureReader:
    """Iterates (ts_ns, frame, orig_len) over a pcap or pcapng file.

    A frame captured shorter than it was (``orig_len`` larger) is a ``CutFrame`` carrying
    ``orig_len``, so the writer gives it its original length wherever it ends up.

    ``linktype`` is known once the first interface is declared (immediately for pcap). The core
    decodes one link type per input, so a pcapng file whose interfaces differ (Wireshark on an
    Ethernet port and on loopback, say) is read as Ethernet: every other interface's frames get
    a synthesized Ethernet header (``converted`` counts them). That is decided when the first
    packet is read; an interface of another type declared later, when the frames already read
    were not Ethernet, is an error.
    """

    def __init__(self, fh: Readable, name: str = "<capture>") -> None:
        self._fh = fh
        self.name = name
        self.nanosecond = False
        self.linktype: int | None = None
        self.converted = 0  # frames given an Ethernet header (pcapng with mixed link types)
        self._started = False  # a packet was handed out: linktype is fixed
        head = fh.read(4)
        if len(head) < 4:
            raise PcapError(f"{name}: empty or truncated file (no capture header)")
        self._head = head
        if head in _PCAP_MAGICS:
            self.format = "pcap"
            self._init_pcap()
        elif int.from_bytes(head, "little") == _PCAPNG_SHB:
            self.format = "pcapng"
        else:
            raise PcapError(f"{name}: not a pcap or pcapng file (magic {head.hex()})")

    # pcap ----------------------------------------------------------------------------------

    def _init_pcap(self) -> None:
        endian, scale = _PCAP_MAGICS[self._head]
        rest = self._fh.read(20)
        if len(rest) < 20:
            raise PcapError(f"{self.name}: truncated pcap file header")
        _vmaj, _vmin, _tz, _sig, _snap, linktype = struct.unpack(endian + "HHiIII", rest)
        self._set_linktype(linktype & 0x0FFFFFFF)
        self._endian = endian
        self._scale = scale
        self.nanosecond = scale == 1

    def _set_linktype(self, linktype: int) -> None:
        if linktype not in SUPPORTED_LINKTYPES:
            raise PcapError(f"{self.name}: unsupported link type {linktype}")
        if self.linktype is None:
            self.linktype = linktype
        elif linktype != self.linktype:
            if not self._started:
                self.linktype = LINKTYPE_ETHERNET
            elif self.linktype != LINKTYPE_ETHERNET:
                raise PcapError(
                    f"{self.name}: an interface with link type {linktype} declared after packets"
                    f" of link type {self.linktype}"
                )

    def __iter__(self) -> Iterator[tuple[int, bytes, int]]:
        if self.format == "pcap":
            return self._iter_pcap()
        return self._iter_pcapng()

    def _iter_pcap(self) -> Iterator[tuple[int, bytes, int]]:
        unpack = struct.Struct(self._endian + "IIII").unpack_from
        scale = self._scale
        read = self._fh.read
        buf = b""
        blen = pos = 0
        while True:
            if pos + 16 > blen:
                buf = buf[pos:] + read(_CHUNK)
                blen = len(buf)
                pos = 0
                if blen < 16:
                    if buf:
                        raise PcapError(f"{self.name}: truncated record header at end of file")
                    return
            sec, frac, caplen, origlen = unpack(buf, pos)
            start = pos + 16
            end = start + caplen
            if end > blen:
                if caplen > _MAX_RECORD:
                    raise PcapError(f"{self.name}: record claims {caplen} bytes: corrupt file")
                buf = buf[pos:] + read(max(_CHUNK, end - blen))
                blen = len(buf)
                pos, start, end = 0, 16, 16 + caplen
                if end > blen:
                    raise PcapError(f"{self.name}: truncated record at end of file")
            ts = sec * 1_000_000_000 + frac * scale
            if ts >= TS_LIMIT:  # a fraction of a second beyond a whole second, near 2106
                raise PcapError(f"{self.name}: record with timestamp {sec}.{frac}: corrupt file")
            if origlen > caplen:
                yield ts, CutFrame(buf[start:end], origlen), origlen
            else:
                yield ts, buf[start:end], origlen
            pos = end

    # pcapng --------------------------------------------------------------------------------

    def _iter_pcapng(self) -> Iterator[tuple[int, bytes, int]]:
        fh = self._fh
        first = True
        endian = "<"
        ifaces: list[tuple[int, int, int]] = []  # (linktype, ticks per second, offset s)
        records = 0  # packets handed out: error messages say where the file went wrong
        while True:
            head = self._head if first else fh.read(8)
            if first:
                head += fh.read(4)
            if not head:
                return
            if len(head) < 8:
                raise PcapError(f"{self.name}: truncated pcapng block header")
            btype = int.from_bytes(head[:4], "little")
            if btype == _PCAPNG_SHB:
                bom = fh.read(4)
                if bom == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                else:
                    raise PcapError(f"{self.name}: bad pcapng byte-order magic")
                total = struct.unpack(endian + "I", head[4:8])[0]
                self._check_block(btype, total, records)
                body = bom + fh.read(total - 12)
                ifaces = []
            else:
                btype, total = struct.unpack(endian + "II", head)
                self._check_block(btype, total, records)
                body = fh.read(total - 8)
            first = False
            if len(body) != total - 8:
                raise PcapError(f"{self.name}: truncated pcapng block after {records} packets")
            body = body[:-4]
            if btype == 1:  # interface description
                linktype = struct.unpack_from(endian + "H", body, 0)[0]
                self._set_linktype(linktype)
                ifaces.append((linktype, *_if_options(body[8:], endian)))
            elif btype == 6:  # enhanced packet
                ifid, hi, lo, caplen, origlen = struct.unpack_from(endian + "IIIII", body, 0)
                if ifid >= len(ifaces):
                    raise PcapError(f"{self.name}: packet block names unknown interface {ifid}")
                if 20 + caplen > len(body):
                    raise PcapError(
                        f"{self.name}: packet block {records + 1} claims {caplen} bytes in a"
                        f" {len(body) - 20}-byte body: corrupt file"
                    )
                frame = body[20 : 20 + caplen]
                if origlen > caplen:
                    frame = CutFrame(frame, origlen)
                if ifaces[ifid][0] != self.linktype:
                    frame, origlen = self._as_ethernet(frame, ifaces[ifid][0], origlen)
                ts = _ticks_to_ns((hi << 32) | lo, ifaces[ifid])
                if not 0 <= ts < TS_LIMIT:
                    raise PcapError(
                        f"{self.name}: packet block {records + 1} has timestamp {ts / 1e9:.0f} s"
                        " (interface resolution and offset applied), outside 1970..2106"
                    )
                self._started = True
                records += 1
                yield ts, frame, origlen
            elif btype == 3:  # simple packet: no timestamp
                if not ifaces:
                    raise PcapError(f"{self.name}: simple packet block before any interface")
                origlen = struct.unpack_from(endian + "I", body, 0)[0]
                data = body[4 : 4 + origlen]
                if origlen > len(data):
                    data = CutFrame(data, origlen)
                if ifaces[0][0] != self.linktype:
                    data, origlen = self._as_ethernet(data, ifaces[0][0], origlen)
                self._started = True
                records += 1
                yield 0, data, origlen

    def _check_block(self, btype: int, total: int, records: int) -> None:
        """A block length the reader can trust before it reads that many bytes."""
        least = 12 + _MIN_BODY.get(btype, 0)
        if total < least or total % 4 or total > _MAX_RECORD:
            raise PcapError(
                f"{self.name}: pcapng block of type 0x{btype:x} claims {total} bytes"
                f" (at least {least}, a multiple of 4) after {records} packets: corrupt file"
            )

    def _as_ethernet(self, frame: bytes, linktype: int, origlen: int) -> tuple[bytes, int]:
        out = as_ethernet(frame, linktype)  # a CutFrame's origlen follows the new header
        self.converted += 1
        return out, origlen + len(out) - len(frame)


def _if_options(opts: bytes, endian: str) -> tuple[int, int]:
    """(timestamp ticks per second, offset in seconds) from an interface block's options."""
    ticks = 1_000_000
    offset = 0
    i = 0
    while i + 4 <= len(opts):
        code, length = struct.unpack_from(endian + "HH", opts, i)
        value = opts[i + 4 : i + 4 + length]
        if code == 0:
            break
        # ``value`` may be shorter than ``length`` says (an option running past the block):
        # only what is there is read.
        if code == 9 and len(value) >= 1:  # if_tsresol
            r = value[0]
            ticks = 2 ** (r & 0x7F) if r & 0x80 else 10 ** (r & 0x7F)
        elif code == 14 and len(value) >= 8:  # if_tsoffset
            offset = struct.unpack(endian + "q", value[:8])[0]
        i += 4 + ((length + 3) & ~3)
    return ticks, offset


def _ticks_to_ns(ticks: int, iface: tuple[int, int, int]) -> int:
    _lt, per_second, offset = iface
    return (ticks * 1_000_000_000) // per_second + offset * 1_000_000_000


class PcapWriter:
    """Writes classic pcap, nanosecond-resolution when the input was, so replays are faithful."""

    def __init__(self, fh: Writable, linktype: int, nanosecond: bool = False) -> None:
        self._fh = fh
        self._nano = nanosecond
        magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
        fh.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 262144, linktype))
        self._rec = struct.Struct("<IIII")

    def write(self, ts: int, frame: bytes | bytearray, origlen: int | None = None) -> None:
        """One record; its original length is ``origlen``, else the frame's own (a
        ``CutFrame`` carries it), never less than the bytes written."""
        sec, ns = divmod(ts, 1_000_000_000)
        frac = ns if self._nano else ns // 1000
        n = len(frame)
        orig = original_length(frame) if origlen is None else origlen
        self._fh.write(self._rec.pack(sec, frac, n, max(n, orig)))
        self._fh.write(frame)

    def write_many(self, items: list[tuple[int, bytes | bytearray]]) -> None:
        """Write frames in one call: the batch path of the rewrite loop."""
        pack = self._rec.pack
        nano = self._nano
        parts: list[bytes | bytearray] = []
        add = parts.append
        for ts, frame in items:
            sec, ns = divmod(ts, 1_000_000_000)
            n = len(frame)
            orig = frame.origlen if type(frame) is CutFrame else n
            add(pack(sec, ns if nano else ns // 1000, n, orig))
            add(frame)
        self._fh.writelines(parts)


class PcapngWriter:
    """Writes pcapng: one section, one interface (nanosecond ``if_tsresol``), one Enhanced
    Packet Block per frame; same interface as ``PcapWriter``. Little-endian, as every writer
    of the format does on this hardware (readers honour the byte-order magic either way)."""

    def __init__(self, fh: Writable, linktype: int, nanosecond: bool = False) -> None:
        self._fh = fh
        shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
        # IDB with if_tsresol (option 9) = 9: nanoseconds, so no precision is lost either way
        opts = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
        body = struct.pack("<HHI", linktype, 0, 262144) + opts
        idb = struct.pack("<II", 1, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
        fh.write(shb + idb)
        self._head = struct.Struct("<IIIIIII")

    def _block(self, ts: int, frame: bytes | bytearray, orig: int) -> list[bytes | bytearray]:
        n = len(frame)
        pad = -n % 4
        total = 32 + n + pad
        head = self._head.pack(6, total, 0, ts >> 32, ts & 0xFFFFFFFF, n, max(n, orig))
        return [head, frame, b"\0" * pad + struct.pack("<I", total)]

    def write(self, ts: int, frame: bytes | bytearray, origlen: int | None = None) -> None:
        orig = original_length(frame) if origlen is None else origlen
        self._fh.writelines(self._block(ts, frame, orig))

    def write_many(self, items: list[tuple[int, bytes | bytearray]]) -> None:
        parts: list[bytes | bytearray] = []
        for ts, frame in items:
            orig = frame.origlen if type(frame) is CutFrame else len(frame)
            parts += self._block(ts, frame, orig)
        self._fh.writelines(parts)


FORMATS = ("pcap", "pcapng")


def format_for(path: str, fmt: str | None) -> str:
    """The output format: ``fmt`` if given, else by the file name (``.pcapng``: pcapng)."""
    if fmt is not None:
        return fmt
    return "pcapng" if path.lower().endswith(".pcapng") else "pcap"


def writer_for(fmt: str) -> type[PcapWriter] | type[PcapngWriter]:
    return PcapngWriter if fmt == "pcapng" else PcapWriter
