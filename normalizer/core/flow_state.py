"""The life of a tracked flow, as one table: every state a flow can be in, every event that can
happen to it, and what each event does in each state.

Why a table: the engine's per-packet code is tuned for speed and spread over several functions;
this module is the one place a reader (or a transcription into another language) checks what a
flow may do. Everything that changes ``Flow.state`` goes through ``step``; an event with no entry
for the current state is a bug in the engine and raises ``InvalidTransition`` here, nowhere else.

States
  PENDING  a trusted proxy's SYN opened the flow; its packets are held until the header is
           complete (born by ``Flow(...)``)
  ACTIVE   header length known; client seq and server ack/SACK are shifted, addresses maybe
           restored (also born directly by ``Flow.resumed(...)`` from the connection cache)
  PASSING  no usable header: the held packets went out untouched and so does everything after
  EXPIRED  gone from the table (timed out, evicted, or replaced by a new connection on the ports)

Closing is not a state: FIN and RST are remembered (``Flow.closing``) and only choose which
timeout ends the flow (``closed_timeout`` after an RST or both FINs, else ``idle_timeout``);
an ACTIVE flow keeps shifting retransmissions after its FINs.

Transitions (``TRANSITIONS``; "-" is an error)

  event                PENDING   ACTIVE    PASSING   EXPIRED   counted in
  HEADER_COMPLETE      ACTIVE    -         -         -         headers_stripped
  HEADER_MALFORMED     PASSING   -         -         -         header_malformed
  CLOSE_BEFORE_HEADER  PASSING   -         -         -         header_missing / header_truncated
  HOLD_OVERFLOW        PASSING   -         -         -         hold_overflow
  HOLD_TIMEOUT         PASSING   -         -         -         hold_timeout
  END_OF_INPUT         PASSING   ACTIVE    PASSING   -         header_truncated (PENDING only)
  FIN                  PENDING*  ACTIVE    PASSING   -         -
  RST                  PENDING*  ACTIVE    PASSING   -         -
  IDLE_TIMEOUT         EXPIRED   EXPIRED   EXPIRED   -         flows_expired
  CLOSED_TIMEOUT       -         EXPIRED   EXPIRED   -         flows_expired
  EVICTED              EXPIRED   EXPIRED   EXPIRED   -         flows_evicted
  PORT_REUSE           EXPIRED   EXPIRED   EXPIRED   -         flows_restarted

  * A FIN or RST while the header is pending: the segment is held and assembled first; if it
    completes the header, HEADER_COMPLETE (ACTIVE); otherwise CLOSE_BEFORE_HEADER (PASSING,
    header_missing if no header byte arrived, header_truncated if part of it did). So a
    PENDING flow never waits for CLOSED_TIMEOUT. A PENDING flow that leaves for EXPIRED
    forwards its held packets untouched first (counted in passed_unparsed_flow).
"""

from __future__ import annotations

from enum import Enum, IntEnum


class State(IntEnum):
    PENDING = 0
    ACTIVE = 1
    PASSING = 2
    EXPIRED = 3


class Event(Enum):
    HEADER_COMPLETE = "header complete"
    HEADER_MALFORMED = "header malformed"
    CLOSE_BEFORE_HEADER = "FIN/RST before the header was complete"
    HOLD_OVERFLOW = "hold limits reached"
    HOLD_TIMEOUT = "header not complete within pending_timeout"
    END_OF_INPUT = "end of input"
    FIN = "FIN"
    RST = "RST"
    IDLE_TIMEOUT = "idle_timeout passed"
    CLOSED_TIMEOUT = "closed_timeout passed after RST or both FINs"
    EVICTED = "evicted: the table was full"
    PORT_REUSE = "a SYN with a new ISN reused the ports"


PENDING, ACTIVE, PASSING, EXPIRED = State.PENDING, State.ACTIVE, State.PASSING, State.EXPIRED

TRANSITIONS: dict[tuple[State, Event], State] = {
    (PENDING, Event.HEADER_COMPLETE): ACTIVE,
    (PENDING, Event.HEADER_MALFORMED): PASSING,
    (PENDING, Event.CLOSE_BEFORE_HEADER): PASSING,
    (PENDING, Event.HOLD_OVERFLOW): PASSING,
    (PENDING, Event.HOLD_TIMEOUT): PASSING,
    (PENDING, Event.END_OF_INPUT): PASSING,
    (ACTIVE, Event.END_OF_INPUT): ACTIVE,
    (PASSING, Event.END_OF_INPUT): PASSING,
    (PENDING, Event.FIN): PENDING,
    (ACTIVE, Event.FIN): ACTIVE,
    (PASSING, Event.FIN): PASSING,
    (PENDING, Event.RST): PENDING,
    (ACTIVE, Event.RST): ACTIVE,
    (PASSING, Event.RST): PASSING,
    (PENDING, Event.IDLE_TIMEOUT): EXPIRED,
    (ACTIVE, Event.IDLE_TIMEOUT): EXPIRED,
    (PASSING, Event.IDLE_TIMEOUT): EXPIRED,
    (ACTIVE, Event.CLOSED_TIMEOUT): EXPIRED,
    (PASSING, Event.CLOSED_TIMEOUT): EXPIRED,
    (PENDING, Event.EVICTED): EXPIRED,
    (ACTIVE, Event.EVICTED): EXPIRED,
    (PASSING, Event.EVICTED): EXPIRED,
    (PENDING, Event.PORT_REUSE): EXPIRED,
    (ACTIVE, Event.PORT_REUSE): EXPIRED,
    (PASSING, Event.PORT_REUSE): EXPIRED,
}


class InvalidTransition(RuntimeError):
    """An event the table has no entry for in the flow's state: a bug in the engine."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"no transition for {event.name} in state {state.name}")
        self.state = state
        self.event = event


def step(state: State, event: Event) -> State:
    """The state ``event`` leads to from ``state``; raises InvalidTransition if it has none."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(state, event) from None


class GiveUp(Enum):
    """Why a PENDING flow was left as captured; the value names the counter and the event.

    The engine's one give-up function bumps ``counter`` and steps the table with ``event``, so
    each outcome is counted exactly once whatever site gave up.
    """

    HEADER_MALFORMED = ("header_malformed", Event.HEADER_MALFORMED, "malformed")
    # A refused header that is no header at all, or one of a kind the config leaves out: the
    # same transition, counted apart so a summary can say which (README, "flows").
    HEADER_NONE = ("header_none", Event.HEADER_MALFORMED, "no-header")
    HEADER_EXCLUDED = ("header_excluded", Event.HEADER_MALFORMED, "excluded")
    CLOSED_NO_HEADER = ("header_missing", Event.CLOSE_BEFORE_HEADER, "missing")
    CLOSED_IN_HEADER = ("header_truncated", Event.CLOSE_BEFORE_HEADER, "truncated")
    HOLD_OVERFLOW = ("hold_overflow", Event.HOLD_OVERFLOW, "hold-overflow")
    HOLD_TIMEOUT = ("hold_timeout", Event.HOLD_TIMEOUT, "hold-timeout")
    END_OF_INPUT = ("header_truncated", Event.END_OF_INPUT, "truncated")

    def __init__(self, counter: str, event: Event, outcome: str) -> None:
        self.counter = counter
        self.event = event
        self.outcome = outcome  # the ``FlowOutcome.outcome`` a ``flows`` report shows


class Drop(Enum):
    """Why a flow left the table; the value names the counter and the event."""

    IDLE_TIMEOUT = ("flows_expired", Event.IDLE_TIMEOUT)
    CLOSED_TIMEOUT = ("flows_expired", Event.CLOSED_TIMEOUT)
    EVICTED = ("flows_evicted", Event.EVICTED)
    PORT_REUSE = ("flows_restarted", Event.PORT_REUSE)

    def __init__(self, counter: str, event: Event) -> None:
        self.counter = counter
        self.event = event
