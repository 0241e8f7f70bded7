"""``rewrite`` on the compiled engine: whole chunks of a pcap file per call, not one per packet.

Why: with the compiled core, the per-packet Python work around it (reading a record, a tuple,
the checksum policy, writing a record) costs more than the rewriting itself. Here the core walks
the records of a 1 MiB chunk and appends the output records to one buffer (``feed_pcap``);
Python only reads chunks (into one buffer, in place), hands the connection cache its events
and writes the core's output buffer (a view of it: no copy).
``pcap_job.rewrite_file`` calls ``run`` with its own input and output (named errors, the
temporary file, pipes written in place) when ``applies``.

The result is byte for byte what ``pcap_job``'s per-packet loop writes (tests/normalizer/
test_fastpath.py compares them): same records, same original lengths of cut frames (``CutFrame``
semantics: untouched or checksum-completed frames keep theirs), same errors after the same
records (a record cut short, a length past 64 MiB, a timestamp past 2106: the checks of
``pcap_io.CaptureReader._iter_pcap``, which this must follow when they change). It applies to
classic pcap files with checksums "keep" or "auto" (the core completes partial checksums as
``offload.ChecksumPolicy`` does), decapsulating too when the capture is Ethernet (the core
opens tunnels itself and hands the rest to the Decapsulator: tunnels/compiled.py);
everything else takes the per-packet loop.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from normalizer.adapters.pcap_io import PcapError
from normalizer.core.counters import Counters
from normalizer.core.fastpath import CompiledNormalizer, resolve_engine
from normalizer.core.frame import LINKTYPE_ETHERNET, SUPPORTED_LINKTYPES
from normalizer.core.options import Options
from normalizer.core.pipeline import EventSink, ResumeSource, TunnelSink, hand_over
from normalizer.core.restore import output_linktype
from normalizer.tunnels.compiled import CompiledDecap
from normalizer.tunnels.decap import Decapsulator
from normalizer.tunnels.flows import TunnelFlows

_CHUNK = 1 << 20
_BATCH = 4096  # records between hand-overs (events, then output), as pcap_job's loop
_MAX_RECORD = 0x4000000  # pcap_io's bound on one record's claimed length
# pcap magic -> (big endian, fraction scale to ns)
_MAGICS = {
    b"\xd4\xc3\xb2\xa1": (False, 1000),
    b"\xa1\xb2\xc3\xd4": (True, 1000),
    b"\x4d\x3c\xb2\xa1": (False, 1),
    b"\xa1\xb2\x3c\x4d": (True, 1),
}


def applies(src: Path, options: Options) -> bool:
    """Whether ``rewrite_file`` can take this path for ``src``."""
    if resolve_engine(options.engine) != "compiled":
        return False
    if options.checksums not in ("keep", "auto"):
        return False
    try:
        with src.open("rb") as fh:
            head = fh.read(24)
    except OSError:
        return False  # the per-packet path reports it
    if len(head) < 24 or head[:4] not in _MAGICS:
        return False
    big, _ = _MAGICS[head[:4]]
    linktype = struct.unpack((">" if big else "<") + "I", head[20:24])[0] & 0x0FFFFFFF
    if options.decapsulate:
        return bool(linktype == LINKTYPE_ETHERNET)
    return linktype in SUPPORTED_LINKTYPES


class Input(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...

    def readinto(self, b: memoryview, /) -> int: ...

    def tell(self) -> int: ...


class Output(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


def run(
    fin: Input,
    out: Output,
    name: str,
    options: Options,
    progress: Callable[[int, int], None] | None,
    size: int,
    on_events: EventSink | None,
    resume: ResumeSource | None,
    on_tunnels: TunnelSink | None = None,
) -> tuple[Counters, PcapError | None]:
    """Read the pcap from ``fin`` (at its start), write the rebuilt one to ``out``; returns the
    counters and the PcapError that ended the input early, if one did (the records before it
    are written), as pcap_job's loop does."""
    head = fin.read(24)
    big, scale = _MAGICS[head[:4]]
    endian = ">" if big else "<"
    linktype = struct.unpack(endian + "I", head[20:24])[0] & 0x0FFFFFFF
    nano = scale == 1
    out_linktype = output_linktype(linktype, options.restore_addresses)
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 262144, out_linktype))
    eng = CompiledNormalizer(options, linktype)
    auto = options.checksums == "auto"  # offload.ChecksumPolicy's "auto", done by the core
    eng.set_sink(pcap=True, nanosecond=nano)
    # Decapsulation (Ethernet only, see applies): as Pipeline sets it up for the compiled core.
    tunnels = None
    cdecap = None
    if options.decapsulate:
        if on_tunnels is not None:
            tunnels = TunnelFlows(options.max_flows, options.idle_timeout)
        cdecap = CompiledDecap(eng, Decapsulator(options, linktype), tunnels, options)
    kept = completed = 0
    last_report = time.monotonic()

    def write_out() -> None:
        hand_over(eng, tunnels, on_tunnels, on_events)  # as Pipeline.take: rows, events, frames
        eng.write_records(out.write)

    # One buffer, refilled in place: a record cut by the chunk end moves to its start. It is
    # writable: decapsulating, the core builds inner frames over the records it consumed.
    buf = bytearray(2 * _CHUNK)
    blen = pos = 0
    error: PcapError | None = None
    first = True
    n = 0  # records fed
    record = struct.Struct(endian + "IIII")
    while True:
        end = pos + 16 + record.unpack_from(buf, pos)[2] if pos + 16 <= blen else 0
        if not end or end > blen:
            if end and end - pos - 16 > _MAX_RECORD:
                error = PcapError(f"{name}: record claims {end - pos - 16} bytes: corrupt file")
                break
            tail = blen - pos
            buf[:tail] = buf[pos:blen]
            want = max(_CHUNK, end - blen)
            if len(buf) < tail + want:  # a record longer than the buffer (up to _MAX_RECORD)
                buf.extend(bytes(tail + want - len(buf)))
            with memoryview(buf) as mv, mv[tail : tail + want] as room:
                got = fin.readinto(room)  # in place: no chunk object, no copy
            blen, pos = tail + got, 0
            if not got:
                if blen >= 16:
                    error = PcapError(f"{name}: truncated record at end of file")
                elif blen:
                    error = PcapError(f"{name}: truncated record header at end of file")
                break
            continue
        if first:
            first = False
            if resume is not None:
                sec, frac = record.unpack_from(buf, pos)[:2]
                ts = sec * 1_000_000_000 + frac * scale
                for client, server, vlan, isn, header in resume(ts / 1e9 - options.idle_timeout):
                    eng.resume(client, server, vlan, isn, header, ts)
        with memoryview(buf) as mv, mv[:blen] as chunk:
            pos, fed, k, done, bad_ts = eng.feed_pcap(
                chunk, pos, big, scale, auto, _BATCH - n % _BATCH
            )
        n += fed
        kept += k
        completed += done
        if n % _BATCH == 0 and fed:  # where the per-packet loop hands over: same event batches
            write_out()
        if bad_ts:  # as CaptureReader: the output cannot carry it, the record is corrupt
            sec, frac = record.unpack_from(buf, pos)[:2]
            error = PcapError(f"{name}: record with timestamp {sec}.{frac}: corrupt file")
            break
        if progress is not None and time.monotonic() - last_report > 2:
            last_report = time.monotonic()
            progress(fin.tell(), size)
    if cdecap is not None:  # Pipeline.flush: the decapsulator's held fragments first
        k, done = cdecap.flush(auto)
        kept += k
        completed += done
    if tunnels is not None:
        tunnels.flush()
        if cdecap is not None:
            cdecap.rows_changed()
    eng.flush()
    write_out()
    c = eng.counters
    if cdecap is not None:
        cdecap.merge(c)
    if auto:
        c.checksum_completed, c.checksum_kept = completed, kept
    return c, error
