"""Checksum completion for offloaded captures, against scapy's and our own reference sums.

The frames a host hands AF_PACKET (and tcpdump) with tx checksum offload on hold only the
pseudo-header sum in their TCP/UDP field; these tests build such frames the way the kernel does
(field = folded pseudo-header sum) and check that ``auto`` completes exactly those, ``fix``
recomputes all, and any other wrong checksum is left as it was (an IDS must not inspect a
segment the receiver dropped).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from normalizer.core.checksum import ones_sum, pseudo_header_sum
from normalizer.core.frame import LINKTYPE_ETHERNET, LINKTYPE_RAW, locate_l4
from normalizer.core.offload import ChecksumPolicy, Verdict, complete, verdict
from normalizer.core.options import Options
from normalizer.core.pipeline import Pipeline
from normalizer.proxy_headers.proxy_v1 import build as build_v1
from tests.normalizer.packets import Conv, assert_valid

_CSUM_AT = {6: 16, 17: 6}


def _frame(v6: bool, udp: bool, payload: bytes, vlan: bool = False) -> bytes:
    l2 = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if vlan:
        l2 = l2 / Dot1Q(vlan=7)
    ip = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="192.0.2.1", dst="192.0.2.2")
    l4 = UDP(sport=5353, dport=53) if udp else TCP(sport=40000, dport=80, flags="PA", seq=7)
    return bytes(l2 / ip / l4 / payload)


def _partial(frame: bytes) -> bytes:
    """What tx offload leaves in the field: the folded pseudo-header sum, not complemented."""
    f = locate_l4(frame)
    assert f is not None
    v4 = frame[f.ip] >> 4 == 4
    src = frame[f.ip + 12 : f.ip + 16] if v4 else frame[f.ip + 8 : f.ip + 24]
    dst = frame[f.ip + 16 : f.ip + 20] if v4 else frame[f.ip + 24 : f.ip + 40]
    at = f.l4 + _CSUM_AT[f.proto]
    value = pseudo_header_sum(src, dst, f.proto, f.end - f.l4)
    return frame[:at] + value.to_bytes(2, "big") + frame[at + 2 :]


frames = st.builds(_frame, st.booleans(), st.booleans(), st.binary(max_size=1600), st.booleans())


@given(frames)
def test_complete_restores_what_scapy_computed(frame: bytes) -> None:
    assert verdict(frame) is Verdict.VALID
    partial = _partial(frame)
    assert verdict(partial) is Verdict.PARTIAL
    fixed = complete(partial)
    assert fixed is not None
    assert bytes(fixed) == frame  # scapy's checksums, byte for byte (0xFFFF kept for UDP)
    assert complete(frame) == bytearray(frame)


@given(frames, st.integers(1, 0xFFFE))
def test_other_wrong_checksums_are_bad_not_partial(frame: bytes, delta: int) -> None:
    f = locate_l4(frame)
    assert f is not None
    at = f.l4 + _CSUM_AT[f.proto]
    field = int.from_bytes(frame[at : at + 2], "big")
    partial = int.from_bytes(_partial(frame)[at : at + 2], "big")
    wrong = (field + delta) % 0x10000
    if wrong % 0xFFFF in (field % 0xFFFF, partial % 0xFFFF) or (f.proto == 17 and wrong == 0):
        return  # an equivalent encoding, the offload signature, or "no UDP checksum"
    broken = frame[:at] + wrong.to_bytes(2, "big") + frame[at + 2 :]
    assert verdict(broken) is Verdict.BAD
    policy = ChecksumPolicy("auto", LINKTYPE_ETHERNET)
    assert policy.apply(broken) == broken  # left as the receiver saw it
    assert policy.stats.kept == 1
    fixer = ChecksumPolicy("fix", LINKTYPE_ETHERNET)
    assert fixer.apply(broken) == frame
    assert fixer.stats.completed == 1


def test_bad_ipv4_header_checksum_is_bad_and_fix_repairs_it() -> None:
    frame = bytearray(_frame(False, False, b"GET / HTTP/1.0\r\n\r\n"))
    frame[14 + 10] ^= 0x55
    assert verdict(bytes(frame)) is Verdict.BAD
    fixed = complete(bytes(frame))
    assert fixed is not None
    assert_valid(bytes(fixed))


def test_udp_without_checksum_over_ipv4_is_valid() -> None:
    frame = bytearray(_frame(False, True, b"\x12\x34"))
    frame[14 + 20 + 6 : 14 + 20 + 8] = b"\0\0"
    assert verdict(bytes(frame)) is Verdict.VALID


def test_truncated_fragment_and_non_ip_frames_are_unchecked() -> None:
    frame = _frame(False, False, b"x" * 200)
    assert verdict(frame[:-10]) is Verdict.UNCHECKED
    assert complete(frame[:-10]) is None
    frag = bytes(Ether() / IP(src="192.0.2.1", dst="192.0.2.2", flags="MF") / TCP() / b"abc")
    assert verdict(frag) is Verdict.UNCHECKED
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    assert verdict(arp) is Verdict.UNCHECKED
    policy = ChecksumPolicy("fix", LINKTYPE_ETHERNET)
    assert policy.apply(arp) == arp and policy.stats.unchecked == 1


def test_raw_ip_link_type() -> None:
    frame = _frame(True, False, b"hello")[14:]
    partial = _partial(b"\0" * 12 + b"\x86\xdd" + frame)[14:]
    assert verdict(partial, LINKTYPE_RAW) is Verdict.PARTIAL
    assert complete(partial, LINKTYPE_RAW) == bytearray(frame)


def test_complete_matches_ones_sum_reference_on_odd_lengths() -> None:
    frame = _frame(False, False, b"abc")
    f = locate_l4(frame)
    assert f is not None
    seg = bytearray(frame[f.l4 : f.end])
    assert ones_sum(seg, pseudo_header_sum(frame[26:30], frame[30:34], 6, len(seg))) == 0xFFFF


def _offloaded(frames: list[bytes]) -> list[bytes]:
    return [_partial(fr) for fr in frames]


def test_pipeline_auto_completes_partial_frames_before_the_core_edits_them() -> None:
    """A proxied flow captured on the sending host: every frame partial, as measured there."""
    conv = Conv()
    header = build_v1("198.51.100.10", "198.51.100.1", 51000, 80)
    req = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
    wire = conv.handshake() + [
        conv.seg(True, 0, 0, header, flags="PA"),
        conv.seg(True, len(header), 0, req, flags="PA"),
        conv.seg(False, 0, len(header) + len(req), b"HTTP/1.1 200 OK\r\n\r\n", flags="PA"),
    ]
    outs = {}
    for mode in ("keep", "auto", "fix"):
        pipe = Pipeline(Options(proxies=("192.0.2.1/32",), checksums=mode), LINKTYPE_ETHERNET)
        for i, fr in enumerate(_offloaded(wire)):
            pipe.push(fr, i)
        pipe.flush()
        outs[mode] = [bytes(fr) for _ts, fr in pipe.take()]
        assert pipe.counters.headers_stripped == {"proxy-v1": 1}
    for fr in outs["auto"]:
        assert_valid(fr)
    assert outs["auto"] == outs["fix"]
    c = Pipeline(Options(proxies=("192.0.2.1/32",)), LINKTYPE_ETHERNET)
    for i, fr in enumerate(_offloaded(wire)):
        c.push(fr, i)
    assert c.counters.checksum_completed == len(wire)
    assert c.counters.checksum_kept == 0
    # keep: the core's incremental edits keep every partial checksum wrong
    assert all(verdict(fr) is not Verdict.VALID for fr in outs["keep"])
