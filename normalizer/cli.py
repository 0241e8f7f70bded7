"""``suricata-normalizer``: command-line entry point.

Exit status: 0 success, 1 I/O or capture-file error, 2 usage or config error (with the key
named). Bad input produces one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from normalizer.adapters.config import ConfigError, build_options, load_file
from normalizer.adapters.journal import LOG_FORMATS, Log
from normalizer.adapters.pcap_io import FORMATS, PcapError, format_for
from normalizer.cache.connections import CacheError, CacheSink, ConnectionCache
from normalizer.commands.reference_gateway import options as reference_gateway
from normalizer.commands.rewrite import STDIO, print_progress, rewrite_file, summary, write_text
from normalizer.commands.rulecheck import command as rulecheck_command
from normalizer.commands.suricata_config import command as suricata_config
from normalizer.core.counters import Counters
from normalizer.core.fastpath import ENGINES, compiled_available, resolve_engine
from normalizer.tunnels.appliance import IDLE_TIMEOUT

_TAP_MAX_MTU = 65521  # tap.MAX_MTU, without importing the live adapters for ``rewrite``


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="suricata-normalizer",
        description="Strip PROXY-protocol / gateway headers from proxied TCP flows for Suricata.",
    )
    p.add_argument(
        "--version",
        action="version",
        version=f"suricata-normalizer {_version()} ({resolve_engine('auto')} engine)",
    )
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="this command's own messages as text (journald priorities under systemd) or JSON",
    )
    sub = p.add_subparsers(dest="command", required=True)
    rw = sub.add_parser("rewrite", help="normalize a recorded capture (pcap or pcapng) into a pcap")
    rw.add_argument(
        "input", type=Path, help="capture recorded between proxy and backend ('-': stdin)"
    )
    rw.add_argument(
        "-o", "--output", type=Path, required=True, help="capture to write ('-': stdout)"
    )
    rw.add_argument(
        "--format",
        choices=FORMATS,
        help="output format (default: pcapng for a .pcapng name, else pcap)",
    )
    rw.add_argument(
        "--flows-json",
        type=Path,
        metavar="FILE",
        help="also write one JSON line per TCP connection: what was done to it and why",
    )
    _engine_flags(rw)
    rw.add_argument("--cache", type=Path, help="connection cache (SQLite) to record flows in")
    rw.add_argument("--stats-json", type=Path, help="also write the counters as JSON here")
    rw.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    rw.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress on stderr (default: when stderr is a terminal)",
    )
    fl = sub.add_parser(
        "flows", help="one row per TCP connection of a capture: stripped, or why it was left alone"
    )
    fl.add_argument("input", type=Path, help="capture recorded between proxy and backend")
    fl.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    _engine_flags(fl)
    cc = sub.add_parser("check-config", help="validate a config file (exit 2 naming the bad key)")
    cc.add_argument("file", type=Path, metavar="FILE", help="TOML file with a [normalizer] table")
    _live_parser(sub)
    _appliance_parser(sub)
    rulecheck_command.add_parser(sub)
    suricata_config.add_parser(sub)
    reference_gateway.add_parser(sub)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("suricata-normalizer")
    except PackageNotFoundError:
        from normalizer import __version__

        return __version__


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in lo..hi, else a usage error naming the flag (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is not in {lo}..{hi}")
        return value

    return parse


def _live_parser(sub: Any) -> None:
    lv = sub.add_parser("live", help="normalize a bridge port live into a tap device for Suricata")
    lv.add_argument(
        "--iface",
        required=True,
        help="the decoys' bridge device (one capture for all of them) or a bridge port",
    )
    lv.add_argument("--tap", default="snl0", help="tap device to write into (default snl0)")
    _engine_flags(lv)
    lv.add_argument("--cache", type=Path, help="connection cache (SQLite); resumes flows")
    lv.add_argument("--bpf", metavar="FILTER", help="capture filter (tcpdump syntax)")
    lv.add_argument(
        "--fanout-group", type=_int_in(0, 0xFFFF), metavar="ID", help="PACKET_FANOUT group id"
    )
    lv.add_argument("--ignore-outgoing", action="store_true", help="drop PACKET_OUTGOING frames")
    lv.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes (default 1): one fanout group (the kernel's symmetric flow hash"
        " keeps both directions of a connection on one worker), one queue each of a multi-queue"
        " tap; with --decap only together with --workers-by-outer-header",
    )
    lv.add_argument(
        "--workers-by-outer-header",
        action="store_const",
        const=True,
        default=None,
        help="with --decap and several workers: accept that tunnel packets are spread by their"
        " outer header, right only when every tunnel sender keeps one inner flow on one outer"
        " tuple in both directions (RFC 7348 VXLAN from Linux does)",
    )
    lv.add_argument(
        "--metrics-port", type=_int_in(1, 65535), metavar="N", help="Prometheus on ADDR:N"
    )
    lv.add_argument(
        "--metrics-addr",
        type=_address,
        default="127.0.0.1",
        metavar="ADDR",
        help="address the metrics endpoint binds (default 127.0.0.1)",
    )
    lv.add_argument(
        "--tap-mtu",
        type=_int_in(68, _TAP_MAX_MTU),
        default=_TAP_MAX_MTU,
        metavar="N",
        help="default 65521",
    )
    lv.add_argument(
        "--ring-mb",
        type=_int_in(2, 1 << 16),
        default=64,
        metavar="N",
        help="capture ring size in MB (per worker)",
    )
    lv.add_argument("--stats-json", type=Path, help="write the counters as JSON on exit")
    lv.add_argument(
        "--no-promisc",
        action="store_false",
        dest="promisc",
        help="no promiscuous membership (a bridge device then shows only the host's own frames)",
    )
    lv.add_argument(
        "--warn-after",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="warn when no proxied flow was seen this long after the start (default 30)",
    )


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address") from None


def _appliance_parser(sub: Any) -> None:
    ap = sub.add_parser(
        "appliance",
        help="IDS behind a gateway load balancer: GENEVE in, every packet back, a copy to a tap",
    )
    ap.add_argument(
        "--listen",
        required=True,
        type=_ipv4,
        metavar="ADDR",
        help="this host's IPv4 address the balancer sends GENEVE to (and returns come from)",
    )
    ap.add_argument("--tap", required=True, help="tap device Suricata reads (e.g. snl0)")
    ap.add_argument(
        "--port", type=_int_in(1, 65535), default=6081, metavar="N", help="GENEVE port (6081)"
    )
    ap.add_argument(
        "--health-port",
        type=_int_in(1, 65535),
        metavar="N",
        help="HTTP health check on ADDR:N: 200 healthy, 503 not; the counters as JSON",
    )
    _stripping_flags(ap)
    ap.add_argument("--cache", type=Path, help="connection cache (SQLite): tunnel rows per flow")
    ap.add_argument(
        "--tap-mtu",
        type=_int_in(68, _TAP_MAX_MTU),
        default=_TAP_MAX_MTU,
        metavar="N",
        help="default 65521",
    )
    ap.add_argument("--stats-json", type=Path, help="write the counters as JSON on exit")


def _engine_flags(p: argparse.ArgumentParser) -> None:
    _stripping_flags(p)
    p.add_argument(
        "--checksums",
        choices=("keep", "auto", "fix"),
        help="auto (default): complete partial checksums left by tx offload; fix: recompute"
        " all; keep: leave them as captured",
    )
    p.add_argument(
        "--decap",
        action=argparse.BooleanOptionalAction,
        default=None,
        dest="decapsulate",
        help="emit the inner frames of VXLAN/GENEVE packets, tagged per VNI (docs/tunnels.md)",
    )


def _stripping_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the core that every command shares (the appliance too)."""
    p.add_argument("--config", type=Path, help="TOML file with a [normalizer] table")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        help="rewriting engine: compiled (C), python (the reference), auto (default: compiled"
        " when built, else python)",
    )
    p.add_argument(
        "--proxy",
        action="append",
        metavar="CIDR",
        help="trusted proxy address or CIDR (repeatable; replaces the config's list)",
    )
    p.add_argument(
        "--header",
        action="append",
        metavar="KIND",
        dest="header_kinds",
        help="accepted header kind: proxy-v1, proxy-v2, custom (repeatable; default all)",
    )
    p.add_argument("--custom-magic", metavar="HEX", help="8-byte magic of the custom header")
    p.add_argument("--midstream", help="flows whose SYN was not captured: pass or drop")
    p.add_argument("--max-flows", type=int, metavar="N", help="flow table size")
    p.add_argument(
        "--cache-retention",
        type=float,
        metavar="SECONDS",
        help="how long connection cache rows are kept (default 7 days)",
    )
    p.add_argument(
        "--keep-addresses",
        action="store_const",
        const=False,
        dest="restore_addresses",
        help="keep proxy -> backend addresses instead of restoring the real client and target",
    )
    p.add_argument(
        "--tunnel-peer",
        action="append",
        metavar="CIDR",
        dest="tunnel_peers",
        help="outer source whose tunnels are opened: --decap's mirror sources, the appliance's"
        " balancers (repeatable; replaces the config's list)",
    )


def _options(args: argparse.Namespace, require_proxies: bool = True) -> Any:
    file_values = load_file(args.config) if args.config else {}
    if args.command == "appliance":  # the balancer's flow idle timeout unless configured
        file_values = {"idle_timeout": IDLE_TIMEOUT, **file_values}
    options = build_options(
        file_values,
        {
            "proxies": args.proxy,
            "header_kinds": args.header_kinds,
            "custom_magic": args.custom_magic,
            "midstream": args.midstream,
            "checksums": getattr(args, "checksums", None),
            "max_flows": args.max_flows,
            "restore_addresses": args.restore_addresses,
            "decapsulate": getattr(args, "decapsulate", None),
            "tunnel_peers": args.tunnel_peers,
            "cache_retention": args.cache_retention,
            "workers": getattr(args, "workers", None),
            "workers_by_outer_header": getattr(args, "workers_by_outer_header", None),
        },
        require_proxies,
    )
    return _with_engine(options, getattr(args, "engine", None))


def _with_engine(options: Any, choice: str | None) -> Any:
    if choice is None:
        return options
    if choice == "compiled" and not compiled_available():
        raise ConfigError(
            "engine: the compiled engine is not built on this installation (reinstall with gcc"
            " and python3-dev, see scripts/setup.sh); use --engine python or auto"
        )
    return dataclasses.replace(options, engine=choice)


def _rewrite(args: argparse.Namespace) -> int:
    options = _options(args)
    if args.flows_json is not None and args.input == STDIO:
        raise ConfigError("--flows-json: reads the capture a second time, not possible on stdin")
    show = sys.stderr.isatty() if args.progress is None else args.progress
    show = show and args.input != STDIO  # a pipe has no size to show progress against
    fmt = format_for(str(args.output), args.format)
    cache = ConnectionCache(args.cache) if args.cache else None
    sink = CacheSink(cache, _stderr) if cache else None
    try:
        counters = rewrite_file(
            args.input,
            args.output,
            options,
            progress=print_progress if show else None,
            on_events=sink.record if sink else None,
            resume=sink.resumable if sink else None,
            on_tunnels=sink.record_tunnels if sink else None,
            fmt=fmt,
        )
        newest = sink.newest() if sink is not None else None
        if sink is not None and newest is not None:  # retention counts back from the newest row
            sink.expire(newest - options.cache_retention)
    except PcapError as exc:
        print(
            f"suricata-normalizer: {exc}; the packets before it were written to {args.output}",
            file=sys.stderr,
        )
        return 1
    finally:
        if cache is not None:
            cache.close()
    if show:
        print(file=sys.stderr)
    engine = resolve_engine(options.engine)
    stats: dict[str, Any] = {**counters.as_dict(), "engine": engine}
    if sink is not None:
        stats.update(sink.stats.as_dict())
    if not args.quiet:
        print(summary(counters), file=sys.stderr)
        print(f"engine: {engine}", file=sys.stderr)
        if sink is not None:
            print(cache_summary(sink), file=sys.stderr)
    report = None
    if args.flows_json is not None or (
        not args.quiet and not sum(counters.headers_stripped.values()) and args.input != STDIO
    ):
        from normalizer.commands import flows as flows_report

        report = flows_report.explain(args.input, options, on_error=lambda exc: None)
        if not args.quiet:
            for line in flows_report.advice(report, options):
                args.log.warning(f"no header stripped: {line}")
        if args.flows_json is not None:
            write_text(args.flows_json, "".join(r.as_json().decode() for r in report.rows))
    if args.stats_json:
        write_text(args.stats_json, json.dumps(stats, indent=2) + "\n")
    if sink is not None and sink.stats.errors:
        print(
            f"suricata-normalizer: {sink.stats.errors} cache operations failed, the first: "
            f"{sink.first_error}; {args.output} was written in full, the cache lacks those rows",
            file=sys.stderr,
        )
        return 1
    return 0


def _flows(args: argparse.Namespace) -> int:
    from normalizer.commands import flows as flows_report

    options = _options(args)
    errors: list[PcapError] = []
    report = flows_report.explain(args.input, options, on_error=errors.append)
    flows_report.write(report.rows, sys.stdout.buffer, as_json=args.json)
    sys.stdout.buffer.flush()
    if not args.json:
        for line in flows_report.advice(report, options):
            args.log.warning(f"no header stripped: {line}")
    if report.overflow:
        args.log.warning(f"{report.overflow} connections past {flows_report.MAX_CONNECTIONS}")
    if errors:
        args.log.error(f"{errors[0]}; the connections before it are listed")
        return 1
    return 0


def _check_config(args: argparse.Namespace) -> int:
    options = build_options(load_file(args.file), {}, require_proxies=True)
    args.log(
        f"{args.file}: ok: {len(options.proxies)} trusted proxies"
        f" ({', '.join(options.proxies)}), headers {', '.join(sorted(options.header_kinds))}"
    )
    return 0


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def cache_summary(sink: CacheSink) -> str:
    s = sink.stats
    return (
        f"cache: {s.rows} connections and {s.tunnel_rows} tunnel flows recorded in {s.writes}"
        f" writes, {s.expired} rows expired, {s.errors} failed"
    )


def _live(args: argparse.Namespace) -> int:
    from normalizer.commands.live import LiveNormalizer, LiveSettings, live_summary
    from normalizer.commands.live_workers import Supervisor

    options = _options(args)  # config errors surface before any device is touched
    settings = LiveSettings(
        iface=args.iface,
        tap=args.tap,
        cache=args.cache,
        bpf=args.bpf,
        fanout_group=args.fanout_group,
        ignore_outgoing=args.ignore_outgoing,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        tap_mtu=args.tap_mtu,
        ring_mb=args.ring_mb,
        stats_json=args.stats_json,
        promisc=args.promisc,
        warn_after=args.warn_after,
    )
    live: LiveNormalizer | Supervisor
    code = 0
    if options.workers > 1:
        live = Supervisor(settings, lambda: _options(args), options.workers)
        code = live.run()
        if code:  # a worker could not start; it said why
            return code
    else:
        live = LiveNormalizer(settings, lambda: _options(args))
        live.run()
    counters = live.counters()
    print(
        summary(Counters(**{k: counters[k] for k in Counters.__dataclass_fields__})),
        file=sys.stderr,
    )
    print(live_summary(counters), file=sys.stderr)
    print(f"engine: {resolve_engine(live.options.engine)}", file=sys.stderr)
    if isinstance(live, Supervisor):
        print(
            f"workers: {live.workers}, restarted {counters['worker_restarts']} times",
            file=sys.stderr,
        )
    if not live.stripped():
        print(f"suricata-normalizer: no proxied flow: {live.silence()}", file=sys.stderr)
    return code


def _appliance(args: argparse.Namespace) -> int:
    from normalizer.commands.appliance import (
        ApplianceLive,
        ApplianceSettings,
        appliance_summary,
        bind_error,
    )

    def load() -> Any:
        options = _options(args, require_proxies=False)
        if not options.tunnel_peers:
            raise ConfigError(
                "normalizer.tunnel_peers: the appliance needs the balancer's addresses"
                " (--tunnel-peer CIDR): only their GENEVE is returned and inspected"
            )
        return options

    load()  # config errors surface before any socket or device is touched
    settings = ApplianceSettings(
        listen=args.listen,
        tap=args.tap,
        port=args.port,
        health_port=args.health_port,
        cache=args.cache,
        tap_mtu=args.tap_mtu,
        stats_json=args.stats_json,
    )
    try:
        app = ApplianceLive(settings, load)
    except OSError as exc:
        print(f"suricata-normalizer: appliance: {bind_error(exc, settings)}", file=sys.stderr)
        return 1
    app.run()
    counters = app.counters()
    print(
        summary(Counters(**{k: counters[k] for k in Counters.__dataclass_fields__})),
        file=sys.stderr,
    )
    print(appliance_summary(counters), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.log = log = Log("suricata-normalizer", args.log_format)
    try:
        if args.command == "rewrite":
            return _rewrite(args)
        if args.command == "flows":
            return _flows(args)
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "live":
            return _live(args)
        if args.command == "appliance":
            return _appliance(args)
        if args.command == "test-rules":
            return rulecheck_command.run(args)
        if args.command == "suricata-config":
            return suricata_config.run(args)
        if args.command == "reference-gateway":
            return reference_gateway.run(args)
    except ConfigError as exc:
        log.error(f"config error: {exc}")
        return 2
    except CacheError as exc:
        log.error(f"cache: {exc}")
        return 1
    except PcapError as exc:
        log.error(str(exc))
        return 1
    except OSError as exc:
        log.error(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
