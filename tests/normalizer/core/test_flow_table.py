"""The bounded flow table: oldest-first eviction in O(1), against an ordered reference."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from normalizer.core.flow_table import _SLACK, FlowTable


class Probe:
    """A table value that counts how often the table reads its key: eviction's work."""

    reads = 0

    def __init__(self, name: int) -> None:
        self.name = name
        self._key = b""

    @property
    def key(self) -> bytes:
        Probe.reads += 1
        return self._key

    @key.setter
    def key(self, value: bytes) -> None:
        self._key = value


ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 30)),
        st.tuples(st.just("pop"), st.integers(0, 30)),
        st.tuples(st.just("oldest"), st.just(0)),
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 12))
def test_same_outcomes_as_an_ordered_dict(script: list[tuple[str, int]], size: int) -> None:
    """put (replacing moves to the young end), pop, pop_oldest: as an OrderedDict does."""
    table: FlowTable[Probe] = FlowTable(size)
    model: OrderedDict[bytes, Probe] = OrderedDict()
    for n, (op, k) in enumerate(script):
        key = bytes((k,))
        if op == "put":
            if key not in model and table.is_full():
                assert table.pop_oldest() == model.popitem(last=False)
            value = Probe(n)
            table.put(key, value)
            model.pop(key, None)
            model[key] = value
        elif op == "pop":
            assert table.pop(key) is model.pop(key, None)
        elif model:
            assert table.pop_oldest() == model.popitem(last=False)
        assert list(table) == list(model.items())
        assert len(table._order) - len(table) <= len(table) // 4 + _SLACK + 1


def test_a_flood_at_a_full_table_inspects_each_entry_once() -> None:
    """The SYN-flood shape: every new flow evicts the oldest, while other flows expire. Each
    eviction looks at the live oldest plus stale entries it skips, and each entry is looked at
    once, so the work is bounded by the insertions (before: a dict walk over every slot
    deleted in front of the oldest, about 7x a normal packet per evicting SYN)."""
    size, flood = 2000, 20_000
    table: FlowTable[Probe] = FlowTable(size)
    for i in range(size):
        table.put(i.to_bytes(4, "big"), Probe(i))
    Probe.reads = 0
    evictions = 0
    for i in range(size, size + flood):
        if i % 3 == 0:  # an idle flow expires somewhere in the middle
            table.pop((i - size // 2).to_bytes(4, "big"))
        if table.is_full():
            key, old = table.pop_oldest()
            assert key == old._key
            evictions += 1
        table.put(i.to_bytes(4, "big"), Probe(i))
    assert evictions > flood // 2
    assert Probe.reads <= size + flood  # each queue entry inspected at most once
    assert len(table._order) - len(table) <= len(table) // 4 + _SLACK
