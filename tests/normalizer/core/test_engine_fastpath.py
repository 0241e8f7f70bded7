"""Differential property: the engine's inline fast path and its general path agree byte for byte.

``Normalizer.feed`` decodes untagged Ethernet/IPv4 frames inline (anything else goes through
``locate_tcp``) and shifts the seq/ack of most ACTIVE segments by hand instead of calling
``_rewrite``. The general run feeds the same frames with an 802.1Q tag inserted (so they are
decoded by ``locate_tcp``) to an engine with ``_general_only`` set (so every ACTIVE segment goes
through ``_rewrite``). For random scenarios (header kinds, segmentation, loss, reordering,
retransmission, ISNs near 2**32, SACK, address restoration on and off) both runs must give the
same TCP/IP bytes once the tag is stripped again, and the same counters.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normalizer.core.counters import Counters
from normalizer.core.engine import Normalizer
from normalizer.core.options import Options
from tests.normalizer.core.test_engine_properties import scenarios
from tests.normalizer.packets import PROXY4, Conv

TAG = b"\x81\x00\x00\x64"  # 802.1Q, VLAN 100


def tagged(frame: bytes) -> bytes:
    return frame[:12] + TAG + frame[12:]


def untagged(frame: bytes) -> bytes:
    assert frame[12:16] == TAG
    return frame[:12] + frame[16:]


def run(frames: list[bytes], restore: bool, general: bool) -> tuple[list[bytes], Counters]:
    eng = Normalizer(Options(proxies=(f"{PROXY4}/32",), restore_addresses=restore))
    eng._general_only = general
    for i, fr in enumerate(frames):
        eng.feed(fr, i)
    eng.flush()
    return [bytes(f) for _t, f in eng.drain()], eng.counters


@st.composite
def lossy_scenarios(draw: st.DrawFn) -> list[bytes]:
    conv, header, data, frames = draw(scenarios())
    assert isinstance(conv, Conv)
    n, total = len(header), len(header) + len(data)
    # server data and acks after the header, with SACK blocks over the (wire) client stream
    for _ in range(draw(st.integers(0, 4))):
        ack = draw(st.integers(0, total))
        opts = []
        if draw(st.booleans()):
            left = draw(st.integers(0, total))
            right = draw(st.integers(left, total + 10))
            opts = [("SAck", ((conv.cisn + 1 + left) % 2**32, (conv.cisn + 1 + right) % 2**32))]
        payload = draw(st.binary(max_size=40))
        seg = conv.seg(False, 0, ack, payload, "PA" if payload else "A", options=opts)
        frames.insert(draw(st.integers(3, len(frames))), seg)
    # loss: any frame after the SYN may go missing, the SYN too, rarely
    keep = draw(st.lists(st.booleans(), min_size=len(frames), max_size=len(frames)))
    lossy = [fr for fr, k in zip(frames, keep, strict=True) if k or draw(st.booleans())]
    # the client's tail after the header, acked by the server
    if n and draw(st.booleans()):
        lossy.append(conv.seg(True, total, 0, b"tail", "PA"))
    return lossy


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lossy_scenarios(), st.booleans())
def test_fast_path_equals_general_path(frames: list[bytes], restore: bool) -> None:
    fast, fast_counters = run(frames, restore, general=False)
    general, general_counters = run([tagged(f) for f in frames], restore, general=True)
    assert [untagged(f) for f in general] == fast
    assert fast_counters == general_counters


def test_the_general_run_really_takes_the_general_path() -> None:
    """Without this the property above could compare the fast path with itself."""
    calls = 0

    class Counting(Normalizer):
        def _rewrite(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
            nonlocal calls
            calls += 1
            super()._rewrite(*args, **kwargs)  # type: ignore[arg-type]

    c = Conv()
    frames = [*c.handshake(), c.seg(True, 0, 0, b"PROXY UNKNOWN\r\nGET /", "PA")]
    frames += [c.seg(False, 0, 20), c.seg(True, 20, 0, b"more", "PA")]
    for general in (False, True):
        calls = 0
        eng = Counting(Options(proxies=(f"{PROXY4}/32",)))
        eng._general_only = general
        for i, fr in enumerate(tagged(f) if general else f for f in frames):
            eng.feed(fr, i)
        assert eng.counters.rewritten == len(frames)
        # inline: only the four held frames went through _rewrite; general: all of them
        assert calls == (len(frames) if general else 4)
