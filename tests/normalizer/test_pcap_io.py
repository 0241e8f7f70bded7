"""Capture files in and out: pcap (both byte orders, us/ns) and pcapng, with clear errors."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import PcapNgWriter, wrpcap

from normalizer.pcap_io import CaptureReader, PcapError, PcapWriter

FRAMES = [bytes(Ether() / IP() / TCP(sport=i) / (b"x" * i)) for i in range(1, 6)]


def _read(data: bytes) -> list[tuple[int, bytes, int]]:
    return list(CaptureReader(io.BytesIO(data)))


@pytest.mark.parametrize("nano", [False, True])
def test_round_trip(nano: bool) -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf, 1, nanosecond=nano)
    for i, f in enumerate(FRAMES):
        w.write(1_700_000_000_123_456_789 + i, f)
    got = _read(buf.getvalue())
    assert [g[1] for g in got] == FRAMES
    expected_ts = 1_700_000_000_123_456_789 if nano else 1_700_000_000_123_456_000
    assert got[0][0] == expected_ts


def test_big_endian_pcap() -> None:
    head = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    rec = struct.pack(">IIII", 5, 6, len(FRAMES[0]), len(FRAMES[0])) + FRAMES[0]
    assert _read(head + rec) == [(5_000_006_000, FRAMES[0], len(FRAMES[0]))]


def test_pcapng_from_scapy(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    pkts = [Ether(f) for f in FRAMES]
    for i, p in enumerate(pkts):
        p.time = 1_700_000_000 + i / 4
    with PcapNgWriter(str(path)) as w:
        for p in pkts:
            w.write(p)
    with path.open("rb") as fh:
        r = CaptureReader(fh)
        got = list(r)
    assert r.format == "pcapng" and r.linktype == 1
    assert [g[1] for g in got] == FRAMES
    assert got[1][0] == 1_700_000_000_250_000_000


def test_scapy_pcap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "s.pcap"
    wrpcap(str(path), [Ether(f) for f in FRAMES])
    with path.open("rb") as fh:
        assert [g[1] for g in CaptureReader(fh)] == FRAMES


def test_truncated_file_yields_complete_records_then_errors() -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf, 1)
    for f in FRAMES:
        w.write(0, f)
    data = buf.getvalue()[:-3]
    got: list[bytes] = []
    with pytest.raises(PcapError, match="truncated record"):
        for _ts, f, _o in CaptureReader(io.BytesIO(data)):
            got.append(f)
    assert got == FRAMES[:-1]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello world, not a capture", "not a pcap"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147), "unsupported link type"),
        (struct.pack("<IHH", 0xA1B2C3D4, 2, 4), "truncated pcap file header"),
    ],
)
def test_bad_files_have_clear_errors(data: bytes, message: str) -> None:
    with pytest.raises(PcapError, match=message):
        _read(data)


def test_corrupt_record_length() -> None:
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    with pytest.raises(PcapError, match="corrupt"):
        _read(head + struct.pack("<IIII", 0, 0, 0xFFFFFFF0, 10))
