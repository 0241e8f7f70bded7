"""Picks what one run feeds the core: which traffic, how mutated, with which options.

Every run draws from its own ``random.Random(f"{seed}:{index}")``, so any run can be replayed
alone (``python -m fuzz --seed S --only INDEX``) and the whole target is deterministic.
"""

from __future__ import annotations

import random

from fuzz.mutate import mutate_sequence
from fuzz.packets import Run, make_options
from fuzz.sources import (
    PEERS,
    PROXIES,
    T0,
    Capture,
    proxied_traffic,
    relink,
    tunnel_traffic,
)
from fuzz.wire import Record

_LINKTYPES = (1, 1, 1, 1, 101, 113, 276, 0, 228)


def timestamps(rng: random.Random, n: int, start: int = T0) -> list[int]:
    """Mostly close together; sometimes seconds or an idle timeout apart, rarely backwards."""
    out, t = [], start
    for _ in range(n):
        r = rng.random()
        if r < 0.97:
            t += rng.randrange(1, 5_000_000)
        elif r < 0.985:
            t += rng.choice((6, 31, 700)) * 1_000_000_000
        else:
            t -= rng.randrange(1, 2_000_000_000)
        out.append(t)
    return out


def pick(rng: random.Random, corpus: list[Capture], cache_share: float) -> Run:
    r = rng.random()
    rate = rng.choice((0.0, 0.01, 0.05, 0.2, 0.5))
    decap = False
    linktype = 1
    if r < 0.4 and corpus:
        cap = rng.choice(corpus)
        decap = cap.decap or rng.random() < 0.1
        recs = cap.records
        if len(recs) > 400 and rng.random() < 0.5:  # a window of it
            a = rng.randrange(len(recs) - 100)
            recs = recs[a : a + rng.randrange(100, 400)]
        frames = [rec.data for rec in recs]
        if rng.random() < 0.3:
            extra = tunnel_traffic(rng, 6, 0.5) if decap else proxied_traffic(rng, 6, 0.5)
            frames = _splice(rng, frames, extra)
        ts = [rec.ts for rec in recs]
        ts += timestamps(rng, len(frames) - len(ts), ts[-1] if ts else T0)
        ts = ts[: len(frames)] if len(frames) <= len(recs) else sorted(ts)
    elif r < 0.75:
        frames = proxied_traffic(rng, rng.randrange(5, 60), rng.choice((0.1, 0.5, 1.0)))
        ts = timestamps(rng, len(frames))
    else:
        decap = True
        frames = tunnel_traffic(rng, rng.randrange(6, 40), rng.choice((0.1, 0.5)))
        ts = timestamps(rng, len(frames))
    if rng.random() < 0.2:
        linktype = rng.choice(_LINKTYPES)
        # frames of other shapes (tags, junk) stay as they are: bytes a capture could hold
        frames = [
            relink(f, linktype) if f[12:14] in (b"\x08\x00", b"\x86\xdd") else f for f in frames
        ]
    frames = mutate_sequence(rng, frames, rate, linktype)
    ts = (ts + timestamps(rng, max(0, len(frames) - len(ts)), ts[-1] if ts else T0))[: len(frames)]
    records = [Record(t, f, len(f)) for t, f in zip(ts, frames, strict=True)]
    options = make_options(rng, PROXIES, PEERS, decap)
    return Run(records, linktype, options, PEERS, rng.random() < cache_share)


def _splice(rng: random.Random, a: list[bytes], b: list[bytes]) -> list[bytes]:
    out = list(a)
    for f in b:
        out.insert(rng.randrange(len(out) + 1), f)
    return out
