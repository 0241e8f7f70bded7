"""What every input does with a frame, whatever the adapter: normalize, record, hand back.

Adapters (pcap files, AF_PACKET + tap) push captured frames and take what to forward; the
pipeline makes sure the connection cache hears about a connection before any of its rewritten
frames are taken. Decapsulation of mirrored traffic slots in here too, in front of the engine.
"""

from __future__ import annotations

from collections.abc import Callable

from normalizer.counters import Counters
from normalizer.engine import Frame, HeaderEvent, Normalizer, Resumable
from normalizer.options import Options

EventSink = Callable[[list[HeaderEvent]], object]
# Given the first packet's time (epoch seconds), the flows to adopt from a previous run.
ResumeSource = Callable[[float], list[Resumable]]


class Pipeline:
    def __init__(
        self,
        options: Options,
        linktype: int,
        on_events: EventSink | None = None,
        resume: ResumeSource | None = None,
    ) -> None:
        self.engine = Normalizer(options, linktype)
        self.linktype = linktype  # of the frames ``take`` returns
        self._on_events = on_events
        self._resume = resume
        self._window = options.idle_timeout

    @property
    def counters(self) -> Counters:
        return self.engine.counters

    def push(self, frame: bytes, ts: int) -> None:
        if self._resume is not None:
            self._adopt(ts)
        self.engine.feed(frame, ts)

    def _adopt(self, ts: int) -> None:
        """On the first frame: take over flows a previous run resolved within the idle timeout."""
        source, self._resume = self._resume, None
        assert source is not None
        for client, server, vlan, isn, header in source(ts / 1e9 - self._window):
            self.engine.resume(client, server, vlan, isn, header, ts)

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
