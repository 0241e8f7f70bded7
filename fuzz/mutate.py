"""Byte-level mutations, all drawn from one ``random.Random`` so a seed replays a run exactly.

Why structure-aware offsets: a random bit flip in a 1500-byte frame almost always lands in the
payload, which the core never reads. Half the mutations therefore aim at the fields the decoders
branch on (IP version/IHL, total length, fragment bits, protocol, TCP data offset and flags,
UDP ports and length, tunnel header bytes), found by the oracle's own decoder.
"""

from __future__ import annotations

import random

from fuzz.wire import l3_start

INTERESTING_8 = (0x00, 0x01, 0x04, 0x05, 0x06, 0x0F, 0x10, 0x11, 0x40, 0x45, 0x60, 0x7F, 0x80, 0xFF)
INTERESTING_16 = (0, 1, 7, 8, 19, 20, 40, 0x7FFF, 0x8000, 0xFFFF, 0xFFFE, 1500, 65535 - 20)


def hot_offsets(frame: bytes, linktype: int = 1) -> list[int]:
    """Offsets of the fields decoders branch on, where this frame has them."""
    ip = l3_start(frame, linktype) if len(frame) >= 20 else None
    if ip is None:
        return list(range(min(len(frame), 20)))
    hot = [ip, ip + 2, ip + 3, ip + 6, ip + 7, ip + 9, ip + 4, ip + 5]
    v4 = len(frame) > ip and frame[ip] >> 4 == 4
    l4 = ip + (frame[ip] & 0x0F) * 4 if v4 else ip + 40
    hot += [l4 + 2, l4 + 3, l4 + 4, l4 + 5, l4 + 12, l4 + 13, l4 + 8, l4 + 9]
    hot += [l4 + i for i in range(20, 60)]  # options, payload start, tunnel headers
    if linktype == 1:
        hot += [12, 13]
    return [o for o in hot if 0 <= o < len(frame)]


def mutate(rng: random.Random, data: bytes, linktype: int = 1, rounds: int = 0) -> bytes:
    """One to a few mutations of ``data``; the result may be empty or longer."""
    buf = bytearray(data)
    for _ in range(rounds or 1 + (rng.random() < 0.3) + (rng.random() < 0.1)):
        buf = _one(rng, buf, linktype)
    return bytes(buf)


def _one(rng: random.Random, buf: bytearray, linktype: int) -> bytearray:
    op = rng.randrange(11)
    n = len(buf)
    if n == 0:
        return bytearray(rng.randbytes(rng.randrange(1, 64)))
    hot = hot_offsets(bytes(buf), linktype) if rng.random() < 0.6 else None
    pos = rng.choice(hot) if hot else rng.randrange(n)
    if op <= 2:  # bit flip
        buf[pos] ^= 1 << rng.randrange(8)
    elif op == 3:
        buf[pos] = rng.choice(INTERESTING_8)
    elif op == 4 and pos + 1 < n:
        v = rng.choice(INTERESTING_16)
        buf[pos : pos + 2] = v.to_bytes(2, "big")
    elif op == 5:  # truncate (a snap length, a cut mirror packet)
        del buf[rng.randrange(n) :]
    elif op == 6:  # append junk (link padding, trailing bytes)
        buf += rng.randbytes(rng.randrange(1, 200))
    elif op == 7:  # insert bytes
        buf[pos:pos] = rng.randbytes(rng.randrange(1, 16))
    elif op == 8:  # delete bytes
        del buf[pos : pos + rng.randrange(1, 16)]
    elif op == 9:  # random byte
        buf[pos] = rng.randrange(256)
    else:  # overwrite a run with random bytes
        k = rng.randrange(1, 9)
        buf[pos : pos + k] = rng.randbytes(k)
    return buf


def mutate_sequence(
    rng: random.Random, frames: list[bytes], rate: float, linktype: int = 1
) -> list[bytes]:
    """Mutate a share of the frames, and sometimes drop, duplicate or swap some."""
    out = [mutate(rng, f, linktype) if rng.random() < rate else f for f in frames]
    if out and rng.random() < 0.3:
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(out))
            action = rng.randrange(3)
            if action == 0 and len(out) > 1:
                del out[i]
            elif action == 1:
                out.insert(i, out[i])
            elif i + 1 < len(out):
                out[i], out[i + 1] = out[i + 1], out[i]
    return out
