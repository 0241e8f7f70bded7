"""JUnit XML for CI systems: one ``testsuite``, one ``testcase`` per capture.

Why JUnit: every CI system renders it without plugins. A missing or unexpected alert is a
``failure`` (the rules or the normalizer regressed), anything that kept the capture from being
checked is an ``error``; the failure text is the same detail the text report prints.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from normalizer.commands.rulecheck.harness import CaseResult
from normalizer.commands.rulecheck.report import details
from normalizer.commands.rulecheck.rules import RuleError, RuleSet

SUITE = "suricata-normalizer.test-rules"


def build(results: Sequence[CaseResult], rules: RuleSet) -> ET.ElementTree:
    suite = ET.Element(
        "testsuite",
        name=SUITE,
        tests=str(len(results)),
        failures=str(sum(r.status == "fail" for r in results)),
        errors=str(sum(r.status == "error" for r in results)),
        time=f"{sum(r.seconds for r in results):.3f}",
    )
    for r in results:
        case = ET.SubElement(
            suite, "testcase", classname=SUITE, name=r.target.name, time=f"{r.seconds:.3f}"
        )
        if r.status == "pass":
            continue
        text = "\n".join(details(r, rules))
        if r.status == "error":
            ET.SubElement(case, "error", message=r.error).text = text
        else:
            assert r.comparison is not None
            _exp, _fired, missing, unexpected = r.comparison.totals()
            msg = f"{missing} missing, {unexpected} unexpected alert(s)"
            ET.SubElement(case, "failure", message=msg).text = text
    return ET.ElementTree(suite)


def write(path: Path, results: Sequence[CaseResult], rules: RuleSet) -> None:
    tree = build(results, rules)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def write_rule_errors(path: Path, errors: Sequence[RuleError]) -> None:
    """Rules that cannot load stop the run: CI still gets a report, one error per rule."""
    suite = ET.Element("testsuite", name=SUITE, tests=str(len(errors)), failures="0")
    suite.set("errors", str(len(errors)))
    for e in errors:
        case = ET.SubElement(suite, "testcase", classname=SUITE, name=f"rules {e.file}:{e.line}")
        ET.SubElement(case, "error", message=str(e))
    tree = ET.ElementTree(suite)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
