"""The TPACKET_V3 block walk on synthetic blocks laid out as the kernel writes them.

Why synthetic: the ring layout (block descriptor, tpacket3_hdr chain, tp_mac offsets, VLAN
offload fields) is what could silently go wrong, and a buffer pins it without root.
"""

from __future__ import annotations

import struct

import pytest

from normalizer.adapters.afpacket import (
    BLOCK_SEQ_OFF,
    BLOCK_STATUS_OFF,
    TP_STATUS_USER,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    CaptureError,
    RingCapture,
    RingStats,
    parse_block,
    parse_ddd,
)

MAC = 66  # tp_mac as the kernel sets it: TPACKET_ALIGN(hdr) + sockaddr_ll, rounded


def make_block(
    packets: list[tuple[int, int, bytes, int, int, int, int]], base_pad: int = 0
) -> bytearray:
    """(sec, nsec, frame, wire_len, status, tci, tpid) -> one block at offset ``base_pad``."""
    buf = bytearray(base_pad + 48)
    first = 48
    struct.pack_into("=IIIII", buf, base_pad, 1, 0, TP_STATUS_USER, len(packets), first)
    for i, (sec, nsec, frame, wire_len, status, tci, tpid) in enumerate(packets):
        off = len(buf)
        size = (MAC + len(frame) + 15) & ~15
        last = i == len(packets) - 1
        hdr = struct.pack(
            "=IIIIIIHHIIH",
            0 if last else size,
            sec,
            nsec,
            len(frame),
            wire_len,
            status,
            MAC,
            MAC + 14,
            0,
            tci,
            tpid,
        )
        buf += hdr + bytes(MAC - len(hdr)) + frame + bytes(size - MAC - len(frame))
        assert len(buf) == off + size
    return buf


def eth(payload: bytes) -> bytes:
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + payload


def test_frames_and_nanosecond_timestamps_in_order() -> None:
    a, b = eth(b"A" * 50), eth(b"B" * 1500)
    buf = make_block([(100, 5, a, len(a), 1, 0, 0), (101, 999_999_999, b, len(b), 1, 0, 0)])
    assert parse_block(buf, 0) == [(100_000_000_005, a), (101_999_999_999, b)]


def test_block_at_an_offset_and_from_a_memoryview() -> None:
    a = eth(b"x" * 10)
    buf = make_block([(1, 2, a, len(a), 1, 0, 0)], base_pad=4096)
    assert parse_block(memoryview(buf), 4096) == [(1_000_000_002, a)]


def test_offloaded_vlan_tag_is_put_back() -> None:
    a = eth(b"p" * 20)
    buf = make_block(
        [
            (1, 0, a, len(a), TP_STATUS_VLAN_VALID, 42, 0),
            (1, 1, a, len(a), TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID, 7, 0x88A8),
        ]
    )
    (_, f1), (_, f2) = parse_block(buf, 0)
    assert f1 == a[:12] + b"\x81\x00\x00\x2a" + a[12:]
    assert f2 == a[:12] + b"\x88\xa8\x00\x07" + a[12:]


def test_truncated_frames_are_counted() -> None:
    a = eth(b"t" * 100)
    stats = RingStats()
    buf = make_block([(1, 0, a, 9000, 1, 0, 0), (1, 0, a, len(a), 1, 0, 0)])
    assert [f for _, f in parse_block(buf, 0, stats)] == [a, a]
    assert stats.truncated == 1


def test_empty_block() -> None:
    assert parse_block(make_block([]), 0) == []


def test_parse_tcpdump_ddd() -> None:
    assert parse_ddd("2\n40 0 0 12\n6 0 0 262144\n") == [(40, 0, 0, 12), (6, 0, 0, 262144)]
    with pytest.raises(CaptureError):
        parse_ddd("3\n40 0 0 12\n")
    with pytest.raises(CaptureError):
        parse_ddd("tcpdump: syntax error")


def test_csum_not_ready_frames_get_complete_checksums_and_are_counted() -> None:
    """TP_STATUS_CSUMNOTREADY (tx offload): the field holds the pseudo-header sum only."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    from normalizer.adapters.afpacket import TP_STATUS_CSUMNOTREADY
    from normalizer.core.checksum import pseudo_header_sum
    from normalizer.core.offload import Verdict, verdict

    good = bytes(Ether() / IP(src="192.0.2.1", dst="192.0.2.2") / TCP(flags="PA") / b"GET /")
    tcp_len = len(good) - 34
    pseudo = pseudo_header_sum(good[26:30], good[30:34], 6, tcp_len).to_bytes(2, "big")
    partial = good[:50] + pseudo + good[52:]
    assert verdict(partial) is Verdict.PARTIAL
    big = partial + bytes(0)  # the same frame, flagged as the oversize GSO case below is not
    block = make_block(
        [
            (1, 0, partial, len(partial), TP_STATUS_CSUMNOTREADY, 0, 0),
            (1, 1, good, len(good), 0, 0, 0),
            (1, 2, big, 9000, TP_STATUS_CSUMNOTREADY, 0, 0),  # GSO-sized wire length, cut
        ]
    )
    stats = RingStats()
    out = parse_block(block, 0, stats)
    assert out[0][1] == good
    assert out[1][1] == good
    assert (stats.csum_not_ready, stats.csum_completed) == (2, 2)
    assert (stats.oversize, stats.max_frame, stats.truncated) == (1, 9000, 1)
    kept = parse_block(block, 0, RingStats(), complete_partial=False)
    assert kept[0][1] == partial


def _ring(blocks: list[tuple[int, int]], size: int = 64) -> RingCapture:
    """A RingCapture over plain memory: (status, seq_num) per block, no socket."""
    cap = RingCapture.__new__(RingCapture)
    mem = bytearray(size * len(blocks))
    for i, (status, seq) in enumerate(blocks):
        struct.pack_into("=I", mem, i * size + BLOCK_STATUS_OFF, status)
        struct.pack_into("=Q", mem, i * size + BLOCK_SEQ_OFF, seq)
    cap.ring, cap._block_size, cap._block_count, cap._next = mem, size, len(blocks), 0  # type: ignore[assignment]
    return cap


def test_resync_points_at_the_oldest_block_user_space_owns() -> None:
    # A successor's view of a ring: the kernel wrapped around, blocks 2, 3 and 0 handed over.
    cap = _ring([(TP_STATUS_USER, 13), (0, 10), (TP_STATUS_USER, 11), (TP_STATUS_USER, 12)])
    assert cap.resync() and cap._next == 2
    assert cap.ready()


def test_resync_without_a_user_block_leaves_the_position() -> None:
    cap = _ring([(0, 5), (0, 6), (0, 7)])
    cap._next = 1
    assert not cap.resync() and cap._next == 1
