"""The live loop's guard: a frame whose processing raises never stops the batch (no devices)."""

from __future__ import annotations

from normalizer.commands.live import push_guarded
from normalizer.core.engine import Frame
from normalizer.core.frame import LINKTYPE_ETHERNET
from normalizer.core.options import Options
from normalizer.core.pipeline import Pipeline
from tests.normalizer.core.test_engine import V2, conversation
from tests.normalizer.packets import Conv

POISON = b"\xde\xad" * 30  # stands in for a frame that hits a bug nobody has found yet


class Buggy(Pipeline):
    """The real pipeline, with a fault injected for one kind of frame."""

    def push(self, frame: bytes, ts: int) -> None:
        if frame == POISON:
            raise ZeroDivisionError("an internal bug")
        super().push(frame, ts)


def test_a_frame_that_raises_is_handed_back_and_the_batch_goes_on() -> None:
    proxied = conversation(Conv(), V2, coalesce=False)
    frames = [(i, f) for i, f in enumerate(proxied[:4] + [POISON] + proxied[4:] + [POISON])]
    pipe = Buggy(Options(proxies=("192.0.2.1/32",), restore_addresses=False), LINKTYPE_ETHERNET)
    out: list[Frame] = []
    failed: list[tuple[int, str]] = []

    def on_failure(ts: int, frame: bytes, exc: Exception) -> None:
        failed.append((ts, type(exc).__name__))
        out.extend(f for _t, f in pipe.take())  # what the live loop does: the frames before it
        out.append(frame)  # then the failing one, untouched

    push_guarded(pipe, frames, on_failure)
    out.extend(f for _t, f in pipe.take())
    assert failed == [(4, "ZeroDivisionError"), (len(frames) - 1, "ZeroDivisionError")]
    assert out.count(POISON) == 2 and out[-1] == POISON
    assert pipe.counters.headers_stripped == {"proxy-v2": 1}  # the flow around it was normalized
    assert len(out) == len(frames) - 1  # everything but the header-only segment


def test_no_failure_no_callback() -> None:
    pipe = Pipeline(Options(proxies=("192.0.2.1/32",)), LINKTYPE_ETHERNET)
    frames = list(enumerate(conversation(Conv(), V2, coalesce=True)))

    def never(_ts: int, _frame: bytes, exc: Exception) -> None:
        raise AssertionError(f"on_failure called: {exc!r}")

    push_guarded(pipe, frames, never)
    assert len(pipe.take()) == len(frames)
