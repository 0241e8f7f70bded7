"""Appliance throughput per core: ``./run bench appliance`` (``python -m bench appliance``, root).

Two namespaces of the appliance lab (tests/lab/appliance_lab.py): the balancer side sends
GENEVE datagrams (the three options, inner TCP segments of 64 flows: 1448-byte data and
40-byte ACKs alternating, as a download looks) to the appliance's port 6081; the returns are
dropped by nftables on arrival so nothing answers. The appliance side runs the real
``ApplianceLive`` object (its UDP socket, raw return socket, core, pipeline and tap; nobody
reads the tap) in one process, pinned to one core with ``--cpu``.

Why rounds of queued datagrams instead of a paced stream: a Python sender cannot offer more
than the receiver handles, so the receiver's own CPU time is the honest measure. Per round the
sender queues ``--batch`` datagrams (the socket buffer holds them), then the appliance drains
them in two timed stages with its own thread CPU clock:

* return path: ``recvfrom`` + validation + building the return + the raw ``sendto``;
* tap path: ``Pipeline.push_inner`` + ``take`` + the tap ``write`` of the same datagrams.

It also times ``Appliance.receive`` alone in process: the rest of the return path is the two
syscalls, and on veths the raw ``sendto`` carries the peer namespace's receive path too (the
kernel runs it in the sender's context), which a NIC driver would not.

Packets/s per core = datagrams / CPU seconds of each stage (and of both). In the service both
stages run per batch of up to 256, the return stage first, so the sum is the appliance's
single-core capacity and the return stage alone its latency-relevant part.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time

from tests.lab.appliance_lab import APPLIANCE, BALANCER, ROOT, TAP, ApplianceLab
from tests.lab.netlab import LabError

PY = ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "bench.appliance"]
DROP = """table ip snlbench {
  chain in {
    type filter hook input priority 0;
    udp dport 6081 drop
  }
}
"""


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _segment(flow: int, seq: int, data: bool) -> bytes:
    """An inner IPv4/TCP segment with valid checksums: data client <- server, or the ACK."""
    client, server = bytes([198, 51, 100, 10 + flow % 200]), bytes([192, 0, 2, 2])
    cport = 40000 + flow
    payload = bytes(1448) if data else b""
    src, dst, sport, dport = (server, client, 80, cport) if data else (client, server, cport, 80)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 5 << 4, 0x10, 65535, 0, 0) + payload
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    return ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:] + tcp


def datagrams(n: int) -> list[bytes]:
    from tests.lab.balancer import wrap

    eni = bytes.fromhex("0e1a2b3c4d5e6f70")
    return [wrap(_segment(i % 64, i, i % 2 == 0), eni) for i in range(n)]


def _send(batch: int, rounds: int) -> None:
    """Balancer side: on each line from the parent, queue one batch; say "sent"."""
    pkts = datagrams(batch)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((BALANCER, 50001))
        for _ in range(rounds):
            sys.stdin.readline()
            for p in pkts:
                s.sendto(p, (APPLIANCE, 6081))
            print("sent", flush=True)


def _appliance(batch: int, rounds: int) -> None:
    """Appliance side: the real adapter's pieces, each stage timed on this thread's CPU clock."""
    from normalizer.commands.appliance import ApplianceLive, ApplianceSettings
    from normalizer.core.options import Options

    opts = Options(tunnel_peers=(f"{BALANCER}/32",), idle_timeout=350.0)
    app = ApplianceLive(ApplianceSettings(listen=APPLIANCE, tap=TAP), lambda: opts)
    app.sock.setblocking(True)
    app.sock.settimeout(2.0)
    recv, send, receive = app.sock.recvfrom, app.raw.sendto, app.core.receive
    push, pipe, aton = app.pipe.push_inner, app.pipe, socket.inet_aton
    ret_cpu = tap_cpu = 0.0
    done = 0
    print("ready", flush=True)
    for _ in range(rounds):
        sys.stdin.readline()
        verdicts = []
        t0 = time.thread_time()
        for _ in range(batch):
            try:
                data, (host, port) = recv(65535)
            except TimeoutError:
                break
            v = receive(data, aton(host), port)
            if v is not None:
                send(v.ret, (host, 0))
                verdicts.append(v)
        t1 = time.thread_time()
        ts = time.time_ns()
        for v in verdicts:
            push(v.frame, ts, v.ref)
        for _ts, frame in pipe.take():
            app.tap.write(frame)
        t2 = time.thread_time()
        ret_cpu += t1 - t0
        tap_cpu += t2 - t1
        done += len(verdicts)
        print("done", flush=True)
    c = app.counters()
    print(
        json.dumps(
            {
                "datagrams": done,
                "return_cpu_s": ret_cpu,
                "tap_cpu_s": tap_cpu,
                "tap_frames": c["tap_frames"],
                "tap_write_errors": c["tap_write_errors"],
            }
        ),
        flush=True,
    )


def _line(p: subprocess.Popen[str], want: str) -> None:
    assert p.stdout is not None
    got = p.stdout.readline().strip()
    if got != want:
        raise LabError(f"expected {want!r} from {p.args!r}, got {got!r}")


def measure(batch: int, rounds: int, cpu: int | None) -> dict[str, float]:
    with ApplianceLab() as lab:
        subprocess.run(lab.cmd("balancer", "nft", "-f", "-"), input=DROP, text=True, check=True)
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        opts = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
        app = subprocess.Popen(
            lab.cmd("appliance", *pin, *PY, "_appliance", str(batch), str(rounds)), **opts
        )
        tx = subprocess.Popen(lab.cmd("balancer", *PY, "_send", str(batch), str(rounds)), **opts)
        try:
            _line(app, "ready")
            assert app.stdin is not None and tx.stdin is not None
            for _ in range(rounds):
                tx.stdin.write("go\n")
                tx.stdin.flush()
                _line(tx, "sent")
                app.stdin.write("go\n")
                app.stdin.flush()
                _line(app, "done")
            assert app.stdout is not None
            result: dict[str, float] = json.loads(app.stdout.readline())
        finally:
            for p in (app, tx):
                p.kill()
                p.wait()
    n = result["datagrams"]
    result["return_pps"] = n / result["return_cpu_s"]
    result["tap_pps"] = n / result["tap_cpu_s"]
    result["both_pps"] = n / (result["return_cpu_s"] + result["tap_cpu_s"])
    return result


def core_only(n: int = 20_000) -> float:
    """Microseconds per datagram of ``Appliance.receive`` alone (validate, build the return
    and the frame; no syscalls): what of the return path is Python rather than the kernel."""
    from normalizer.tunnels.appliance import Appliance

    pkts = datagrams(n)
    src = socket.inet_aton(BALANCER)
    core = Appliance((f"{BALANCER}/32",), socket.inet_aton(APPLIANCE))
    receive = core.receive
    t0 = time.thread_time()
    for p in pkts:
        receive(p, src, 50001)
    return (time.thread_time() - t0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_send"]:
        _send(int(argv[1]), int(argv[2]))
        return 0
    if argv[:1] == ["_appliance"]:
        _appliance(int(argv[1]), int(argv[2]))
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench appliance", description=__doc__)
    ap.add_argument("--batch", type=int, default=1000, help="datagrams queued per round")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cpu", type=int, default=None, help="pin the appliance to this core")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench appliance: needs root (network namespaces)", file=sys.stderr)
        return 2
    print(f"core alone (Appliance.receive, no syscalls): {core_only():.1f} us per datagram")
    for i in range(args.runs):
        r = measure(args.batch, args.rounds, args.cpu)
        print(
            f"run {i + 1}: {int(r['datagrams'])} datagrams (half 1448-byte segments, half ACKs):"
            f" return path {r['return_pps']:,.0f} pkt/s per core"
            f" ({1e6 / r['return_pps']:.1f} us), tap path {r['tap_pps']:,.0f} pkt/s"
            f" ({1e6 / r['tap_pps']:.1f} us), both {r['both_pps']:,.0f} pkt/s;"
            f" tap write errors {int(r['tap_write_errors'])}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
