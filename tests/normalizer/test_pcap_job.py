"""The rewrite job: original record lengths, and what reaches the output whatever happens."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from normalizer import encap
from normalizer.frame import LINKTYPE_ETHERNET, LINKTYPE_RAW
from normalizer.options import Options
from normalizer.pcap_job import rewrite_file
from tests.normalizer.packets import Conv
from tests.normalizer.test_engine import V2, conversation

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
