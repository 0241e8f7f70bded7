"""GENEVE codec: the RFC 8926 layout, gateway-load-balancer options, validation, random input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from normalizer.tunnels import geneve
from normalizer.tunnels.geneve import GeneveOption

ENI, ATTACH, COOKIE = (
    bytes.fromhex("0a1b2c3d4e5f6071"),
    bytes.fromhex("1122334455667788"),
    b"\xde\xad\xbe\xef",
)
# Hand-assembled from RFC 8926 section 3.4: Ver 0, Opt Len 8 words (3 options: 4+8, 4+8, 4+4
# bytes), O 0, C 0, protocol 0x0800 (inner IPv4, no Ethernet), VNI 0x000abc.
WIRE = bytes.fromhex(
    "08 00 0800 000abc 000108 01 02 0a1b2c3d4e5f60710108 02 02 11223344556677880108 03 01 deadbeef"
)


def test_layout_matches_rfc8926_with_gwlb_options() -> None:
    assert geneve.build(0xABC, geneve.PROTO_IPV4, geneve.aws_options(ENI, ATTACH, COOKIE)) == WIRE
    g = geneve.parse(WIRE + b"\x45")
    assert (g.vni, g.protocol, g.length, g.oam) == (0xABC, 0x0800, 40, False)
    assert geneve.describe(g.options) == {
        "eni_id": ENI.hex(),
        "attachment_id": ATTACH.hex(),
        "flow_cookie": "deadbeef",
    }


def test_unknown_and_odd_options_are_kept_raw() -> None:
    opts = (
        GeneveOption(0x0103, 0x81, b"\x00\x00\x00\x01"),  # someone else's, critical
        GeneveOption(geneve.AWS_CLASS, 3, b"\x00" * 8),  # cookie of the wrong size: not guessed
        GeneveOption(geneve.AWS_CLASS, 9, b""),  # a type we do not know
    )
    raw = geneve.build(5, geneve.PROTO_ETHERNET, opts)
    assert raw[1] & 0x40  # C bit: a critical option is present
    g = geneve.parse(raw)
    assert g.options == opts
    assert geneve.describe(g.options) == {
        "options": [
            {"class": 0x0103, "type": 0x81, "data": "00000001"},
            {"class": 0x0108, "type": 3, "data": "00" * 8},
            {"class": 0x0108, "type": 9, "data": ""},
        ]
    }


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("40 00 6558 000001 00", "version 1"),
        ("01 00 6558 000001 00", "run past the packet"),  # 1 word of options, none present
        ("01 00 6558 000001 00 0108 01 02 00000000", "overruns the option length"),
        ("00 00 0806 000001 00", "protocol type 0x0806"),
        ("00 00 6558 0000", "truncated"),
    ],
)
def test_validation(raw: str, why: str) -> None:
    with pytest.raises(geneve.GeneveError, match=why):
        geneve.parse(bytes.fromhex(raw))


def test_empty_options_fill_the_option_length_exactly() -> None:
    g = geneve.parse(bytes.fromhex("02 00 6558 000001 00 0108 0100 00000000"))
    assert g.options == (GeneveOption(0x0108, 1, b""), GeneveOption(0, 0, b""))


def test_option_header_cut_inside_the_option_length() -> None:
    with pytest.raises(geneve.GeneveError):
        geneve.parse(bytes.fromhex("01 00 6558 000001 00 0108 0101"))  # 4 bytes but cut short


options = st.lists(
    st.builds(
        GeneveOption,
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFF),
        st.integers(0, 31).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
    ),
    max_size=6,
).filter(lambda opts: sum(4 + len(o.data) for o in opts) <= 252)


@given(
    st.integers(0, (1 << 24) - 1),
    st.sampled_from(sorted(geneve.PROTOCOLS)),
    options,
    st.booleans(),
)
def test_roundtrip(vni: int, proto: int, opts: list[GeneveOption], oam: bool) -> None:
    raw = geneve.build(vni, proto, opts, oam=oam)
    g = geneve.parse(raw + b"inner")
    assert (g.vni, g.protocol, g.options, g.oam, g.length) == (
        vni,
        proto,
        tuple(opts),
        oam,
        len(raw),
    )


@given(st.binary(max_size=300))
def test_random_bytes_give_a_header_or_geneve_error(buf: bytes) -> None:
    try:
        g = geneve.parse(buf)
    except geneve.GeneveError:
        return
    assert g.length <= len(buf) and g.protocol in geneve.PROTOCOLS
    geneve.describe(g.options)  # never raises either
