"""What every input does with a frame, whatever the adapter: normalize, record, hand back.

Adapters (pcap files, AF_PACKET + tap) push captured frames and take what to forward; the
pipeline makes sure the connection cache hears about a connection before any of its rewritten
frames are taken. Decapsulation of mirrored traffic slots in here too, in front of the engine.
"""

from __future__ import annotations

from collections.abc import Callable

from normalizer.counters import Counters
from normalizer.engine import Frame, HeaderEvent, Normalizer
from normalizer.options import Options

EventSink = Callable[[list[HeaderEvent]], object]


class Pipeline:
    def __init__(self, options: Options, linktype: int, on_events: EventSink | None = None) -> None:
        self.engine = Normalizer(options, linktype)
        self.linktype = linktype  # of the frames ``take`` returns
        self._on_events = on_events

    @property
    def counters(self) -> Counters:
        return self.engine.counters

    def push(self, frame: bytes, ts: int) -> None:
        self.engine.feed(frame, ts)

    def tick(self, now: int) -> None:
        self.engine.tick(now)

    def flush(self) -> None:
        self.engine.flush()

    def take(self) -> list[tuple[int, Frame]]:
        """Frames to forward, in order; their connections are recorded first."""
        eng = self.engine
        if eng.events:
            events = eng.drain_events()
            if self._on_events is not None:
                self._on_events(events)
        return eng.drain()
