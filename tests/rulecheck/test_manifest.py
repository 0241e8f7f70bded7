"""Manifest parsing: valid files load, and every mistake names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from normalizer.commands.rulecheck.manifest import AlertKey, ManifestError, load_manifest

GOOD = """
proxies: [192.0.2.1/32]
header: proxy-v2
baseline: x.baseline.pcap
expected_alerts:
  - {sid: 9100001, count: 2, src: 198.51.100.10, dest: 198.51.100.1}
  - {sid: 9100002, count: 0, src: "2001:0db8:000a::10", dest: "2001:db8:a::1"}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return path


def test_valid_manifest(tmp_path: Path) -> None:
    m = load_manifest(_write(tmp_path, GOOD))
    assert m.proxies == ("192.0.2.1/32",)
    assert m.header_kinds == ("proxy-v2",)
    assert m.baseline == tmp_path / "x.baseline.pcap"
    assert m.expected == {
        AlertKey(9100001, "198.51.100.10", "198.51.100.1"): 2,
        AlertKey(9100002, "2001:db8:a::10", "2001:db8:a::1"): 0,  # one spelling per address
    }
    assert m.options().restore_addresses is True


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (GOOD + "proxys: [1.2.3.4/32]\n", "proxys: unknown key"),
        ("proxies: [192.0.2.1/32]\n", "expected_alerts: required key is missing"),
        (GOOD.replace("sid: 9100001", "sid: x"), "expected_alerts[0].sid"),
        (GOOD.replace("count: 2", "count: -1"), "expected_alerts[0].count"),
        (GOOD.replace("dest: 198.51.100.1", "dest: gateway"), "expected_alerts[0]: src/dest"),
        (GOOD.replace("count: 0, src", "colour: red, src"), "expected_alerts[1]: unknown keys"),
        (
            GOOD.replace("9100002, count: 0", "9100001, count: 0")
            .replace("2001:0db8:000a::10", "198.51.100.10")
            .replace("2001:db8:a::1", "198.51.100.1"),
            "listed twice",
        ),
        (GOOD.replace("header: proxy-v2", "header: proxy-v9"), "normalizer.header_kinds"),
        (GOOD + "options: {max_flows: 0}\n", "normalizer.max_flows"),
        ("proxies: [192.0.2.1/32\n", "not valid YAML"),
        ("- a list\n", "expected a mapping"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, where: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ManifestError) as exc:
        load_manifest(path)
    assert str(exc.value).startswith(str(path))
    assert where in str(exc.value)
