"""The ``encapsulation`` object: events of decapsulated inner flows name the VXLAN/GENEVE
tunnel they came through, proxied or not, and the VLAN id the normalizer gave the VNI keeps two
mirror sessions' identical tuples apart."""

from __future__ import annotations

from pathlib import Path

import orjson

from eve_enricher.cli import main
from normalizer.cache.connections import ConnectionCache
from normalizer.commands.rewrite import rewrite_file
from normalizer.core.options import Options
from normalizer.tunnels import geneve
from normalizer.tunnels.flows import TunnelFlow
from tests import encap
from tests.eve_enricher.helpers import T0, alert, eve_ts, event, line
from tests.normalizer.core.test_engine import V2, conversation
from tests.normalizer.core.test_pipeline_tunnels import _write
from tests.normalizer.packets import PROXY4, Conv

OUTER = ("10.9.0.1", "10.9.0.2")
AWS = geneve.aws_options(bytes.fromhex("0a1b2c3d4e5f6071"), bytes(8), b"\xca\xfe\xf0\x0d")
OTHER = ("192.0.2.9", 41000)


def _cache(tmp: Path) -> Path:
    """A cache filled by the normalizer itself from a GENEVE capture (VNI 9): one proxied inner
    flow (wire 192.0.2.1:40000 -> 192.0.2.2:80) and one plain inner flow from OTHER."""
    src, dst, db = tmp / "in.pcap", tmp / "out.pcap", tmp / "c.db"
    proxied = conversation(Conv(), V2, coalesce=True)
    other = conversation(Conv(client=OTHER[0], cport=OTHER[1]), b"", coalesce=True)
    _write(src, [encap.geneve_frame(f[14:], 9, *OUTER, options=AWS) for f in proxied + other])
    cache = ConnectionCache(db)
    opts = Options(
        proxies=(f"{PROXY4}/32",),
        decapsulate=True,
        tunnel_peers=("0.0.0.0/0", "::/0"),
        restore_addresses=False,
    )
    rewrite_file(src, dst, opts, on_events=cache.record, on_tunnels=cache.record_tunnels)
    cache.close()
    return db


def test_events_name_their_tunnel(tmp_path: Path) -> None:
    db = _cache(tmp_path)
    server = ("192.0.2.2", 80)
    events = [
        # proxied inner flow: real tuple, proxy object and tunnel
        alert(("192.0.2.1", 40000), server, vlan=[9]),
        # plain inner flow on the VNI's VLAN: only the tunnel object
        event("http", server, OTHER, t=T0 + 1, flow_id=2, vlan=[9]),
        # same tuple on another VLAN (another mirror session): not this tunnel
        event("http", server, OTHER, t=T0 + 1, flow_id=3, vlan=[10]),
        # no VLAN at all: not decapsulated by us
        event("http", server, OTHER, t=T0 + 1, flow_id=4),
    ]
    eve = tmp_path / "eve.json"
    eve.write_bytes(b"".join(line(e) for e in events))
    out = tmp_path / "out.json"
    assert main(["enrich", str(eve), "--cache", str(db), "-o", str(out), "-q"]) == 0
    got = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(got) == 4
    a, plain, other_vlan, untagged = got
    assert a["proxy"]["wire"]["src_ip"] == "192.0.2.1"
    assert a["encapsulation"]["type"] == "geneve" and a["encapsulation"]["vni"] == 9
    assert a["encapsulation"]["flow_cookie"] == "cafef00d"
    assert plain["encapsulation"]["eni_id"] == "0a1b2c3d4e5f6071" and "proxy" not in plain
    assert plain["encapsulation"]["outer"]["src_ip"] == OUTER[0]
    assert {k: v for k, v in plain.items() if k != "encapsulation"} == events[1]
    # untouched events are the input bytes
    lines = out.read_bytes().splitlines(keepends=True)
    assert lines[2] == line(events[2]) and lines[3] == line(events[3])
    assert "encapsulation" not in other_vlan and "encapsulation" not in untagged


def test_portless_events_name_their_tunnel(tmp_path: Path) -> None:
    """ICMP has no ports: the normalizer records such inner flows with ports 0."""
    db = _cache(tmp_path)
    cache = ConnectionCache(db)
    tunnel = {"type": "vxlan", "vni": 7, "vlan": 7, "outer": {"src_ip": OUTER[0]}}
    tunnel["outer"].update({"dest_ip": OUTER[1], "src_port": 0, "dest_port": 4789, "vlan": []})
    ns = int(T0 * 1e9)
    flow = TunnelFlow(b"\x00\x07", 1, ("192.0.2.9", 0), ("192.0.2.2", 0), tunnel, ns, ns)
    cache.record_tunnels([flow])
    cache.close()
    ping = {"timestamp": eve_ts(T0 + 1), "flow_id": 9, "event_type": "flow", "vlan": [7]}
    ping.update({"src_ip": "192.0.2.9", "dest_ip": "192.0.2.2", "proto": "ICMP", "icmp_type": 8})
    other = {**ping, "vlan": [8]}
    eve, out = tmp_path / "eve.json", tmp_path / "out.json"
    eve.write_bytes(line(ping) + line(other))
    assert main(["enrich", str(eve), "--cache", str(db), "-o", str(out), "-q"]) == 0
    a, b = out.read_bytes().splitlines(keepends=True)
    assert orjson.loads(a) == {**ping, "encapsulation": tunnel}
    assert b == line(other)


def test_forged_tunnel_fields_pass_through_unchanged(tmp_path: Path) -> None:
    """Garbage where a tunnel lookup reads (vlan not a list of ints, addresses that are not
    addresses, no ports and no addresses) is no tunnel: every line comes out as it went in."""
    db = _cache(tmp_path)
    server = ("192.0.2.2", 80)
    base = event("http", server, OTHER, t=T0 + 1, flow_id=2)
    events = [
        {**base, "vlan": "9"},
        {**base, "vlan": [None, "9", 1.5]},
        {**base, "src_ip": "not-an-address", "vlan": [9]},
        {**base, "src_ip": "192.0.2.2\x00", "dest_ip": "::::", "vlan": [9], "flow_id": 3},
        {k: v for k, v in base.items() if k not in ("src_port", "dest_port")} | {"vlan": [9]},
        {"event_type": "flow", "vlan": [9], "src_ip": 7, "dest_ip": None},
    ]
    eve, out = tmp_path / "eve.json", tmp_path / "out.json"
    eve.write_bytes(b"".join(line(e) for e in events))
    assert main(["enrich", str(eve), "--cache", str(db), "-o", str(out), "-q"]) == 0
    assert out.read_bytes() == eve.read_bytes()
