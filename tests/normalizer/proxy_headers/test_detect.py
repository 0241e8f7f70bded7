"""Dispatch among the enabled header kinds by signature, and nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normalizer.proxy_headers import custom, proxy_v1, proxy_v2
from normalizer.proxy_headers.base import HeaderError, NeedMore, ProxyHeader
from normalizer.proxy_headers.detect import ALL_KINDS, HeaderKind, parse_header

from .streamcheck import check_prefixes

V1 = proxy_v1.build("203.0.113.7", "198.51.100.1", 51000, 80)
V2 = proxy_v2.build(src="203.0.113.7", dst="198.51.100.1", sport=51000, dport=80)
CUSTOM = custom.build("203.0.113.7", "198.51.100.1", 51000, 80)
HEADERS = {HeaderKind.PROXY_V1: V1, HeaderKind.PROXY_V2: V2, HeaderKind.CUSTOM: CUSTOM}
APP = b"GET / HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize("kind", list(HeaderKind))
def test_dispatch_by_signature(kind: HeaderKind) -> None:
    h = parse_header(HEADERS[kind] + APP)
    assert isinstance(h, ProxyHeader)
    assert (h.kind, h.length, h.src_addr, h.dst_port) == (
        kind.value,
        len(HEADERS[kind]),
        "203.0.113.7",
        80,
    )
    assert parse_header(HEADERS[kind], frozenset({kind})) == h


@pytest.mark.parametrize(
    ("buf", "need"),
    [
        (b"", 6),  # the shortest enabled signature decides
        (b"P", 6),
        (b"PROXY", 6),
        (b"\r", 12),
        (b"\r\n\r\n\x00\r\nQUIT", 12),
        (b"\x8a", 8),
        (b"\x8aGW1\r\n\x1a", 8),
    ],
)
def test_need_more_on_signature_prefix(buf: bytes, need: int) -> None:
    assert parse_header(buf) == NeedMore(need)


def test_need_more_after_signature_comes_from_the_codec() -> None:
    assert parse_header(V2[:13]) == NeedMore(16)
    assert parse_header(CUSTOM[:12]) == NeedMore(24)
    assert parse_header(V1[:10]) == NeedMore(11)


def test_codec_errors_propagate() -> None:
    with pytest.raises(HeaderError, match="unknown protocol"):
        parse_header(b"PROXY X")
    with pytest.raises(HeaderError, match="version"):
        parse_header(V2[:12] + b"\x11")


def test_error_names_enabled_kinds() -> None:
    with pytest.raises(HeaderError, match=r"\(custom, proxy-v1, proxy-v2\)"):
        parse_header(APP)
    with pytest.raises(HeaderError, match=r"\(proxy-v2\)$"):
        parse_header(APP, frozenset({HeaderKind.PROXY_V2}))
    with pytest.raises(HeaderError, match=r"\(none\)"):
        parse_header(b"", frozenset())


@pytest.mark.parametrize("disabled", list(HeaderKind))
def test_disabled_kind_is_not_parsed(disabled: HeaderKind) -> None:
    enabled = ALL_KINDS - {disabled}
    with pytest.raises(HeaderError, match="does not start with an enabled header signature"):
        parse_header(HEADERS[disabled] + APP, enabled)
    with pytest.raises(HeaderError):  # not even a prefix of it is waited for
        parse_header(HEADERS[disabled][:3], enabled)
    for kind in enabled:
        h = parse_header(HEADERS[kind], enabled)
        assert isinstance(h, ProxyHeader) and h.kind == kind.value


def test_custom_magic_is_used_for_dispatch() -> None:
    magic = b"\xf0GATEWAY"
    hdr = custom.build("192.0.2.1", "192.0.2.2", 1, 2, magic=magic)
    h = parse_header(hdr, custom_magic=magic)
    assert isinstance(h, ProxyHeader) and h.kind == "custom"
    assert parse_header(magic[:4], custom_magic=magic) == NeedMore(8)
    with pytest.raises(HeaderError):
        parse_header(CUSTOM, custom_magic=magic)  # the default magic is no longer recognised


kinds = st.sets(st.sampled_from(list(HeaderKind))).map(frozenset)
streams = st.one_of(
    st.binary(max_size=60),
    st.tuples(st.sampled_from(list(HEADERS.values())), st.binary(max_size=20)).map(
        lambda t: t[0] + t[1]
    ),
    st.tuples(
        st.sampled_from(list(HEADERS.values())), st.integers(0, 40), st.binary(max_size=20)
    ).map(lambda t: t[0][: t[1]] + t[2]),
)


@settings(deadline=None)
@given(streams, kinds)
def test_contract_on_arbitrary_bytes(data: bytes, enabled: frozenset[HeaderKind]) -> None:
    result = check_prefixes(lambda b: parse_header(b, enabled), data)
    if isinstance(result, ProxyHeader):
        assert HeaderKind(result.kind) in enabled
