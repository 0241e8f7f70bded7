"""``--mode overwrite|extra-data``, the wire community_id and Suricata's own ``tunnel`` object.

extra-data keeps every byte Suricata wrote and adds the real tuple under ``proxy.real``;
overwrite names the attacker in Suricata's keys but leaves Suricata's ``tunnel`` (the outer
tuple of a tunnel Suricata decoded) as written; both carry the wire hop's community_id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from eve_enricher.community_id import community_id
from eve_enricher.enrich import Mode
from eve_enricher.lookup import CacheLookup, Matcher
from eve_enricher.stream import LineEnricher, splice
from normalizer.cache.connections import ConnectionCache
from tests.eve_enricher.helpers import BACKEND, CLIENT, PROXY, TARGET, alert, event, line
from tests.eve_enricher.schema import extension, schema_errors, suricata_properties

SURICATA_TUNNEL = {
    "src_ip": "10.99.0.1",
    "src_port": 52106,
    "dest_ip": "10.99.0.2",
    "dest_port": 4789,
    "proto": "UDP",
    "depth": 1,
    "pcap_cnt": 14,
    "pkt_src": "wire/pcap",
}


def _enricher(db: Path, mode: Mode) -> LineEnricher:
    return LineEnricher(Matcher(CacheLookup(ConnectionCache(db, readonly=True))), mode=mode)


def test_extra_data_keeps_suricata_bytes_and_adds_the_real_tuple(db: Path) -> None:
    # Suricata's own spelling: a space, an escaped slash and \u0000 that orjson would rewrite
    raw = line(alert(PROXY, BACKEND, tunnel=SURICATA_TUNNEL))
    raw = raw.replace(b'"url":"/?id=1"', b'"url":"\\/?id=1\\u0000"', 1)
    raw = raw.replace(b'"gid":1', b'"gid": 1', 1)
    out = _enricher(db, "extra-data").line(raw, 0)
    body = raw.rstrip(b"\n")[:-1]
    assert out.startswith(body + b',"proxy":{'), out  # every byte of Suricata's, in order
    ev = orjson.loads(out)
    assert ev["tunnel"] == SURICATA_TUNNEL
    real = ev["proxy"]["real"]
    assert (real["src_ip"], real["src_port"], real["dest_ip"], real["dest_port"]) == (
        *CLIENT,
        *TARGET,
    )
    assert real["community_id"] == community_id(6, CLIENT[0], TARGET[0], CLIENT[1], TARGET[1])
    wire = ev["proxy"]["wire"]
    assert wire["community_id"] == community_id(6, PROXY[0], BACKEND[0], PROXY[1], BACKEND[1])
    assert set(ev) - set(orjson.loads(raw)) == {"proxy"}


def test_extra_data_reverse_direction(db: Path) -> None:
    ev = orjson.loads(_enricher(db, "extra-data").line(line(event("http", BACKEND, PROXY)), 0))
    real = ev["proxy"]["real"]
    assert (real["src_ip"], real["src_port"]) == TARGET and ev["src_ip"] == BACKEND[0]
    assert ev["proxy"]["wire"]["src_ip"] == BACKEND[0]


def test_overwrite_leaves_suricata_tunnel_object(db: Path) -> None:
    ev = alert(PROXY, BACKEND, tunnel=SURICATA_TUNNEL)
    out = orjson.loads(_enricher(db, "overwrite").line(line(ev), 0))
    assert (out["src_ip"], out["src_port"]) == CLIENT
    assert out["tunnel"] == SURICATA_TUNNEL
    assert "real" not in out["proxy"]
    assert out["proxy"]["wire"]["community_id"] == community_id(
        6, PROXY[0], BACKEND[0], PROXY[1], BACKEND[1]
    )


def test_unproxied_events_unchanged_in_both_modes(db: Path) -> None:
    raw = line(event("http", ("192.0.2.77", 1), BACKEND))
    for mode in ("overwrite", "extra-data"):
        e = _enricher(db, mode)  # type: ignore[arg-type]
        assert e.line(raw, 0) == raw
        assert e.counters.unknown == 1 and e.counters.unchanged == 1


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=8))
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(max_size=6), _values, max_size=5),
    st.dictionaries(st.sampled_from(["proxy", "encapsulation"]), _values, min_size=1),
    st.sampled_from([b"", b" ", b"\r", b"\t \r"]),
)
def test_splice_is_the_object_plus_the_keys(
    obj: dict[str, Any], added: dict[str, Any], pad: bytes
) -> None:
    """Splicing into Suricata's bytes gives the same document as adding the keys (for objects
    without them), and keeps the original bytes as a prefix."""
    obj = {k: v for k, v in obj.items() if k not in added}
    raw = orjson.dumps(obj).replace(b"}", pad + b"}") if not obj else orjson.dumps(obj)
    out = splice(raw + pad + b"\n", added)
    assert out.endswith(b"}\n") and out.count(b"\n") == 1
    assert orjson.loads(out) == {**obj, **added}
    assert out.startswith(raw[:-1])


def test_schema_extends_suricata_never_replaces() -> None:
    """Our keys are new top-level keys; Suricata's ``tunnel`` stays Suricata's definition."""
    ours = set(extension()["properties"])
    assert ours == {"proxy", "encapsulation"}
    assert "tunnel" in suricata_properties() and not ours & suricata_properties()
    assert schema_errors(alert(PROXY, BACKEND, community_id=False, tunnel=SURICATA_TUNNEL)) == {
        ("alert", "Additional properties are not allowed ('flow' was unexpected)")
    }
