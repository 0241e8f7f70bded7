"""Settings of the rewriting core, with the defaults a user gets when a key is absent.

Kept apart from file parsing (``config.py``) so the core can be built directly in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from normalizer.proxy_headers.custom import DEFAULT_MAGIC
from normalizer.proxy_headers.detect import ALL_KINDS, HeaderKind

MIDSTREAM_POLICIES = ("pass", "drop")


@dataclass(frozen=True, slots=True)
class Options:
    # CIDRs of the proxies whose connections start with a header (only these are parsed).
    proxies: tuple[str, ...] = ()
    # Header kinds the proxies may send; the signature picks among them.
    header_kinds: frozenset[HeaderKind] = field(default_factory=lambda: ALL_KINDS)
    custom_magic: bytes = DEFAULT_MAGIC
    # Trusted-proxy flows whose SYN was never seen (capture started mid-connection):
    # "pass" forwards them as captured (Suricata ignores them unless stream.midstream is on),
    # "drop" keeps header-tainted streams away from Suricata altogether.
    midstream: str = "pass"
    # Checksums on the way in (offload.py): "auto" completes the partial checksums the kernel's
    # tx offload leaves in captures from the sending host, "fix" recomputes all, "keep" none.
    checksums: str = "auto"
    # Rewrite proxied flows so Suricata sees the real client and target (from the header)
    # instead of proxy -> backend; False keeps the wire addresses (--keep-addresses).
    restore_addresses: bool = True
    max_flows: int = 100_000
    idle_timeout: float = 600.0  # seconds without a packet before a flow is forgotten
    closed_timeout: float = 30.0  # seconds after FIN/RST, for late retransmissions
    pending_timeout: float = 5.0  # seconds a flow's packets may be held waiting for a header
    max_hold_packets: int = 64  # per flow
    max_hold_bytes: int = 262_144  # per flow; also caps the header size accepted
    max_total_hold_bytes: int = 64 * 1024 * 1024  # all flows together
    max_pending_events: int = 100_000  # header events not yet drained by an adapter
    # Mirrored / appliance traffic (see docs/tunnels.md): emit the inner frames of VXLAN and
    # GENEVE packets (output link type Ethernet) instead of passing the tunnel packets through.
    decapsulate: bool = False
    # CIDRs of the outer sources whose tunnels are opened (mirror sources, load balancers): a
    # tunnel packet from anywhere else is forwarded as captured, its inner frame never parsed,
    # so no host can hand the core an inner frame that claims to come from a trusted proxy.
    # Empty opens nothing; the config layer refuses decapsulate without it.
    tunnel_peers: tuple[str, ...] = ()
    vxlan_ports: tuple[int, ...] = (4789,)  # UDP destination ports
    geneve_ports: tuple[int, ...] = (6081,)
    # VNI -> 802.1Q id for inner frames; VNIs not listed get the default mapping.
    vni_vlan: tuple[tuple[int, int], ...] = ()
    # Connection cache retention (an adapter setting, kept here so one config file holds all):
    # seconds a row is kept after its connection began; rewrite counts back from the newest row
    # (so an old capture's rows survive), live from the wall clock, once a minute.
    cache_retention: float = 7 * 86400.0
    # live: worker processes spread over a PACKET_FANOUT group (an adapter setting, like the
    # retention); more than one with decapsulation needs workers_by_outer_header (the kernel
    # hashes the outer header of a tunnel packet, not the inner flow: commands/live_workers.py).
    workers: int = 1
    workers_by_outer_header: bool = False
    # Rewriting engine (fastpath.py): "auto" takes the compiled one when it was built.
    engine: str = "auto"
