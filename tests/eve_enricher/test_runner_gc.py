"""paced_gc: automatic collection off while enriching, the young generations collected every
65536 lines and everything every 16 times that, and the previous state back afterwards (so
memory stays bounded even if a cycle ever appears)."""

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
        assert ref() is None  # young: the first collection finds it
        node = _Node()
        old = weakref.ref(node)
        gc.collect(1)  # it survives (still referenced) into the oldest generation
        del node  # garbage now, but only a full collection looks there
        for _ in range(14):
            collect(1 << 16)
        assert old() is not None  # young collections leave the oldest generation alone
        collect(1 << 16)
        assert old() is None  # the 16th collection is a full one
    assert gc.isenabled()
