"""Per-flow outcomes (``Normalizer(..., outcomes=True)``): one ``FlowOutcome`` per tracked flow,
saying whether its header was stripped or why the flow was left as captured."""

from __future__ import annotations

import pytest

from normalizer.core.engine import Normalizer
from normalizer.core.options import Options
from normalizer.proxy_headers.detect import HeaderKind
from tests.normalizer.core.test_engine import REQ, RESP, V1, V2, conversation
from tests.normalizer.packets import NS, PROXY4, Conv


def _run(frames: list[bytes], outcomes: bool = True, **opts: object) -> Normalizer:
    eng = Normalizer(Options(proxies=(f"{PROXY4}/32",), **opts), outcomes=outcomes)  # type: ignore[arg-type]
    for i, fr in enumerate(frames):
        eng.feed(fr, i * NS // 1000)
    eng.flush()
    eng.drain()
    return eng


def test_stripped_flow_outcome_names_wire_tuple_and_header() -> None:
    c = Conv()
    eng = _run(conversation(c, V2, coalesce=True))
    (o,) = eng.drain_outcomes()
    assert o.outcome == "stripped" and o.header is not None and o.header.length == len(V2)
    assert o.client == (c.client, c.cport) and o.server[1] == c.sport
    assert o.header_bytes >= len(V2) and eng.outcomes == []


@pytest.mark.parametrize(
    ("payload", "kinds", "outcome", "detail"),
    [
        (REQ, None, "no-header", ""),
        (V2 + REQ, frozenset({HeaderKind.PROXY_V1}), "excluded", "proxy-v2"),
        (V1 + REQ, frozenset({HeaderKind.PROXY_V2, HeaderKind.CUSTOM}), "excluded", "proxy-v1"),
        (b"PROXY TCP9 x\r\n" + REQ, None, "malformed", "PROXY v1: unknown protocol"),
    ],
)
def test_passed_flow_says_why(
    payload: bytes, kinds: frozenset[HeaderKind] | None, outcome: str, detail: str
) -> None:
    c = Conv()
    frames = c.handshake() + [
        c.seg(True, 0, 0, payload, "PA"),
        c.seg(False, 0, len(payload), RESP, "PA"),
    ]
    eng = _run(frames, **({"header_kinds": kinds} if kinds else {}))
    (o,) = eng.drain_outcomes()
    assert o.outcome == outcome and o.detail.startswith(detail) and o.header is None


def test_missing_and_truncated() -> None:
    c = Conv()
    ended = c.handshake() + [c.seg(True, 0, 0, flags="FA")]
    assert [o.outcome for o in _run(ended).outcomes] == ["missing"]
    c = Conv(cport=40002)
    cut = c.handshake() + [c.seg(True, 0, 0, V2[:10], "PA")]
    (o,) = _run(cut).outcomes
    assert (o.outcome, o.header_bytes) == ("truncated", 10)


def test_off_by_default_and_bounded() -> None:
    assert _run(conversation(Conv(), V1, coalesce=True), outcomes=False).outcomes == []
    frames = []
    for i in range(5):
        frames += conversation(Conv(cport=41000 + i), V1, coalesce=True)
    eng = _run(frames, max_pending_events=3)
    assert len(eng.outcomes) == 3
