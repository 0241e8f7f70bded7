"""AF_PACKET capture through a TPACKET_V3 memory-mapped ring: the ``live`` command's input.

Why a V3 ring: the kernel writes frames into shared blocks and hands a whole block over at once,
so the hot path makes one ``poll()`` per block instead of one ``recv()`` per packet; at 1 Gbit/s
of 1448-byte segments that is ~85,000 system calls a second saved. Frames are copied out of the
block (one slice each) and the block is given back by writing TP_STATUS_KERNEL into its status
word -- the protocol is the kernel's Documentation/networking/packet_mmap.rst.

Direction: on a bridge PORT (the lab's ``sg``, production's proxy-side port) every frame is seen
exactly once: client->server frames arrive as PACKET_HOST/OTHERHOST, server->client frames leave
as PACKET_OUTGOING. Both directions are needed, so outgoing frames are kept by default;
``ignore_outgoing`` exists for setups that capture on several ports of one bridge (or on the
bridge device and a port), where each forwarded frame would otherwise be seen twice.

Bridge device: a Linux bridge hands frames it forwards from port to port (decoy to decoy, or a
proxy behind a port) to a socket bound to the bridge device only while the bridge is
promiscuous. The socket therefore joins with a PACKET_MR_PROMISC membership, which the kernel
counts per socket and drops when the socket closes (nothing to undo after a crash). On the
bridge device each frame is seen once: sent by the host (OUTGOING), to the host (HOST), or
forwarded (OTHERHOST). One capture there serves every decoy behind the bridge.

Checksum offload: frames the host sends, or receives from a VM or veth that offloads, carry a
partial TCP/UDP checksum (the pseudo-header sum only) and are flagged TP_STATUS_CSUMNOTREADY.
With ``complete_partial`` their checksums are computed in full here (offload.py), edited or not,
so the core's incremental updates stay exact and Suricata, validating checksums, accepts them.
Frames larger than the MTU (GSO/GRO super-frames) are kept whole: the tap's MTU takes them and
Suricata inspects them as the large segments they are.

VLAN: with VLAN offload the kernel strips the 802.1Q tag into the ring header; the tag is put
back into the frame (as libpcap does) so the core sees what was on the wire.

Drops are never silent: PACKET_STATISTICS (tpacket_stats_v3) is read on every ``stats()`` call
(the kernel resets it on read, so it is accumulated here), frames longer than a block are
counted as truncated.
"""

from __future__ import annotations

import ctypes
import mmap
import socket
import struct
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from normalizer.core.offload import complete
from normalizer.core.wire import ETH_8021Q

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
ETH_P_ALL = 0x0003
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_CSUMNOTREADY = 0x8
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status,
# num_pkts, offset_to_first_pkt, blk_len, seq_num (u64), ts_first, ts_last.
BLOCK_STATUS_OFF = 8
BLOCK_SEQ_OFF = (
    24  # tpacket_hdr_v1.seq_num (aligned u64): the kernel numbers blocks as it opens them
)
_BLOCK = struct.Struct("=III")  # block_status, num_pkts, offset_to_first_pkt at offset 8
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac,
# tp_net, then hv1: tp_rxhash, tp_vlan_tci, tp_vlan_tpid.
_PKT = struct.Struct("=IIIIIIHHIIH")
_REQ3 = struct.Struct("=IIIIIII")  # tpacket_req3
_STATS3 = struct.Struct("=III")  # tp_packets, tp_drops, tp_freeze_q_cnt
_VLAN = struct.Struct("!HH")
_MREQ = struct.Struct("=iHH8s")  # struct packet_mreq: ifindex, type, alen, address

Captured = tuple[int, bytes]  # (timestamp in ns since the epoch, frame)


class CaptureError(OSError):
    """The capture socket could not be set up (no such interface, no CAP_NET_RAW, bad filter)."""


@dataclass(slots=True)
class RingStats:
    """Accumulated counters: what the kernel received/dropped and what we copied out."""

    kernel_packets: int = 0  # packets the kernel passed the filter (received + dropped)
    kernel_drops: int = 0  # packets lost because the ring was full
    kernel_freezes: int = 0  # times the ring was frozen (all blocks owned by user space)
    frames: int = 0  # frames handed to the caller
    truncated: int = 0  # frames longer than fit in a block (tp_len > tp_snaplen)
    blocks: int = 0
    csum_not_ready: int = 0  # frames the kernel flagged CSUMNOTREADY (offloaded checksums)
    csum_completed: int = 0  # of those, checksums computed in full here
    oversize: int = 0  # frames larger than an Ethernet MTU of 1500 (GSO/GRO super-frames)
    max_frame: int = 0  # the largest frame seen


def parse_block(
    buf: bytes | bytearray | memoryview | mmap.mmap,
    base: int,
    stats: RingStats | None = None,
    complete_partial: bool = True,
) -> list[Captured]:
    """Frames of the ring block that starts at ``base`` in ``buf`` (status must be USER).

    Pure (no socket): unit tests feed it synthetic blocks. Tags stripped by VLAN offload are
    reinserted after the MAC addresses; frames flagged CSUMNOTREADY get complete checksums
    when ``complete_partial`` is set.
    """
    _, num, first = _BLOCK.unpack_from(buf, base + BLOCK_STATUS_OFF)
    out: list[Captured] = []
    append = out.append
    unpack = _PKT.unpack_from
    off = base + first
    cut = partial = completed = big = 0
    biggest = 0
    for _ in range(num):
        nxt, sec, nsec, snaplen, length, status, mac, _net, _hash, tci, tpid = unpack(buf, off)
        start = off + mac
        frame = bytes(buf[start : start + snaplen])
        if length != snaplen:
            cut += 1
        if length > 1514:
            big += 1
            biggest = max(biggest, length)
        if status & TP_STATUS_VLAN_VALID:
            proto = tpid if status & TP_STATUS_VLAN_TPID_VALID and tpid else ETH_8021Q
            frame = frame[:12] + _VLAN.pack(proto, tci) + frame[12:]
        if status & TP_STATUS_CSUMNOTREADY:
            partial += 1
            if complete_partial:
                fixed = complete(frame)
                if fixed is not None:
                    frame = bytes(fixed)
                    completed += 1
        append((sec * 1_000_000_000 + nsec, frame))
        off += nxt
    if stats is not None:
        stats.truncated += cut
        stats.csum_not_ready += partial
        stats.csum_completed += completed
        stats.oversize += big
        stats.max_frame = max(stats.max_frame, biggest)
    return out


def first_timestamp(buf: bytes | bytearray | memoryview | mmap.mmap, base: int) -> int | None:
    """Timestamp (ns) of the first frame of the ring block at ``base``; None if it is empty."""
    _, num, first = _BLOCK.unpack_from(buf, base + BLOCK_STATUS_OFF)
    if not num:
        return None
    _nxt, sec, nsec = struct.unpack_from("=III", buf, base + first)
    return int(sec * 1_000_000_000 + nsec)


def compile_bpf(expression: str, iface: str) -> list[tuple[int, int, int, int]]:
    """Classic BPF for ``expression`` via ``tcpdump -ddd`` (decimal: count, then code jt jf k).

    Why tcpdump: it is libpcap's compiler, already installed with the lab, and gives exactly
    the program tcpdump itself would attach for the interface's link type.
    """
    p = subprocess.run(
        ["tcpdump", "-ddd", "-i", iface, expression], capture_output=True, text=True, check=False
    )
    if p.returncode != 0:
        raise CaptureError(f"BPF filter {expression!r}: {p.stderr.strip()}")
    return parse_ddd(p.stdout)


def parse_ddd(text: str) -> list[tuple[int, int, int, int]]:
    """Parse ``tcpdump -ddd`` output into (code, jt, jf, k) instructions."""
    lines = [ln.split() for ln in text.strip().splitlines() if ln.strip()]
    if not lines or len(lines[0]) != 1:
        raise CaptureError(f"unexpected tcpdump -ddd output: {text[:80]!r}")
    count = int(lines[0][0])
    prog = [(int(a), int(b), int(c), int(d)) for a, b, c, d in lines[1:]]
    if len(prog) != count:
        raise CaptureError(f"tcpdump -ddd announced {count} instructions, gave {len(prog)}")
    return prog


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter)))


def attach_filter(sock: socket.socket, prog: Sequence[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program, so the ctypes buffers may go after."""
    arr = (_SockFilter * len(prog))(*(_SockFilter(*ins) for ins in prog))
    fprog = _SockFprog(len(prog), ctypes.cast(arr, ctypes.POINTER(_SockFilter)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


class RingCapture:
    """One AF_PACKET socket with a TPACKET_V3 RX ring on ``iface``.

    ``read(timeout_ms)`` waits (poll) until at least one block is ready, then returns the frames
    of every ready block in ring order and gives those blocks back to the kernel.
    """

    def __init__(
        self,
        iface: str,
        *,
        block_size: int = 1 << 20,
        block_count: int = 64,
        block_timeout_ms: int = 10,
        bpf: str | None = None,
        fanout_group: int | None = None,
        ignore_outgoing: bool = False,
        promisc: bool = True,
        complete_partial: bool = True,
    ) -> None:
        self.iface = iface
        self.complete_partial = complete_partial
        self.promisc = False  # whether the membership was taken
        self.stats_acc = RingStats()
        self._block_size = block_size
        self._block_count = block_count
        self._next = 0
        try:
            # Protocol 0: no frame is queued before the ring and filter exist; bind() starts it.
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError as exc:
            raise CaptureError(f"AF_PACKET socket: {exc} (needs CAP_NET_RAW)") from None
        try:
            s = self.sock
            s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame_size = 2048  # only used to size frame_nr; V3 packs frames of any size
            req = _REQ3.pack(
                block_size,
                block_count,
                frame_size,
                block_size // frame_size * block_count,
                block_timeout_ms,
                0,
                0,
            )
            s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.ring = mmap.mmap(
                s.fileno(),
                block_size * block_count,
                mmap.MAP_SHARED,
                mmap.PROT_READ | mmap.PROT_WRITE,
            )
            if bpf:
                attach_filter(s, compile_bpf(bpf, iface))
            if ignore_outgoing:
                s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            s.bind((iface, ETH_P_ALL))
            if promisc:
                ifindex = socket.if_nametoindex(iface)
                mreq = _MREQ.pack(ifindex, PACKET_MR_PROMISC, 0, b"")
                s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
                self.promisc = True
            if fanout_group is not None:
                # An unsigned int: the DEFRAG flag sets bit 31, past what an int argument takes.
                mode = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG
                arg = struct.pack("=I", (fanout_group & 0xFFFF) | (mode << 16))
                s.setsockopt(SOL_PACKET, PACKET_FANOUT, arg)
        except OSError as exc:
            self.sock.close()
            if isinstance(exc, CaptureError):
                raise
            raise CaptureError(f"AF_PACKET on {iface}: {exc.strerror or exc}") from None

    def fileno(self) -> int:
        return self.sock.fileno()

    def resync(self) -> bool:
        """Point at the oldest block user space owns (lowest sequence number); True if one is.

        For a ring another process read before (``live --workers``: a restarted worker takes
        over the ring its predecessor left): where that one stopped is not known here, and the
        kernel hands blocks over strictly in sequence order.
        """
        ring, size = self.ring, self._block_size
        oldest: tuple[int, int] | None = None
        for i in range(self._block_count):
            base = i * size
            if ring[base + BLOCK_STATUS_OFF] & TP_STATUS_USER:
                (seq,) = struct.unpack_from("=Q", ring, base + BLOCK_SEQ_OFF)
                if oldest is None or seq < oldest[0]:
                    oldest = (seq, i)
        if oldest is None:
            return False
        self._next = oldest[1]
        return True

    def remap(self) -> None:
        """Map the ring again (a forked worker that closed every inherited descriptor but the
        socket's: the old mapping's private descriptor went with them)."""
        self.ring = mmap.mmap(
            self.sock.fileno(),
            self._block_size * self._block_count,
            mmap.MAP_SHARED,
            mmap.PROT_READ | mmap.PROT_WRITE,
        )

    def ready(self) -> bool:
        """Whether the next block in ring order belongs to user space (no system call)."""
        return bool(self.ring[self._next * self._block_size + BLOCK_STATUS_OFF] & TP_STATUS_USER)

    def drain(self) -> list[Captured]:
        """Frames of all blocks ready now, without waiting."""
        out: list[Captured] = []
        ring, size, count = self.ring, self._block_size, self._block_count
        st = self.stats_acc
        for _ in range(count):
            base = self._next * size
            if not ring[base + BLOCK_STATUS_OFF] & TP_STATUS_USER:
                break
            out += parse_block(ring, base, st, self.complete_partial)
            # Give the block back: the kernel fills blocks strictly in order.
            ring[base + BLOCK_STATUS_OFF : base + BLOCK_STATUS_OFF + 4] = b"\0\0\0\0"
            st.blocks += 1
            self._next = (self._next + 1) % count
        st.frames += len(out)
        return out

    def drain_into(self, consume: Callable[[mmap.mmap, int, bool, RingStats], int]) -> int:
        """Hand every block ready now to ``consume(ring, base, complete_partial, stats)``
        (``Pipeline.push_block``) before giving it back; returns the frames consumed."""
        ring, size, count = self.ring, self._block_size, self._block_count
        st = self.stats_acc
        n = 0
        for _ in range(count):
            base = self._next * size
            if not ring[base + BLOCK_STATUS_OFF] & TP_STATUS_USER:
                break
            n += consume(ring, base, self.complete_partial, st)
            ring[base + BLOCK_STATUS_OFF : base + BLOCK_STATUS_OFF + 4] = b"\0\0\0\0"
            st.blocks += 1
            self._next = (self._next + 1) % count
        st.frames += n
        return n

    def stats(self) -> RingStats:
        """Fold the kernel's counters (reset on every read) into the running totals."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS3.size)
        packets, drops, freezes = _STATS3.unpack(raw)
        st = self.stats_acc
        st.kernel_packets += packets
        st.kernel_drops += drops
        st.kernel_freezes += freezes
        return st

    def close(self) -> None:
        self.ring.close()
        self.sock.close()
