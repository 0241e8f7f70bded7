"""Incremental checksum updates agree with recomputation from scratch."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from normalizer.core.checksum import adjust16, adjust32, checksum, ones_sum


def _reference(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = sum((data[i] << 8) | data[i + 1] for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _equivalent(a: int, b: int) -> bool:
    return a == b or {a, b} == {0, 0xFFFF}


@given(st.binary(max_size=3000))
def test_ones_sum_matches_reference(data: bytes) -> None:
    assert ones_sum(data) == _reference(data) or {ones_sum(data), _reference(data)} == {0, 0xFFFF}


def test_rfc1071_example() -> None:
    # RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
    assert ones_sum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


@given(
    st.binary(min_size=8, max_size=200).filter(lambda b: len(b) % 2 == 0),
    st.integers(0, 2**32 - 1),
    st.integers(0, 50),
)
def test_adjust32_equals_full_recompute(data: bytes, new: int, pos: int) -> None:
    pos = (pos * 2) % (len(data) - 3) // 2 * 2
    old = int.from_bytes(data[pos : pos + 4], "big")
    before = checksum(data)
    changed = data[:pos] + new.to_bytes(4, "big") + data[pos + 4 :]
    assert _equivalent(adjust32(before, old, new), checksum(changed))


@given(
    st.binary(min_size=4, max_size=200).filter(lambda b: len(b) % 2 == 0), st.integers(0, 0xFFFF)
)
def test_adjust16_equals_full_recompute(data: bytes, new: int) -> None:
    old = int.from_bytes(data[:2], "big")
    changed = new.to_bytes(2, "big") + data[2:]
    assert _equivalent(adjust16(checksum(data), old, new), checksum(changed))
