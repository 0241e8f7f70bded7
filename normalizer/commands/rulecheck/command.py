"""The ``test-rules`` subcommand: options, the order of checks, and the exit status.

Exit status: 0 every capture raised exactly its manifest's alerts; 1 an alert is missing or
unexpected, or a capture could not be checked (Suricata failed, capture unreadable); 2 usage,
manifest or rule errors (file and line named). Why rules are checked before any capture: a
typo in a rule would otherwise surface only as "missing" alerts on every capture. The
harness is imported only when the subcommand runs, so ``rewrite`` and ``live`` start as fast as
before.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normalizer.commands.rulecheck import DEFAULT_CORPUS, DEFAULT_RULES

if TYPE_CHECKING:
    from normalizer.commands.rulecheck.rules import RuleError

PROG = "suricata-normalizer test-rules"


def add_parser(sub: Any) -> None:
    """Register ``test-rules`` on the CLI's subparsers."""
    p = sub.add_parser(
        "test-rules",
        help="replay captures with manifests through the normalizer and Suricata; compare alerts",
    )
    p.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PCAP_OR_DIR",
        # No absolute path in help texts: man pages and completions are generated from them and
        # must not depend on where the package was checked out or installed.
        help="captures (NAME.pcap beside NAME.yaml) or directories (default: the shipped pcaps/"
        " corpus)",
    )
    p.add_argument(
        "--rules",
        action="append",
        type=Path,
        metavar="FILE",
        help="rule file (repeatable; default: the shipped suricata/rules/decoy.rules)",
    )
    p.add_argument(
        "--suricata-config", type=Path, metavar="FILE", help="suricata.yaml (default: Suricata's)"
    )
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML here")
    p.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep normalized pcaps and eve.json under DIR"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="list every fired alert")
    rec = p.add_argument_group("recording a manifest (--record CAPTURE --proxy CIDR)")
    rec.add_argument(
        "--record",
        action="store_true",
        help="write NAME.yaml for each capture from the alerts Suricata raises (for review)",
    )
    rec.add_argument("--proxy", action="append", metavar="CIDR", help="trusted proxy (repeatable)")
    rec.add_argument(
        "--header", action="append", dest="header_kinds", metavar="KIND", help="header kind"
    )
    rec.add_argument(
        "--keep-addresses",
        action="store_false",
        dest="restore_addresses",
        help="record with the wire addresses kept",
    )
    rec.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="manifest to write ('-': stdout)"
    )


def _rule_errors(errors: list[RuleError], args: argparse.Namespace) -> int:
    from normalizer.commands.rulecheck import junit

    for e in errors:
        print(f"{PROG}: rule error: {e}", file=sys.stderr)
    if args.junit:
        junit.write_rule_errors(args.junit, errors)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; a missing rule file, config or capture path is a usage error (2)."""
    from normalizer.commands.rulecheck import junit
    from normalizer.commands.rulecheck.discover import discover
    from normalizer.commands.rulecheck.harness import CaseResult, run_case
    from normalizer.commands.rulecheck.report import render
    from normalizer.commands.rulecheck.rules import parse_rules
    from normalizer.commands.rulecheck.suricata import RuleLoadError, bundle_rules

    rule_files: list[Path] = args.rules or [DEFAULT_RULES]
    if args.record:
        return _record(args, rule_files)
    try:
        rules = parse_rules(rule_files)
        if args.suricata_config and not args.suricata_config.is_file():
            raise FileNotFoundError(2, "no such Suricata config", str(args.suricata_config))
        targets = discover(args.paths or [DEFAULT_CORPUS])
    except OSError as exc:
        print(f"{PROG}: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 2
    if rules.errors:
        return _rule_errors(rules.errors, args)
    if not targets:
        print(f"{PROG}: no captures found in {args.paths or [DEFAULT_CORPUS]}", file=sys.stderr)
        return 2
    if shutil.which("suricata") is None:
        print(f"{PROG}: suricata not found on PATH (install Suricata 7)", file=sys.stderr)
        return 1
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="test-rules.") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bundle = bundle_rules(rule_files, work / "rules.rules")
        results: list[CaseResult] = []
        try:
            for i, t in enumerate(targets, 1):  # numbered: two dirs may hold the same name
                case_dir = work / f"{i:02d}-{t.capture.stem}"
                results.append(run_case(t, bundle, case_dir, args.suricata_config))
        except RuleLoadError as exc:
            return _rule_errors(exc.errors, args)
    print(render(results, rules, time.monotonic() - start, args.verbose))
    if args.junit:
        junit.write(args.junit, results, rules)
    if any(r.usage_error for r in results):
        return 2
    return 0 if all(r.status == "pass" for r in results) else 1


def _record(args: argparse.Namespace, rule_files: list[Path]) -> int:
    """``--record``: one manifest per capture named, never overwriting one (exit 2 then)."""
    from normalizer.adapters.config import ConfigError, build_options
    from normalizer.adapters.pcap_io import PcapError
    from normalizer.cache.connections import CacheError
    from normalizer.commands.rulecheck import record
    from normalizer.commands.rulecheck.rules import parse_rules
    from normalizer.commands.rulecheck.suricata import RuleLoadError, SuricataError, bundle_rules

    if not args.paths or not args.proxy:
        print(f"{PROG}: --record needs the captures and --proxy CIDR", file=sys.stderr)
        return 2
    if args.output is not None and len(args.paths) > 1:
        print(f"{PROG}: --output names one manifest: record one capture", file=sys.stderr)
        return 2
    try:
        rules = parse_rules(rule_files)
        options = build_options(
            {},
            {
                "proxies": args.proxy,
                "header_kinds": args.header_kinds,
                "restore_addresses": args.restore_addresses,
            },
        )
    except ConfigError as exc:
        print(f"{PROG}: config error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 2
    if rules.errors:
        return _rule_errors(rules.errors, args)
    with tempfile.TemporaryDirectory(prefix="test-rules-record.") as tmp:
        bundle = bundle_rules(rule_files, Path(tmp) / "rules.rules")
        for i, capture in enumerate(args.paths, 1):
            out = args.output or capture.with_suffix(".yaml")
            if str(out) != "-" and out.exists():
                print(f"{PROG}: {out} exists: not overwritten (-o another file)", file=sys.stderr)
                return 2
            try:
                events = record.observe(
                    capture, options, bundle, Path(tmp) / f"{i:02d}", args.suricata_config
                )
                text = record.manifest_text(
                    capture, args.proxy, args.header_kinds, args.restore_addresses, events
                )
                record.write(text, out)
            except RuleLoadError as exc:
                return _rule_errors(exc.errors, args)
            except (PcapError, CacheError, SuricataError) as exc:
                print(f"{PROG}: {capture}: {exc}", file=sys.stderr)
                return 1
            except OSError as exc:
                print(f"{PROG}: {exc.strerror or exc}: {exc.filename or capture}", file=sys.stderr)
                return 1
            n = sum(1 for e in events if e.get("event_type") == "alert")
            print(f"{PROG}: {out}: {n} alerts recorded; review it", file=sys.stderr)
    return 0
