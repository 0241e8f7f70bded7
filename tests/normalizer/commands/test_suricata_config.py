"""suricata-config: the operator's suricata.yaml -> an include fragment that only adds.

The stock-file tests read Debian's /etc/suricata/suricata.yaml (installed by scripts/setup.sh)
and check the promise entry by entry: every af-packet entry and every output of the stock file
is in the fragment as it was, the only changes are the tap's entry and the enricher's needs, and
generating again from a config that already includes the fragment gives the same bytes. One
test compares with Suricata's own loader (``--dump-config`` of the stock file with and without
``include:`` of the fragment: the same keys and values but for the additions);
tests/lab/test_suricata_include.py runs real Suricata on the result.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from normalizer.adapters.config import ConfigError
from normalizer.cli import main
from normalizer.commands.suricata_config.fragment import (
    Config,
    Value,
    dump,
    fragment,
    generate,
    load,
)

STOCK = Path("/etc/suricata/suricata.yaml")
HEAD = "%YAML 1.1\n---\n"


def no_includes(name: str) -> str | None:
    raise AssertionError(f"unexpected include {name}")


def parse(text: str) -> Config:
    return load(text, no_includes)


def gen(text: str, tap: str = "snl0", includes: dict[str, str] | None = None) -> str:
    files = includes or {}
    return fragment(text, tap, lambda n: files[n]).text


def tap_entry(frag: Config, tap: str = "snl0") -> Config:
    afp = frag["af-packet"]
    assert isinstance(afp, list)
    (entry,) = [e for e in afp if isinstance(e, dict) and e.get("interface") == tap]
    return entry


@pytest.fixture(scope="module")
def stock() -> str:
    if not STOCK.exists():
        pytest.skip(f"{STOCK} not installed (scripts/setup.sh installs Suricata)")
    return STOCK.read_text()


# --- the stock Debian file --------------------------------------------------------------------


def test_stock_af_packet_entries_all_kept_and_tap_added(stock: str) -> None:
    before = parse(stock)["af-packet"]
    after = parse(gen(stock))["af-packet"]
    assert isinstance(before, list) and isinstance(after, list)
    assert [e for e in after if e != tap_entry({"af-packet": after})] == before
    tap = tap_entry({"af-packet": after})
    ids = {e.get("cluster-id") for e in before if isinstance(e, dict)}
    assert tap["cluster-id"] not in ids and tap["checksum-checks"] == "yes"
    # before "interface: default", whose values apply to interfaces not listed
    assert after.index(tap) == len(after) - 2 and after[-1] == {"interface": "default"}


def test_stock_outputs_all_kept_only_community_id_added(stock: str) -> None:
    before = parse(stock)["outputs"]
    after = parse(gen(stock))["outputs"]
    assert isinstance(before, list) and isinstance(after, list)
    assert len(after) == len(before)
    names = [next(iter(o)) for o in before if isinstance(o, dict)]
    assert {"fast", "eve-log", "stats", "file-store", "pcap-log"} <= set(names)
    expected = copy.deepcopy(before)
    eve = expected[names.index("eve-log")]
    assert isinstance(eve, dict) and isinstance(eve["eve-log"], dict)
    assert eve["eve-log"]["community-id"] == "false"  # Debian's default ...
    eve["eve-log"]["community-id"] = "yes"  # ... is the one value changed
    assert after == expected


def test_stock_types_are_what_the_enricher_needs(stock: str) -> None:
    after = parse(gen(stock))["outputs"]
    assert isinstance(after, list)
    eve = next(o["eve-log"] for o in after if isinstance(o, dict) and "eve-log" in o)
    assert isinstance(eve, dict) and isinstance(eve["types"], list)
    names = [t if isinstance(t, str) else next(iter(t)) for t in eve["types"] if t]
    assert {"alert", "flow", "dns", "http", "tls", "files", "stats"} <= set(names)


def test_stock_fragment_has_only_the_two_lists(stock: str) -> None:
    text = gen(stock)
    assert text.startswith(HEAD)  # Suricata refuses a file without the directive
    assert list(parse(text)) == ["af-packet", "outputs"]  # stream etc. stay the operator's


def test_stock_empty_values_stay_empty(stock: str) -> None:
    """``- dns:`` (no value) must not come back as the string "null"."""
    text = gen(stock)
    assert "        - dns:\n" in text and "null" not in text


def test_idempotent_on_stock_plus_fragment(stock: str) -> None:
    first = gen(stock)
    # suricata.yaml that includes the fragment at its end, and the fragment taken as the
    # operator's file: both give the same fragment again
    assert gen(stock + "\ninclude: normalizer.yaml\n", includes={"normalizer.yaml": first}) == first
    assert gen(first) == first


def test_skipped_include_is_the_operators_lists(stock: str) -> None:
    """The command skips an include naming its own output: edits of suricata.yaml show up."""
    first = gen(stock)
    edited = stock.replace("      filename: fast.log", "      filename: fast2.log")
    again = fragment(edited + "\ninclude: normalizer.yaml\n", "snl0", lambda n: None).text
    assert "fast2.log" in again and again != first


# --- Suricata's reading rules -------------------------------------------------------------------


def test_redefinition_replaces_the_whole_value() -> None:
    cfg = parse(HEAD + "stream:\n  memcap: 64mb\n  depth: 1mb\nstream:\n  midstream: true\n")
    assert cfg == {"stream": {"midstream": "true"}}


def test_include_at_top_and_nested_and_tag() -> None:
    files = {
        "a.yaml": HEAD + "x: 1\nlist:\n  - one\n",
        "b.yaml": HEAD + "deep: yes\n",
        "c.yaml": HEAD + "tagged: 3\n",
    }
    text = HEAD + "x: 0\ninclude: a.yaml\nm:\n  include: [b.yaml]\n  k: v\nt: !include c.yaml\n"
    cfg = load(text, lambda n: files[n])
    assert cfg == {"x": "1", "list": ["one"], "m": {"deep": "yes", "k": "v"}, "t": {"tagged": "3"}}


def test_keys_after_an_include_win() -> None:
    cfg = load(HEAD + "include: a.yaml\nx: 2\n", lambda n: HEAD + "x: 1\ny: 1\n")
    assert cfg == {"x": "2", "y": "1"}


def test_dotted_keys_do_not_prune() -> None:
    text = HEAD + "a:\n  b: 1\n  c: 2\nl:\n  - n: 1\na.b: 3\nl.0.n: 4\nl.0.m: 5\n"
    assert parse(text) == {"a": {"b": "3", "c": "2"}, "l": [{"n": "4", "m": "5"}]}


def test_plain_nulls_are_no_value_quoted_ones_are_strings() -> None:
    cfg = parse(HEAD + "a:\nb: ~\nc: null\nd: 'null'\ne: ''\nf: no\n")
    assert cfg == {"a": None, "b": None, "c": None, "d": "null", "e": "", "f": "no"}


def test_underscores_read_as_dashes_except_in_variable_groups() -> None:
    cfg = parse(HEAD + "vars:\n  address-groups:\n    HOME_NET: any\nsome_key: 1\n")
    assert cfg == {"vars": {"address-groups": {"HOME_NET": "any"}}, "some-key": "1"}


def test_include_loop_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="itself"):
        load(HEAD + "include: a.yaml\n", lambda n: HEAD + "include: a.yaml\n")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (HEAD + "af-packet: eth0\n", "af-packet"),
        (HEAD + "outputs:\n  - fast\n", "outputs"),
        (HEAD + "outputs:\n  - eve-log:\n      types: alert\n", "outputs.0.eve-log.types"),
        (HEAD + "a: [b\n", "not valid YAML"),
        (HEAD + "- a\n", "mapping"),
        (HEAD + "a: &x [1]\nb: *x\n", "b: YAML aliases"),
        (HEAD + "a: " + "[" * 2000 + "]" * 2000 + "\n", "nested too deep"),
    ],
)
def test_unusable_configs_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        gen(text)


# Everything a Suricata config can hold, as Suricata holds it: strings, no value, mappings, lists.
_keys = st.text("abcXYZ019-!#&*:'\" ", min_size=1, max_size=6).filter(lambda k: k.strip() == k)
_values: st.SearchStrategy[Value] = st.recursive(
    st.none()
    | st.sampled_from(["", "~", "null", "yes", "99", "- x", "a: b", "#c", "*d"])
    | st.text(max_size=8),
    lambda inner: (
        st.dictionaries(_keys, inner, min_size=1, max_size=4)
        | st.lists(st.dictionaries(_keys, inner, min_size=1, max_size=3) | st.text(min_size=1))
    ),
    max_leaves=12,
)


@given(st.dictionaries(_keys, _values, max_size=5))
def test_written_values_read_back_as_written(cfg: Config) -> None:
    assert load(dump(cfg, "header"), no_includes) == cfg


# --- the additions ------------------------------------------------------------------------------


def afp(*entries: str) -> str:
    return HEAD + "af-packet:\n" + "".join(f"  - {e}\n" for e in entries)


def test_cluster_id_avoids_explicit_inherited_and_automatic_ids() -> None:
    text = afp("interface: eth0\n    cluster-id: 98", "interface: eth1", "interface: eth2")
    assert tap_entry(parse(gen(text)))["cluster-id"] == "97"  # 98 explicit; 1, 2 automatic
    text = afp("interface: eth0", "interface: default\n    cluster-id: 98")
    assert tap_entry(parse(gen(text)))["cluster-id"] == "97"  # eth0 inherits 98


def test_existing_tap_entry_is_kept_and_fixed() -> None:
    mine = "interface: snl0\n    cluster-id: 7\n    bpf-filter: tcp"
    text = afp("interface: eth0\n    cluster-id: 7", mine)
    entry = tap_entry(parse(gen(text)))
    assert entry["bpf-filter"] == "tcp" and entry["cluster-id"] == "98"
    assert entry["checksum-checks"] == "yes"
    assert gen(gen(text)) == gen(text)


def test_no_af_packet_and_no_outputs() -> None:
    frag = parse(gen(HEAD + "vars: {}\n"))
    assert frag["af-packet"] == [tap_entry(frag)]
    assert frag["outputs"] == [
        {
            "eve-log": {
                "enabled": "yes",
                "filetype": "regular",
                "filename": "eve.json",
                "types": ["alert", "flow"],
                "community-id": "yes",
            }
        }
    ]


def test_only_a_syslog_eve_gets_a_file_eve_beside_it() -> None:
    text = HEAD + "outputs:\n  - eve-log:\n      enabled: yes\n      filetype: syslog\n"
    outputs = parse(gen(text))["outputs"]
    assert isinstance(outputs, list) and len(outputs) == 2
    assert outputs[0] == {"eve-log": {"enabled": "yes", "filetype": "syslog"}}


def test_disabled_eve_and_types_are_enabled_and_missing_types_added() -> None:
    text = HEAD + (
        "outputs:\n  - eve-log:\n      enabled: no\n      community-id: true\n"
        "      types:\n        - alert:\n            enabled: no\n            tagged-packets: yes\n"
        "        - dns\n"
    )
    result = fragment(text, "snl0", no_includes)
    (eve,) = parse(result.text)["outputs"]  # type: ignore[misc]
    assert eve == {
        "eve-log": {
            "enabled": "yes",
            "community-id": "true",
            "types": [{"alert": {"enabled": "yes", "tagged-packets": "yes"}}, "dns", "flow"],
        }
    }
    assert any("enabled alert" in n for n in result.notes)


def test_midstream_is_left_alone_and_noted() -> None:
    result = fragment(HEAD + "stream:\n  midstream: true\n", "snl0", no_includes)
    assert "stream" not in parse(result.text)
    assert any("midstream" in n for n in result.notes)


def test_generate_does_not_touch_its_input() -> None:
    cfg = parse(afp("interface: eth0") + "outputs:\n  - eve-log:\n      types: [dns]\n")
    before = copy.deepcopy(cfg)
    generate(cfg, "snl0")
    assert cfg == before


# --- the command --------------------------------------------------------------------------------


def test_command_writes_the_file_and_rerun_skips_its_own_include(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "suricata.yaml"
    conf.write_text(afp("interface: eth0\n    cluster-id: 99"))
    out = tmp_path / "normalizer.yaml"
    argv = ["suricata-config", "--suricata-yaml", str(conf), "--tap", "snl9", "-o", str(out)]
    assert main(argv) == 0
    first = out.read_text()
    assert tap_entry(parse(first), "snl9")["cluster-id"] == "98"
    assert "added snl9" in capsys.readouterr().err
    conf.write_text(conf.read_text() + "include: normalizer.yaml\n")
    assert main(argv) == 0
    assert out.read_text() == first


def test_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["suricata-config", "--suricata-yaml", str(tmp_path / "missing.yaml")]) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + "af-packet: eth0\n")
    assert main(["suricata-config", "--suricata-yaml", str(bad)]) == 2
    assert "af-packet" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text(HEAD)
    assert main(["suricata-config", "--suricata-yaml", str(good), "--tap", "a b"]) == 2


# --- against Suricata's own loader -----------------------------------------------------------


def dump_config(conf: Path) -> list[str]:
    """``suricata --dump-config`` (it honours ``include:`` in the file, not ``--include``)."""
    p = subprocess.run(
        ["suricata", "--dump-config", "-c", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    return [line for line in p.stdout.splitlines() if " = " in line]


def af_packet_entries(lines: list[str]) -> list[list[str]]:
    entries: dict[str, list[str]] = {}
    for line in lines:
        parts = line.split(".", 2)
        if parts[0] == "af-packet" and len(parts) == 3:
            entries.setdefault(parts[1], []).append(parts[2])
    return list(entries.values())


@pytest.mark.lab
def test_suricata_reads_stock_plus_fragment_as_stock_plus_additions(
    stock: str, tmp_path: Path
) -> None:
    if shutil.which("suricata") is None:
        pytest.skip("suricata not installed (scripts/setup.sh)")
    (tmp_path / "stock.yaml").write_text(stock)
    (tmp_path / "normalizer.yaml").write_text(gen(stock))
    (tmp_path / "with.yaml").write_text(stock + "\ninclude: normalizer.yaml\n")
    before, after = dump_config(tmp_path / "stock.yaml"), dump_config(tmp_path / "with.yaml")
    off, on = "outputs.1.eve-log.community-id = false", "outputs.1.eve-log.community-id = yes"
    assert off in before
    expected = [on if line == off else line for line in before]
    assert [x for x in after if not x.startswith("af-packet")] == [
        x for x in expected if not x.startswith("af-packet")
    ]
    tap = [e for e in af_packet_entries(after) if "interface = snl0" in e]
    assert len(tap) == 1 and "checksum-checks = yes" in tap[0]
    assert [e for e in af_packet_entries(after) if e not in tap] == af_packet_entries(before)


def flatten(value: Value, prefix: str = "") -> list[str]:
    """A tree as ``suricata --dump-config`` prints it: ``a.b = v``, ``(null)`` for no value."""
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = [(str(i), x) for i, x in enumerate(value)]
    else:
        return []
    out = []
    for key, x in pairs:
        name = f"{prefix}.{key}" if prefix else key
        shown = x
        if isinstance(value, list) and isinstance(x, dict):
            shown = next(iter(x), None)  # a list entry that is a mapping: named by its first key
        out.append(f"{name} = {shown if isinstance(shown, str) else '(null)'}")
        out += flatten(x, name)
    return out


SYNTHETIC = {
    "main.yaml": HEAD
    + """vars:
  address-groups:
    HOME_NET: "[10.0.0.0/8]"
af-packet:
  - interface: eth0
    cluster-id: 99
  - interface: default
    cluster_id: 50
outputs:
  - eve-log:
      enabled: no
      types:
        - alert:
        - dns:
            enabled: ~
        - flow
stream:
  memcap: 64mb
  reassembly:
    depth: 1mb
some_key: 'null'
empty:
include: [a.yaml]
stream.midstream: true
outputs.0.eve-log.filename: e.json
after: x
stream:
  midstream: false
nested:
  include: b.yaml
  own: 1
tagged: !include c.yaml
""",
    "a.yaml": HEAD + "after: from-a\nextra: [1, 2]\n",
    "b.yaml": HEAD + "b1: yes\nb_2: no\n",
    "c.yaml": HEAD + "c: 1\nlist:\n  - x: 1\n    y: 2\n",
}


@pytest.mark.lab
@pytest.mark.parametrize("which", ["stock", "synthetic"])
def test_load_reads_what_suricata_reads(which: str, tmp_path: Path) -> None:
    """Differential: our reading of a config against Suricata's ``--dump-config`` of it
    (includes, ``!include``, dotted keys, redefinitions, nulls, ``_`` -> ``-``)."""
    if shutil.which("suricata") is None:
        pytest.skip("suricata not installed (scripts/setup.sh)")
    if which == "stock":
        if not STOCK.exists():
            pytest.skip(f"{STOCK} not installed")
        files = {"main.yaml": STOCK.read_text()}
    else:
        files = SYNTHETIC
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    ours = load(files["main.yaml"], lambda n: files[n])
    assert flatten(ours) == dump_config(tmp_path / "main.yaml")
