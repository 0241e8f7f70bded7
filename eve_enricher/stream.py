"""One eve line in, the bytes to write out: the per-line policy shared by batch and follow mode.

Why lines stay bytes: an event the enricher does not change is written back exactly as Suricata
wrote it (byte for byte), so non-proxied traffic is untouched and only enriched events are
re-serialized. A line that is not a JSON object is never dropped silently and never stops the
run: it goes to the reject sink as {"offset", "line"} when there is one, else it is passed on
unchanged; either way it is counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

from eve_enricher.enrich import Event, Tuple4, apply, event_tuple
from eve_enricher.lookup import Matcher, TunnelMatcher

# offset of the line in its input file, the line (without newline) -> None
RejectSink = Callable[[int, bytes], None]


@dataclass
class LineCounters:
    lines: int = 0
    enriched: int = 0
    tunneled: int = 0  # of the enriched: non-proxied events that only got a ``tunnel``
    unchanged: int = 0  # valid events passed through byte for byte (no tuple, or not proxied)
    rejected: int = 0  # not a JSON object: to the reject file, or passed through without one


def reject_record(offset: int, line: bytes) -> bytes:
    """The reject file's line for a bad input line (undecodable bytes kept as \\x escapes)."""
    text = line.rstrip(b"\r\n").decode("utf-8", "backslashreplace")
    return orjson.dumps({"offset": offset, "line": text}, option=orjson.OPT_APPEND_NEWLINE)


class LineEnricher:
    """Turns input lines into output bytes; counts what happened to each."""

    def __init__(
        self,
        matcher: Matcher,
        seed: int = 0,
        reject: RejectSink | None = None,
        tunnels: TunnelMatcher | None = None,
    ) -> None:
        self.matcher = matcher
        self.tunnels = tunnels
        self.seed = seed
        self.reject = reject
        self.counters = LineCounters()

    def line(self, raw: bytes, offset: int) -> bytes:
        """Output for one input line (``raw`` with or without its newline; b"" if rejected)."""
        c = self.counters
        c.lines += 1
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            event = None
        if type(event) is not dict:
            c.rejected += 1
            if self.reject is not None:
                self.reject(offset, raw)
                return b""
            return raw if raw.endswith(b"\n") else raw + b"\n"
        t = event_tuple(event)
        if t is not None:
            conn = self.matcher.match(event, t)
            if conn is not None:
                out = apply(event, conn, self.seed, t, copy=False)
                if out is not None:
                    c.enriched += 1
                    return orjson.dumps(out, option=orjson.OPT_APPEND_NEWLINE)
            elif self.tunnels is not None and "vlan" in event:
                # decapsulated frames always carry the VLAN id of their VNI (docs/tunnels.md)
                tagged = self._with_tunnel(self.tunnels, event, t)
                if tagged:
                    return tagged
        elif self.tunnels is not None and "vlan" in event:
            # portless (ICMP, ICMPv6): only a tunnel can apply; its row has ports 0
            src, dst = event.get("src_ip"), event.get("dest_ip")
            if type(src) is str and type(dst) is str:
                tagged = self._with_tunnel(self.tunnels, event, (src, 0, dst, 0))
                if tagged:
                    return tagged
        c.unchanged += 1
        return raw if raw.endswith(b"\n") else raw + b"\n"

    def _with_tunnel(self, tunnels: TunnelMatcher, event: Event, t: Tuple4) -> bytes:
        """The event with its ``tunnel`` object, or b"" when no tunnel is known for it."""
        tunnel = tunnels.match(event, t)
        if tunnel is None:
            return b""
        event["tunnel"] = tunnel
        self.counters.enriched += 1
        self.counters.tunneled += 1
        return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
