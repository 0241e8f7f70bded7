"""Loads the TOML config file and applies command-line overrides onto ``Options``.

Every error names the offending key (``normalizer.max_flows``) so a user can fix the file
without reading code; the CLI turns ``ConfigError`` into exit status 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from normalizer.core.offload import CHECKSUM_MODES
from normalizer.core.options import MIDSTREAM_POLICIES, Options
from normalizer.proxy_headers.detect import HeaderKind

SECTION = "normalizer"


class ConfigError(Exception):
    """A config file or flag value is invalid; the message starts with the key."""


# Durations are turned into integer nanoseconds: NaN and infinity have none, and a value past
# this (ten years) is a typo, not a timeout. The lower bound keeps "positive" meaning at least
# a nanosecond once converted.
MAX_SECONDS = 10 * 365 * 86400.0
MIN_SECONDS = 1e-9


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: expected a positive integer, got {value!r}")
    return value


MAX_WORKERS = 64  # live --workers: processes, not threads; the fanout group takes up to 256


def _workers(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(
            f"{key}: expected a number of worker processes 1..{MAX_WORKERS}, got {value!r}"
        )
    return value


def _positive_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a positive number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:  # an integer beyond any float
        seconds = math.inf
    if not math.isfinite(seconds) or not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise ConfigError(
            f"{key}: expected a positive number of seconds up to {MAX_SECONDS:.0f}"
            f" (ten years), got {value!r}"
        )
    return seconds


def _proxies(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"{key}: expected a list of CIDRs, got {value!r}")
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_network(str(item), strict=False)))
        except ValueError as exc:
            raise ConfigError(f"{key}: {item!r} is not an IP address or CIDR ({exc})") from None
    return tuple(out)


def _kinds(key: str, value: Any) -> frozenset[HeaderKind]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise ConfigError(f"{key}: expected a non-empty list of header kinds, got {value!r}")
    known = ", ".join(k.value for k in HeaderKind)
    try:
        return frozenset(HeaderKind(v) for v in value)
    except ValueError:
        raise ConfigError(f"{key}: unknown header kind in {value!r} (known: {known})") from None


def _magic(key: str, value: Any) -> bytes:
    try:
        magic = bytes.fromhex(str(value))
    except ValueError:
        raise ConfigError(f"{key}: expected 16 hex digits, got {value!r}") from None
    if len(magic) != 8:
        raise ConfigError(f"{key}: the magic must be exactly 8 bytes, got {len(magic)}")
    if magic[:1] in (b"\r", b"P"):
        raise ConfigError(f"{key}: the magic must not start like a PROXY v1/v2 signature")
    return magic


def _midstream(key: str, value: Any) -> str:
    if value not in MIDSTREAM_POLICIES:
        raise ConfigError(f"{key}: expected one of {', '.join(MIDSTREAM_POLICIES)}, got {value!r}")
    return str(value)


def _checksums(key: str, value: Any) -> str:
    if value not in CHECKSUM_MODES:
        raise ConfigError(f"{key}: expected one of {', '.join(CHECKSUM_MODES)}, got {value!r}")
    return str(value)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _ports(key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"{key}: expected a list of UDP ports, got {value!r}")
    for port in value:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"{key}: {port!r} is not a UDP port (1..65535)")
    return tuple(value)


def _vni_vlan(key: str, value: Any) -> tuple[tuple[int, int], ...]:
    """``{ "100" = 10, ... }``: TOML keys are strings, so VNIs arrive as decimal text."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a table of VNI = VLAN id, got {value!r}")
    out: dict[int, int] = {}
    for vni_text, vlan in value.items():
        try:
            vni = int(str(vni_text), 10)
        except ValueError:
            raise ConfigError(f"{key}: {vni_text!r} is not a VNI (a decimal number)") from None
        if not 0 <= vni < 1 << 24:
            raise ConfigError(f"{key}: VNI {vni} does not fit in 24 bits")
        if isinstance(vlan, bool) or not isinstance(vlan, int) or not 1 <= vlan <= 4094:
            raise ConfigError(f"{key}: VNI {vni}: {vlan!r} is not a VLAN id (1..4094)")
        if vlan in out.values():
            raise ConfigError(f"{key}: VLAN id {vlan} given to more than one VNI")
        out[vni] = vlan
    return tuple(sorted(out.items()))


_FIELDS = {
    "restore_addresses": _bool,
    "proxies": _proxies,
    "header_kinds": _kinds,
    "custom_magic": _magic,
    "midstream": _midstream,
    "checksums": _checksums,
    "max_flows": _positive_int,
    "idle_timeout": _positive_number,
    "closed_timeout": _positive_number,
    "pending_timeout": _positive_number,
    "max_hold_packets": _positive_int,
    "max_hold_bytes": _positive_int,
    "max_total_hold_bytes": _positive_int,
    "max_pending_events": _positive_int,
    "decapsulate": _bool,
    "tunnel_peers": _proxies,
    "vxlan_ports": _ports,
    "geneve_ports": _ports,
    "vni_vlan": _vni_vlan,
    "cache_retention": _positive_number,
    "workers": _workers,
    "workers_by_outer_header": _bool,
}


def load_file(path: Path) -> dict[str, Any]:
    """Read the ``[normalizer]`` table of a TOML file (I/O errors propagate as OSError)."""
    with path.open("rb") as fh:
        data = fh.read()
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); TOML files"
            " are UTF-8"
        ) from None
    except (ValueError, RecursionError) as exc:
        # TOMLDecodeError, and what tomllib lets through: a 5000-digit integer, deep nesting
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    section = doc.get(SECTION, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{SECTION}: expected a table")
    return section


def build_options(
    file_values: Mapping[str, Any], overrides: Mapping[str, Any], require_proxies: bool = True
) -> Options:
    """Merge file values with non-None CLI overrides (which win) and validate every key.

    ``require_proxies=False``: the appliance, where header stripping is optional."""
    merged = dict(file_values)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    kwargs: dict[str, Any] = {}
    for key, value in merged.items():
        check = _FIELDS.get(key)
        if check is None:
            raise ConfigError(f"{SECTION}.{key}: unknown key (known: {', '.join(sorted(_FIELDS))})")
        kwargs[key] = check(f"{SECTION}.{key}", value)
    if require_proxies and not kwargs.get("proxies"):
        raise ConfigError(
            f"{SECTION}.proxies: at least one trusted proxy CIDR is required (--proxy CIDR)"
        )
    if kwargs.get("decapsulate") and not kwargs.get("tunnel_peers"):
        raise ConfigError(
            f"{SECTION}.tunnel_peers: decapsulation needs the outer source CIDRs whose tunnels"
            " are opened (--tunnel-peer CIDR: mirror sources, load balancers); to open tunnels"
            ' from any host, say so: tunnel_peers = ["0.0.0.0/0", "::/0"]'
        )
    if (
        kwargs.get("workers", 1) > 1
        and kwargs.get("decapsulate")
        and not kwargs.get("workers_by_outer_header")
    ):
        raise ConfigError(
            f"{SECTION}.workers: {kwargs['workers']} workers with decapsulation split an inner"
            " flow whenever its packets (or its two directions) travel on different outer"
            " tuples: the kernel's fanout hash sees only the outer header. Run one worker, or"
            " accept the outer hash with --workers-by-outer-header"
            f" ({SECTION}.workers_by_outer_header = true) when every tunnel sender keeps one"
            " inner flow on one outer tuple in both directions (docs/architecture.md)"
        )
    return dataclasses.replace(Options(), **kwargs)
