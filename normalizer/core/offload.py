"""Checksums that survive the kernel's offloads: what a frame needs before Suricata sees it.

Why this exists: on the host that owns the decoys' bridge, tx checksum offload is on by default.
A locally sent segment (the proxy's, and the decoys' through their veths or VM taps) is handed
to AF_PACKET -- and to tcpdump, whose pcaps record it -- before any NIC computed its checksum:
the TCP/UDP field holds only the folded pseudo-header sum (CHECKSUM_PARTIAL). The ring marks
such frames TP_STATUS_CSUMNOTREADY. Adjusting that field incrementally, as the rewriting core
does, keeps it wrong; Suricata validating checksums then drops every frame. So a partial
checksum is completed here, in full, before the core sees the frame, and the core's
incremental updates stay exact from then on.

Modes (``checksums`` in the config, ``--checksums``):

* ``keep``: frames go on as captured.
* ``auto`` (default): complete the checksums of frames that are partial -- live, the ring's
  CSUMNOTREADY flag says which (see afpacket.py); in files, the field holding exactly the
  pseudo-header sum does (measured here: every offloaded frame, GSO frames included, has that
  signature), confirmed by a full sum. Any other wrong checksum is left wrong: the receiver
  dropped that segment, so Suricata must not inspect it (correcting it would hand attackers an
  insertion evasion: data the decoy never accepted, reassembled by the IDS). The signature
  test reads 10 bytes, so ``auto`` costs no pass over the payload of ordinary frames.
* ``fix``: recompute every checksum (IPv4 header, TCP, UDP) of every complete frame.

Truncated captures and fragments cannot be summed; they are passed as they are and counted.
The arithmetic uses the fact that a one's complement sum of 16-bit words is congruent to the
words' concatenation modulo 0xFFFF (see checksum.adjust32), so one ``int.from_bytes`` and one
modulo replace a Python loop over the words.
"""

from __future__ import annotations

from enum import Enum

from normalizer.core.frame import LINKTYPE_ETHERNET, locate_l4, replaced
from normalizer.core.wire import IPPROTO_TCP as _TCP
from normalizer.core.wire import IPPROTO_UDP as _UDP

CHECKSUM_MODES = ("keep", "auto", "fix")
_CSUM_AT = {_TCP: 16, _UDP: 6}  # checksum field offset within the transport header


class Verdict(Enum):
    """What a frame's checksums say, and so what ``auto`` does with it."""

    VALID = "valid"  # every checksum right (or UDP over IPv4 without one)
    PARTIAL = "partial"  # an offload's pseudo-header sum: completed by auto and fix
    BAD = "bad"  # wrong and not partial: left as it is by auto
    UNCHECKED = "unchecked"  # not TCP/UDP over IP, a fragment, or cut short by the capture


def _mod(data: bytes | bytearray | memoryview) -> int:
    """The one's complement sum of ``data`` as 16-bit big-endian words, modulo 0xFFFF."""
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    return n % 0xFFFF


def _pseudo(frame: bytes | bytearray, ip: int, proto: int, length: int) -> int:
    addrs = frame[ip + 12 : ip + 20] if frame[ip] >> 4 == 4 else frame[ip + 8 : ip + 40]
    return (_mod(addrs) + proto + length) % 0xFFFF


def _store(residue: int) -> int:
    """The field value for a sum (other fields) congruent to ``residue``: 0 when it is 0."""
    return 0xFFFF - residue if residue else 0


def verdict(frame: bytes | bytearray, linktype: int = LINKTYPE_ETHERNET) -> Verdict:
    """Classify a frame's IP and transport checksums without changing it."""
    f = locate_l4(frame, linktype)
    if f is None or f.proto not in _CSUM_AT or f.end > len(frame):
        return Verdict.UNCHECKED
    ip, l4, end, proto = f.ip, f.l4, f.end, f.proto
    at = l4 + _CSUM_AT[proto]
    if at + 2 > end:
        return Verdict.UNCHECKED
    field = (frame[at] << 8) | frame[at + 1]
    v4 = frame[ip] >> 4 == 4
    ip_ok = not v4 or _mod(frame[ip:l4]) == 0
    if proto == _UDP and v4 and field == 0:
        return Verdict.VALID if ip_ok else Verdict.BAD
    pseudo = _pseudo(frame, ip, proto, end - l4)
    if (pseudo + _mod(frame[l4:end])) % 0xFFFF == 0:
        return Verdict.VALID if ip_ok else Verdict.BAD
    if field % 0xFFFF == pseudo and ip_ok:
        return Verdict.PARTIAL
    return Verdict.BAD


def complete(frame: bytes | bytearray, linktype: int = LINKTYPE_ETHERNET) -> bytearray | None:
    """A copy of ``frame`` with its IPv4 header and TCP/UDP checksums computed in full.

    None when the frame cannot be summed (not TCP/UDP over IP, a fragment, truncated): the
    caller passes it as it is. The values are the ones checksum.checksum() gives, byte for byte.
    """
    f = locate_l4(frame, linktype)
    if f is None or f.proto not in _CSUM_AT or f.end > len(frame):
        return None
    ip, l4, end, proto = f.ip, f.l4, f.end, f.proto
    at = l4 + _CSUM_AT[proto]
    if at + 2 > end:
        return None
    out = bytearray(frame)
    if out[ip] >> 4 == 4:
        out[ip + 10 : ip + 12] = b"\0\0"
        c = _store(_mod(out[ip:l4]))
        out[ip + 10] = c >> 8
        out[ip + 11] = c & 0xFF
    out[at : at + 2] = b"\0\0"
    c = _store((_pseudo(out, ip, proto, end - l4) + _mod(out[l4:end])) % 0xFFFF)
    if proto == _UDP and c == 0:
        c = 0xFFFF  # RFC 768: a computed zero is sent as all ones; zero means "none"
    out[at] = c >> 8
    out[at + 1] = c & 0xFF
    return out


def looks_partial(frame: bytes | bytearray, linktype: int = LINKTYPE_ETHERNET) -> bool:
    """Whether the transport checksum field holds exactly the pseudo-header sum.

    Cheap (no pass over the payload): it is what lets ``auto`` run on every frame. A right
    checksum equals that value about once in 65535 frames; ``verdict`` then tells them apart.
    """
    # Ethernet + IPv4 without options + TCP, the common case, inline (a fragment or a cut frame
    # that passes this test is refused by ``verdict``).
    if (
        linktype == LINKTYPE_ETHERNET
        and frame[12:15] == b"\x08\x00\x45"
        and len(frame) >= 54
        and frame[23] == _TCP
    ):
        end = 14 + ((frame[16] << 8) | frame[17])
        pseudo = (int.from_bytes(frame[26:34], "big") + _TCP + end - 34) % 0xFFFF
        return ((frame[50] << 8) | frame[51]) % 0xFFFF == pseudo
    f = locate_l4(frame, linktype)
    if f is None or f.proto not in _CSUM_AT or f.end > len(frame):
        return False
    at = f.l4 + _CSUM_AT[f.proto]
    if at + 2 > f.end:
        return False
    field = (frame[at] << 8) | frame[at + 1]
    return field % 0xFFFF == _pseudo(frame, f.ip, f.proto, f.end - f.l4)


class ChecksumStats:
    """Counts of what the policy did; folded into the engine's counters by the pipeline.

    ``auto`` does not sum every frame (that would cost as much as the rest of the rewrite):
    frames without the offload signature are "kept", right or wrong; Suricata counts the wrong
    ones itself (``tcp.invalid_checksum``), and ``test-rules`` reports them.
    """

    __slots__ = ("completed", "kept", "unchecked")

    def __init__(self) -> None:
        self.completed = 0  # partial (auto) or any complete frame (fix): recomputed in full
        self.kept = 0  # auto: no offload signature (or a right checksum that looked like one)
        self.unchecked = 0  # fix: could not be summed (not TCP/UDP over IP, fragment, cut)


class ChecksumPolicy:
    """Applies one mode to frames on their way into the core."""

    def __init__(self, mode: str, linktype: int) -> None:
        if mode not in CHECKSUM_MODES:
            raise ValueError(f"checksum mode {mode!r} is not one of {', '.join(CHECKSUM_MODES)}")
        self.mode = mode
        self.linktype = linktype
        self.stats = ChecksumStats()

    def apply(self, frame: bytes) -> bytes:
        """The frame to feed the core: bytes, since the core keys its flow table by slices."""
        st = self.stats
        if self.mode == "fix":
            out = complete(frame, self.linktype)
            if out is None:
                st.unchecked += 1
                return frame
            st.completed += 1
            return replaced(frame, out)
        if looks_partial(frame, self.linktype) and verdict(frame, self.linktype) is Verdict.PARTIAL:
            fixed = complete(frame, self.linktype)
            assert fixed is not None  # a partial verdict means the frame could be summed
            st.completed += 1
            return replaced(frame, fixed)
        st.kept += 1
        return frame
