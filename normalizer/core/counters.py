"""One counter for every outcome, so nothing the normalizer does to a packet goes unaccounted.

packets_in == packets_out + packets_dropped + held (``Counters.unaccounted(held)`` == 0) is
the invariant the tests check: a packet is forwarded, deliberately dropped (a segment that carried
only header bytes, or midstream policy "drop"), or still held waiting for a header.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

MAX_BACKENDS = 1024  # bound of headers_by_backend: the proxies choose backends, not attackers


@dataclass(slots=True)
class Counters:
    packets_in: int = 0
    packets_out: int = 0
    # Forwarded untouched.
    passed_not_tcp: int = 0
    passed_untracked: int = 0
    passed_unparsed_flow: int = 0  # flows given up on (bad/missing header): left as captured
    # Rewritten or dropped packets of proxied flows.
    rewritten: int = 0
    header_only_dropped: int = 0
    midstream_dropped: int = 0
    # Flows.
    flows_created: int = 0
    flows_restarted: int = 0
    flows_resumed: int = 0  # adopted from the connection cache after a restart
    flows_expired: int = 0
    flows_evicted: int = 0
    headers_stripped: dict[str, int] = field(default_factory=dict)
    # Headers stripped per backend (the decoy's wire address), so one capture of the bridge
    # shows every decoy behind it; backends past MAX_BACKENDS are counted under "other".
    headers_by_backend: dict[str, int] = field(default_factory=dict)
    headers_local: int = 0
    addresses_restored: int = 0  # flows shown to Suricata with the real client and target
    restore_unsupported: int = 0  # family change needed on a link type that cannot say so
    header_malformed: int = 0  # starts with an enabled kind's signature, but is not valid
    header_excluded: int = 0  # starts with the signature of a kind not enabled (--header)
    header_none: int = 0  # client bytes that start with no header signature at all
    header_missing: int = 0  # connection ended before any header byte
    header_truncated: int = 0  # connection ended or timed out inside the header
    hold_overflow: int = 0
    hold_timeout: int = 0
    events_dropped: int = 0
    # Checksums on the way in (offload.py), one of these per frame the policy looked at.
    checksum_completed: int = 0  # partial (an offload's pseudo-header sum), or mode "fix"
    checksum_kept: int = 0  # auto: not partial, left as captured (right, or wrong on the wire)
    checksum_unchecked: int = 0  # fix: not TCP/UDP over IP, a fragment or truncated
    # Decapsulation, in front of the core (decap.py). An unfragmented frame is counted once in
    # decapsulated, passed, bad_header or untrusted; an outer UDP fragment of a tunnel peer in
    # fragments, and its datagram, once whole, in reassembled and again in decapsulated or
    # bad_header (a stranger's fragment in untrusted or passed, at once). So frames in ==
    # decapsulated + passed + bad_header + untrusted + fragments - reassembled.
    tunnel_decapsulated: int = 0  # inner frames handed to the core (reassembled ones included)
    tunnel_passed: int = 0  # not a tunnel packet: forwarded as captured
    tunnel_bad_header: int = 0  # on a tunnel port but not decodable: forwarded as captured
    tunnel_untrusted: int = 0  # on a tunnel port from a source not in tunnel_peers: as captured
    tunnel_truncated: int = 0  # inner packet cut short (mirror truncation, snap length)
    tunnel_inner_malformed: int = 0  # inner IP header contradicting itself: handed on untrimmed
    tunnel_fragments: int = 0  # outer UDP fragments taken into reassembly
    tunnel_reassembled: int = 0  # datagrams rebuilt from them
    tunnel_frag_limit: int = 0  # fragments given up on (limits, timeout): forwarded as captured
    tunnel_vlan_collisions: int = 0  # VNIs that could not get their default VLAN id

    @property
    def packets_dropped(self) -> int:
        return self.header_only_dropped + self.midstream_dropped

    def unaccounted(self, held: int) -> int:
        """Packets neither forwarded, dropped nor among the ``held`` ones: 0 unless a bug.

        ``held`` is the engine's ``held_packets``; the counters themselves do not track it.
        """
        return self.packets_in - self.packets_out - self.packets_dropped - held

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["packets_dropped"] = self.packets_dropped
        return d


def sum_counters(parts: list[dict[str, object]]) -> dict[str, object]:
    """Counter snapshots (``as_dict``) added up field by field, per-kind dicts by kind: what a
    long-running adapter reports over engines replaced by reloads."""
    total = Counters().as_dict()
    for part in parts:
        for k, v in part.items():
            if isinstance(v, dict):
                kinds = total[k]
                assert isinstance(kinds, dict)
                for kind, n in v.items():
                    kinds[kind] = kinds.get(kind, 0) + n
            else:
                total[k] = int(str(total.get(k, 0))) + int(str(v))
    return total
