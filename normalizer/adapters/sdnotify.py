"""sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET.

Why not a dependency: the protocol is "KEY=VALUE\\n..." in a single AF_UNIX datagram to the
path in $NOTIFY_SOCKET ('@' meaning the abstract namespace); a dozen lines cover it, and the
service must not fail to start because a binding is missing. Outside systemd every call is a
no-op returning False.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def message(**fields: str | int) -> bytes:
    """``message(READY=1, STATUS="x")`` -> b"READY=1\\nSTATUS=x" (systemd's wire format)."""
    for key, value in fields.items():
        if not key.isupper() or "\n" in str(value):
            raise ValueError(f"sd_notify field {key}={value!r}: keys are upper case, one line each")
    return "\n".join(f"{k}={v}" for k, v in fields.items()).encode()


def socket_address(env: Mapping[str, str] = os.environ) -> str | None:
    """The notify socket address, with '@' turned into the abstract-namespace NUL."""
    addr = env.get("NOTIFY_SOCKET")
    if not addr or addr[0] not in "/@":
        return None
    return "\0" + addr[1:] if addr[0] == "@" else addr


def notify(payload: bytes, env: Mapping[str, str] = os.environ) -> bool:
    """Send one message; False if not under systemd or the socket is gone (never raises)."""
    addr = socket_address(env)
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(payload)
    except OSError:
        return False
    return True


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of WatchdogSec, as sd_watchdog_enabled advises.

    None when the watchdog is off or meant for another process (WATCHDOG_PID).
    """
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None
