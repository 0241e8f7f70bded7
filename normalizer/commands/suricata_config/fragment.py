"""``suricata-config``: the include fragment that adds the tap to an operator's Suricata.

Why generated and not a static file: Suricata 7 (conf-yaml-loader.c) treats a key that an
include defines again as a redefinition: the old node is pruned, children and all, and the
include's value takes its place. An include with an ``af-packet:`` or ``outputs:`` list therefore
replaces the operator's whole list (fast.log, stats.log, the other eve types and the stock
interface are gone), and a ``stream:`` mapping replaces every stream setting. A static
file cannot add one entry to a list it does not know. So we read the operator's suricata.yaml the
way Suricata does (``include:`` at any level, ``!include`` values, dotted keys, redefinitions, plain
``null``/``~``/empty as no value, ``_`` in names read as ``-``) and write a fragment holding the
operator's complete ``af-packet`` and ``outputs`` lists with only additions:

* one af-packet entry for the tap, with a cluster-id no other entry uses (explicit, inherited from
  ``interface: default`` or assigned automatically from 1 upwards) and ``checksum-checks: yes``:
  the normalizer writes complete checksums, and a tap carries no offload hints, so validation
  is meaningful there;
* the eve-log the enricher follows (a regular file) enabled, with ``alert`` and ``flow`` types and
  ``community-id: yes`` (one more field on every event; the enricher recomputes it for the real
  tuple); if the operator has no such eve-log, a new one.

Every other top-level key stays out of the fragment, so it stays the operator's: in particular
``stream`` (``midstream`` is not forced either way; see the README's midstream note). Generating
from the operator's config plus a fragment made earlier gives the same fragment again.

Everything here is pure (text in, text out); reading included files is the caller's callable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from normalizer.adapters.config import ConfigError

# A Suricata config value: Suricata keeps every scalar as a string (or no value at all).
Value = dict[str, "Value"] | list["Value"] | str | None
Config = dict[str, Value]
# name of an included file -> its text; None: skip it (our own earlier output).
ReadInclude = Callable[[str], str | None]

NULL_WORDS = frozenset({"", "~", "null", "Null", "NULL"})  # plain scalars Suricata reads as unset
TRUE_WORDS = frozenset({"1", "yes", "true", "on"})  # ConfValIsTrue, case-insensitive
NO_MANGLE_PARENTS = frozenset({"address-groups", "port-groups"})  # keep _ in variable names
MAX_INCLUDE_DEPTH = 16
FILE_TYPES = frozenset({"regular", "file"})  # eve-log filetypes that write a file we can follow
DEFAULT_CLUSTER_ID = 98  # the old static fragment's; the stock config uses 99
TAP_DEFAULTS: tuple[tuple[str, str], ...] = (
    ("threads", "1"),  # one flow-ordered reader; raise it (cluster_flow keeps flows together)
    ("cluster-type", "cluster_flow"),
    ("defrag", "yes"),
    ("use-mmap", "yes"),
    ("tpacket-v3", "yes"),  # block ring: large frames without a 64 KB slot per packet
    ("ring-size", "4096"),
    ("block-size", "1048576"),
)
ENRICHER_TYPES = ("alert", "flow")


@dataclass
class Fragment:
    """The generated include file and what was changed or noticed, one line each."""

    text: str
    notes: list[str] = field(default_factory=list)


# --- reading: Suricata's YAML dialect -------------------------------------------------------


def load(text: str, read_include: ReadInclude, name: str = "suricata.yaml") -> Config:
    """The effective configuration Suricata builds from ``text`` and the files it includes."""
    root: Config = {}
    try:
        _merge_document(root, text, read_include, name, ())
    except RecursionError:
        raise ConfigError(f"{name}: nested too deep") from None
    return root


def _compose(text: str, name: str) -> Node | None:
    try:
        node: Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
        return node
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML: {exc}") from None


def _merge_document(
    target: Config, text: str, read_include: ReadInclude, name: str, stack: tuple[str, ...]
) -> None:
    if len(stack) >= MAX_INCLUDE_DEPTH or name in stack:
        raise ConfigError(f"include: {name}: included from itself or nested too deep")
    node = _compose(text, name)
    if node is None:  # an empty file adds nothing
        return
    if not isinstance(node, MappingNode):
        raise ConfigError(f"{name}: the top level must be a mapping")
    _Reader(read_include, (*stack, name)).merge(target, node, None, "")


class _Reader:
    """Applies one document's nodes to the tree the way ConfYamlParse applies its events."""

    def __init__(self, read_include: ReadInclude, stack: tuple[str, ...]) -> None:
        self.read_include = read_include
        self.stack = stack
        self.seen: set[int] = set()  # collections met so far: an alias would meet one again

    def include(self, target: Config, filename: str, path: str) -> None:
        text = self.read_include(filename)
        if text is not None:
            try:
                _merge_document(target, text, self.read_include, filename, self.stack)
            except ConfigError as exc:
                raise ConfigError(f"{path or 'include'}: {exc}") from None

    def merge(self, target: Config, node: MappingNode, parent: str | None, path: str) -> None:
        for knode, vnode in node.value:
            if not isinstance(knode, ScalarNode):
                raise ConfigError(f"{path or 'top level'}: a key must be a plain string")
            key = str(knode.value)
            if key == "":
                continue
            where = f"{path}.{key}" if path else key
            if key == "include":
                for filename in self._include_names(vnode, where):
                    self.include(target, filename, where)
            elif "." in key:
                self._set_dotted(target, key.split("."), vnode, where)
            else:
                if "_" in key and parent not in NO_MANGLE_PARENTS:
                    key = key.replace("_", "-")
                target[key] = self.value(vnode, key, where)  # a redefinition replaces it all

    def value(self, node: Node, name: str, path: str) -> Value:
        if isinstance(node, ScalarNode):
            if node.tag == "!include" and str(node.value) not in NULL_WORDS:
                included: Config = {}
                self.include(included, str(node.value), path)
                return included
            return _scalar(node)
        if id(node) in self.seen:  # Suricata's loader does not resolve aliases; never expand
            raise ConfigError(f"{path}: YAML aliases (*name) are not read by Suricata")
        self.seen.add(id(node))
        if isinstance(node, MappingNode):
            mapping: Config = {}
            self.merge(mapping, node, name, path)
            return mapping
        if isinstance(node, SequenceNode):
            items: list[Value] = []
            for i, item in enumerate(node.value):
                if isinstance(item, SequenceNode):
                    raise ConfigError(f"{path}.{i}: a list directly inside a list")
                items.append(self.value(item, str(i), f"{path}.{i}"))
            return items
        raise ConfigError(f"{path}: unsupported YAML node")  # pragma: no cover

    def _include_names(self, node: Node, path: str) -> list[str]:
        nodes = node.value if isinstance(node, SequenceNode) else [node]
        names = []
        for n in nodes:
            if not isinstance(n, ScalarNode):
                raise ConfigError(f"{path}: expected a file name or a list of file names")
            value = _scalar(n)
            if value is not None:
                names.append(value)
        return names

    def _set_dotted(self, target: Config, parts: list[str], vnode: Node, path: str) -> None:
        """``a.b.c: v`` finds or creates a, b and c without pruning what they hold."""
        node: Value = target
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, dict):
                child = node.get(part)
                if last:
                    node[part] = self._overlay(child, vnode, part, path)
                    return
                if not isinstance(child, dict | list):
                    child = node[part] = {}
                node = child
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                if last:
                    node[int(part)] = self._overlay(node[int(part)], vnode, part, path)
                    return
                node = node[int(part)]
            else:
                raise ConfigError(f"{path}: {part!r} does not name an existing list entry")

    def _overlay(self, existing: Value, vnode: Node, name: str, path: str) -> Value:
        if isinstance(vnode, MappingNode) and isinstance(existing, dict):
            self.merge(existing, vnode, name, path)
            return existing
        new = self.value(vnode, name, path)
        return existing if new is None else new


def _scalar(node: ScalarNode) -> str | None:
    value = str(node.value)
    if node.style is None and value in NULL_WORDS:  # plain (unquoted) only
        return None
    return value


# --- writing --------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Every scalar is a string, as Suricata reads it: quoted only where YAML needs it or where
    Suricata would read it as unset; no value at all is written as nothing (``dns:``)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # lists indented under their key, as Suricata's


def _represent_str(dumper: yaml.SafeDumper, value: str) -> ScalarNode:
    style = "'" if value in NULL_WORDS else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_none(dumper: yaml.SafeDumper, value: None) -> ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", "")  # plain empty: no value


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(type(None), _represent_none)
# str scalars are never re-typed on reading by Suricata: do not let "yes" or "99" be quoted.
_Dumper.yaml_implicit_resolvers = {}


def dump(config: Config, header: str) -> str:
    """``config`` as a Suricata YAML file with ``header`` as its opening comment."""
    body = yaml.dump(
        config,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=False,  # escaped: a raw NEL or LS would be read as a line break
        width=4096,
    )
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return f"%YAML 1.1\n---\n{comment}\n{body}"


# --- the fragment ---------------------------------------------------------------------------


def is_true(value: Value) -> bool:
    return isinstance(value, str) and value.lower() in TRUE_WORDS


def generate(config: Config, tap: str) -> tuple[Config, list[str]]:
    """The ``af-packet`` and ``outputs`` lists with our additions, and notes saying what changed."""
    notes: list[str] = []
    fragment: Config = {
        "af-packet": _af_packet(config.get("af-packet"), tap, notes),
        "outputs": _outputs(config.get("outputs"), notes),
    }
    stream = config.get("stream")
    if isinstance(stream, dict) and is_true(stream.get("midstream")):
        notes.append(
            'stream.midstream is on (left as it is): set midstream = "drop" in the '
            "normalizer's config so flows it could not normalize stay away from Suricata"
        )
    return fragment, notes


def _entries(value: Value, key: str) -> list[Config]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise ConfigError(f"{key}: expected a list of mappings")
    return [e for e in value if isinstance(e, dict)]


def _af_packet(value: Value, tap: str, notes: list[str]) -> list[Value]:
    entries = [dict(e) for e in _entries(value, "af-packet")]
    mine = next((i for i, e in enumerate(entries) if e.get("interface") == tap), None)
    others = [e for i, e in enumerate(entries) if i != mine]
    used = _cluster_ids(others)
    if mine is None:
        entry: Config = {"interface": tap, "cluster-id": str(_free_cluster_id(used))}
        entry.update(TAP_DEFAULTS)
        entry["checksum-checks"] = "yes"
        at = next((i for i, e in enumerate(entries) if e.get("interface") == "default"), None)
        entries.insert(len(entries) if at is None else at, entry)
        notes.append(f"af-packet: added {tap} (cluster-id {entry['cluster-id']})")
        return list(entries)
    entry = entries[mine]  # the operator's (or our earlier) entry: keep it, fix what we need
    cid = entry.get("cluster-id")
    if not (isinstance(cid, str) and cid.isdigit() and int(cid) not in used):
        entry["cluster-id"] = str(_free_cluster_id(used))
        notes.append(f"af-packet {tap}: cluster-id {entry['cluster-id']} (shared or missing)")
    if not is_true(entry.get("checksum-checks")):
        entry["checksum-checks"] = "yes"
        notes.append(f"af-packet {tap}: checksum-checks yes (the normalizer writes full ones)")
    for key, default in TAP_DEFAULTS:
        entry.setdefault(key, default)
    return list(entries)


def _cluster_ids(entries: list[Config]) -> set[int]:
    """Cluster ids the other entries use: their own, the default entry's, or the automatic ones
    (Suricata numbers interfaces without any from 1 upwards)."""
    used: set[int] = set()
    default = next((e for e in entries if e.get("interface") == "default"), {})
    automatic = 0
    for e in entries:
        cid = e.get("cluster-id", default.get("cluster-id") if e is not default else None)
        if isinstance(cid, str) and cid.isdigit():
            used.add(int(cid))
        elif e is not default:
            automatic += 1
    return used | set(range(1, automatic + 1))


def _free_cluster_id(used: set[int]) -> int:
    """98 (the old static fragment's), else the nearest free id below it, else above it."""
    for candidates in (range(DEFAULT_CLUSTER_ID, 0, -1), range(DEFAULT_CLUSTER_ID + 1, 65536)):
        for candidate in candidates:
            if candidate not in used:
                return candidate
    raise ConfigError("af-packet: no free cluster-id")  # pragma: no cover


def _outputs(value: Value, notes: list[str]) -> list[Value]:
    outputs = [dict(e) for e in _entries(value, "outputs")]
    eves: list[tuple[int, Config]] = []
    for i, e in enumerate(outputs):
        body = e.get("eve-log")
        if isinstance(body, dict) and (body.get("filetype") or "regular") in FILE_TYPES:
            eves.append((i, body))
    chosen = next(((i, e) for i, e in eves if is_true(e.get("enabled"))), None)
    chosen = chosen or (eves[0] if eves else None)
    if chosen is None:
        taken = {_filename(o) for o in outputs}
        name = "eve.json" if "eve.json" not in taken else "eve-normalizer.json"
        eve: Config = {"enabled": "yes", "filetype": "regular", "filename": name, "types": []}
        outputs.append({"eve-log": eve})
        notes.append(f"outputs: added an eve-log writing {name}")
        where = len(outputs) - 1
    else:
        where, eve = chosen[0], dict(chosen[1])
        outputs[where] = {**outputs[where], "eve-log": eve}
    label = f"outputs.{where}.eve-log"
    if not is_true(eve.get("enabled")):
        eve["enabled"] = "yes"
        notes.append(f"{label}: enabled")
    if not is_true(eve.get("community-id")):
        eve["community-id"] = "yes"
        notes.append(f"{label}: community-id turned on (adds community_id, removes nothing)")
    eve["types"] = _types(eve.get("types"), label, notes)
    if is_true(eve.get("threaded")):
        notes.append(f"{label}: threaded writes one file per thread; the enricher follows one")
    return list(outputs)


def _filename(output: Config) -> str | None:
    for body in output.values():
        if isinstance(body, dict) and isinstance(body.get("filename"), str):
            return str(body["filename"])
    return None


def _types(value: Value, label: str, notes: list[str]) -> list[Value]:
    if value is None:
        value = []
    if not isinstance(value, list):
        raise ConfigError(f"{label}.types: expected a list")
    types = list(value)
    for wanted in ENRICHER_TYPES:
        at = next((i for i, t in enumerate(types) if _type_name(t) == wanted), None)
        if at is None:
            types.append(wanted)
            notes.append(f"{label}.types: added {wanted}")
            continue
        item = types[at]
        body = item.get(wanted) if isinstance(item, dict) else None
        if isinstance(body, dict) and "enabled" in body and not is_true(body["enabled"]):
            types[at] = {**item, wanted: {**body, "enabled": "yes"}}  # type: ignore[dict-item]
            notes.append(f"{label}.types: enabled {wanted}")
    return types


def _type_name(item: Value) -> str | None:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and item:
        return next(iter(item))
    return None


HEADER = """\
Generated by `suricata-normalizer suricata-config --tap {tap}` from
  {source}
Do not edit; regenerate it after editing that file. Suricata's include replaces whole
top-level keys, so this holds that file's complete af-packet and outputs lists plus the
tap's capture entry and what the eve enricher needs; every other key stays that file's.
Run Suricata with every af-packet entry (--af-packet without an interface):
  suricata -c {source} --include {target} --af-packet
"""


def fragment(
    text: str,
    tap: str,
    read_include: ReadInclude,
    source: str = "suricata.yaml",
    target: str = "normalizer.yaml",
) -> Fragment:
    """The whole transformation: the operator's suricata.yaml -> the include fragment."""
    if not tap or any(c.isspace() for c in tap) or "/" in tap:
        raise ConfigError(f"--tap: not an interface name: {tap!r}")
    config = load(text, read_include, source)
    generated, notes = generate(config, tap)
    return Fragment(dump(generated, HEADER.format(source=source, tap=tap, target=target)), notes)
