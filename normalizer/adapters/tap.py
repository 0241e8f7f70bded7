"""The tap device the normalizer writes rebuilt frames into, and Suricata reads with af-packet.

Why a persistent tap (IFF_TAP | IFF_NO_PI): it exists independently of our file descriptor, so
Suricata can be started (and keep running) while the normalizer restarts; frames are whole
Ethernet frames without the 4-byte packet-info prefix.

MTU: on a host with its offloads on (the normal case), GSO frames the host sends and GRO frames
it receives reach AF_PACKET far larger than the link MTU (measured: up to 65,226 bytes), and
Suricata's af-packet sizes its snaplen from the tap's MTU, truncating anything larger. The
default 65521 (a tap's largest: 65535 minus the Ethernet header) keeps every frame whole, and
Suricata reassembles such a frame as the large segment it is (tests/lab/test_host_live.py).

If the device disappears (``ip link del``, a network restart), writes fail with EBADFD/ENODEV;
the device is then recreated and the event counted, the frame that failed is counted as a write
error, and nothing crashes. ``check()`` notices a deleted device even when no frame is written.

Two write paths, counted alike: ``write`` (one frame from Python: the Python engine) and
``write_from`` (the compiled engine writes its buffered frames from C, one ``write()`` each,
and hands back each failure, so the loop costs no Python per frame; _tapsink.c).

Multi-queue (``live --workers N``): each worker process opens the same tap name with
IFF_MULTI_QUEUE and so gets a queue of its own (no lock, no shared file descriptor between the
processes). The kernel refuses to attach a queue of the other kind (EINVAL), so the flag of an
existing device is found by trying: one worker attaches to a multi-queue tap as one queue, N
workers on a single-queue tap get an error that says how to fix it (``tun_flags`` reads the kind
from sysfs, for tests and diagnostics; a sandboxed service need not see sysfs for its network
namespace). The device is not recreated behind Suricata's back: Suricata's capture is bound to it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytun

# Errors that mean the device (or our attachment to it) is gone: recreate and go on.
MAX_MTU = 65521  # a tap's max_mtu: 65535 minus the Ethernet header
_GONE = {errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EBADF, errno.EPIPE}
IFF_MULTI_QUEUE = 0x0100  # linux/if_tun.h


class TapKindError(OSError):
    """The tap exists with the wrong queue kind for this run (single- vs multi-queue)."""


def tun_flags(name: str) -> int | None:
    """The flags an existing tun/tap device was created with, None if there is none."""
    try:
        return int(Path(f"/sys/class/net/{name}/tun_flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return None


@dataclass(slots=True)
class TapStats:
    frames: int = 0
    bytes: int = 0
    write_errors: int = 0  # frames that could not be written (lost for Suricata)
    recreated: int = 0  # times the device had to be created again


class Tap:
    def __init__(self, name: str, mtu: int = MAX_MTU, multi_queue: bool = False) -> None:
        self.name = name
        self.mtu = mtu
        self.multi_queue = multi_queue  # needed: open one queue of a multi-queue device
        self.stats = TapStats()
        self._dev: pytun.TunTapDevice | None = None
        self._fd = -1
        self.created = not self.exists()  # this run made the device: a failed start removes it
        self.open()

    def open(self) -> None:
        """Create (or attach to) the persistent tap, set its MTU and bring it up."""
        self.close()
        base = pytun.IFF_TAP | pytun.IFF_NO_PI
        try:
            dev = self._attach(base | (IFF_MULTI_QUEUE if self.multi_queue else 0))
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self.exists():
                raise self._explained(exc) from None
            # The device exists as the other kind. Several workers need a queue each; one
            # attaches to a multi-queue device as one of its queues.
            if self.multi_queue:
                raise TapKindError(
                    errno.EINVAL,
                    f"tap {self.name} exists as a single-queue device and several workers need"
                    f" a multi-queue one: stop what uses it and delete it (ip link del"
                    f" {self.name}); the next start creates it multi-queue",
                ) from None
            try:
                dev = self._attach(base | IFF_MULTI_QUEUE)
            except OSError:
                raise self._explained(exc) from None
        try:
            dev.persist(True)
            dev.mtu = self.mtu
            dev.up()
        except BaseException:
            dev.close()
            raise
        # The tap only carries copies: keep the host's own IPv6 chatter (router solicitations,
        # MLD) off it, or Suricata would inspect the sensor's packets too. Best effort.
        with (
            contextlib.suppress(OSError),
            open(f"/proc/sys/net/ipv6/conf/{self.name}/disable_ipv6", "w") as fh,
        ):
            fh.write("1")
        self._dev = dev
        self._fd = dev.fileno()

    def _attach(self, flags: int) -> pytun.TunTapDevice:
        return pytun.TunTapDevice(name=self.name, flags=flags)

    def _explained(self, exc: OSError) -> OSError:
        """Which device and what it takes, not a bare strerror."""
        return OSError(
            exc.errno,
            f"{exc.strerror}: tap {self.name} (needs read-write /dev/net/tun and CAP_NET_ADMIN)",
        )

    def exists(self) -> bool:
        """Whether the device is still there, in our network namespace."""
        try:
            socket.if_nametoindex(self.name)
        except OSError:
            return False
        return True

    def check(self) -> bool:
        """Recreate the device if it vanished; True if it had to be recreated."""
        if self.exists():
            return False
        self._recreate()
        return True

    def _recreate(self) -> None:
        self.stats.recreated += 1
        self.open()

    def write(self, frame: bytes | bytearray) -> bool:
        """Write one frame; on failure count it, recreate the device if it is gone."""
        try:
            n = os.write(self._fd, frame)
        except OSError as exc:
            self.stats.write_errors += 1
            if exc.errno in _GONE or not self.exists():
                with contextlib.suppress(OSError):
                    self._recreate()
            return False
        self.stats.frames += 1
        self.stats.bytes += n
        return True

    def write_from(self, writer: Callable[[int], tuple[int, int, int]]) -> None:
        """Let ``writer(fd)`` write its frames (``CompiledNormalizer.write_tap``); it returns
        (frames, bytes, errno) at the first failure, which is handled as in ``write``, and is
        called again for the frames after it, until it returns errno 0."""
        st = self.stats
        while True:
            frames, nbytes, err = writer(self._fd)
            st.frames += frames
            st.bytes += nbytes
            if not err:
                return
            st.write_errors += 1
            if err in _GONE or not self.exists():
                with contextlib.suppress(OSError):
                    self._recreate()

    def close(self) -> None:
        """Detach (the persistent device stays for Suricata)."""
        if self._dev is not None:
            with contextlib.suppress(OSError):
                self._dev.close()
        self._dev = None
        self._fd = -1

    def remove(self) -> None:
        """Delete the device (tests and the lab; the service leaves it in place)."""
        if self._dev is None:
            self.open()
        assert self._dev is not None
        self._dev.persist(False)
        self.close()
