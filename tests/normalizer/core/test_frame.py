"""Locating TCP inside frames of every supported link type, and refusing what cannot be edited."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from normalizer.core import frame as fr
from normalizer.core.frame import locate_tcp


def test_ipv4_with_options_and_padding() -> None:
    pkt = bytes(Ether() / IP(options=b"\x01\x01\x01\x00") / TCP(options=[("MSS", 1460)]))
    pkt += b"\x00" * 6  # Ethernet padding is not part of the IP packet
    f = locate_tcp(pkt)
    assert f is not None
    assert (f.ip, f.tcp, f.payload, f.end) == (14, 38, 62, len(pkt) - 6)


def test_qinq_vlan_ids_are_part_of_the_key() -> None:
    pkt = bytes(Ether() / Dot1AD(vlan=10) / Dot1Q(vlan=20, prio=5) / IP() / TCP() / b"x")
    f = locate_tcp(pkt)
    assert f is not None and f.ip == 22 and f.vlan == bytes([0, 10, 0, 20])


def test_ipv6_extension_headers() -> None:
    pkt = bytes(Ether() / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP() / b"abc")
    f = locate_tcp(pkt)
    assert f is not None and pkt[f.payload : f.end] == b"abc"


def test_refuses_fragments_udp_and_truncation() -> None:
    assert locate_tcp(bytes(Ether() / IP(flags="MF") / TCP())) is None
    assert locate_tcp(bytes(Ether() / IP(frag=10) / TCP())) is None
    assert locate_tcp(bytes(Ether() / IPv6() / IPv6ExtHdrFragment() / TCP())) is None
    assert locate_tcp(bytes(Ether() / IP() / UDP())) is None
    full = bytes(Ether() / IP() / TCP() / (b"y" * 100))
    assert locate_tcp(full[:80]) is None  # snaplen-truncated: cannot fix checksums


def test_other_link_types() -> None:
    ip = bytes(IP() / TCP() / b"z")
    assert locate_tcp(ip, fr.LINKTYPE_RAW) is not None
    assert locate_tcp(b"\x02\x00\x00\x00" + ip, fr.LINKTYPE_NULL) is not None
    sll = b"\x00" * 14 + b"\x08\x00" + ip
    assert locate_tcp(sll, fr.LINKTYPE_LINUX_SLL) is not None
    sll2 = b"\x08\x00" + b"\x00" * 18 + ip
    assert locate_tcp(sll2, fr.LINKTYPE_LINUX_SLL2) is not None


@given(st.binary(max_size=120), st.sampled_from(sorted(fr.SUPPORTED_LINKTYPES)))
def test_random_bytes_never_raise(data: bytes, linktype: int) -> None:
    f = locate_tcp(data, linktype)
    if f is not None:
        assert f.ip < f.tcp < f.payload <= f.end <= len(data)
