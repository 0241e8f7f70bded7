"""Man pages and shell completions of both commands, generated from their argparse parsers.

Why generated and committed: the parsers are the one definition of every flag; a man page or a
completion script written by hand drifts from them. The files live in docs/man and
docs/completion, go into the wheel as data files (``share/man/man1`` included, so ``man
suricata-normalizer`` works in a venv whose bin/ is on PATH), and a test regenerates them and
fails when they are stale: run ``python -m normalizer.commands.docgen`` after changing a flag.

Only this module imports argparse-manpage and shtab (development dependencies), and only when
it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHELLS = {"bash": "{prog}.bash", "zsh": "_{prog}"}
_DATE = "2026"  # fixed, so regenerating gives the same bytes (the version says how new it is)
_COLUMNS = "100"


def parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    from eve_enricher import cli as enricher_cli
    from normalizer import cli as normalizer_cli

    return {
        "suricata-normalizer": normalizer_cli._parser,
        "eve-enricher": enricher_cli.build_parser,
    }


def _version() -> str:
    from eve_enricher.cli import version

    return version()


def man_page(make: Callable[[], argparse.ArgumentParser]) -> str:
    from build_manpages.manpage import Manpage

    page = Manpage(make())
    page.date = _DATE
    page.source = f"{page.prog} {_version()}"
    page.manual = "suricata-normalizer"
    return str(page)


def completion(make: Callable[[], argparse.ArgumentParser], shell: str) -> str:
    import shtab

    text: str = shtab.complete(make(), shell)
    return text


def generate(root: Path = ROOT) -> dict[Path, str]:
    """Every generated file (path -> text), with the help text laid out for 100 columns."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = _COLUMNS
    try:
        files: dict[Path, str] = {}
        for prog, make in parsers().items():
            files[root / "docs" / "man" / f"{prog}.1"] = man_page(make)
            for shell, name in SHELLS.items():
                files[root / "docs" / "completion" / name.format(prog=prog)] = completion(
                    make, shell
                )
        return files
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m normalizer.commands.docgen", description=__doc__)
    p.add_argument("--check", action="store_true", help="exit 1 if a file is stale, write none")
    args = p.parse_args(argv)
    stale = []
    for path, text in generate().items():
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path.relative_to(ROOT)}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
