"""``flows``: every TCP connection of every corpus capture (pcaps/) is explained, with the real
client its manifest names; a wrong ``--proxy`` or an excluded ``--header`` is named per flow."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from normalizer.commands.flows import WHY, explain, write
from normalizer.core.options import Options
from normalizer.proxy_headers.detect import HeaderKind

PCAPS = Path(__file__).resolve().parents[3] / "pcaps"
MANIFESTS = sorted(PCAPS.glob("*.yaml"))
UNDERLAY = ("10.99.0.0/24",)  # the VXLAN capture's tunnel peers (pcaps/README.md)


def _options(manifest: dict[str, Any], **over: Any) -> Options:
    decap = bool(manifest.get("options", {}).get("decapsulate"))
    kw: dict[str, Any] = {"proxies": tuple(manifest["proxies"]), "decapsulate": decap}
    if decap:
        kw["tunnel_peers"] = UNDERLAY
    kw.update(over)
    return Options(**kw)


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_every_connection_is_explained(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    report = explain(path.with_suffix(".pcap"), _options(manifest))
    rows = report.rows
    assert rows and report.overflow == 0 and report.tunnel_datagrams == 0
    assert all(r.outcome in WHY and r.detail != "no outcome from the engine" for r in rows)
    stripped = [r for r in rows if r.outcome == "stripped"]
    assert stripped, rows
    attackers = {a["src"] for a in manifest["expected_alerts"]}
    for r in stripped:
        assert r.header_kind == manifest.get("header", r.header_kind)
        assert r.bytes_removed == r.header_length
        if r.command == "PROXY":
            assert r.real_client is not None and r.real_target is not None
            assert r.real_client.rsplit(":", 1)[0].strip("[]") in attackers, r
    if manifest.get("options", {}).get("decapsulate"):
        assert all(r.tunnel and r.tunnel["type"] == "vxlan" for r in rows)
    out = io.BytesIO()
    write(rows, out, as_json=True)
    assert [orjson.loads(x)["outcome"] for x in out.getvalue().splitlines()] == [
        r.outcome for r in rows
    ]


def test_wrong_proxy_names_the_right_one() -> None:
    rows = explain(PCAPS / "haproxy-v2-tlv.pcap", Options(proxies=("192.0.2.99/32",))).rows
    untrusted = [r for r in rows if r.outcome == "untrusted"]
    assert untrusted and all(r.detail == "try --proxy 192.0.2.1" for r in untrusted)
    assert all(r.outcome in ("untrusted", "not-proxied", "midstream") for r in rows)
    text = io.BytesIO()
    write(rows, text, as_json=False)
    assert "try --proxy 192.0.2.1" in text.getvalue().decode()


def test_excluded_kind_is_not_called_malformed() -> None:
    opts = Options(proxies=("192.0.2.1/32",), header_kinds=frozenset({HeaderKind.PROXY_V1}))
    rows = explain(PCAPS / "haproxy-v2-tlv.pcap", opts).rows
    assert {r.outcome for r in rows} == {"excluded"}
    assert all(r.header_kind == "proxy-v2" and r.detail == "try --header proxy-v2" for r in rows)
    assert all(r.header_bytes > 0 for r in rows)  # the bytes the decision was made on


def test_header_free_capture_says_no_header() -> None:
    rows = explain(PCAPS / "haproxy-v2-tlv.baseline.pcap", Options(proxies=("0.0.0.0/0",))).rows
    assert rows and {r.outcome for r in rows} <= {"no-header", "missing"}
    assert "no-header" in {r.outcome for r in rows}
