"""sd_notify wire format and delivery to a real AF_UNIX datagram socket (as systemd listens)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from normalizer.adapters import sdnotify


def test_message_format() -> None:
    assert sdnotify.message(READY=1) == b"READY=1"
    assert sdnotify.message(READY=1, STATUS="eth1 -> snl0") == b"READY=1\nSTATUS=eth1 -> snl0"
    with pytest.raises(ValueError):
        sdnotify.message(STATUS="two\nlines")
    with pytest.raises(ValueError):
        sdnotify.message(ready=1)


def test_addresses() -> None:
    assert sdnotify.socket_address({}) is None
    assert sdnotify.socket_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == (
        "/run/systemd/notify"
    )
    assert sdnotify.socket_address({"NOTIFY_SOCKET": "@abc"}) == "\0abc"
    assert sdnotify.socket_address({"NOTIFY_SOCKET": "relative"}) is None


def test_notify_reaches_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(path))
        assert sdnotify.notify(b"READY=1", {"NOTIFY_SOCKET": str(path)})
        assert srv.recv(100) == b"READY=1"
    assert not sdnotify.notify(b"READY=1", {})
    assert not sdnotify.notify(b"READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})


def test_watchdog_interval_is_half_and_for_us_only() -> None:
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    mine = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_interval(mine) == 2.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "x"}) is None
