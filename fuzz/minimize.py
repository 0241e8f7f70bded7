"""Shrinks a failing input to fewer items that still fail the same way (bounded ddmin).

Why bounded: a reproducer of five frames is what a developer wants to read, but the search must
not eat the fuzzing budget; a few hundred re-runs of a short prefix cost well under a second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def ddmin(items: Sequence[T], fails: Callable[[list[T]], bool], budget: int = 300) -> list[T]:
    """A smaller list for which ``fails`` still holds (``items`` itself must fail)."""
    cur = list(items)
    n = 2
    tries = 0
    while len(cur) >= 2 and tries < budget:
        chunk = max(1, len(cur) // n)
        reduced = False
        for start in range(0, len(cur), chunk):
            cand = cur[:start] + cur[start + chunk :]
            tries += 1
            if cand and fails(cand):
                cur, n, reduced = cand, max(n - 1, 2), True
                break
            if tries >= budget:
                break
        if not reduced:
            if chunk == 1:
                break
            n = min(len(cur), n * 2)
    return cur
