"""Test-wide settings.

Hypothesis' per-example deadline is a timed assertion: on a loaded 2-core CI machine an example
that takes 300 ms fails a test that checks behaviour, not speed. Speed is the benchmarks' job
(``./run bench``), so the deadline is off everywhere.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("project", deadline=None)
settings.load_profile("project")
