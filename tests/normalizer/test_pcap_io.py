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


def _pcapng(ifaces: list[int], packets: list[tuple[int, bytes]]) -> bytes:
    """A little-endian pcapng: one section, these interface link types, (iface, frame) EPBs."""

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = 12 + len(body)
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    for lt in ifaces:
        out += block(1, struct.pack("<HHI", lt, 0, 0))
    for i, (iface, frame) in enumerate(packets):
        out += block(6, struct.pack("<IIIII", iface, 0, i, len(frame), len(frame)) + frame)
    return out


def test_pcapng_with_mixed_link_types_is_read_as_ethernet() -> None:
    """Wireshark capturing an Ethernet port and a raw-IP tunnel at once: one Ethernet stream."""
    raw_ip = FRAMES[1][14:]
    r = CaptureReader(io.BytesIO(_pcapng([1, 101], [(0, FRAMES[0]), (1, raw_ip)])))
    got = list(r)
    assert r.linktype == 1 and r.converted == 1
    assert got[0][1] == FRAMES[0]
    assert got[1][1][12:14] == b"\x08\x00" and got[1][1][14:] == raw_ip
    assert got[1][2] == len(raw_ip) + 14  # origlen follows the new header


def test_pcapng_interface_of_another_type_after_packets_is_an_error() -> None:
    raw_ip = FRAMES[1][14:]
    data = _pcapng([101], [(0, raw_ip)])
    more = _pcapng([1], [])  # a second section header would reset; splice only its IDB
    idb = more[more.index(struct.pack("<I", 1), 28) :]
    with pytest.raises(PcapError, match="declared after packets"):
        _read(data + idb)
