"""paced_gc: automatic collection off while enriching, a full one every 65536 lines, and the
previous state back afterwards (so memory stays bounded even if a cycle ever appears)."""

from __future__ import annotations

import gc
import weakref

from eve_enricher.runner import paced_gc


class _Node:
    def __init__(self) -> None:
        self.me = self


def test_cycles_are_collected_on_schedule_and_gc_state_restored() -> None:
    assert gc.isenabled()
    with paced_gc() as collect:
        assert not gc.isenabled()
        ref = weakref.ref(_Node())  # a cycle: only the collector frees it
        collect(1000)
        assert ref() is not None  # not yet: 1000 lines
        collect(1 << 16)
        assert ref() is None
    assert gc.isenabled()
