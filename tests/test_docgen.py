"""The committed man pages and completions are what the argparse parsers generate now
(regenerate with ``python -m normalizer.commands.docgen``), and they name every subcommand."""

from __future__ import annotations

import pytest

pytest.importorskip("shtab", reason="docgen needs shtab (dev extra)")
pytest.importorskip("build_manpages", reason="docgen needs argparse-manpage (dev extra)")

from normalizer.commands import docgen


def test_generated_files_are_current() -> None:
    stale = [
        str(p.relative_to(docgen.ROOT))
        for p, text in docgen.generate().items()
        if not p.is_file() or p.read_text() != text
    ]
    assert not stale, f"stale, run python -m normalizer.commands.docgen: {stale}"


def test_every_subcommand_is_documented() -> None:
    files = docgen.generate()
    for prog, make in docgen.parsers().items():
        parser = make()
        subs = next(a for a in parser._actions if a.choices and a.dest == "command")
        assert subs.choices is not None
        man = files[docgen.ROOT / "docs" / "man" / f"{prog}.1"]
        bash = files[docgen.ROOT / "docs" / "completion" / f"{prog}.bash"]
        for name in subs.choices:
            assert f"'{prog} {name}'".replace("-", "\\-") in man, (prog, name)
            assert name in bash, (prog, name)
