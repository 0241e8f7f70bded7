"""The flow state table itself: every state x event pair has an entry or raises, in one place."""

from __future__ import annotations

import itertools

import pytest

from normalizer.core.counters import Counters
from normalizer.core.flow_state import (
    TRANSITIONS,
    Drop,
    Event,
    GiveUp,
    InvalidTransition,
    State,
    step,
)

ALL_PAIRS = list(itertools.product(State, Event))


def test_expired_is_final() -> None:
    assert not [e for (s, e) in TRANSITIONS if s is State.EXPIRED]


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS)
def test_every_pair_transitions_or_raises(state: State, event: Event) -> None:
    if (state, event) in TRANSITIONS:
        assert step(state, event) is TRANSITIONS[(state, event)]
    else:
        with pytest.raises(InvalidTransition) as err:
            step(state, event)
        assert err.value.state is state and err.value.event is event
        assert event.name in str(err.value) and state.name in str(err.value)


def test_fin_while_pending_stays_pending_until_the_hold_decides() -> None:
    assert step(State.PENDING, Event.FIN) is State.PENDING
    assert step(State.PENDING, Event.RST) is State.PENDING
    assert step(State.PENDING, Event.CLOSE_BEFORE_HEADER) is State.PASSING
    assert step(State.PENDING, Event.HEADER_COMPLETE) is State.ACTIVE


def test_header_events_only_while_pending() -> None:
    for event in (Event.HEADER_COMPLETE, Event.HEADER_MALFORMED, Event.HOLD_TIMEOUT):
        for state in (State.ACTIVE, State.PASSING):
            with pytest.raises(InvalidTransition):
                step(state, event)


def test_a_pending_flow_never_waits_for_the_closed_timeout() -> None:
    with pytest.raises(InvalidTransition):
        step(State.PENDING, Event.CLOSED_TIMEOUT)


def test_docstring_table_matches_the_dict() -> None:
    """The table a reviewer reads in the module docstring is the one the engine steps."""
    import normalizer.core.flow_state as mod

    assert mod.__doc__ is not None
    cols = [State.PENDING, State.ACTIVE, State.PASSING, State.EXPIRED]
    seen = set()
    for line in mod.__doc__.splitlines():
        words = line.split()
        if not words or words[0] not in Event.__members__:
            continue
        event = Event[words[0]]
        seen.add(event)
        for state, cell in zip(cols, words[1:5], strict=True):
            want = TRANSITIONS.get((state, event))
            assert cell.rstrip("*") == (want.name if want is not None else "-"), (event, state)
    assert seen == set(Event)


@pytest.mark.parametrize("why", [*GiveUp, *Drop])
def test_each_reason_names_a_real_counter_and_a_transition(why: GiveUp | Drop) -> None:
    assert isinstance(getattr(Counters(), why.counter), int)
    if isinstance(why, GiveUp):
        assert step(State.PENDING, why.event) is State.PASSING
    else:
        for state in (State.ACTIVE, State.PASSING):
            assert step(state, why.event) is State.EXPIRED


def test_reasons_are_distinct_members() -> None:
    """Two reasons sharing a counter must not collapse into one enum alias."""
    assert len(list(GiveUp)) == 8 and len(list(Drop)) == 4
