"""Both enricher modes end to end: shipped captures -> normalizer -> real Suricata (with its
community-id on) -> ``eve-enricher --mode overwrite`` and ``--mode extra-data``.

The oracle is Suricata itself: it computes community_id for the tuple it saw, so with
``--keep-addresses`` its value must equal our ``proxy.wire.community_id``, and with restored
addresses our ``proxy.real.community_id``; overwrite's top-level tuple and community_id must be
extra-data's ``proxy.real``. extra-data must leave every byte Suricata wrote (the enriched line
starts with Suricata's line minus its closing brace). Suricata's own ``tunnel`` object (written on
alerts of a VXLAN stream Suricata decoded itself) survives both modes unchanged.
Needs Suricata, not root.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.eve_enricher.e2e import BIN, FIXED_INSPECTION
from tests.eve_enricher.schema import schema_errors
from tests.lab.suricata_run import run_suricata

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
COMMUNITY_ID = ("--set", "outputs.1.eve-log.community-id=true")
CASES = {
    "haproxy-v2-tlv": "192.0.2.1/32",
    "haproxy-v2-ipv6": "2001:db8:b::1/128",
    "haproxy-v2-v6client": "192.0.2.1/32",  # IPv6 attacker behind an IPv4 hop
    "haproxy-v2-checks": "192.0.2.1/32",  # LOCAL health checks: no real tuple
}

pytestmark = pytest.mark.skipif(
    shutil.which("suricata") is None, reason="needs Suricata 7 (scripts/setup.sh installs it)"
)


def _run(argv: list[str]) -> None:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(argv)}\n{p.stdout}{p.stderr}"


def _enrich(eve: Path, db: Path, mode: str) -> list[bytes]:
    out = eve.with_name(f"{mode}.json")
    _run(
        [str(BIN / "eve-enricher"), "enrich", str(eve), "--cache", str(db), "-o", str(out)]
        + ["--mode", mode, "-q"]
    )
    return out.read_bytes().splitlines(keepends=True)


def _tuple(obj: dict[str, Any]) -> tuple[str, int, str, int]:
    ip = ipaddress.ip_address
    return (str(ip(obj["src_ip"])), obj["src_port"], str(ip(obj["dest_ip"])), obj["dest_port"])


def _suricata(pcap: Path, d: Path, checksums: bool = True) -> Path:
    run_suricata(
        pcap, outdir=d, checksum_validation=checksums, extra=(*FIXED_INSPECTION, *COMMUNITY_ID)
    )
    return d / "eve.json"


def _spliced(raw: bytes, enriched: bytes) -> dict[str, Any]:
    """The keys extra-data added to Suricata's line (none: the line is unchanged)."""
    if enriched == raw:
        return {}
    body = raw.rstrip()[:-1]
    assert enriched.startswith(body + b","), (raw, enriched)
    added: dict[str, Any] = orjson.loads(b"{" + enriched[len(body) + 1 :])
    assert set(added) <= {"proxy", "encapsulation"}, added
    return added


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("keep", [False, True], ids=["restored", "kept"])
def test_both_modes_against_suricata_community_id(name: str, keep: bool, tmp_path: Path) -> None:
    counts = check_modes(PCAPS / f"{name}.pcap", CASES[name], keep, tmp_path)
    assert counts["proxied"] > 0
    assert counts["real"] > 0  # every capture has attacks through PROXY headers


def check_modes(raw_pcap: Path, proxy: str, keep: bool, work: Path) -> dict[str, int]:
    """Normalize ``raw_pcap`` (addresses restored, or kept), run Suricata with community-id,
    enrich in both modes and check them against each other and Suricata (module docstring).
    Also used by the lab test on freshly recorded traffic."""
    norm, db = work / "norm.pcap", work / "conn.db"
    argv = [str(BIN / "suricata-normalizer"), "rewrite", str(raw_pcap)]
    argv += ["-o", str(norm), "--proxy", proxy, "--cache", str(db), "-q"]
    _run(argv + (["--keep-addresses"] if keep else []))
    eve = _suricata(norm, work)
    raw = eve.read_bytes().splitlines(keepends=True)
    extra, over = _enrich(eve, db, "extra-data"), _enrich(eve, db, "overwrite")
    assert len(raw) == len(extra) == len(over)
    proxied = real = 0
    for r, x, o in zip(raw, extra, over, strict=True):
        before = orjson.loads(r)
        added = _spliced(r, x)
        if "proxy" not in added:
            assert o == r  # nothing known: both modes pass the line as Suricata wrote it
            continue
        proxied += 1
        after, ov = orjson.loads(x), orjson.loads(o)
        assert not schema_errors(after) - schema_errors(before), after
        assert not schema_errors(ov) - schema_errors(before), ov
        px = added["proxy"]
        assert ov["proxy"]["wire"] == px["wire"] and ov["proxy"]["header"] == px["header"]
        if keep:  # Suricata saw the wire hop: its community_id is the wire one
            assert _tuple(px["wire"]) == _tuple(before)
            assert px["wire"]["community_id"] == before["community_id"]
        if "real" not in px:  # LOCAL: the wire tuple is all there is
            assert px["header"]["command"] == "LOCAL"
            assert _tuple(ov) == _tuple(before)
            continue
        real += 1
        if not keep:  # Suricata saw the restored (real) tuple
            assert _tuple(px["real"]) == _tuple(before)
            assert px["real"]["community_id"] == before["community_id"]
        assert _tuple(ov) == _tuple(px["real"])
        assert ov["community_id"] == px["real"]["community_id"]
    return {"proxied": proxied, "real": real}


def test_suricata_tunnel_object_survives_both_modes(tmp_path: Path) -> None:
    """Suricata decoding the VXLAN capture itself writes ``tunnel`` on its alerts; the cache
    from ``--decap`` knows the inner connections: enriched events get ``proxy`` and our
    ``encapsulation``, and keep Suricata's ``tunnel`` as it was."""
    pcap, db = PCAPS / "vxlan-haproxy-v2.pcap", tmp_path / "conn.db"
    argv = [str(BIN / "suricata-normalizer"), "rewrite", str(pcap), "-o", str(tmp_path / "n.pcap")]
    argv += ["--decap", "--tunnel-peer", "10.99.0.0/24"]  # the capture's VXLAN underlay
    _run(argv + ["--proxy", "192.0.2.1/32", "--keep-addresses", "--cache", str(db)])
    eve = _suricata(pcap, tmp_path, checksums=False)  # the raw capture, Suricata's decoder
    raw = eve.read_bytes().splitlines(keepends=True)
    extra, over = _enrich(eve, db, "extra-data"), _enrich(eve, db, "overwrite")
    tunneled = 0
    for r, x, o in zip(raw, extra, over, strict=True):
        before = orjson.loads(r)
        added = _spliced(r, x)
        if "tunnel" not in before:
            continue
        tunneled += 1
        ov = orjson.loads(o)
        assert "proxy" in added and added["encapsulation"]["type"] == "vxlan", added
        assert ov["tunnel"] == before["tunnel"]
        assert list(ov["tunnel"]) == list(before["tunnel"])  # same keys, same order
        assert {"depth", "pcap_cnt", "pkt_src"} <= set(ov["tunnel"])
        assert ov["encapsulation"] == added["encapsulation"]
        assert not schema_errors(ov) - schema_errors(before), ov
        assert not schema_errors(orjson.loads(x)) - schema_errors(before)
    assert tunneled > 0
