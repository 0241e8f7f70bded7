"""Capture files in and out: pcap (both byte orders, us/ns) and pcapng, with clear errors."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import PcapNgWriter, wrpcap

from normalizer.adapters.pcap_io import CaptureReader, PcapError, PcapWriter

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


# -- corrupt pcapng and out-of-range timestamps (issue 11, class 5) ------------------------------


def _block(btype: int, body: bytes, total: int | None = None) -> bytes:
    n = 12 + len(body) if total is None else total
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _idb(options: bytes = b"") -> bytes:
    body = struct.pack("<HHI", 1, 0, 0) + options
    return _block(1, body + b"\0" * (-len(body) % 4))


def _epb(frame: bytes, ticks: int = 0) -> bytes:
    body = struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame))
    body += frame + b"\0" * (-len(frame) % 4)
    return _block(6, body)


_SHB = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
_GOOD = _SHB + _idb() + _epb(FRAMES[0]) + _epb(FRAMES[1])


def _read_until_error(data: bytes) -> tuple[list[bytes], str]:
    got: list[bytes] = []
    with pytest.raises(PcapError) as info:
        for _ts, f, _o in CaptureReader(io.BytesIO(data), "x.pcapng"):
            got.append(f)
    return got, str(info.value)


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (_block(1, b"\0" * 4), "block of type 0x1 claims 16 bytes"),  # IDB body below 8
        (_block(6, b"\0" * 8), "block of type 0x6 claims 20 bytes"),  # EPB body below 20
        (_block(3, b""), "block of type 0x3 claims 12 bytes"),  # SPB without its length
        (struct.pack("<II", 6, 8) + b"\0" * 8, "claims 8 bytes"),  # length below 12
        (struct.pack("<II", 6, 0xFFFFFFF0), "claims 4294967280 bytes"),
        (struct.pack("<II", 6, 30), "claims 30 bytes"),  # not a multiple of 4
        (struct.pack("<IIIIIII", 6, 32, 0, 0, 0, 99, 99) + b"\0" * 4, "claims 99 bytes"),
        (_block(0x0A0D0D0A, b"\x4d\x3c\x2b\x1a", total=8), "claims 8 bytes"),  # SHB below 12
        (_block(0x0A0D0D0A, b"\x4d\x3c\x2b\x1a"), "claims 16 bytes"),  # SHB without version
    ],
    ids=["idb", "epb", "spb", "below-12", "huge", "odd", "epb-caplen", "shb-8", "shb-16"],
)
def test_corrupt_pcapng_blocks_end_with_a_clear_error_after_the_good_packets(
    tail: bytes, message: str
) -> None:
    got, error = _read_until_error(_GOOD + tail + _epb(FRAMES[2]))
    assert got == FRAMES[:2]
    assert error.startswith("x.pcapng: ") and message in error


@pytest.mark.parametrize(
    ("options", "ticks"),
    [
        (struct.pack("<HHq", 14, 8, -(2**40)), 0),  # if_tsoffset far before 1970
        (struct.pack("<HHq", 14, 8, -1), 0),  # one second before the epoch
        (struct.pack("<HHB3x", 9, 1, 0), 1 << 40),  # if_tsresol 10^0: one tick per second
        (struct.pack("<HHB3x", 9, 1, 0x80), 1 << 33),  # 2^0: one tick per second
        (struct.pack("<HHq", 14, 8, 2**62), 0),  # far past 2106
    ],
    ids=["offset-2^40", "offset-1", "resol-10^0", "resol-2^0", "offset-2^62"],
)
def test_pcapng_timestamps_outside_the_output_range_are_corrupt(options: bytes, ticks: int) -> None:
    epb = struct.pack("<IIIII", 1, ticks >> 32, ticks & 0xFFFFFFFF, 0, 0)
    data = _GOOD + _idb(options) + _block(6, epb)
    got, error = _read_until_error(data)
    assert got == FRAMES[:2] and "outside 1970..2106" in error


def test_pcapng_options_running_past_their_block_are_read_as_far_as_they_go() -> None:
    cut = struct.pack("<HH", 9, 1)  # if_tsresol claiming a byte the block does not have
    data = _SHB + _block(1, struct.pack("<HHI", 1, 0, 0) + cut) + _epb(FRAMES[0], 5)
    [(ts, frame, _o)] = _read(data)
    assert frame == FRAMES[0] and ts == 5000  # the default resolution: microseconds


def test_pcap_fraction_beyond_the_last_representable_second_is_corrupt() -> None:
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    good = struct.pack("<IIII", 0xFFFFFFFF, 999_999, len(FRAMES[0]), len(FRAMES[0])) + FRAMES[0]
    bad = struct.pack("<IIII", 0xFFFFFFFF, 0xFFFFFFFF, len(FRAMES[1]), len(FRAMES[1])) + FRAMES[1]
    got, error = _read_until_error(head + good + bad)
    assert got == [FRAMES[0]] and "timestamp 4294967295.4294967295" in error


@pytest.mark.parametrize(
    "tail",
    [
        _block(6, b"\0" * 8),
        _idb(struct.pack("<HHq", 14, 8, -5)) + _block(6, struct.pack("<IIIII", 1, 0, 0, 0, 0)),
    ],
    ids=["short-epb", "negative-offset"],
)
def test_rewrite_of_a_corrupt_pcapng_writes_the_packets_before_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tail: bytes
) -> None:
    from normalizer.cli import main

    src, dst = tmp_path / "in.pcapng", tmp_path / "out.pcap"
    src.write_bytes(_GOOD + tail)
    assert main(["rewrite", str(src), "-o", str(dst), "--proxy", "192.0.2.1", "-q"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(src) in err and str(dst) in err
    with dst.open("rb") as fh:
        assert [f for _t, f, _o in CaptureReader(fh)] == FRAMES[:2]
