"""Tunnel metadata and the VNI -> 802.1Q mapping that keeps tunnelled flows apart.

Why VLAN ids: once decapsulated, two mirror sessions (two VNIs) may carry packets with the same
inner 5-tuple. The core and Suricata both key flows by VLAN ids, so tagging each VNI's inner
frames with its own id keeps them separate without touching either. The mapping is recorded
with every inner flow (``tunnels`` table of the connection cache) so events can be mapped back.

Default mapping: VNI 1..4094 -> the same VLAN id, any other VNI -> ``1 + (vni - 1) % 4094``.
A VNI whose default id is already used by another VNI in this run (or reserved by the explicit
``vni_vlan`` table) gets the next free id instead, and the collision is counted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from normalizer.tunnels.geneve import GeneveOption, describe

VLAN_IDS = 4094  # usable 802.1Q ids: 1..4094 (0 = priority tag only, 4095 reserved)


class TunnelRef(NamedTuple):
    """What the decapsulation stage knows about the tunnel one inner frame came through."""

    kind: str  # "vxlan" or "geneve"
    vni: int
    vlan: int  # 802.1Q id the inner frame was tagged with
    outer_src: bytes  # packed outer addresses
    outer_dst: bytes
    outer_sport: int
    outer_dport: int
    outer_vlan: bytes  # outer 802.1Q ids, 2 bytes each, outermost first
    options: tuple[GeneveOption, ...] = ()
    # A tunnel inside this one: VXLAN inside the GENEVE of a balancer used as a mirror target.
    mirror: TunnelRef | None = None


def default_vlan(vni: int) -> int:
    return 1 + (vni - 1) % VLAN_IDS


class VlanMap:
    """VNI -> VLAN id: the explicit table first, then ``default_vlan`` probing past collisions."""

    def __init__(self, table: Mapping[int, int] | None = None) -> None:
        self.table = dict(table or {})
        self._owner = {vlan: vni for vni, vlan in self.table.items()}
        self._cache = dict(self.table)
        self.collisions = 0  # VNIs that could not get their default id

    def vlan(self, vni: int) -> int:
        found = self._cache.get(vni)
        return found if found is not None else self._assign(vni)

    def _assign(self, vni: int) -> int:
        want = vlan = default_vlan(vni)
        if len(self._owner) >= VLAN_IDS:  # every id in use: share the default, say so
            self.collisions += 1
            return want
        while vlan in self._owner:
            vlan = vlan % VLAN_IDS + 1
        if vlan != want:
            self.collisions += 1
        self._owner[vlan] = vni
        self._cache[vni] = vlan
        return vlan


def _ip(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


def tunnel_json(ref: TunnelRef, ip_text: Callable[[bytes], str] = _ip) -> dict[str, Any]:
    """The ``tunnel`` object recorded per inner flow and added to its events by the enricher
    (``ip_text``: packed address -> text, a caller's memo)."""
    out: dict[str, Any] = {
        "type": ref.kind,
        "vni": ref.vni,
        "vlan": ref.vlan,
        "outer": {
            "src_ip": ip_text(ref.outer_src),
            "dest_ip": ip_text(ref.outer_dst),
            "src_port": ref.outer_sport,
            "dest_port": ref.outer_dport,
            "vlan": [
                int.from_bytes(ref.outer_vlan[i : i + 2], "big")
                for i in range(0, len(ref.outer_vlan), 2)
            ],
        },
    }
    if ref.kind == "geneve":
        out.update(describe(ref.options))
    if ref.mirror is not None:
        inner = tunnel_json(ref.mirror, ip_text)
        del inner["vlan"], inner["outer"]["vlan"]  # the frame's tag is the outer layer's
        out["mirror"] = inner
    return out
