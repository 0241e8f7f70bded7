"""The rewrite job: original record lengths, and what reaches the output whatever happens."""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from normalizer.adapters.pcap_io import CaptureReader
from normalizer.commands.rewrite import rewrite_file
from normalizer.core.frame import LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_RAW
from normalizer.core.options import Options
from normalizer.proxy_headers import proxy_v1
from tests import encap
from tests.normalizer.core.test_engine import V2, conversation
from tests.normalizer.packets import Conv

Record = tuple[bytes, int]  # (captured bytes, original length)
PROXIED = Options(proxies=("192.0.2.1/32",), restore_addresses=False)


def _write(path: Path, records: list[Record], linktype: int = LINKTYPE_ETHERNET) -> None:
    with path.open("wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
        for i, (frame, orig) in enumerate(records):
            fh.write(struct.pack("<IIII", 1_700_000_000, i, len(frame), orig) + frame)


def _records(path: Path) -> list[Record]:
    data, out, pos = path.read_bytes(), [], 24
    while pos < len(data):
        _s, _u, cap, orig = struct.unpack_from("<IIII", data, pos)
        out.append((data[pos + 16 : pos + 16 + cap], orig))
        pos += 16 + cap
    return out


def test_untouched_frames_keep_their_record_lengths_next_to_cut_proxied_frames(
    tmp_path: Path,
) -> None:
    """Issue 11, class 8: original lengths sat in a table keyed by id(frame). A cut proxied
    frame is rewritten into a new object, the old one freed, its id reused by a later frame,
    which then got the cut frame's original length (200 of these 300 frames before)."""
    records: list[Record] = []
    untouched: list[Record] = []
    for i in range(100):
        for f in conversation(Conv(cport=20000 + i), V2, coalesce=False):
            records.append((f, len(f) + 4))  # cut by the capture (say, the FCS)
        other = [(f, len(f)) for f in Conv(client="192.0.2.77", cport=30000 + i).handshake()]
        records += other
        untouched += other
    _write(tmp_path / "in.pcap", records)
    rewrite_file(tmp_path / "in.pcap", tmp_path / "out.pcap", PROXIED)
    out = _records(tmp_path / "out.pcap")
    other = bytes((192, 0, 2, 77))
    assert [r for r in out if other in (r[0][26:30], r[0][30:34])] == untouched
    assert all(orig >= len(f) for f, orig in out)


@pytest.mark.parametrize("decap", [False, True], ids=["plain", "decap"])
@pytest.mark.parametrize("linktype", [LINKTYPE_ETHERNET, LINKTYPE_RAW], ids=["eth", "raw"])
def test_cut_frames_passed_untouched_keep_their_original_length(
    tmp_path: Path, decap: bool, linktype: int
) -> None:
    """Including with --decap (before: every original length dropped). On a raw-IP input with
    --decap the frames get an Ethernet header: their original length grows with it."""
    frames = [f[:60] for f in conversation(Conv(client="192.0.2.77"), b"", coalesce=True)]
    frames.append(encap.udp_frame(b"d" * 300, "10.1.0.1", "10.1.0.2", 53, 53)[:80])
    if linktype == LINKTYPE_RAW:
        frames = [f[14:] for f in frames]
    records = [(f, len(f) + 100) for f in frames]
    _write(tmp_path / "in.pcap", records, linktype)
    peers = ("10.9.0.0/24",) if decap else ()
    opts = Options(proxies=("192.0.2.1/32",), decapsulate=decap, tunnel_peers=peers)
    rewrite_file(tmp_path / "in.pcap", tmp_path / "out.pcap", opts)
    grown = 14 if decap and linktype == LINKTYPE_RAW else 0
    assert [o for _f, o in _records(tmp_path / "out.pcap")] == [o + grown for _f, o in records]


# -- the output link type says what is in it (issue 11, class 10) --------------------------------


@pytest.mark.parametrize("restore", [True, False], ids=["restored", "kept"])
def test_ipv4_linktype_input_restored_to_ipv6_is_written_as_raw_ip(
    tmp_path: Path, restore: bool
) -> None:
    """LINKTYPE_IPV4 (228) promises IPv4 only; an IPv6 client restored over an IPv4 hop makes
    IPv6 packets, so the output is LINKTYPE_RAW (101), byte-identical IPv4 frames included."""
    hdr = proxy_v1.build("2001:db8:a::10", "2001:db8:a::1", 51000, 443)
    frames = [f[14:] for f in conversation(Conv(), hdr, coalesce=True)]
    _write(tmp_path / "in.pcap", [(f, len(f)) for f in frames], LINKTYPE_IPV4)
    opts = Options(proxies=("192.0.2.1/32",), restore_addresses=restore)
    rewrite_file(tmp_path / "in.pcap", tmp_path / "out.pcap", opts)
    with (tmp_path / "out.pcap").open("rb") as fh:
        reader = CaptureReader(fh)
        out = [f for _t, f, _o in reader]
    assert reader.linktype == (LINKTYPE_RAW if restore else LINKTYPE_IPV4)
    versions = {f[0] >> 4 for f in out}
    assert versions == ({6} if restore else {4})


# -- the output file: permissions, pipes and devices, paths in errors (class 10) ------------------


def _capture(path: Path) -> list[bytes]:
    frames = conversation(Conv(), V2, coalesce=True)
    _write(path, [(f, len(f)) for f in frames])
    return frames


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077], ids=["022", "027", "002", "077"])
def test_a_new_output_gets_the_permissions_of_the_umask(tmp_path: Path, mask: int) -> None:
    _capture(tmp_path / "in.pcap")
    old = os.umask(mask)
    try:
        rewrite_file(tmp_path / "in.pcap", tmp_path / "out.pcap", PROXIED)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.pcap").stat().st_mode) == 0o666 & ~mask


def test_a_replaced_output_keeps_its_permissions_and_a_symlink_stays(tmp_path: Path) -> None:
    _capture(tmp_path / "in.pcap")
    target, link = tmp_path / "target.pcap", tmp_path / "link.pcap"
    target.write_bytes(b"old")
    target.chmod(0o640)
    link.symlink_to(target)
    rewrite_file(tmp_path / "in.pcap", link, PROXIED)
    assert link.is_symlink() and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert target.read_bytes()[:4] == b"\xd4\xc3\xb2\xa1"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_an_output_that_is_a_pipe_is_written_in_place(tmp_path: Path) -> None:
    """``-o /dev/stdout`` as root replaced the /dev/stdout symlink with a regular file. Here a
    private symlink to the child's stdout (a pipe) stands in for it."""
    src = tmp_path / "in.pcap"
    frames = _capture(src)
    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")
    argv = [
        "rewrite",
        str(src),
        "-o",
        str(stdout),
        "--proxy",
        "192.0.2.1",
        "-q",
        "--keep-addresses",
    ]
    code = "import sys; from normalizer.cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, timeout=120, cwd=os.getcwd()
    )
    assert p.returncode == 0, p.stderr
    assert stdout.is_symlink() and os.readlink(stdout) == "/proc/self/fd/1"
    got = [f for _t, f, _o in CaptureReader(io.BytesIO(p.stdout))]
    assert len(got) == len(frames) and got[0] == frames[0]  # the SYN passes as captured


def test_an_output_that_is_a_fifo_stays_one(tmp_path: Path) -> None:
    src, fifo = tmp_path / "in.pcap", tmp_path / "fifo"
    frames = _capture(src)
    os.mkfifo(fifo)
    got: list[bytes] = []

    def drain() -> None:
        with fifo.open("rb") as fh:
            got.append(fh.read())

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    rewrite_file(src, fifo, PROXIED)
    reader.join(30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert len(list(CaptureReader(io.BytesIO(got[0])))) == len(frames)


def test_errors_name_the_output_not_its_temporary_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from normalizer.cli import main

    src = tmp_path / "in.pcap"
    _capture(src)
    missing = tmp_path / "no-such-dir" / "out.pcap"
    assert main(["rewrite", str(src), "-o", str(missing), "--proxy", "192.0.2.1", "-q"]) == 1
    err = capsys.readouterr().err
    assert f"No such file or directory: {missing}" in err and ".part" not in err
    full = tmp_path / "full"  # a device that is always full, behind a link of our own
    full.symlink_to("/dev/full")
    assert main(["rewrite", str(src), "-o", str(full), "--proxy", "192.0.2.1", "-q"]) == 1
    err = capsys.readouterr().err
    assert f"No space left on device: {full}" in err and "Traceback" not in err
    assert full.is_symlink()


@pytest.mark.root
def test_a_full_output_filesystem_names_the_output_and_leaves_nothing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    src, small = tmp_path / "in.pcap", tmp_path / "small"
    frames = conversation(Conv(), V2, coalesce=True) * 200
    _write(src, [(f, len(f)) for f in frames])
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(OSError) as info:
            rewrite_file(src, small / "out.pcap", PROXIED)
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(small / "out.pcap")
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


@pytest.mark.parametrize("mode", ["fix", "auto"])
def test_frames_whose_checksums_are_completed_keep_their_original_length(
    tmp_path: Path, mode: str
) -> None:
    """--checksums fix (or auto on a partial checksum) copies the frame; a frame captured
    without its trailer keeps its original length through that copy."""
    frames = conversation(Conv(client="192.0.2.77"), b"", coalesce=True)
    if mode == "auto":  # a partial checksum, as an offloading sender leaves it
        frames = [offload_partial(f) for f in frames]
    records = [(f, len(f) + 4) for f in frames]
    _write(tmp_path / "in.pcap", records)
    opts = Options(proxies=("192.0.2.1/32",), checksums=mode)
    c = rewrite_file(tmp_path / "in.pcap", tmp_path / "out.pcap", opts)
    assert c.as_dict()["checksum_completed"] == len(frames)
    assert [o for _f, o in _records(tmp_path / "out.pcap")] == [o for _f, o in records]


def offload_partial(frame: bytes) -> bytes:
    """The TCP checksum field holding only the pseudo-header sum (tx offload)."""
    from normalizer.core.checksum import ones_sum, pseudo_header_sum

    out = bytearray(frame)
    size = len(frame) - 34
    partial = pseudo_header_sum(frame[26:30], frame[30:34], 6, size)
    out[50:52] = (ones_sum(partial.to_bytes(4, "big")) & 0xFFFF).to_bytes(2, "big")
    return bytes(out)
