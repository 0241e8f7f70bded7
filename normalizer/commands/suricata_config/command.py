"""The ``suricata-config`` subcommand: read the operator's suricata.yaml, write the fragment.

Exit status: 0 written; 1 a file could not be read or written; 2 the config cannot be used
(the key is named). Why the fragment is written through a temporary file and a rename: a
Suricata (re)starting meanwhile reads the old fragment or the new one, never half of one. An
``include`` naming the output file itself is skipped while reading: it is our earlier output,
and the fragment must follow the operator's current lists, not its own previous copy of them.
The YAML core is imported only when the subcommand runs, so ``rewrite`` and ``live`` start as
fast as before.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

PROG = "suricata-normalizer suricata-config"


def add_parser(sub: Any) -> None:
    """Register ``suricata-config`` on the CLI's subparsers."""
    p = sub.add_parser(
        "suricata-config",
        help="write the include fragment that adds the tap to the operator's Suricata",
    )
    p.add_argument(
        "--suricata-yaml",
        type=Path,
        default=Path("/etc/suricata/suricata.yaml"),
        metavar="FILE",
        help="the operator's suricata.yaml (default /etc/suricata/suricata.yaml)",
    )
    p.add_argument("--tap", default="snl0", help="tap the normalizer writes into (default snl0)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="fragment (default stdout)")


def run(args: argparse.Namespace) -> int:
    from normalizer.commands.suricata_config.fragment import fragment

    source: Path = args.suricata_yaml
    out: Path | None = args.output
    skip = out.resolve() if out is not None else None

    def read_include(name: str) -> str | None:
        path = Path(name) if os.path.isabs(name) else source.parent / name
        if skip is not None and path.resolve() == skip:
            return None
        return path.read_text()

    target = str(out) if out is not None else "FRAGMENT"
    result = fragment(source.read_text(), args.tap, read_include, str(source), target)
    for note in result.notes:
        print(f"{PROG}: {note}", file=sys.stderr)
    if out is None:
        sys.stdout.write(result.text)
        return 0
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(result.text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return 0
