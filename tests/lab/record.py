"""Record every lab scenario (raw + baseline) into a directory.

Usage: ``python -m tests.lab.record OUTDIR [SCENARIO ...]`` (as root). Why a module and not a
shell script: it reuses the exact scenarios the tests use, so committed pcaps match the tests.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from tests.lab.netlab import Lab
from tests.lab.scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.record", description=__doc__)
    ap.add_argument("outdir", type=Path)
    ap.add_argument(
        "scenarios",
        nargs="*",
        choices=[[], *SCENARIOS],
        metavar="SCENARIO",
        help=f"default: all of {', '.join(SCENARIOS)}",
    )
    args = ap.parse_args(argv)
    # SIGTERM -> SystemExit, so the Lab's __exit__ removes namespaces and processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with Lab() as lab:
        for name in args.scenarios or SCENARIOS:
            caps = SCENARIOS[name](lab, args.outdir)
            print(f"{caps.name}: raw={caps.raw} baseline={caps.baseline} proxy={caps.proxy}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
