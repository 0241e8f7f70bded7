"""Timing a command the benchmark compares against, in a child process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def timed_child(cmd: list[str]) -> tuple[float, int, int]:
    """Run a command; return (wall seconds, exit status, peak RSS in KiB of the child).

    Its stderr is shown (the last 2000 characters) only when it fails.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if proc.stderr is not None:
        err = proc.stderr.read()
        proc.stderr.close()
        if status:
            sys.stderr.write(err.decode(errors="replace")[-2000:])
    return wall, os.waitstatus_to_exitcode(status), usage.ru_maxrss
