"""Round-trip property: normalizing a proxied conversation yields the header-free streams.

For random header kinds, payloads, segmentations (header alone, coalesced, split), initial
sequence numbers near 2**32, retransmissions, overlapping re-segmentation and reordering, the
client->server stream reassembled from the output must equal the application data, every frame
must carry valid checksums, and every server ack must point into the header-free stream.
"""

from __future__ import annotations

import itertools
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normalizer.core.engine import Normalizer
from normalizer.core.frame import locate_tcp
from normalizer.core.options import Options
from normalizer.proxy_headers import custom, proxy_v1, proxy_v2
from normalizer.proxy_headers.base import Tlv
from tests.normalizer.packets import PROXY4, Conv, assert_valid, client_stream

ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["v1", "v2", "v2tlv", "custom", "local"]))
    fam6 = draw(st.booleans())
    src, dst = draw(v6 if fam6 else v4), draw(v6 if fam6 else v4)
    sp, dp = draw(ports), draw(ports)
    if kind == "v1":
        return proxy_v1.build(src, dst, sp, dp)
    if kind == "custom":
        return custom.build(src, dst, sp, dp)
    if kind == "local":
        return proxy_v2.build(command="LOCAL", family="UNSPEC")
    tlvs: list[Tlv] = []
    if kind == "v2tlv":
        tlvs = [Tlv(0x02, b"decoy.example"), Tlv(0xE1, draw(st.binary(max_size=300)))]
    return proxy_v2.build(
        command="PROXY",
        family="TCP6" if fam6 else "TCP4",
        src=src,
        dst=dst,
        sport=sp,
        dport=dp,
        tlvs=tlvs,
        with_crc32c=kind == "v2tlv",
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Conv, bytes, bytes, list[bytes]]:
    header = draw(headers())
    data = draw(st.binary(min_size=0, max_size=2000))
    near_wrap = st.integers(2**32 - 3000, 2**32 - 1)
    conv = Conv(
        cisn=draw(st.one_of(near_wrap, st.integers(0, 2**32 - 1))),
        sisn=draw(st.integers(0, 2**32 - 1)),
        client=PROXY4,
    )
    stream = header + data
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=12))))
    bounds = [0, *[c for c in cuts if 0 < c < len(stream)], len(stream)]
    segs = list(itertools.pairwise(bounds))
    # retransmissions with new boundaries, possibly overlapping the header
    for _ in range(draw(st.integers(0, 3))):
        a = draw(st.integers(0, len(stream)))
        b = draw(st.integers(a, len(stream)))
        if b > a:
            segs.insert(draw(st.integers(0, len(segs))), (a, b))
    frames = [conv.seg(True, a, 0, stream[a:b], "PA") for a, b in segs]
    frames = draw(st.permutations(frames)) if draw(st.booleans()) else frames
    # server acks interleaved: cumulative acks of what was sent, with a SACK block sometimes
    acked = draw(st.lists(st.integers(0, len(stream)), max_size=4))
    for i, a in enumerate(acked):
        frames.insert(min(len(frames), i * 2 + 1), conv.seg(False, 0, a))
    frames = conv.handshake() + frames + [conv.seg(True, len(stream), 0, flags="FA")]
    return conv, header, data, frames


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_normalized_stream_equals_plain_stream(s: tuple[Conv, bytes, bytes, list[bytes]]) -> None:
    conv, _header, data, frames = s
    eng = Normalizer(Options(proxies=(f"{PROXY4}/32",), restore_addresses=False))
    for i, fr in enumerate(frames):
        eng.feed(fr, i)
    eng.flush()
    out = [bytes(f) for _t, f in eng.drain()]
    c = eng.counters
    assert c.headers_stripped and sum(c.headers_stripped.values()) == 1
    assert c.unaccounted(eng.held_packets) == 0 and c.packets_out > 0
    for fr in out:
        assert_valid(fr)
    assert client_stream(out, conv) == data
    for fr in out:
        f = locate_tcp(fr)
        assert f is not None
        if int.from_bytes(fr[f.tcp : f.tcp + 2], "big") == conv.sport and fr[f.tcp + 13] & 0x10:
            ack = struct.unpack_from("!I", fr, f.tcp + 8)[0]
            off = (ack - conv.cisn - 1) % 2**32
            assert off <= len(data) + 1  # acks point into the header-free stream
