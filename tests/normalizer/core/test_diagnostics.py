"""The tally of untrusted SYN sources that names the proxy a user probably meant to trust."""

from __future__ import annotations

import ipaddress

from normalizer.core.diagnostics import SourceTally
from normalizer.core.engine import Normalizer
from normalizer.core.options import Options
from tests.normalizer.packets import Conv


def _a(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def test_top_sources_ranked_and_bounded() -> None:
    t = SourceTally(limit=2)
    for addr, n in (("10.0.0.1", 3), ("10.0.0.2", 5), ("10.0.0.3", 7)):
        for _ in range(n):
            t.add(_a(addr))
    assert t.top() == [("10.0.0.2", 5), ("10.0.0.1", 3)]  # the third never got a slot
    assert t.others == 7 and len(t) == 15


def test_engine_tallies_syns_of_untrusted_sources_only() -> None:
    eng = Normalizer(Options(proxies=("192.0.2.1/32",)))
    wrong = Conv(client="192.0.2.9")
    right = Conv()
    for i, fr in enumerate(wrong.handshake() + right.handshake() + wrong.handshake()):
        eng.feed(fr, i)
    assert eng.untrusted_syns.top() == [("192.0.2.9", 2)]  # SYN/ACKs and ACKs are not counted
    assert eng.counters.flows_created == 1
