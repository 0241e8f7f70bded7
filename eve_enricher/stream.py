"""One eve line in, the bytes to write out: the per-line policy shared by batch and follow mode.

Why lines stay bytes: an event the enricher does not change is written back exactly as Suricata
wrote it (byte for byte), so non-proxied traffic is untouched and only enriched events are
re-serialized.

Why every line is isolated: eve.json is written from traffic any host can send, and a line
that stops the enricher stops the sensor (``follow`` would crash-loop on it forever). So no
line ever raises out of ``LineEnricher.line``, and every line has exactly one outcome, counted:

* enriched / unchanged: the normal cases;
* rejected: not a JSON object (or longer than the line bound): it cannot be an event, so it goes
  to the reject sink as {"offset", "reason", "passed": false, "line"} -- without a reject sink
  it is passed on unchanged instead, as before, except a line over the bound (not kept in
  memory), which is dropped and said on stderr;
* failed: a JSON object that the enricher could not enrich (a field of a type or shape it does
  not expect, an event the JSON encoder cannot write back, valid JSON that orjson refuses to
  read): Suricata's event is worth more than our addition, so it is passed on unchanged AND
  recorded in the reject sink with the reason and ``"passed": true``, so it can be found and
  the enricher fixed.

Errors of the environment (the cache, the disk) are not a line's fault: they propagate, and the
caller exits 1 or waits for the disk.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from eve_enricher.enrich import Event, Mode, Tuple4, apply, event_tuple, is_addr
from eve_enricher.lookup import Matcher, TunnelMatcher
from normalizer.cache.connections import CacheError

# a reject record (one line, newline included) -> None
RejectSink = Callable[[bytes], None]
# one note for the operator (a new kind of failure) -> None
Notify = Callable[[str], None]

_REASON_MAX = 200  # characters of an exception's message kept in a reject record
_NOTE_KINDS_MAX = 64  # kinds of failure said on stderr, once each


@dataclass
class LineCounters:
    lines: int = 0  # == enriched + unchanged + failed + rejected
    enriched: int = 0
    tunneled: int = 0  # of the enriched: non-proxied events that only got ``encapsulation``
    unchanged: int = 0  # valid events passed through byte for byte (no tuple, or not proxied)
    unknown: int = 0  # of the unchanged: events with a TCP tuple the cache does not know
    failed: int = 0  # valid JSON objects the enricher could not enrich: passed unchanged
    rejected: int = 0  # not a JSON object / too long: to the reject file (passed without one)


def reject_record(offset: int, line: bytes, reason: str, passed: bool) -> bytes:
    """The reject file's line for an input line (undecodable bytes kept as \\x escapes)."""
    text = line.rstrip(b"\r\n").decode("utf-8", "backslashreplace")
    record = {"offset": offset, "reason": reason, "passed": passed, "line": text}
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


_ADDED = ("proxy", "encapsulation")  # the keys enrichment adds (docs/eve-enrichment.schema.json)


def splice(raw: bytes, added: dict[str, object]) -> bytes:
    """``raw`` (one JSON object) with ``added``'s keys appended before its closing brace: every
    byte Suricata wrote stays as it was (same spacing, escapes, number spelling, key order).
    The caller makes sure ``raw`` is an object that has none of those keys."""
    body = raw.rstrip()
    head = body[:-1]
    more = orjson.dumps(added)[1:]  # '"key":value,...}'
    sep = b"" if head.rstrip().endswith(b"{") else b","
    return head + sep + more + b"\n"


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def is_json_object(raw: bytes) -> bool:
    """Whether ``raw`` is a JSON object (RFC 8259) although orjson refuses it: escaped lone
    surrogates, numbers beyond a double, deep nesting Python's parser still reads. Only lines
    orjson refused get here, so its cost does not matter."""
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):  # also UnicodeDecodeError and JSONDecodeError
        return False
    return type(value) is dict


def _environmental(exc: Exception) -> bool:
    """Whether ``exc`` is the environment's fault (disk, cache database), not the line's."""
    # values reach the cache only after their types were checked, so a database error is the
    # database's (locked, corrupt, used from the wrong thread), never a line's
    return isinstance(exc, OSError | MemoryError | CacheError | sqlite3.Error)


def _reason(exc: Exception) -> str:
    if isinstance(exc, orjson.JSONEncodeError):  # e.g. nested deeper than orjson writes (254)
        text = f"cannot encode the enriched event: {exc}"
    else:
        text = f"cannot enrich: {type(exc).__name__}: {exc}"
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


class LineEnricher:
    """Turns input lines into output bytes; counts what happened to each."""

    def __init__(
        self,
        matcher: Matcher,
        seed: int = 0,
        reject: RejectSink | None = None,
        tunnels: TunnelMatcher | None = None,
        notify: Notify | None = None,
        mode: Mode = "overwrite",
    ) -> None:
        self.matcher = matcher
        self.mode = mode
        # the ``timestamp`` of the last event read, as written (parsed only when asked: the
        # follow lag metric)
        self.last_timestamp: object = None
        self.tunnels = tunnels
        self.seed = seed
        self.reject = reject
        self.notify = notify
        self.counters = LineCounters()
        self._noted: set[str] = set()

    def line(self, raw: bytes, offset: int) -> bytes:
        """Output for one input line (``raw`` with or without its newline; b"" if rejected).
        Never raises for anything in the line."""
        c = self.counters
        c.lines += 1
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if is_json_object(raw):  # valid JSON all the same: pass it on, say why
                return self._failed(offset, raw, f"cannot parse: {exc}", "parse")
            return self._rejected(offset, raw, f"not JSON: {exc}")
        if type(event) is not dict:
            return self._rejected(offset, raw, "not a JSON object")
        self.last_timestamp = event.get("timestamp")
        try:
            out = self._enrich(event, raw)
        except Exception as exc:
            if _environmental(exc):
                raise
            return self._failed(offset, raw, _reason(exc), type(exc).__name__)
        if out:
            return out
        c.unchanged += 1
        return raw if raw.endswith(b"\n") else raw + b"\n"

    def too_long(self, offset: int, prefix: bytes, length: int, limit: int) -> bytes:
        """Account for a line of ``length`` bytes that was not kept (over ``limit``): rejected,
        its first bytes in the record. Returns b"" (nothing to write)."""
        self.counters.lines += 1
        reason = f"line of {length} bytes, longer than {limit}"
        if self.reject is not None:
            return self._rejected(offset, prefix, reason)
        # its first bytes alone would be a corrupt line in the output: it is dropped, and said
        self.counters.rejected += 1
        self._note("too long", f"line at byte {offset} dropped, {reason}")
        return b""

    def _rejected(self, offset: int, raw: bytes, reason: str) -> bytes:
        self.counters.rejected += 1
        if self.reject is not None:
            self.reject(reject_record(offset, raw, reason, passed=False))
            return b""
        return raw if raw.endswith(b"\n") else raw + b"\n"

    def _failed(self, offset: int, raw: bytes, reason: str, kind: str) -> bytes:
        self.counters.failed += 1
        if self.reject is not None:
            self.reject(reject_record(offset, raw, reason, passed=True))
        self._note(kind, f"line at byte {offset} passed unchanged, {reason}")
        return raw if raw.endswith(b"\n") else raw + b"\n"

    def _note(self, kind: str, msg: str) -> None:
        """Say ``msg`` if it is the first of its kind."""
        if self.notify is None or kind in self._noted or len(self._noted) >= _NOTE_KINDS_MAX:
            return
        self._noted.add(kind)
        self.notify(f"{msg} (said once per kind)")

    def _enrich(self, event: Event, raw: bytes) -> bytes:
        """The enriched line, or b"" when the event stays as it is."""
        t = event_tuple(event)
        if t is not None:
            conn = self.matcher.match(event, t)
            if conn is not None:
                # only added keys: spliced into Suricata's bytes (unless the line has one of
                # them already, which Suricata never writes: then it is replaced)
                keep = self.mode == "extra-data" and not any(k in event for k in _ADDED)
                out = apply(event, conn, self.seed, t, copy=False, mode=self.mode)
                if out is not None:
                    if keep:
                        data = splice(raw, {k: out[k] for k in _ADDED if k in out})
                    else:
                        data = orjson.dumps(out, option=orjson.OPT_APPEND_NEWLINE)
                    self.counters.enriched += 1
                    return data
            elif self.tunnels is not None and "vlan" in event:
                # decapsulated frames always carry the VLAN id of their VNI (docs/tunnels.md)
                data = self._with_tunnel(self.tunnels, event, t, raw)
                if data:
                    return data
            if conn is None and event.get("proto") == "TCP":
                self.counters.unknown += 1  # said in the summary: the wrong cache?
        elif self.tunnels is not None and "vlan" in event:
            # portless (ICMP, ICMPv6): only a tunnel can apply; its row has ports 0
            src, dst = event.get("src_ip"), event.get("dest_ip")
            if is_addr(src) and is_addr(dst):
                return self._with_tunnel(self.tunnels, event, (src, 0, dst, 0), raw)
        return b""

    def _with_tunnel(self, tunnels: TunnelMatcher, event: Event, t: Tuple4, raw: bytes) -> bytes:
        """The event with its ``encapsulation`` object, or b"" when no tunnel is known for it.
        Suricata's own ``tunnel`` object (the outer tuple of a tunnel it decoded) is left as
        written."""
        tunnel = tunnels.match(event, t)
        if tunnel is None:
            return b""
        if "encapsulation" in event:
            event["encapsulation"] = tunnel
            data = orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
        else:  # nothing of Suricata's changes: its bytes are kept
            data = splice(raw, {"encapsulation": tunnel})
        self.counters.enriched += 1
        self.counters.tunneled += 1
        return data
