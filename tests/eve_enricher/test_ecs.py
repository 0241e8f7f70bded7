"""The Elasticsearch ingest pipeline suricata/elasticsearch/eve-enricher-ecs.json: every field it
writes is an ECS field of the right type (checked against ECS's own definitions, a subset of
elastic/ecs generated/ecs/ecs_flat.yml stored in ecs_fields.yml with its commit), and run over
events the enricher wrote in both modes it maps the proxy hop to ``source.nat`` /
``destination.nat``, the real ends to ``source`` / ``destination`` and all four addresses to
``related.ip``.

No Elasticsearch here: the pipeline is run by a small interpreter of exactly the processors and
options it uses (``set`` with ``copy_from``, ``append``, ``rename``, ``if`` conditions of the
form ``ctx.a?.b != null && ...``), following the ingest documentation's semantics; a processor
or option outside that set fails the test instead of being skipped.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from eve_enricher.enrich import Mode
from eve_enricher.lookup import CacheLookup, Matcher
from eve_enricher.stream import LineEnricher
from normalizer.cache.connections import ConnectionCache
from tests.eve_enricher.helpers import BACKEND, CLIENT, PROXY, TARGET, alert, event, line

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "suricata" / "elasticsearch" / "eve-enricher-ecs.json"
ECS = yaml.safe_load((Path(__file__).with_name("ecs_fields.yml")).read_text())
_MISSING = object()
_TERM = re.compile(r"ctx\.([A-Za-z_][\w?.]*) != null")
_TEMPLATE = re.compile(r"\{\{\{([\w.]+)\}\}\}")


def _get(doc: dict[str, Any], path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    cur = doc
    for part in parents:
        cur = cur.setdefault(part, {})
    cur[leaf] = value


def _pop(doc: dict[str, Any], path: str) -> Any:
    *parents, leaf = path.split(".")
    cur = _get(doc, ".".join(parents)) if parents else doc
    return cur.pop(leaf)


def _condition(expr: str, doc: dict[str, Any]) -> bool:
    ok = True
    for term in expr.split(" && "):
        m = _TERM.fullmatch(term)
        assert m, f"condition the interpreter does not know: {term!r}"
        value = _get(doc, m.group(1).replace("?", ""))
        ok = ok and value is not _MISSING and value is not None
    return ok


def run_pipeline(pipeline: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for proc in pipeline["processors"]:
        ((kind, opts),) = proc.items()
        opts = dict(opts)
        opts.pop("tag", None)
        cond = opts.pop("if", None)
        if cond is not None and not _condition(cond, doc):
            continue
        if kind == "set":
            field, src = opts.pop("field"), opts.pop("copy_from")
            ignore_empty, override = opts.pop("ignore_empty_value"), opts.pop("override", True)
            value = _get(doc, src)
            if ignore_empty and (value is _MISSING or value is None or value == ""):
                continue
            if not override and _get(doc, field) not in (_MISSING, None):
                continue
            _put(doc, field, copy.deepcopy(value))
        elif kind == "append":
            field, values, dups = opts.pop("field"), opts.pop("value"), opts.pop("allow_duplicates")
            rendered = [_TEMPLATE.sub(lambda m: str(_get(doc, m.group(1))), v) for v in values]
            cur = _get(doc, field)
            cur = [] if cur is _MISSING else cur if isinstance(cur, list) else [cur]
            for v in rendered:
                if dups or v not in cur:
                    cur.append(v)
            _put(doc, field, cur)
        elif kind == "rename":
            _put(doc, opts.pop("target_field"), _pop(doc, opts.pop("field")))
        else:
            pytest.fail(f"processor the interpreter does not know: {kind}")
        assert not opts, f"{kind}: options the interpreter does not know: {opts}"
    return doc


def _pipeline() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PIPELINE.read_text())
    return data


def _written_fields(pipeline: dict[str, Any]) -> set[str]:
    fields = set()
    for proc in pipeline["processors"]:
        ((kind, opts),) = proc.items()
        if kind in ("set", "append"):
            fields.add(opts["field"])
    return fields


def test_every_field_written_is_ecs() -> None:
    fields = _written_fields(_pipeline())
    assert fields == set(ECS)
    renames = [p["rename"] for p in _pipeline()["processors"] if "rename" in p]
    assert [r["target_field"] for r in renames] == ["proxy"]  # ours, not an ECS field


def _check_types(doc: dict[str, Any]) -> None:
    for field, spec in ECS.items():
        value = _get(doc, field)
        if value is _MISSING:
            continue
        values = value if "array" in spec["normalize"] else [value]
        if "array" in spec["normalize"]:
            assert isinstance(value, list), (field, value)
        for v in values:
            if spec["type"] == "ip":
                ipaddress.ip_address(v)
            elif spec["type"] == "long":
                assert type(v) is int and -(2**63) <= v < 2**63, (field, v)
            else:
                pytest.fail(f"{field}: type {spec['type']} not checked")


def _enriched(db: Path, mode: Mode, ev: dict[str, Any]) -> dict[str, Any]:
    enricher = LineEnricher(Matcher(CacheLookup(ConnectionCache(db, readonly=True))), mode=mode)
    out: dict[str, Any] = orjson.loads(enricher.line(line(ev), 0))
    return out


def _ends(doc: dict[str, Any], key: str) -> tuple[str, int]:
    return (doc[key]["ip"], doc[key]["port"])


@pytest.mark.parametrize("mode", ["overwrite", "extra-data"])
@pytest.mark.parametrize("to_server", [True, False])
def test_proxy_hop_maps_to_nat_fields(db: Path, mode: Mode, to_server: bool) -> None:
    src, dst = (PROXY, BACKEND) if to_server else (BACKEND, PROXY)
    ev = _enriched(db, mode, alert(src, dst) if to_server else event("http", src, dst))
    doc = run_pipeline(_pipeline(), ev)
    _check_types(doc)
    real_src, real_dst = (CLIENT, TARGET) if to_server else (TARGET, CLIENT)
    assert _ends(doc, "source") == real_src and _ends(doc, "destination") == real_dst
    assert (doc["source"]["nat"]["ip"], doc["source"]["nat"]["port"]) == src
    assert (doc["destination"]["nat"]["ip"], doc["destination"]["nat"]["port"]) == dst
    assert sorted(doc["related"]["ip"]) == sorted({a for a, _ in (CLIENT, TARGET, PROXY, BACKEND)})
    if mode == "extra-data":  # Suricata's own keys are still the wire tuple
        assert (doc["src_ip"], doc["src_port"]) == src


def test_filebeat_module_layout(db: Path) -> None:
    """Under Filebeat's suricata module the eve keys sit in suricata.eve and source/destination
    are already set from src_ip/dest_ip: the pipeline keeps those and adds the NAT fields."""
    ev = _enriched(db, "overwrite", alert(PROXY, BACKEND))
    doc = {
        "source": {"ip": ev["src_ip"], "port": ev["src_port"]},
        "destination": {"ip": ev["dest_ip"], "port": ev["dest_port"]},
        "related": {"ip": [ev["src_ip"], ev["dest_ip"]]},
        "suricata": {"eve": {"proxy": ev["proxy"], "alert": ev["alert"]}},
    }
    out = run_pipeline(_pipeline(), doc)
    _check_types(out)
    assert _ends(out, "source") == CLIENT and _ends(out, "destination") == TARGET
    assert out["source"]["nat"]["ip"] == PROXY[0] and out["destination"]["nat"]["port"] == 80
    assert len(out["related"]["ip"]) == 4 and "proxy" not in out["suricata"]["eve"]


def test_events_without_proxy_are_left_alone() -> None:
    ev = event("http", ("192.0.2.9", 9), BACKEND)
    assert run_pipeline(_pipeline(), ev) == ev
