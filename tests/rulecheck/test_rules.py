"""Rule parsing with idstools, and Suricata's own load errors mapped back to file and line."""

from __future__ import annotations

from pathlib import Path

from normalizer.commands.rulecheck import DEFAULT_RULES
from normalizer.commands.rulecheck.rules import RuleError, logical_lines, parse_rules
from normalizer.commands.rulecheck.suricata import bundle_rules, log_rule_errors

OK = 'alert http any any -> any any (msg:"ok"; content:"a"; sid:1; rev:1;)'


def test_project_rules_parse_with_messages() -> None:
    rules = parse_rules([DEFAULT_RULES])
    assert rules.errors == []
    assert sorted(rules.messages) == list(range(9100001, 9100011))
    assert rules.message(9100010) == "LAB Nikto scanner User-Agent"
    assert rules.message(1) == "(no such sid in the rules)"


def test_continued_rules_keep_their_first_line() -> None:
    text = '# c\nalert tcp any any -> any any \\\n  (msg:"x"; sid:2;)\n' + OK
    assert [n for n, _ in logical_lines(text)] == [1, 2, 4]


def test_syntax_errors_name_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "local.rules"
    f.write_text(
        "\n".join(
            [
                "# comment",
                OK,
                'alert http any any -> any any (msg:"no end"; content:"a"; sid:2',
                'alert http any any -> any any (msg:"no sid"; content:"a";)',
                OK.replace('"ok"', '"dup"'),
                "this is not a rule",
                'alert http any any -> any any (msg:"bad"; sid:x;)',
                'alert http any any -> any any (msg:"semi"; content:"a" nocase; sid:4;)',
                "# " + OK.replace("sid:1", "sid:3"),  # disabled rules are not checked
            ]
        )
    )
    errors = parse_rules([f]).errors
    assert [(e.file, e.line) for e in errors] == [(f, n) for n in range(3, 9)]
    assert "duplicate sid 1" in errors[2].message and f"{f}:2" in errors[2].message
    assert str(errors[1]).startswith(f"{f}:4: idstools: ")
    assert "option content: text after the quoted value (missing ';'?)" in errors[5].message


def test_suricata_log_errors_map_back_through_the_bundle(tmp_path: Path) -> None:
    a, b = tmp_path / "a.rules", tmp_path / "b.rules"
    a.write_text(OK + "\n# two\n")
    b.write_text("# one\n" + OK.replace("content", "foo"))
    bundle = bundle_rules([a, b], tmp_path / "all.rules")
    log = (
        "[1 - Suricata-Main] Error: detect-parse: unknown rule keyword 'foo'.\n"
        f'[1 - Suricata-Main] Error: detect: error parsing signature "x" from file '
        f"{bundle.path} at line 4\n"
    )
    assert log_rule_errors(log, bundle) == [
        RuleError(b, 2, "unknown rule keyword 'foo'", "suricata")
    ]
