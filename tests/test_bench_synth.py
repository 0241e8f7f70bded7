"""The benchmark's synthetic captures are traffic Suricata can track (bench/synth.py).

Suricata drops a SYN/ACK whose timestamp echo does not match the SYN's TSval and then tracks
no session at all (field-facts.md): a benchmark on such a capture measures nothing. These
properties are checked on the generated frames themselves, independently of Suricata.
"""

from __future__ import annotations

import random
import struct

from bench.synth import _connection
from normalizer.core.frame import locate_tcp
from normalizer.proxy_headers import proxy_v2


def _timestamps(frame: bytes) -> tuple[int, int, bool, int]:
    """(TSval, TSecr, from the client, flags) of a synth frame."""
    f = locate_tcp(frame)
    assert f is not None
    opts = frame[f.tcp + 20 : f.payload]
    i = opts.index(b"\x08\x0a")
    tsval, tsecr = struct.unpack_from("!II", opts, i + 2)
    return tsval, tsecr, frame[f.tcp : f.tcp + 2] != b"\x00\x50", frame[f.tcp + 13]


def test_every_packet_echoes_the_peers_latest_timestamp() -> None:
    rng = random.Random(3)
    hdr = proxy_v2.build(
        command="PROXY", family="TCP4", src="203.0.113.1", dst="198.51.100.1", sport=1, dport=80
    )
    for header in (hdr, b""):
        frames = _connection(rng, 1234, header, 6)
        last = {True: 0, False: 0}  # latest TSval sent by each side
        for n, fr in enumerate(frames):
            tsval, tsecr, client, flags = _timestamps(fr)
            if n == 0:
                assert flags == 0x02 and tsecr == 0  # the SYN echoes nothing
            else:
                assert tsecr == last[not client], f"packet {n} echoes a value never sent"
            assert tsval >= last[client]  # each side's clock never goes back
            last[client] = tsval
        syn, synack = _timestamps(frames[0]), _timestamps(frames[1])
        assert synack[3] == 0x12 and synack[1] == syn[0]
