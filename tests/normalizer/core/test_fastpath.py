"""Differential tests: the compiled engine must do exactly what the Python engine does.

``engine.Normalizer`` is the specification; ``fastpath.CompiledNormalizer`` (normalizer/
_fastpath.c) is held to it call by call: after every feed, tick, flush and resume both engines
must have emitted the same frames (same timestamps, same bytes, same order), recorded the same
header events and counted the same counters. Scenarios are random conversations (header kinds,
segmentation, loss, reordering, retransmission, ISNs near 2**32, SACK, VLANs, IPv6, FIN/RST,
timeouts, table-full eviction, malformed headers, untrusted sources), every capture of pcaps/
through the whole pipeline (decapsulation, checksum completion, --keep-addresses), and random
or mutated bytes that must never crash either engine and must be accounted packet for packet.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from normalizer.adapters import pcap_batch
from normalizer.adapters.pcap_io import CaptureReader, PcapError
from normalizer.commands.rewrite import rewrite_file
from normalizer.core.engine import Normalizer
from normalizer.core.fastpath import CompiledNormalizer, compiled_available, make_engine
from normalizer.core.frame import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from normalizer.core.options import Options
from normalizer.core.pipeline import Pipeline
from normalizer.proxy_headers import custom, proxy_v1, proxy_v2
from normalizer.proxy_headers.base import Tlv
from tests.normalizer.packets import BACKEND4, BACKEND6, NS, PROXY4, PROXY6, Conv

pytestmark = pytest.mark.skipif(
    not compiled_available(), reason="normalizer.core._fastpath is not built (no C compiler?)"
)

ROOT = Path(__file__).resolve().parents[3]
PCAPS = ROOT / "pcaps"
TRUSTED = (f"{PROXY4}/32", f"{PROXY6}/128")
Step = tuple[str, bytes | None, int]  # ("feed", frame, ts) or ("tick", None, now)


def counters(eng: Any) -> dict[str, object]:
    return eng.counters.as_dict()  # type: ignore[no-any-return]


def outputs(eng: Any) -> list[tuple[int, bytes]]:
    return [(ts, bytes(fr)) for ts, fr in eng.drain()]


class Twins:
    """Both engines, driven by the same calls and compared after each one."""

    def __init__(self, options: Options, linktype: int = LINKTYPE_ETHERNET) -> None:
        self.py = Normalizer(options, linktype)
        self.c = CompiledNormalizer(options, linktype)
        self.steps = 0

    def check(self, what: str) -> None:
        self.steps += 1
        a, b = outputs(self.py), outputs(self.c)
        assert b == a, f"frames differ after {what} (step {self.steps})"
        assert self.c.drain_events() == self.py.drain_events(), f"events differ after {what}"
        assert counters(self.c) == counters(self.py), f"counters differ after {what}"
        assert len(self.c.table) == len(self.py.table), f"table sizes differ after {what}"
        assert self.c.held_packets == self.py.held_packets, f"held frames differ after {what}"

    def feed(self, frame: bytes, ts: int) -> None:
        self.py.feed(frame, ts)
        self.c.feed(frame, ts)
        self.check(f"feed at {ts}")

    def tick(self, now: int) -> None:
        self.py.tick(now)
        self.c.tick(now)
        self.check(f"tick at {now}")

    def flush(self) -> None:
        self.py.flush()
        self.c.flush()
        self.check("flush")
        c = self.py.counters
        assert c.packets_in == c.packets_out + c.packets_dropped  # nothing held, nothing lost


# -- generated conversations ------------------------------------------------------------------

ports = st.integers(1, 65535)


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(["v1", "v1-6", "v2", "v2-6", "v2tlv", "custom", "custom6", "local", "bad"])
    )
    sp, dp = draw(ports), draw(ports)
    if kind == "v1":
        return proxy_v1.build("198.51.100.7", "203.0.113.9", sp, dp)
    if kind == "v1-6":
        return proxy_v1.build("2001:db8:77::7", "2001:db8:99::9", sp, dp)
    if kind == "custom":
        return custom.build("198.51.100.8", "203.0.113.8", sp, dp)
    if kind == "custom6":
        return custom.build("2001:db8:77::8", "2001:db8:99::8", sp, dp)
    if kind == "local":
        return proxy_v2.build(command="LOCAL", family="UNSPEC")
    if kind == "bad":  # a signature, then garbage: malformed, or truncated, or need more
        sig = draw(st.sampled_from([proxy_v2.SIGNATURE, proxy_v1.SIGNATURE, b""]))
        return sig + draw(st.binary(min_size=1, max_size=40))
    fam6 = kind == "v2-6"
    tlvs = [Tlv(0x02, b"decoy.example"), Tlv(0xE1, draw(st.binary(max_size=200)))]
    return proxy_v2.build(
        command="PROXY",
        family="TCP6" if fam6 else "TCP4",
        src="2001:db8:77::1" if fam6 else "198.51.100.1",
        dst="2001:db8:99::1" if fam6 else "203.0.113.1",
        sport=sp,
        dport=dp,
        tlvs=tlvs if kind == "v2tlv" else [],
        with_crc32c=kind == "v2tlv",
    )


@st.composite
def conversation(draw: st.DrawFn, index: int) -> list[bytes]:
    """One connection's frames, segmented, with losses, retransmissions, reordering."""
    six = draw(st.booleans())
    trusted = draw(st.integers(0, 5)) > 0
    client = (
        (PROXY6 if trusted else "2001:db8::77") if six else (PROXY4 if trusted else "192.0.2.77")
    )
    vlans = draw(st.sampled_from([(), (), (7,), (100, 200)]))
    near_wrap = st.integers(2**32 - 3000, 2**32 - 1)
    conv = Conv(
        client=client,
        server=BACKEND6 if six else BACKEND4,
        cport=40000 + index,
        cisn=draw(st.one_of(near_wrap, st.integers(0, 2**32 - 1))),
        sisn=draw(st.one_of(near_wrap, st.integers(0, 2**32 - 1))),
        vlans=vlans,
    )
    header = draw(headers()) if draw(st.integers(0, 9)) else b""
    data = draw(st.binary(max_size=600))
    stream = header + data
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=6))))
    bounds = [0, *[c for c in cuts if 0 < c < len(stream)], len(stream)]
    segs = list(itertools.pairwise(bounds))
    for _ in range(draw(st.integers(0, 2))):  # retransmissions with new boundaries
        a = draw(st.integers(0, len(stream)))
        b = draw(st.integers(a, len(stream)))
        if b > a:
            segs.insert(draw(st.integers(0, len(segs))), (a, b))
    frames = [conv.seg(True, a, 0, stream[a:b], "PA") for a, b in segs]
    if draw(st.booleans()):
        frames = draw(st.permutations(frames))
    for a in draw(st.lists(st.integers(0, len(stream) + 2), max_size=3)):
        sack = None
        if draw(st.booleans()):
            lo = (conv.cisn + 1 + draw(st.integers(0, len(stream)))) % 2**32
            sack = [("NOP", None), ("NOP", None), ("SAck", (lo, (lo + 10) % 2**32))]
        frames.insert(draw(st.integers(0, len(frames))), conv.seg(False, 0, a, options=sack))
    if draw(st.booleans()):  # TCP Fast Open: the header rides on the SYN
        syn = [conv.seg(True, 0, None, stream[: draw(st.integers(0, len(stream)))], "S")]
    else:
        syn = [conv.seg(True, 0, None, flags="S")]
    frames = syn + [conv.seg(False, 0, 0, flags="SA"), conv.seg(True, 0, 0)] + frames
    end = draw(st.sampled_from(["FA", "R", "RA", None]))
    if end:
        frames.append(conv.seg(draw(st.booleans()), len(stream), 0, flags=end))
        if end == "FA":
            frames.append(conv.seg(False, 0, len(stream) + 1, flags="FA"))
    lost = draw(st.sets(st.integers(0, len(frames) - 1), max_size=2))
    return [fr for i, fr in enumerate(frames) if i not in lost or draw(st.booleans())]


def interleave(draw: st.DrawFn, convs: list[list[bytes]]) -> list[bytes]:
    pos = [0] * len(convs)
    out: list[bytes] = []
    while any(p < len(c) for p, c in zip(pos, convs, strict=True)):
        live = [i for i, (p, c) in enumerate(zip(pos, convs, strict=True)) if p < len(c)]
        i = draw(st.sampled_from(live))
        out.append(convs[i][pos[i]])
        pos[i] += 1
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Options, list[Step]]:
    n = draw(st.integers(1, 4))
    convs = [draw(conversation(i)) for i in range(n)]
    frames = interleave(draw, convs)
    if draw(st.booleans()):  # a resumed flow and a port reuse by a new connection
        frames.insert(draw(st.integers(0, len(frames))), frames[0])

    # Mostly the defaults, so most flows get through the hold to ACTIVE; sometimes tight limits.
    def often(default: object, *tight: object) -> object:
        return draw(st.sampled_from([default, default, default, *tight]))

    opts = Options(
        proxies=TRUSTED,
        restore_addresses=draw(st.booleans()),
        midstream=draw(st.sampled_from(["pass", "drop"])),
        max_flows=often(100, 1, 2, 3),  # type: ignore[arg-type]
        idle_timeout=often(600.0, 1.0),  # type: ignore[arg-type]
        closed_timeout=often(30.0, 0.5),  # type: ignore[arg-type]
        pending_timeout=often(5.0, 0.3),  # type: ignore[arg-type]
        max_hold_packets=often(64, 2, 5),  # type: ignore[arg-type]
        max_hold_bytes=often(262_144, 40, 300),  # type: ignore[arg-type]
        max_total_hold_bytes=often(64 << 20, 500),  # type: ignore[arg-type]
        max_pending_events=often(100, 1),  # type: ignore[arg-type]
    )
    steps: list[Step] = []
    ts = draw(st.integers(0, 10 * NS))
    for fr in frames:
        ts += draw(st.sampled_from([0, 1000, 1000, NS // 10, NS // 10, NS // 3, 2 * NS]))
        if draw(st.integers(0, 9)) == 0:
            steps.append(("tick", None, ts))
        steps.append(("feed", fr, ts))
    return opts, steps


@settings(
    max_examples=int(os.environ.get("FASTPATH_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_generated_conversations_match(
    s: tuple[Options, list[tuple[str, bytes | None, int]]],
) -> None:
    opts, steps = s
    twins = Twins(opts)
    for kind, frame, ts in steps:
        if kind == "tick":
            twins.tick(ts)
        else:
            assert frame is not None
            twins.feed(frame, ts)
    twins.flush()


def test_resumed_flows_match() -> None:
    """A flow adopted from the cache is shifted (and restored) identically, both families."""
    for conv, hdr in (
        (
            Conv(cisn=2**32 - 5),
            proxy_v2.build(
                command="PROXY",
                family="TCP4",
                src="198.51.100.1",
                dst="203.0.113.1",
                sport=1,
                dport=2,
            ),
        ),
        (
            Conv(client=PROXY6, server=BACKEND6, vlans=(5,)),
            proxy_v1.build("198.51.100.2", "203.0.113.2", 3, 4),
        ),  # family change
    ):
        from normalizer.proxy_headers.detect import parse_header

        header = parse_header(hdr)
        for restore in (True, False):
            twins = Twins(Options(proxies=TRUSTED, restore_addresses=restore))
            vlan = b"".join(v.to_bytes(2, "big") for v in conv.vlans)
            for eng in (twins.py, twins.c):
                assert eng.resume(
                    (conv.client, conv.cport), (conv.server, conv.sport), vlan, conv.cisn, header, 0
                )
                assert not eng.resume(
                    (conv.client, conv.cport), (conv.server, conv.sport), vlan, conv.cisn, header, 0
                )
            twins.check("resume")
            n = len(hdr)
            twins.feed(conv.seg(True, n, 0, b"GET / HTTP/1.0\r\n\r\n", "PA"), 1)
            twins.feed(conv.seg(False, 0, n + 18, b"HTTP/1.0 200 OK\r\n\r\n", "PA"), 2)
            twins.feed(conv.seg(False, 0, n + 18, options=[("SAck", (conv.cisn + 1, 9))]), 3)
            twins.feed(conv.seg(True, n - 3, 0, b"xyzGET", "PA"), 4)
            twins.flush()


# -- the corpus -------------------------------------------------------------------------------


def _captures() -> list[Path]:
    return sorted(PCAPS.glob("*.pcap"))


def _manifest(pcap: Path) -> dict[str, Any]:
    name = pcap.name.removesuffix(".baseline.pcap").removesuffix(".pcap")
    path = PCAPS / f"{name}.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def _run_pipeline(pcap: Path, options: Options) -> tuple[list[tuple[int, bytes]], Any, list[Any]]:
    with pcap.open("rb") as fh:
        reader = CaptureReader(fh, str(pcap))
        events: list[Any] = []
        pipe: Pipeline | None = None
        out: list[tuple[int, bytes]] = []
        for ts, frame, _origlen in reader:
            if pipe is None:
                assert reader.linktype is not None
                pipe = Pipeline(options, reader.linktype, on_events=events.extend)
            pipe.push(frame, ts)
            out += [(t, bytes(f)) for t, f in pipe.take()]
        assert pipe is not None
        pipe.flush()
        out += [(t, bytes(f)) for t, f in pipe.take()]
        return out, pipe.counters.as_dict(), events


@pytest.mark.parametrize("pcap", _captures(), ids=lambda p: p.name)
@pytest.mark.parametrize("restore", [True, False], ids=["restored", "keep-addresses"])
def test_corpus_captures_match(pcap: Path, restore: bool) -> None:
    m = _manifest(pcap)
    extra = m.get("options") or {}
    base = Options(proxies=tuple(m.get("proxies") or TRUSTED), restore_addresses=restore)
    variants = [dataclasses.replace(base, **extra)]
    if not extra.get("decapsulate"):
        variants.append(dataclasses.replace(base, decapsulate=True))  # passes, then the core
    for opts in variants:
        py = _run_pipeline(pcap, dataclasses.replace(opts, engine="python"))
        c = _run_pipeline(pcap, dataclasses.replace(opts, engine="compiled"))
        assert c[0] == py[0], "frames differ"
        assert c[1] == py[1], "counters differ"
        assert c[2] == py[2], "header events differ"
    if "baseline" not in pcap.name and m.get("header"):
        assert sum(py[1]["headers_stripped"].values()) > 0  # type: ignore[attr-defined]


def test_corpus_frames_one_by_one_match() -> None:
    """Every corpus frame through Twins directly, so a difference names its step."""
    for pcap in _captures():
        with pcap.open("rb") as fh:
            reader = CaptureReader(fh, str(pcap))
            frames = list(reader)
        assert reader.linktype is not None
        twins = Twins(
            Options(proxies=tuple(_manifest(pcap).get("proxies") or TRUSTED)), reader.linktype
        )
        for ts, frame, _ in frames:
            twins.feed(frame, ts)
        twins.flush()


# -- hostile bytes ----------------------------------------------------------------------------


def _mutations(seed: int, count: int) -> list[bytes]:
    """Valid frames of several kinds with bytes flipped, cut or appended."""
    rnd = random.Random(seed)
    base: list[bytes] = []
    for conv in (Conv(), Conv(client=PROXY6, server=BACKEND6), Conv(vlans=(3, 4))):
        hdr = proxy_v1.build("198.51.100.7", "203.0.113.9", 1, 2)
        base += conv.handshake() + [
            conv.seg(True, 0, 0, hdr + b"GET /", "PA"),
            conv.seg(False, 0, len(hdr) + 5, b"OK", "PA", options=[("SAck", (1, 2))]),
        ]
    out = []
    for _ in range(count):
        fr = bytearray(rnd.choice(base))
        for _ in range(rnd.randint(1, 4)):
            op = rnd.randint(0, 3)
            if op == 0 and fr:
                fr[rnd.randrange(len(fr))] = rnd.randrange(256)
            elif op == 1:
                del fr[rnd.randrange(len(fr) + 1) :]
            elif op == 2:
                fr += os.urandom(rnd.randint(1, 20))
            elif fr:
                i = rnd.randrange(min(len(fr), 80))
                fr[i] = rnd.choice([0, 0xFF, 5, 0x45, 0x60, 0x81, 0x86, 0xDD, 0x08])
        out.append(bytes(fr))
    return out


@pytest.mark.parametrize(
    "linktype",
    [LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_NULL, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2],
)
def test_garbage_never_crashes_and_is_accounted(linktype: int) -> None:
    rnd = random.Random(linktype)
    frames = [os.urandom(rnd.randint(0, 120)) for _ in range(300)] + _mutations(linktype, 1500)
    for midstream in ("pass", "drop"):
        twins = Twins(
            Options(proxies=(*TRUSTED, "0.0.0.0/0"), midstream=midstream, max_flows=50), linktype
        )
        for i, fr in enumerate(frames):
            twins.feed(fr, i * 1000)
        twins.tick(10**12)
        twins.flush()
        c = twins.c.counters
        assert c.packets_in == len(frames)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=100), max_size=20), st.sampled_from([1, 101, 113, 276, 0]))
def test_random_bytes_match(frames: list[bytes], linktype: int) -> None:
    twins = Twins(Options(proxies=("0.0.0.0/0", "::/0")), linktype)
    for i, fr in enumerate(frames):
        twins.feed(fr, i)
    twins.flush()


# -- choosing the engine ----------------------------------------------------------------------


def test_make_engine_follows_the_choice() -> None:
    opts = Options(proxies=TRUSTED)
    assert isinstance(make_engine(opts, 1, "compiled"), CompiledNormalizer)
    assert isinstance(make_engine(opts, 1, "auto"), CompiledNormalizer)
    assert isinstance(make_engine(opts, 1, "python"), Normalizer)
    with pytest.raises(ValueError, match="engine must be one of"):
        make_engine(opts, 1, "fast")


def test_without_the_extension_the_python_engine_runs(tmp_path: Path) -> None:
    """A build without a compiler: the module cannot be imported, auto falls back and says so."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'normalizer.core._fastpath':\n"
        "            raise ImportError('hidden by the test')\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Hide())\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{hide}{os.pathsep}{ROOT}"}
    code = (
        "from normalizer.core.fastpath import make_engine, engine_name, compiled_available\n"
        "from normalizer.core.options import Options\n"
        "e = make_engine(Options(), 1)\n"
        "print(compiled_available(), engine_name(e))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "python"]
    r = subprocess.run(
        [sys.executable, "-m", "normalizer.cli", "--version"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "python engine" in r.stdout
    pcap = next(iter(_captures()))
    out = tmp_path / "out.pcap"
    base = [sys.executable, "-m", "normalizer.cli", "rewrite", str(pcap), "-o", str(out)]
    base += ["--proxy", PROXY4 + "/32", "--stats-json", str(tmp_path / "s.json")]
    r = subprocess.run([*base, "--engine", "compiled"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "engine: the compiled engine is not built" in r.stderr
    r = subprocess.run(base, env=env, capture_output=True, text=True)  # auto: Python, says so
    assert r.returncode == 0, r.stderr
    assert "engine: python" in r.stderr
    assert '"engine": "python"' in (tmp_path / "s.json").read_text()


# -- the batch path of rewrite (pcap_batch.py) against the per-packet loop ----------------------


def _rewrite_both(
    src: Path, tmp: Path, opts: Options, resume: Any = None
) -> list[tuple[bytes, object, list[Any]]]:
    """(output bytes, counters or the error text, events) of the per-packet loop on the Python
    engine and of the batch path on the compiled one."""
    results = []
    for engine in ("python", "compiled"):
        o = dataclasses.replace(opts, engine=engine)
        assert pcap_batch.applies(src, o) == (engine == "compiled")
        dst = tmp / f"{src.name}.{engine}.pcap"
        events: list[Any] = []
        try:
            got: object = rewrite_file(src, dst, o, on_events=events.extend, resume=resume)
            got = got.as_dict()  # type: ignore[attr-defined]
        except PcapError as exc:
            got = str(exc)
        results.append((dst.read_bytes(), got, events))
    return results


@pytest.mark.parametrize("checksums", ["auto", "keep"])
@pytest.mark.parametrize("restore", [True, False], ids=["restored", "keep-addresses"])
def test_batch_rewrite_matches_per_packet_on_the_corpus(
    tmp_path: Path, checksums: str, restore: bool
) -> None:
    for pcap in _captures():
        m = _manifest(pcap)
        if (m.get("options") or {}).get("decapsulate"):
            continue
        opts = Options(
            proxies=tuple(m.get("proxies") or TRUSTED),
            restore_addresses=restore,
            checksums=checksums,
        )
        py, c = _rewrite_both(pcap, tmp_path, opts)
        assert c[0] == py[0], f"{pcap.name}: output differs"
        assert c[1] == py[1], f"{pcap.name}: counters differ"
        assert c[2] == py[2], f"{pcap.name}: events differ"


def _as_partial(frame: bytes) -> bytes:
    """The frame with its TCP/UDP checksum replaced by the pseudo-header sum, as tx offload
    leaves it in a capture taken on the sender."""
    from normalizer.core.frame import locate_l4

    f = locate_l4(frame)
    assert f is not None
    addrs = frame[f.ip + 12 : f.ip + 20] if frame[f.ip] >> 4 == 4 else frame[f.ip + 8 : f.ip + 40]
    words = sum(int.from_bytes(addrs[i : i + 2], "big") for i in range(0, len(addrs), 2))
    pseudo = (words + f.proto + f.end - f.l4) % 0xFFFF
    at = f.l4 + (16 if f.proto == 6 else 6)
    return frame[:at] + pseudo.to_bytes(2, "big") + frame[at + 2 :]


def _pcap(
    records: list[tuple[int, int, bytes, int]], big: bool = False, nano: bool = False
) -> bytes:
    e = ">" if big else "<"
    out = struct.pack(e + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for sec, frac, data, origlen in records:
        out += struct.pack(e + "IIII", sec, frac, len(data), origlen) + data
    return out


@pytest.mark.parametrize("big", [False, True], ids=["little", "big"])
@pytest.mark.parametrize("nano", [False, True], ids=["us", "ns"])
@pytest.mark.parametrize(
    "tail",
    [
        b"",
        b"\x01\x02\x03",
        b"\x00" * 8 + b"\xff\x00\x00\x00" + b"\x00" * 4 + b"ab",
        b"\x00" * 8 + b"\xff\xff\xff\x7f" + b"\x00" * 4,
        b"badts",
    ],
)
def test_batch_rewrite_matches_on_odd_files(
    tmp_path: Path, big: bool, nano: bool, tail: bytes
) -> None:
    """Endianness, timestamp resolution, truncated frames (original length kept when untouched),
    frames completed by the checksum policy, and every way a file can end badly."""
    rnd = random.Random(1)
    conv = Conv(cisn=2**32 - 10)
    other = Conv(cport=41000, client="192.0.2.99")
    hdr = proxy_v2.build(
        command="PROXY", family="TCP4", src="198.51.100.1", dst="203.0.113.1", sport=1, dport=2
    )
    frames = (
        conv.handshake()
        + other.handshake()
        + [
            conv.seg(True, 0, 0, hdr[:10], "PA"),
            conv.seg(True, 10, 0, hdr[10:] + b"GET / HTTP/1.0\r\n\r\n", "PA"),
            other.seg(True, 0, 0, b"x" * 300, "PA"),
            conv.seg(False, 0, len(hdr) + 18, b"HTTP/1.0 200 OK\r\n\r\n" + bytes(900), "PA"),
            conv.seg(True, len(hdr) + 18, 920, flags="FA"),
            bytes(rnd.randrange(256) for _ in range(70)),
        ]
    )
    # Frames whose checksum holds only the pseudo-header sum (offloaded): TCP and UDP, IPv4
    # and IPv6, odd lengths; the policy completes them (one of them already right: kept).
    partials = [
        conv.seg(False, 920, len(hdr) + 19, flags="FA"),
        Conv(client=PROXY6, server=BACKEND6).seg(True, 0, 0, b"odd", "PA"),
        bytes(Ether() / IP(src=PROXY4, dst=BACKEND4) / UDP(sport=5, dport=53) / b"q?"),
        bytes(Ether() / IPv6(src=PROXY6, dst=BACKEND6) / UDP(sport=5, dport=53) / b"abc"),
    ]
    first_partial = len(frames)
    frames += [_as_partial(fr) for fr in partials]
    whole = [i for i in range(first_partial, len(frames)) if i % 5 != 3]  # not cut: completable
    records = []
    for i, fr in enumerate(frames):
        data = fr[:60] if i % 5 == 3 else fr  # some cut by a snap length
        records.append((1_700_000_000 + i, i * 1000, data, len(fr) + (i % 7 == 6)))
    if tail == b"badts":  # a whole record whose timestamp is past what pcap can carry (2106)
        e = ">" if big else "<"
        tail = struct.pack(e + "IIII", 0xFFFFFFFF, 2_000_000_000, 4, 4) + b"abcd"
    src = tmp_path / "odd.pcap"
    src.write_bytes(_pcap(records, big, nano) + tail)
    for restore in (True, False):
        opts = Options(proxies=TRUSTED, restore_addresses=restore)
        py, c = _rewrite_both(src, tmp_path, opts)
        assert c[1] == py[1]
        assert c[0] == py[0]
        assert c[2] == py[2]
        if tail:
            assert isinstance(c[1], str)  # an error, after the records before it
        else:
            assert isinstance(c[1], dict)
            assert c[1]["checksum_completed"] == len(whole)  # the offloaded frames were completed


def test_batch_rewrite_resumes_flows_as_the_loop_does(tmp_path: Path) -> None:
    from normalizer.proxy_headers.detect import parse_header

    conv = Conv(cisn=77)
    hdr = proxy_v1.build("198.51.100.2", "203.0.113.2", 3, 4)
    header = parse_header(hdr)
    frames = [conv.seg(True, len(hdr), 0, b"GET /", "PA"), conv.seg(False, 0, len(hdr) + 5)]
    src = tmp_path / "resume.pcap"
    src.write_bytes(_pcap([(1_700_000_000 + i, 0, fr, len(fr)) for i, fr in enumerate(frames)]))
    asked: list[float] = []

    def resume(since: float) -> list[Any]:
        asked.append(since)
        return [((conv.client, conv.cport), (conv.server, conv.sport), b"", conv.cisn, header)]

    py, c = _rewrite_both(src, tmp_path, Options(proxies=TRUSTED), resume)
    assert c == py
    assert asked[0] == asked[1]
    assert py[1]["flows_resumed"] == 1  # type: ignore[index]


# -- live: whole AF_PACKET ring blocks (Pipeline.push_block) -----------------------------------


def _ring_block_frames(seed: int) -> list[tuple[int, int, bytes, int, int, int, int]]:
    """(sec, nsec, frame, wire_len, status, tci, tpid) slots: VLAN tags stripped by the kernel,
    offloaded checksums (CSUMNOTREADY), cut frames and GRO-sized lengths, mixed flows."""
    from normalizer.adapters.afpacket import TP_STATUS_CSUMNOTREADY, TP_STATUS_VLAN_VALID

    rnd = random.Random(seed)
    convs = [Conv(cisn=2**32 - 7), Conv(cport=40001, vlans=(42,)), Conv(client="192.0.2.50")]
    hdr = proxy_v1.build("198.51.100.7", "203.0.113.9", 1, 2)
    frames: list[bytes] = []
    for conv in convs:
        frames += conv.handshake() + [
            conv.seg(True, 0, 0, hdr + b"GET / HTTP/1.0\r\n\r\n", "PA"),
            conv.seg(
                False,
                0,
                len(hdr) + 18,
                b"HTTP/1.0 200 OK\r\n\r\n",
                "PA",
                options=[("SAck", ((conv.cisn + 1) % 2**32, (conv.cisn + 9) % 2**32))],
            ),
            conv.seg(True, len(hdr) + 18, 19, flags="FA"),
        ]
    rnd.shuffle(frames)
    slots = []
    for i, fr in enumerate(frames):
        status, tci, tpid, wire = 0, 0, 0, len(fr)
        if fr[12:14] == b"\x81\x00":  # tagged: the kernel hands it untagged, the tag aside
            tci = int.from_bytes(fr[14:16], "big")
            tpid = rnd.choice([0, 0x8100, 0x88A8])
            status |= TP_STATUS_VLAN_VALID | (0x40 if tpid else 0)
            fr = fr[:12] + fr[16:]
        if rnd.random() < 0.3 and fr[12:14] == b"\x08\x00":  # offloaded: pseudo-header sum only
            b = bytearray(fr)
            total = int.from_bytes(b[16:18], "big")
            pseudo = (sum(struct.unpack("!4H", b[26:34])) + 6 + total - 20) % 0xFFFF
            b[50:52] = pseudo.to_bytes(2, "big")
            fr = bytes(b)
            status |= TP_STATUS_CSUMNOTREADY
        if i % 9 == 4:
            wire = len(fr) + 100  # cut by the ring's snap length
        if i % 11 == 5:
            wire = 3000  # a GRO super-frame's length
        slots.append((1_700_000_000 + i, i * 1000, fr, wire, status, tci, tpid))
    return slots


@pytest.mark.parametrize("complete_partial", [True, False])
def test_ring_blocks_through_the_core_match_parse_block_and_push(complete_partial: bool) -> None:
    from normalizer.adapters.afpacket import RingStats
    from tests.normalizer.adapters.test_afpacket import make_block

    for seed in range(5):
        slots = _ring_block_frames(seed)
        blocks = [make_block(slots[:10], base_pad=16), make_block(slots[10:])]
        results = []
        for engine in ("python", "compiled"):
            opts = Options(proxies=TRUSTED, engine=engine)
            pipe = Pipeline(opts, LINKTYPE_ETHERNET, checksums="keep")
            stats = RingStats()
            n = pipe.push_block(blocks[0], 16, complete_partial, stats)
            n += pipe.push_block(blocks[1], 0, complete_partial, stats)
            pipe.flush()
            out = [(ts, bytes(fr)) for ts, fr in pipe.take()]
            results.append((n, out, pipe.counters.as_dict(), stats))
        assert results[1][0] == results[0][0] == len(slots)
        assert results[1][1] == results[0][1], "frames differ"
        assert results[1][2] == results[0][2], "counters differ"
        assert results[1][3] == results[0][3], "ring stats differ"
        assert results[0][3].csum_not_ready > 0 and results[0][3].truncated > 0


class _BuggyCompiled(CompiledNormalizer):
    """The compiled engine with a fault injected in its once-per-flow callback."""

    def _on_header(self, buf: bytes, *args: Any) -> object:
        if b"poison" in buf:
            raise ZeroDivisionError("an internal bug")
        return super()._on_header(buf, *args)


def test_a_frame_that_raises_in_a_ring_block_is_handed_back_and_the_block_goes_on() -> None:
    """live's guard on the compiled block path: the failing frame goes to on_failure (which
    forwards it untouched), every other frame of the block is still processed."""
    from normalizer.adapters.afpacket import RingStats
    from tests.normalizer.adapters.test_afpacket import make_block

    good, bad = Conv(), Conv(cport=40123)
    hdr = proxy_v1.build("198.51.100.7", "203.0.113.9", 1, 2)
    frames = good.handshake() + bad.handshake()
    frames += [bad.seg(True, 0, 0, b"poison", "PA"), good.seg(True, 0, 0, hdr + b"GET /", "PA")]
    frames += [good.seg(False, 0, len(hdr) + 5, b"OK", "PA")]
    block = make_block([(1, i, fr, len(fr), 0, 0, 0) for i, fr in enumerate(frames)])
    opts = Options(proxies=TRUSTED, engine="compiled")
    pipe = Pipeline(opts, LINKTYPE_ETHERNET, checksums="keep")
    pipe.engine = _BuggyCompiled(opts, LINKTYPE_ETHERNET)
    failed: list[tuple[int, bytes, str]] = []

    def on_failure(ts: int, frame: bytes, exc: Exception) -> None:
        failed.append((ts, frame, type(exc).__name__))

    n = pipe.push_block(block, 0, True, RingStats(), on_failure)
    assert n == len(frames)
    assert failed == [(1_000_000_006, frames[6], "ZeroDivisionError")]
    assert pipe.counters.headers_stripped == {"proxy-v1": 1}  # the flow after it, normalized
    unguarded = Pipeline(opts, LINKTYPE_ETHERNET, checksums="keep")
    unguarded.engine = _BuggyCompiled(opts, LINKTYPE_ETHERNET)
    with pytest.raises(ZeroDivisionError):  # without a guard the exception propagates
        unguarded.push_block(block, 0, True, RingStats())
