"""Decapsulation wired in: pipeline, header stripping on inner flows, config, CLI, cache rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from normalizer.adapters.config import ConfigError, build_options
from normalizer.adapters.pcap_io import CaptureReader, PcapWriter
from normalizer.cache.connections import ConnectionCache
from normalizer.cli import main
from normalizer.commands.rewrite import rewrite_file
from normalizer.core.frame import LINKTYPE_ETHERNET, LINKTYPE_RAW, locate_tcp
from normalizer.core.options import Options
from normalizer.core.pipeline import Pipeline
from normalizer.tunnels import geneve
from normalizer.tunnels.flows import TunnelFlow
from tests import encap
from tests.normalizer.core.test_engine import REQ, V2, conversation
from tests.normalizer.packets import PROXY4, Conv, assert_valid

OUTER = ("10.9.0.1", "10.9.0.2")
AWS = geneve.aws_options(bytes.fromhex("0a1b2c3d4e5f6071"), bytes(8), b"\xca\xfe\xf0\x0d")


def _opts(**kw: object) -> Options:
    kw.setdefault("tunnel_peers", (f"{OUTER[0]}/32",))
    return Options(proxies=(f"{PROXY4}/32",), decapsulate=True, restore_addresses=False, **kw)  # type: ignore[arg-type]


def _run(
    frames: list[bytes], opts: Options, linktype: int = LINKTYPE_ETHERNET
) -> tuple[Pipeline, list[bytes], list[TunnelFlow]]:
    rows: list[TunnelFlow] = []
    pipe = Pipeline(opts, linktype, on_tunnels=rows.extend)
    for i, f in enumerate(frames):
        pipe.push(f, i * 1000)
    pipe.flush()
    return pipe, [bytes(f) for _t, f in pipe.take()], rows


def test_identical_proxied_flows_in_two_vnis_are_stripped_separately() -> None:
    conv = conversation(Conv(), V2, coalesce=False)
    frames = [encap.vxlan_frame(f, vni, *OUTER) for f in conv for vni in (100, 200)]
    pipe, out, rows = _run(frames, _opts())
    c = pipe.counters
    assert c.headers_stripped == {"proxy-v2": 2} and c.flows_created == 2
    assert c.tunnel_decapsulated == len(frames)
    assert pipe.linktype == LINKTYPE_ETHERNET
    by_vlan: dict[bytes, list[bytes]] = {}
    for f in out:
        t = locate_tcp(f)
        assert t is not None
        assert_valid(f[:12] + f[16:])
        by_vlan.setdefault(t.vlan, []).append(f[:12] + f[16:])
    plain = conversation(Conv(), b"", coalesce=True)
    for vlan, flow in by_vlan.items():
        assert vlan in (b"\x00\x64", b"\x00\xc8")
        assert REQ in b"".join(flow) and b"\r\n\r\n\x00\r\nQUIT\n" not in b"".join(flow)
        assert len(flow) == len(plain) + 1  # the server's ack of the header stays, shifted
    # Each flow's row twice: when it appeared, and its last_seen at the end of input.
    got = sorted((r.tunnel["vni"], r.vlan) for r in rows)
    assert got == sorted(2 * [(100, b"\x00\x64"), (200, b"\x00\xc8")])


def test_geneve_inner_ip_gets_ethernet_and_its_options_reach_the_rows() -> None:
    conv = conversation(Conv(), V2, coalesce=True)
    frames = [encap.geneve_frame(f[14:], 5, *OUTER, options=AWS) for f in conv]
    pipe, out, rows = _run(frames, _opts())
    assert pipe.counters.headers_stripped == {"proxy-v2": 1}
    assert all(f[12:14] == b"\x81\x00" and f[16:18] == b"\x08\x00" for f in out)
    row = rows[0]
    assert rows == [row, row]  # created, then its final last_seen
    assert row.tunnel == {
        "type": "geneve",
        "vni": 5,
        "vlan": 5,
        "outer": {
            "src_ip": OUTER[0],
            "dest_ip": OUTER[1],
            "src_port": 49152,
            "dest_port": 6081,
            "vlan": [],
        },
        "eni_id": "0a1b2c3d4e5f6071",
        "attachment_id": "0000000000000000",
        "flow_cookie": "cafef00d",
    }


def test_without_decap_tunnel_packets_pass_byte_identical() -> None:
    frames = [encap.vxlan_frame(f, 1, *OUTER) for f in conversation(Conv(), V2, coalesce=True)]
    pipe, out, rows = _run(frames, Options(proxies=(f"{PROXY4}/32",)))
    assert out == frames and rows == [] and pipe.counters.tunnel_passed == 0


def test_raw_input_gives_an_ethernet_output() -> None:
    frames = [encap.vxlan_frame(f, 1, *OUTER)[14:] for f in conversation(Conv(), V2, coalesce=True)]
    pipe, out, _rows = _run(frames + [b"\x45" + bytes(30)], _opts(), LINKTYPE_RAW)
    assert pipe.linktype == LINKTYPE_ETHERNET and pipe.counters.headers_stripped
    assert out[-1][12:14] == b"\x08\x00" and pipe.counters.tunnel_passed == 1


def test_rows_are_bounded_and_idle_flows_retired() -> None:
    frames = [
        encap.vxlan_frame(Conv(cport=40000 + i).seg(True, 0, 0, b"x", "PA"), 1, *OUTER)
        for i in range(5)
    ]
    rows: list[TunnelFlow] = []
    pipe = Pipeline(_opts(max_flows=3), LINKTYPE_ETHERNET, on_tunnels=rows.extend)
    for f in frames:
        pipe.push(f, 0)
    pipe.take()
    assert pipe.tunnels is not None and len(pipe.tunnels) == 3 and len(rows) == 5 + 2
    pipe.tick(601 * 1_000_000_000)
    pipe.take()
    assert len(pipe.tunnels) == 0 and len(rows) == 5 + 2 + 3


# -- config and CLI ----------------------------------------------------------------------------


def test_config_keys() -> None:
    o = build_options(
        {
            "proxies": ["192.0.2.1"],
            "decapsulate": True,
            "tunnel_peers": ["10.9.0.1", "2001:db8::/32"],
            "vxlan_ports": [4789, 8472],
            "vni_vlan": {"100": 10},
        },
        {},
    )
    assert o.tunnel_peers == ("10.9.0.1/32", "2001:db8::/32")
    assert (o.decapsulate, o.vxlan_ports, o.geneve_ports, o.vni_vlan) == (
        True,
        (4789, 8472),
        (6081,),
        ((100, 10),),
    )


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("decapsulate", "yes", "true or false"),
        ("vxlan_ports", 4789, "list of UDP ports"),
        ("geneve_ports", [70000], "not a UDP port"),
        ("vni_vlan", {"x": 1}, "not a VNI"),
        ("vni_vlan", {"16777216": 1}, "24 bits"),
        ("vni_vlan", {"1": 4095}, "not a VLAN id"),
        ("vni_vlan", {"1": 5, "2": 5}, "more than one VNI"),
        ("vni_vlan", [1, 2], "table of VNI"),
        ("tunnel_peers", "10.9.0.1", "list of CIDRs"),
        ("tunnel_peers", ["10.9.0.999"], "not an IP address"),
    ],
)
def test_config_errors_name_the_key(key: str, value: object, why: str) -> None:
    with pytest.raises(ConfigError, match=f"normalizer.{key}: .*{why}"):
        build_options({"proxies": ["192.0.2.1"], key: value}, {})


def _write(path: Path, frames: list[bytes], linktype: int = LINKTYPE_ETHERNET) -> None:
    with path.open("wb") as fh:
        w = PcapWriter(fh, linktype)
        for i, f in enumerate(frames):
            w.write(1_700_000_000 * 1_000_000_000 + i * 1000, f)


def _read(path: Path) -> list[bytes]:
    with path.open("rb") as fh:
        return [f for _t, f, _o in CaptureReader(fh)]


def test_cli_decap_flag_and_config_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst, cfg = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "c.toml"
    frames = [encap.vxlan_frame(f, 7, *OUTER) for f in conversation(Conv(), V2, coalesce=True)]
    _write(src, frames)
    peer = ["--tunnel-peer", OUTER[0]]
    assert main(["rewrite", str(src), "-o", str(dst), "--proxy", PROXY4, "--decap", *peer]) == 0
    assert "tunnels: 8 decapsulated" in capsys.readouterr().err
    assert all(f[12:16] == b"\x81\x00\x00\x07" for f in _read(dst))
    cfg.write_text("[normalizer]\ndecapsulate = true\n")
    args = ["rewrite", str(src), "-o", str(dst), "--proxy", PROXY4, "--config", str(cfg)]
    assert main([*args, "--no-decap", "-q"]) == 0
    assert _read(dst) == frames
    cfg.write_text('[normalizer]\ndecapsulate = true\ntunnel_peers = ["10.9.0.0/24"]\n')
    assert main([*args, "-q"]) == 0
    assert all(f[12:16] == b"\x81\x00\x00\x07" for f in _read(dst))
    cfg.write_text('[normalizer]\nvni_vlan = { "7" = 4095 }\n')
    assert main(args) == 2
    assert "normalizer.vni_vlan" in capsys.readouterr().err


def test_cache_rows_carry_the_tunnel(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    proxied = conversation(Conv(), V2, coalesce=True)
    other = conversation(Conv(client="192.0.2.9", cport=41000), b"", coalesce=True)
    _write(src, [encap.geneve_frame(f[14:], 9, *OUTER, options=AWS) for f in proxied + other])
    cache = ConnectionCache(tmp_path / "c.db")
    rewrite_file(src, dst, _opts(), on_events=cache.record, on_tunnels=cache.record_tunnels)
    [conn] = cache._db.execute("SELECT tunnel FROM connections").fetchall()
    assert json.loads(conn[0])["flow_cookie"] == "cafef00d"
    row = cache.lookup_wire("192.0.2.1", 40000, "192.0.2.2", 80, ts=1_700_000_001.0)
    assert row is not None and row["tunnel"]["vni"] == 9
    # What the enricher does for any event, proxied or not: its vlan array and tuple.
    hit = cache.lookup_tunnel("192.0.2.2", 80, "192.0.2.9", 41000, [9], ts=1_700_000_001.0)
    assert hit is not None and hit["tunnel"]["eni_id"] == "0a1b2c3d4e5f6071"
    assert hit["last_seen"] > hit["first_seen"]
    assert (
        cache.lookup_tunnel("192.0.2.2", 80, "192.0.2.9", 41000, [10], ts=1_700_000_001.0) is None
    )
    assert cache.expire(older_than=2e9) == 1
    assert cache._db.execute("SELECT count(*) FROM tunnels").fetchone()[0] == 0


# -- tunnel trust (issue 11, class 4) ------------------------------------------------------------


def test_decap_without_tunnel_peers_is_refused_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=r"normalizer\.tunnel_peers: .*0\.0\.0\.0/0"):
        build_options({"proxies": ["192.0.2.1"], "decapsulate": True}, {})
    src = tmp_path / "in.pcap"
    _write(src, [])
    argv = ["rewrite", str(src), "-o", str(tmp_path / "o.pcap"), "--proxy", PROXY4, "--decap"]
    assert main(argv) == 2
    assert "normalizer.tunnel_peers" in capsys.readouterr().err
    assert not (tmp_path / "o.pcap").exists()
    anywhere = build_options(
        {"proxies": ["192.0.2.1"], "decapsulate": True, "tunnel_peers": ["0.0.0.0/0", "::/0"]}, {}
    )
    assert anywhere.tunnel_peers == ("0.0.0.0/0", "::/0")
    assert build_options({"proxies": ["192.0.2.1"], "tunnel_peers": []}, {}).tunnel_peers == ()


def _forged() -> list[bytes]:
    """A proxied conversation whose PROXY header names a client the sender made up."""
    return conversation(Conv(), V2, coalesce=True)


@pytest.mark.parametrize("outer", [("10.66.0.1", "10.9.0.2"), ("2001:db8:66::1", "2001:db8::2")])
def test_tunnel_from_a_stranger_is_passed_as_captured_and_never_opened(
    outer: tuple[str, str],
) -> None:
    """The inner frames claim the trusted proxy; their outer source is no peer: nothing of them
    reaches the core as an inner frame, no header is honoured, no row is written."""
    frames = [encap.vxlan_frame(f, 7, *outer) for f in _forged()]
    frames += [encap.geneve_frame(f[14:], 9, *outer, options=AWS) for f in _forged()]
    events: list[object] = []
    rows: list[TunnelFlow] = []
    pipe = Pipeline(_opts(), LINKTYPE_ETHERNET, on_events=events.extend, on_tunnels=rows.extend)
    for i, f in enumerate(frames):
        pipe.push(f, i * 1000)
    pipe.flush()
    out = [bytes(f) for _t, f in pipe.take()]
    c = pipe.counters
    assert out == frames and events == [] and rows == []
    assert c.tunnel_untrusted == len(frames) and c.tunnel_decapsulated == 0
    assert c.headers_stripped == {} and c.flows_created == 0
    # The same frames from the peer are opened and stripped (the check is what made the difference).
    trusted = [encap.vxlan_frame(f, 7, *OUTER) for f in _forged()]
    pipe, out, rows = _run(trusted, _opts())
    assert pipe.counters.headers_stripped == {"proxy-v2": 1} and rows


def test_fragments_from_a_stranger_are_not_held() -> None:
    big = Conv().seg(True, 0, 0, b"x" * 1200, "PA")
    frags = encap.fragment(encap.vxlan_frame(big, 7, "10.66.0.1", "10.9.0.2"), 256)
    pipe = Pipeline(_opts(), LINKTYPE_ETHERNET)
    for i, f in enumerate(frags):
        pipe.push(f, i)
        assert pipe.decap is not None and pipe.decap.held_frames == 0
    out = [bytes(f) for _t, f in pipe.take()]
    c = pipe.counters
    assert out == frags and c.tunnel_fragments == 0
    assert (c.tunnel_untrusted, c.tunnel_passed) == (1, len(frags) - 1)


def test_cli_tunnel_peer_flag_opens_only_those_sources(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    good = [encap.vxlan_frame(f, 7, *OUTER) for f in _forged()]
    bad = [encap.vxlan_frame(f, 8, "10.66.0.1", OUTER[1]) for f in _forged()]
    _write(src, good + bad)
    stats = tmp_path / "s.json"
    argv = ["rewrite", str(src), "-o", str(dst), "--proxy", PROXY4, "--decap", "-q"]
    assert main([*argv, "--tunnel-peer", "10.9.0.0/24", "--stats-json", str(stats)]) == 0
    counters = json.loads(stats.read_text())
    assert counters["tunnel_untrusted"] == len(bad)
    assert counters["tunnel_decapsulated"] == len(good)
    assert _read(dst)[-len(bad) :] == bad
