"""Runs the core over a capture file and writes the rebuilt capture: the ``rewrite`` command.

The output is written to a temporary file beside the target and renamed only on success, so a
full disk or a corrupt input never leaves a half-written file under the requested name. The new
file gets the permissions a file created under the process umask gets (or those of the file it
replaces), not the temporary file's 0600. An output that exists and is not a regular file (a
pipe, a terminal, ``/dev/stdout``, a device) is written in place: replacing it would destroy
it. A symlink to a regular file is kept; its target is replaced.

Every OSError names the path it concerns: a read error the input, anything else (a missing
directory, ENOSPC, EIO on write) the output as the user named it, never the temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from normalizer.adapters import pcap_batch
from normalizer.adapters.pcap_io import (
    CaptureReader,
    PcapError,
    PcapngWriter,
    PcapWriter,
    writer_for,
)
from normalizer.core.counters import Counters
from normalizer.core.options import Options
from normalizer.core.pipeline import EventSink, Pipeline, ResumeSource, TunnelSink

_BATCH = 4096
_BUFFER = 1 << 20


def named(exc: OSError, path: Path | str) -> OSError:
    """``exc`` about ``path`` (same errno and text; the original stays as its cause)."""
    out = OSError(exc.errno, exc.strerror or str(exc), str(path))
    out.__cause__ = exc
    return out


STDIO = Path("-")  # input from stdin, output to stdout


class _Input:
    """The input file (stdin for ``-``): read errors (EIO on a failing disk) name it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fh = os.fdopen(os.dup(0), "rb") if path == STDIO else path.open("rb")
        except OSError as exc:
            raise named(exc, path) from None

    def read(self, n: int = -1) -> bytes:
        try:
            return self._fh.read(n)
        except OSError as exc:
            raise named(exc, self.path) from None

    def readinto(self, b: memoryview) -> int:
        try:
            return self._fh.readinto(b)
        except OSError as exc:
            raise named(exc, self.path) from None

    def tell(self) -> int:
        return self._fh.tell()

    def close(self) -> None:
        self._fh.close()


class _Output:
    """Where the rebuilt capture goes (see the module docstring); errors name ``dst``."""

    def __init__(self, dst: Path) -> None:
        self.dst = dst
        self._tmp: str | None = None
        if dst == STDIO:  # stdout, whatever it is (a pipe, or a file the shell opened)
            self._target = dst
            self._fh = os.fdopen(os.dup(1), "wb", buffering=_BUFFER)
            return
        try:
            st: os.stat_result | None = os.stat(dst)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise named(exc, dst) from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), str(dst))
        try:
            if st is not None and not stat.S_ISREG(st.st_mode):  # a pipe, tty, device: in place
                self._target = dst
                self._fh = dst.open("wb", buffering=_BUFFER)  # closed by commit or abort
                return
            self._target = Path(os.path.realpath(dst)) if dst.is_symlink() else dst
            directory = self._target.parent if str(self._target.parent) else Path(".")
            fd, self._tmp = tempfile.mkstemp(
                prefix=f".{self._target.name}.", suffix=".part", dir=directory
            )
            os.fchmod(fd, stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask())
            self._fh = os.fdopen(fd, "wb", buffering=_BUFFER)
        except OSError as exc:
            self.abort()
            raise named(exc, dst) from None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            raise named(exc, self.dst) from None

    def writelines(self, parts: Iterable[bytes | bytearray]) -> None:
        try:
            self._fh.writelines(parts)
        except OSError as exc:
            raise named(exc, self.dst) from None

    def commit(self) -> None:
        """Flush and put the file in place."""
        try:
            self._fh.close()
            if self._tmp is not None:
                os.replace(self._tmp, self._target)
                self._tmp = None
        except OSError as exc:
            raise named(exc, self.dst) from None

    def abort(self) -> None:
        """Give up: the temporary file goes (an in-place output keeps what was written)."""
        fh = getattr(self, "_fh", None)
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None


def write_text(path: Path, text: str) -> None:
    """``path.write_text`` whose errors name ``path`` (a full disk fails in write, unnamed)."""
    try:
        path.write_text(text)
    except OSError as exc:
        raise named(exc, path) from None


def _umask() -> int:
    """The process umask (os.umask can only be read by setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def rewrite_file(
    src: Path,
    dst: Path,
    options: Options,
    progress: Callable[[int, int], None] | None = None,
    on_events: EventSink | None = None,
    resume: ResumeSource | None = None,
    on_tunnels: TunnelSink | None = None,
    fmt: str = "pcap",
) -> Counters:
    """Normalize ``src`` into ``dst`` (``-``: stdin, stdout) as ``fmt`` ("pcap" or "pcapng").
    Raises PcapError / OSError (naming the file it concerns); a regular ``dst`` is untouched
    then, except after a PcapError: the packets before the corrupt record are written."""
    try:
        size = 0 if src == STDIO else src.stat().st_size
    except OSError as exc:
        raise named(exc, src) from None
    make_writer = writer_for(fmt)
    gc_was_enabled = gc.isenabled()
    # The loop allocates a tuple per packet but never a reference cycle; the cyclic collector
    # would only rescan the flow table over and over (about 15% of the run time).
    gc.disable()
    fin = _Input(src)
    out: _Output | None = None
    try:
        out = _Output(dst)
        if fmt == "pcap" and src != STDIO and pcap_batch.applies(src, options):
            # the compiled engine, whole chunks of pcap records per call
            counters, failure = pcap_batch.run(
                fin, out, str(src), options, progress, size, on_events, resume
            )
            out.commit()
            if failure is not None:
                raise failure
            return counters
        reader = CaptureReader(fin, "stdin" if src == STDIO else str(src))
        pipe: Pipeline | None = None
        writer: PcapWriter | PcapngWriter | None = None
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
                    writer = make_writer(out, pipe.linktype, reader.nanosecond)
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
            writer = make_writer(out, pipe.linktype, reader.nanosecond)
        pipe.flush()
        write_out()
        out.commit()
        if error is not None:
            raise error
        return pipe.counters
    except BaseException:
        if out is not None:
            out.abort()
        raise
    finally:
        fin.close()
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
