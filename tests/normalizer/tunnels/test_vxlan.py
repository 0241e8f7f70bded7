"""VXLAN header codec: RFC 7348 layout, the I flag, VXLAN-GPE, and random input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from normalizer.tunnels import vxlan


def test_layout_matches_rfc7348() -> None:
    # flags 0x08, 24 reserved bits, VNI 0x123456, 8 reserved bits
    assert vxlan.build(0x123456) == bytes.fromhex("08000000 12345600")
    assert vxlan.parse(bytes.fromhex("08000000 12345600") + b"inner") == 0x123456


@given(st.integers(0, (1 << 24) - 1), st.binary(max_size=8))
def test_roundtrip_any_vni_at_any_offset(vni: int, before: bytes) -> None:
    buf = before + vxlan.build(vni) + b"\x00" * 14
    assert vxlan.parse(buf, len(before)) == vni


def test_reserved_bits_are_ignored_as_the_rfc_asks() -> None:
    assert vxlan.parse(bytes.fromhex("8affffff 000001ff")) == 1  # GBP-style G bit, reserved set


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("00000000 00000100", "I flag not set"),
        ("08000000 000001", "truncated"),
        ("0c000001 00000100", "next protocol 1 is not Ethernet"),  # GPE carrying IPv4
    ],
)
def test_rejects(raw: str, why: str) -> None:
    with pytest.raises(vxlan.VxlanError, match=why):
        vxlan.parse(bytes.fromhex(raw))


def test_gpe_carrying_ethernet_is_accepted() -> None:
    assert vxlan.parse(bytes.fromhex("0c000003 00002a00")) == 42


def test_build_refuses_a_vni_wider_than_24_bits() -> None:
    with pytest.raises(ValueError):
        vxlan.build(1 << 24)


@given(st.binary(max_size=16), st.integers(0, 20))
def test_random_bytes_give_a_vni_or_vxlan_error(buf: bytes, off: int) -> None:
    try:
        vni = vxlan.parse(buf, off)
    except vxlan.VxlanError:
        return
    assert 0 <= vni < 1 << 24
