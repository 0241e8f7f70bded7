"""A real writer process for the follow-mode tests: appends eve lines the way Suricata does.

``python -m tests.eve_enricher.writer EVE DB --lines N [--rotate-rename K ...]
[--copytruncate K ...] [--interval S] [--partial-every M]``

* ``--init-cache`` (run once, before the follower starts) records the connections in DB;
* every line carries ``seq`` (0..N-1) so the test can check order, loss and duplicates; even
  lines belong to proxied connections in DB, odd ones to other flows;
* every M-th line is written in two ``write`` calls with a pause between them (a reader sees
  half a line);
* at line K, ``--rotate-rename`` shifts EVE.1 -> EVE.2, renames EVE -> EVE.1, writes three more
  lines to the renamed file (Suricata keeps writing until it reopens), then creates a new EVE;
  ``--copytruncate`` shifts the same way, copies EVE to EVE.1 and truncates EVE in place.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from tests.eve_enricher.helpers import BACKEND, PROXY, T0, event, line, record, v2_header

CONNECTIONS = 20


def wire(i: int) -> tuple[str, int]:
    return (PROXY[0], PROXY[1] + i)


def real(i: int) -> tuple[str, int]:
    return ("203.0.113.7", 50000 + i)


def init_cache(db: Path) -> None:
    for i in range(CONNECTIONS):
        record(db, v2_header(client=real(i)), wire_client=wire(i))


def eve_line(seq: int) -> bytes:
    i = seq % CONNECTIONS
    if seq % 2 == 0:
        ev = event("http", wire(i), BACKEND, t=T0 + 1, flow_id=1000 + i, seq=seq)
    else:
        ev = event("http", ("192.0.2.77", 30000 + i), BACKEND, t=T0 + 1, flow_id=2000 + i, seq=seq)
    return line(ev)


def _shift(eve: Path) -> None:
    one = eve.with_name(eve.name + ".1")
    if one.exists():
        os.replace(one, eve.with_name(eve.name + ".2"))


def _open(eve: Path) -> int:
    return os.open(eve, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("eve", type=Path)
    ap.add_argument("db", type=Path)
    ap.add_argument("--init-cache", action="store_true")
    ap.add_argument("--lines", type=int, default=0)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--interval", type=float, default=0.001)
    ap.add_argument("--partial-every", type=int, default=7)
    ap.add_argument("--rotate-rename", type=int, action="append", default=[])
    ap.add_argument("--copytruncate", type=int, action="append", default=[])
    args = ap.parse_args()
    if args.init_cache:
        init_cache(args.db)
        return
    fd = _open(args.eve)
    seq = args.start
    end = args.start + args.lines
    while seq < end:
        if seq in args.rotate_rename:
            _shift(args.eve)
            os.rename(args.eve, args.eve.with_name(args.eve.name + ".1"))
            for _ in range(3):
                if seq < end:
                    os.write(fd, eve_line(seq))
                    seq += 1
            os.close(fd)
            fd = _open(args.eve)
        if seq in args.copytruncate:
            _shift(args.eve)
            shutil.copyfile(args.eve, args.eve.with_name(args.eve.name + ".1"))
            os.ftruncate(fd, 0)
        if seq >= end:
            break
        data = eve_line(seq)
        if args.partial_every and seq % args.partial_every == 0:
            os.write(fd, data[:40])
            time.sleep(0.02)
            os.write(fd, data[40:])
        else:
            os.write(fd, data)
        seq += 1
        if args.interval:
            time.sleep(args.interval)
    os.close(fd)


if __name__ == "__main__":
    main()
