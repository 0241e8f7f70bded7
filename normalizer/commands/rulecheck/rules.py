"""Rule files parsed with idstools: syntax errors with file and line, and each sid's message.

Why before Suricata: Suricata skips a rule it cannot parse and still exits 0 on a pcap run, so
a typo would show up only as a "missing" alert far from its cause. idstools' parser returns
None or raises for text that is not a rule; we add what it leaves to the engine (no sid,
duplicate gid:sid) and keep the start line of rules continued with a trailing backslash, as
Suricata reports them. idstools also accepts a missing ';' between two options (the next option
becomes part of the value), so a quoted value must end with its quote. Semantic errors (unknown
keywords) remain Suricata's to find.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idstools import rule as idsrule

# Suricata actions idstools does not know; checked by parsing the rule as "reject".
_SURICATA_ONLY_ACTIONS = ("rejectsrc", "rejectdst", "rejectboth")
_SHAPE = "not a rule: expected 'action proto src sport -> dst dport (option; ...)'"


@dataclass(frozen=True)
class RuleError:
    """A rule that cannot load: where it is and why (``source`` is idstools or suricata)."""

    file: Path
    line: int
    message: str
    source: str = "idstools"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        return f"{where}: {self.source}: {self.message}"


@dataclass
class RuleSet:
    """Enabled rules of all files: messages by sid, where each rule is, and the errors."""

    files: tuple[Path, ...]
    messages: dict[int, str] = field(default_factory=dict)
    where: dict[tuple[int, int], tuple[Path, int]] = field(default_factory=dict)
    errors: list[RuleError] = field(default_factory=list)

    def message(self, sid: int) -> str:
        return self.messages.get(sid, "(no such sid in the rules)")


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) per rule, joining lines that end with a backslash."""
    buf: list[str] = []
    start = 0
    for n, line in enumerate(text.splitlines(), 1):
        if not buf:
            start = n
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            buf.append(stripped[:-1] + " ")
            continue
        buf.append(line)
        yield start, "".join(buf)
        buf = []
    if buf:
        yield start, "".join(buf)


def _parse(text: str) -> Any:
    """idstools' Rule, or None; raises ValueError with a readable message."""
    try:
        parsed = idsrule.parse(text)
        action = text.split(None, 1)[0]
        if parsed is None and action in _SURICATA_ONLY_ACTIONS:
            parsed = idsrule.parse("reject" + text[len(action) :])
    except ValueError as exc:
        raise ValueError(f"gid, sid and rev must be integers ({exc})") from None
    except Exception as exc:  # idstools raises a bare Exception for an unterminated option
        if "end of option not found" in str(exc):
            raise ValueError("an option is not terminated by ';'") from None
        raise ValueError(f"cannot parse the options ({exc})") from None
    return parsed


def _unterminated(parsed: Any) -> str | None:
    """The first option whose quoted value runs on past its closing quote (a missing ';')."""
    for opt in parsed["options"]:
        value = (opt.get("value") or "").strip()
        if value.lstrip("!").startswith('"') and not value.endswith('"'):
            return f"option {opt['name']}: text after the quoted value (missing ';'?): {value}"
    return None


def _check_file(path: Path, rules: RuleSet) -> None:
    for line, text in logical_lines(path.read_text(encoding="utf-8", errors="replace")):
        body = text.strip()
        if not body or body.startswith("#"):
            continue  # comment or disabled rule
        try:
            parsed = _parse(body)
        except ValueError as exc:
            rules.errors.append(RuleError(path, line, str(exc)))
            continue
        if parsed is None:
            rules.errors.append(RuleError(path, line, _SHAPE))
        elif msg := _unterminated(parsed):
            rules.errors.append(RuleError(path, line, msg))
        elif parsed["sid"] is None:
            rules.errors.append(RuleError(path, line, 'missing the required option "sid"'))
        elif (key := (parsed["gid"], parsed["sid"])) in rules.where:
            first, first_line = rules.where[key]
            msg = f"duplicate sid {key[1]} (first defined at {first}:{first_line})"
            rules.errors.append(RuleError(path, line, msg))
        else:
            rules.where[key] = (path, line)
            rules.messages[parsed["sid"]] = parsed["msg"]


def parse_rules(files: Iterable[Path]) -> RuleSet:
    """Parse every file; OSError (missing file) propagates to the caller."""
    rules = RuleSet(tuple(files))
    for path in rules.files:
        _check_file(path, rules)
    return rules
