"""Capture manifests: ``NAME.yaml`` beside ``NAME.pcap`` says how to normalize it and what
Suricata must raise afterwards.

Why YAML beside the capture: a detection engineer adds a case by dropping two files into
``pcaps/``, no code. Keys (unknown keys are errors, so a typo never silently loosens a test)::

    proxies: [192.0.2.1/32]          # required: CIDRs whose connections open with a header
    header: proxy-v1                 # optional: kind or list of kinds (default: all)
    restore_addresses: true          # optional (default true, as the normalizer's default)
    options: {max_flows: 1000}       # optional: any other [normalizer] config key
    description: ...                 # optional, shown nowhere but kept for humans
    scenario: ...                    # optional: the lab scenario that recorded it
    baseline: NAME.baseline.pcap     # optional: header-free twin the expectations came from
    expected_alerts:                 # required (may be empty: "nothing may fire")
      - {sid: 9100001, count: 1, src: 198.51.100.10, dest: 198.51.100.1}
      - {sid: 9100011, count: 0, src: ..., dest: ...}   # count 0: documents "must not fire"

``src``/``dest`` are the addresses Suricata's alert names: the real attacker and target when
addresses are restored, the proxy and backend otherwise.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from normalizer.adapters.config import ConfigError, build_options
from normalizer.core.options import Options

_KEYS = frozenset(
    {
        "proxies",
        "header",
        "restore_addresses",
        "options",
        "description",
        "scenario",
        "baseline",
        "expected_alerts",
    }
)
_ALERT_KEYS = frozenset({"sid", "count", "src", "dest"})
CAPTURE_SUFFIXES = (".pcap", ".pcapng")


class ManifestError(Exception):
    """The manifest is missing, not YAML or has a bad key; the message names file and key."""


@dataclass(frozen=True, order=True)
class AlertKey:
    """What identifies an alert for comparison: the rule and the endpoints it names."""

    sid: int
    src: str
    dest: str


@dataclass(frozen=True)
class Manifest:
    path: Path
    proxies: tuple[str, ...]
    header_kinds: tuple[str, ...] | None
    restore_addresses: bool
    extra_options: dict[str, Any]
    expected: dict[AlertKey, int]
    baseline: Path | None = None
    description: str = ""
    scenario: str = ""

    def options(self) -> Options:
        """Normalizer options; ConfigError (naming the key) when a value is invalid."""
        return build_options(
            self.extra_options,
            {
                "proxies": list(self.proxies),
                "header_kinds": list(self.header_kinds) if self.header_kinds else None,
                "restore_addresses": self.restore_addresses,
            },
        )


def canonical_ip(text: object) -> str:
    """One spelling per address: Suricata writes IPv6 in full, manifests usually compressed."""
    return str(ipaddress.ip_address(str(text)))


def manifest_for(capture: Path) -> Path:
    """``dir/NAME.pcap`` -> ``dir/NAME.yaml``."""
    return capture.with_suffix(".yaml")


def _fail(path: Path, key: str, msg: str) -> ManifestError:
    return ManifestError(f"{path}: {key}: {msg}")


def _str_list(path: Path, key: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise _fail(path, key, f"expected a string or a non-empty list of strings, got {value!r}")
    return tuple(items)


def _alert(path: Path, i: int, item: Any) -> tuple[AlertKey, int]:
    key = f"expected_alerts[{i}]"
    if not isinstance(item, dict):
        raise _fail(path, key, f"expected a mapping with sid, count, src, dest, got {item!r}")
    unknown = set(item) - _ALERT_KEYS
    missing = {"sid", "src", "dest"} - set(item)
    if unknown or missing:
        raise _fail(path, key, f"unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    sid, count = item["sid"], item.get("count", 1)
    for name, n, low in (("sid", sid, 1), ("count", count, 0)):
        if isinstance(n, bool) or not isinstance(n, int) or n < low:
            raise _fail(path, f"{key}.{name}", f"expected an integer >= {low}, got {n!r}")
    try:
        return AlertKey(sid, canonical_ip(item["src"]), canonical_ip(item["dest"])), count
    except ValueError as exc:
        raise _fail(path, key, f"src/dest must be IP addresses ({exc})") from None


def load_manifest(path: Path) -> Manifest:
    """Read and validate one manifest (ManifestError on anything wrong, OSError passes)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: expected a mapping at the top level")
    unknown = set(doc) - _KEYS
    if unknown:
        raise _fail(path, ", ".join(sorted(unknown)), f"unknown key (known: {sorted(_KEYS)})")
    for required in ("proxies", "expected_alerts"):
        if required not in doc:
            raise _fail(path, required, "required key is missing")
    alerts = doc["expected_alerts"] or []
    if not isinstance(alerts, list):
        raise _fail(path, "expected_alerts", "expected a list")
    expected: dict[AlertKey, int] = {}
    for i, item in enumerate(alerts):
        k, count = _alert(path, i, item)
        if k in expected:
            raise _fail(path, f"expected_alerts[{i}]", f"{k} listed twice; use count")
        expected[k] = count
    restore = doc.get("restore_addresses", True)
    if not isinstance(restore, bool):
        raise _fail(path, "restore_addresses", f"expected true or false, got {restore!r}")
    extra = doc.get("options") or {}
    if not isinstance(extra, dict):
        raise _fail(path, "options", "expected a mapping of [normalizer] config keys")
    baseline = doc.get("baseline")
    m = Manifest(
        path=path,
        proxies=_str_list(path, "proxies", doc["proxies"]),
        header_kinds=_str_list(path, "header", doc["header"]) if "header" in doc else None,
        restore_addresses=restore,
        extra_options=extra,
        expected=expected,
        baseline=path.parent / str(baseline) if baseline else None,
        description=str(doc.get("description", "")),
        scenario=str(doc.get("scenario", "")),
    )
    try:
        m.options()  # every option error surfaces at load time, naming the manifest
    except ConfigError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    return m
