"""Lab scenarios: each records a RAW capture (gateway sends a PROXY header) and a BASELINE one.

Why pairs: the baseline is the same curl traffic through the same gateway with the header turned
off on both ends, so Suricata's alerts on it are what the normalized raw capture must reproduce.
Capture point is always bridge port ``sg`` (gateway side). Loss is injected by nftables in the
sensor namespace's bridge *forward* hook, i.e. AFTER the capture point for gateway->decoy packets
(the pcap holds the lost segment and its retransmission) and BEFORE it for decoy->gateway ones
(the pcap holds only the retransmission, out of order).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.lab import services
from tests.lab.netlab import DECOY, GATEWAY_BACK, GATEWAY_FRONT, Lab
from tests.lab.traffic import expected_alerts, run_traffic


@dataclass(frozen=True)
class Spec:
    """What differs between scenarios; server options are HAProxy ``server`` line options."""

    name: str
    header: str  # human description of what the raw capture carries
    raw_opts: str = "send-proxy-v2"
    base_opts: str = ""
    gateway: str = "haproxy"  # or "nginx" (stream proxy, PROXY v1 coalesced with data)
    # or "reference" (our reference-gateway; raw_opts/base_opts are then its options, and the
    # raw decoy is services.start_custom_decoy, which strips the custom header itself)
    family: int = 4  # of the captured hop (gateway -> decoy)
    client_family: int = 0  # of the attacker -> gateway hop; 0: the same as ``family``
    mode: str = "tcp"
    tls: bool = False
    httpchk: bool = False
    loss: str = ""  # "", "syn", "first-data", "random"
    bulk: bool = False
    pre: float = 0.0  # seconds of capture before the traffic (lets health checks happen)


@dataclass(frozen=True)
class ScenarioCaptures:
    """Paths of one scenario's captures plus what a test needs to check them."""

    name: str
    raw: Path
    baseline: Path
    proxy: str  # CIDR of the gateway as the sensor sees it: pass to --proxy
    header: str
    expected: Counter[int]  # sid -> count the baseline must raise
    client_family: int = 4  # the attacker's (and the gateway front's) address family


TLV_OPTS = "ssl,cert-cn,ssl-cipher,cert-sig,cert-key,authority,crc32c,unique-id"
CHECK = "check inter 200ms fall 1000 rise 1"
SPECS = {
    s.name: s
    for s in (
        Spec("haproxy-v1", "PROXY v1 TCP4, own segment", raw_opts="send-proxy"),
        Spec("haproxy-v2", "PROXY v2 TCP4, own segment"),
        Spec(
            "haproxy-v2-tlv",
            "PROXY v2 TCP4 + TLVs (SSL, CN, cipher, authority, CRC32C, "
            "unique-id); TLS-terminating frontend",
            raw_opts=f"send-proxy-v2 proxy-v2-options {TLV_OPTS}",
            tls=True,
        ),
        Spec(
            "haproxy-v2-checks",
            "PROXY v2 + TLVs; HTTP health checks every 200 ms opening "
            "with a 31-byte LOCAL header (CRC32C + empty SSL TLV)",
            raw_opts=f"send-proxy-v2 proxy-v2-options {TLV_OPTS} {CHECK} check-send-proxy",
            base_opts=CHECK,
            httpchk=True,
            pre=1.0,
        ),
        Spec(
            "haproxy-v2-tcpcheck",
            "PROXY v2; TCP health checks: 16-byte LOCAL header, then RST",
            raw_opts=f"send-proxy-v2 {CHECK}",
            base_opts=CHECK,
            pre=1.0,
        ),
        Spec("haproxy-v2-http", "PROXY v2 TCP4, HAProxy in HTTP mode", mode="http"),
        Spec("haproxy-v1-ipv6", "PROXY v1 TCP6", raw_opts="send-proxy", family=6),
        Spec("haproxy-v2-ipv6", "PROXY v2 TCP6", family=6),
        Spec(
            "haproxy-v2-v6client",
            "PROXY v2 TCP6 over an IPv4 hop (IPv6 attacker, IPv4 gateway -> decoy)",
            client_family=6,
        ),
        Spec("nginx-v1", "PROXY v1 TCP4 coalesced with first request bytes", gateway="nginx"),
        Spec(
            "haproxy-v2-synloss",
            "PROXY v2; first SYN of each connection to the decoy dropped",
            loss="syn",
        ),
        Spec(
            "haproxy-v2-hdrloss",
            "PROXY v2; first data segment (the header) of each connection "
            "dropped and retransmitted",
            loss="first-data",
        ),
        Spec(
            "nginx-v1-hdrloss",
            "PROXY v1 coalesced; first data segment dropped and retransmitted",
            gateway="nginx",
            loss="first-data",
        ),
        Spec(
            "reference-custom",
            "custom gateway header IPv4, own segment (reference-gateway)",
            raw_opts="--header custom",
            base_opts="--header none",
            gateway="reference",
        ),
        Spec(
            "reference-custom-coalesced",
            "custom gateway header IPv4 coalesced with the first request bytes",
            raw_opts="--header custom --coalesce",
            base_opts="--header none --coalesce",
            gateway="reference",
        ),
        Spec(
            "reference-custom-ipv6",
            "custom gateway header IPv6, own segment (reference-gateway)",
            raw_opts="--header custom",
            base_opts="--header none",
            gateway="reference",
            family=6,
        ),
        Spec(
            "haproxy-v2-loss",
            "PROXY v2; 2% random loss both ways, SACK, 2 MB download, 3 x 400 KB POSTs",
            loss="random",
            bulk=True,
        ),
    )
}


def loss_ruleset(loss: str) -> str:
    """nftables (bridge family) rules for the sensor namespace; forward hook = between ports."""
    d = DECOY[4]
    syn = "tcp flags & (syn|ack) == syn"
    data = "tcp dport 80 tcp flags & (syn|fin|rst) == 0 ip length > 52"
    rules = {
        "": "",
        # Remember each gateway source port; drop its SYN the first time only.
        "syn": f"ip daddr {d} {syn} ip saddr . tcp sport @seen accept\n"
        f"ip daddr {d} {syn} add @seen {{ ip saddr . tcp sport }} drop",
        # Not SYN/FIN/RST and ip length > 52 (IP + TCP with timestamps): the first payload segment.
        "first-data": f"ip daddr {d} {data} ip saddr . tcp sport @seen accept\n"
        f"ip daddr {d} {data} add @seen {{ ip saddr . tcp sport }} drop",
        "random": "meta l4proto tcp tcp flags & syn == 0 numgen random mod 100 < 2 drop",
    }[loss]
    if not rules:
        return ""
    return (
        "table bridge lab {\n"
        "  set seen { type ipv4_addr . inet_service; flags dynamic,timeout; timeout 10m; }\n"
        "  chain between_ports { type filter hook forward priority 0; policy accept;\n"
        f"{rules}\n  }}\n}}\n"
    )


def record(lab: Lab, spec: Spec, outdir: Path) -> ScenarioCaptures:
    """Record the raw and the baseline capture of one scenario into ``outdir``."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {"raw": outdir / f"{spec.name}.pcap", "baseline": outdir / f"{spec.name}.baseline.pcap"}
    for variant, pcap in paths.items():
        raw = variant == "raw"
        d = outdir / "work" / spec.name / variant
        d.mkdir(parents=True, exist_ok=True)
        tls = services.make_tls(outdir / "work" / "tls") if spec.tls else None
        lab.nft(loss_ruleset(spec.loss))
        www = services.make_webroot(outdir / "work" / "www")
        if spec.gateway == "reference":
            _start_reference(lab, d, www, spec, raw)
        else:
            services.start_decoy(lab, d, www, raw)
        if spec.gateway == "nginx":
            services.start_nginx_gateway(lab, d, spec.family, raw)
        elif spec.gateway == "haproxy":
            opts = spec.raw_opts if raw else spec.base_opts
            services.start_haproxy(
                lab, d, spec.family, opts, mode=spec.mode, tls=tls, httpchk=spec.httpchk
            )
        try:
            with lab.capture(pcap) as cap:
                time.sleep(spec.pre)
                run_traffic(lab, d, spec.client_family or spec.family, tls, spec.bulk)
                time.sleep(0.5)  # let FIN/ACKs of the last connection pass the capture point
        finally:
            lab.stop_all()
        (d / "capture.txt").write_text(f"packets={cap.packets} dropped={cap.dropped}\n")
    plen = 32 if spec.family == 4 else 128
    return ScenarioCaptures(
        spec.name,
        paths["raw"],
        paths["baseline"],
        f"{GATEWAY_BACK[spec.family]}/{plen}",
        spec.header,
        expected_alerts(spec.bulk),
        spec.client_family or spec.family,
    )


def _start_reference(lab: Lab, d: Path, www: Path, spec: Spec, raw: bool) -> None:
    """The reference gateway; with the header, a decoy that strips it (nginx cannot)."""
    fam = spec.family
    if raw:
        services.start_custom_decoy(lab, d, www, addr=DECOY[fam])
    else:
        services.start_decoy(lab, d, www, False)
    services.start_reference_gateway(
        lab,
        d,
        "gateway",
        services._hostport(GATEWAY_FRONT[fam], 80),
        services._hostport(DECOY[fam], 80),
        *(spec.raw_opts if raw else spec.base_opts).split(),
    )


def haproxy_v1(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """HAProxy ``send-proxy``: text header in a segment of its own."""
    return record(lab, SPECS["haproxy-v1"], outdir)


def haproxy_v2(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """HAProxy ``send-proxy-v2``: 28-byte binary header in a segment of its own."""
    return record(lab, SPECS["haproxy-v2"], outdir)


def haproxy_v2_tlv(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """HAProxy v2 with every TLV 2.6 emits (needs TLS + client cert + SNI on the frontend)."""
    return record(lab, SPECS["haproxy-v2-tlv"], outdir)


def haproxy_v2_checks(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """HAProxy v2 + TLVs plus HTTP health checks every 200 ms that start with a LOCAL header."""
    return record(lab, SPECS["haproxy-v2-checks"], outdir)


def haproxy_v2_tcpcheck(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """HAProxy v2 plus TCP connect checks: flows that carry only a LOCAL header and end in RST."""
    return record(lab, SPECS["haproxy-v2-tcpcheck"], outdir)


def haproxy_v2_http(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """HAProxy in HTTP mode (re-emits requests) with v2 headers."""
    return record(lab, SPECS["haproxy-v2-http"], outdir)


def haproxy_v1_ipv6(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """IPv6 attacker and IPv6 gateway<->decoy, ``PROXY TCP6`` text header."""
    return record(lab, SPECS["haproxy-v1-ipv6"], outdir)


def haproxy_v2_ipv6(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """IPv6 both sides, v2 header with family 0x21 (TCP6)."""
    return record(lab, SPECS["haproxy-v2-ipv6"], outdir)


def haproxy_v2_v6client(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """IPv6 attacker, IPv4 gateway <-> decoy: a TCP6 v2 header on an IPv4 connection, so address
    restoration must rebuild every packet in the other family."""
    return record(lab, SPECS["haproxy-v2-v6client"], outdir)


def nginx_v1(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """nginx stream ``proxy_protocol on``: header and first request bytes in one segment."""
    return record(lab, SPECS["nginx-v1"], outdir)


def haproxy_v2_synloss(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """First SYN to the decoy dropped after the capture point: pcap shows SYN twice."""
    return record(lab, SPECS["haproxy-v2-synloss"], outdir)


def haproxy_v2_hdrloss(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """Header segment dropped after the capture point: pcap shows the header retransmitted."""
    return record(lab, SPECS["haproxy-v2-hdrloss"], outdir)


def nginx_v1_hdrloss(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """Coalesced header+request segment dropped and retransmitted."""
    return record(lab, SPECS["nginx-v1-hdrloss"], outdir)


def reference_custom(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """Our reference gateway: the custom header (docs/custom-header.md) in its own segment."""
    return record(lab, SPECS["reference-custom"], outdir)


def reference_custom_coalesced(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """The reference gateway with --coalesce: header and request in one segment."""
    return record(lab, SPECS["reference-custom-coalesced"], outdir)


def reference_custom_ipv6(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """The reference gateway over IPv6 both sides: the 48-byte family-6 header."""
    return record(lab, SPECS["reference-custom-ipv6"], outdir)


def haproxy_v2_loss(lab: Lab, outdir: Path) -> ScenarioCaptures:
    """2% random loss both ways with SACK during bulk transfers."""
    return record(lab, SPECS["haproxy-v2-loss"], outdir)


SCENARIOS = {
    "haproxy-v1": haproxy_v1,
    "haproxy-v2": haproxy_v2,
    "haproxy-v2-tlv": haproxy_v2_tlv,
    "haproxy-v2-checks": haproxy_v2_checks,
    "haproxy-v2-tcpcheck": haproxy_v2_tcpcheck,
    "haproxy-v2-http": haproxy_v2_http,
    "haproxy-v1-ipv6": haproxy_v1_ipv6,
    "haproxy-v2-ipv6": haproxy_v2_ipv6,
    "haproxy-v2-v6client": haproxy_v2_v6client,
    "nginx-v1": nginx_v1,
    "haproxy-v2-synloss": haproxy_v2_synloss,
    "haproxy-v2-hdrloss": haproxy_v2_hdrloss,
    "nginx-v1-hdrloss": nginx_v1_hdrloss,
    "reference-custom": reference_custom,
    "reference-custom-coalesced": reference_custom_coalesced,
    "reference-custom-ipv6": reference_custom_ipv6,
    "haproxy-v2-loss": haproxy_v2_loss,
}
