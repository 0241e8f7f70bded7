"""Runs the core over a capture file and writes the rebuilt capture: the ``rewrite`` command.

The output is written to a temporary file beside the target and renamed only on success, so a
full disk or a corrupt input never leaves a half-written file under the requested name.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from normalizer.counters import Counters
from normalizer.options import Options
from normalizer.pcap_io import CaptureReader, PcapError, PcapWriter
from normalizer.pipeline import EventSink, Pipeline, ResumeSource, TunnelSink

_BATCH = 4096


def rewrite_file(
    src: Path,
    dst: Path,
    options: Options,
    progress: Callable[[int, int], None] | None = None,
    on_events: EventSink | None = None,
    resume: ResumeSource | None = None,
    on_tunnels: TunnelSink | None = None,
) -> Counters:
    """Normalize ``src`` into ``dst``. Raises PcapError / OSError; ``dst`` is untouched then."""
    size = src.stat().st_size
    gc_was_enabled = gc.isenabled()
    # The loop allocates a tuple per packet but never a reference cycle; the cyclic collector
    # would only rescan the flow table over and over (about 15% of the run time).
    gc.disable()
    dst_dir = dst.parent if str(dst.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst_dir)
    try:
        with src.open("rb") as fin, os.fdopen(fd, "wb", buffering=1 << 20) as fout:
            reader = CaptureReader(fin, str(src))
            pipe: Pipeline | None = None
            writer: PcapWriter | None = None
            last_report = time.monotonic()

            def write_out() -> None:
                assert pipe is not None and writer is not None
                writer.write_many(pipe.take())  # a CutFrame carries its original length

            n = 0
            error: PcapError | None = None
            try:
                for ts, frame, _origlen in reader:
                    if pipe is None:
                        assert reader.linktype is not None
                        pipe = Pipeline(options, reader.linktype, on_events, resume, on_tunnels)
                        writer = PcapWriter(fout, pipe.linktype, reader.nanosecond)
                    pipe.push(frame, ts)
                    n += 1
                    if n % _BATCH == 0:
                        write_out()
                        if progress is not None and time.monotonic() - last_report > 2:
                            last_report = time.monotonic()
                            progress(fin.tell(), size)
            except PcapError as exc:
                error = exc  # keep everything read so far, then report
            if pipe is None:  # no packet at all: still write a valid, empty capture
                pipe = Pipeline(options, reader.linktype or 1, on_events)
                writer = PcapWriter(fout, pipe.linktype, reader.nanosecond)
            pipe.flush()
            write_out()
            counters = pipe.counters
        if error is not None:
            os.replace(tmp_name, dst)
            raise error
        os.replace(tmp_name, dst)
        return counters
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    finally:
        if gc_was_enabled:
            gc.enable()


def print_progress(done: int, total: int) -> None:
    pct = 100.0 * done / total if total else 100.0
    print(f"\r  {done / 1e6:8.1f} / {total / 1e6:.1f} MB ({pct:5.1f}%)", end="", file=sys.stderr)


def summary(c: Counters) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(c.headers_stripped.items())) or "none"
    lines = [
        f"packets: {c.packets_in} in, {c.packets_out} out, {c.packets_dropped} dropped "
        f"({c.header_only_dropped} carried only header bytes, {c.midstream_dropped} midstream)",
        f"headers stripped: {kinds} (LOCAL {c.headers_local})",
        f"flows: {c.flows_created} tracked, {c.flows_expired} expired, {c.flows_evicted} evicted, "
        f"{c.flows_restarted} restarted",
        f"rewritten {c.rewritten}; passed untouched: {c.passed_untracked} untracked, "
        f"{c.passed_not_tcp} not TCP, {c.passed_unparsed_flow} of flows without a usable header",
        f"header problems: {c.header_malformed} malformed, {c.header_truncated} truncated, "
        f"{c.header_missing} missing, {c.hold_overflow} hold overflow, {c.hold_timeout} timed out",
    ]
    if c.tunnel_decapsulated or c.tunnel_bad_header or c.tunnel_fragments or c.tunnel_untrusted:
        lines.append(
            f"tunnels: {c.tunnel_decapsulated} decapsulated, {c.tunnel_passed} not tunnelled, "
            f"{c.tunnel_untrusted} from sources not in tunnel_peers (passed), "
            f"{c.tunnel_bad_header} bad headers, {c.tunnel_truncated} truncated, "
            f"{c.tunnel_inner_malformed} with a malformed inner IP header; fragments "
            f"{c.tunnel_fragments} ({c.tunnel_reassembled} reassembled, {c.tunnel_frag_limit} "
            f"given up), {c.tunnel_vlan_collisions} VLAN collisions"
        )
    return "\n".join(lines)
