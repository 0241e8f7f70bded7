"""Comparison by (sid, src, dest) with exact counts, and the text and JUnit reports built on it."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from normalizer.commands.rulecheck import DEFAULT_RULES, junit
from normalizer.commands.rulecheck.compare import compare, fired_alerts
from normalizer.commands.rulecheck.discover import Target, discover
from normalizer.commands.rulecheck.harness import CaseResult
from normalizer.commands.rulecheck.manifest import AlertKey
from normalizer.commands.rulecheck.report import render
from normalizer.commands.rulecheck.rules import parse_rules

A = AlertKey(9100001, "198.51.100.10", "198.51.100.1")
B = AlertKey(9100002, "198.51.100.10", "198.51.100.1")
C = AlertKey(9100003, "192.0.2.1", "192.0.2.2")


def _alert(sid: int, src: str, dest: str) -> dict[str, object]:
    return {"event_type": "alert", "src_ip": src, "dest_ip": dest, "alert": {"signature_id": sid}}


def test_fired_alerts_counts_and_canonicalizes() -> None:
    v6 = "2001:0db8:000a:0000:0000:0000:0000:0010"
    events = [_alert(1, v6, "2001:db8:a::1"), _alert(1, "2001:db8:a::10", "2001:db8:a::1")]
    events.append({"event_type": "http", "src_ip": v6, "dest_ip": "2001:db8:a::1"})
    assert fired_alerts(events) == {AlertKey(1, "2001:db8:a::10", "2001:db8:a::1"): 2}


def test_compare_exact_counts() -> None:
    c = compare({A: 1, B: 2, C: 0}, {A: 3, B: 1, C: 1})
    assert not c.passed
    assert c.missing == {B: 1}
    assert c.unexpected == {A: 2, C: 1}
    assert c.totals() == (3, 5, 1, 3)
    assert compare({A: 1, C: 0}, {A: 1}).passed


def _results() -> list[CaseResult]:
    t = Target(Path("pcaps/x.pcap"), Path("pcaps/x.yaml"))
    return [
        CaseResult(t, "pass", 0.5, compare({A: 1}, {A: 1})),
        CaseResult(Target(Path("y.pcap"), None), "error", 0.0, error="y.pcap: no manifest"),
        CaseResult(Target(Path("z.pcap"), Path("z.yaml")), "fail", 1.0, compare({A: 1}, {C: 1})),
    ]


def test_text_report_names_missing_and_unexpected_sids() -> None:
    text = render(_results(), parse_rules([DEFAULT_RULES]), 1.5)
    assert "z.pcap" in text.splitlines()[3] and "FAIL" in text.splitlines()[3]
    assert "missing      9100001 x1   198.51.100.10 -> 198.51.100.1  LAB SQL injection" in text
    assert "unexpected   9100003 x1   192.0.2.1 -> 192.0.2.2  LAB shellshock" in text
    assert "y.pcap: ERROR y.pcap: no manifest" in text
    assert text.endswith("1/3 captures passed in 1.5s")


def test_junit_one_testcase_per_capture(tmp_path: Path) -> None:
    out = tmp_path / "junit.xml"
    junit.write(out, _results(), parse_rules([DEFAULT_RULES]))
    suite = ET.parse(out).getroot()
    assert (suite.tag, suite.get("tests"), suite.get("failures"), suite.get("errors")) == (
        "testsuite",
        "3",
        "1",
        "1",
    )
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["x.pcap", "y.pcap", "z.pcap"]
    assert list(cases[0]) == []
    assert cases[1][0].tag == "error"
    failure = cases[2].find("failure")
    assert failure is not None and failure.get("message") == "1 missing, 1 unexpected alert(s)"
    assert "9100001" in (failure.text or "")


def test_discover_pairs_manifests_and_skips_baselines(tmp_path: Path) -> None:
    for name in ("a.pcap", "a.yaml", "a.baseline.pcap", "b.pcapng", "c.yaml"):
        (tmp_path / name).write_bytes(b"")
    found = {t.capture.name: t.manifest for t in discover([tmp_path])}
    assert found == {"a.pcap": tmp_path / "a.yaml", "b.pcapng": None, "c.pcap": tmp_path / "c.yaml"}
