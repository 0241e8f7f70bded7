"""A real systemd for tests: a cached Debian bookworm tree booted with systemd-nspawn.

Why a container and not the host: the units' claims (Type=notify reaching active, watchdog
restarts, Wants/After keeping Suricata up, the enricher's sandbox and file modes) only mean
something under a real PID 1, and the test machine has none. A debootstrap tree booted with
``systemd-nspawn --boot --register=no --keep-unit`` runs systemd 252 as its PID 1 without any host
systemd or D-Bus; it is driven with ``nsenter -t <its init> -a systemctl ...``.

Why caches: debootstrap plus Suricata take about a minute, so the provisioned tree is kept under
``.cache/systemd-lab/`` (never committed) and every run boots a throw-away overlay on top of it;
the Python wheels the project needs are kept there too, so the container installs offline (its
network is a namespace the test owns, with no route out).

The mirror is read at run time from the first stanza of /etc/apt/sources.list.d/debian.sources;
bookworm-backports (Suricata 7) is that stanza with only Suites changed (scripts/apt-stanza.sh).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "systemd-lab"
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
TOOLS = ("debootstrap", "systemd-nspawn", "nsenter", "ip", "tcpreplay", "chroot", "mount")
# What the tree holds besides debootstrap's minbase: the user's prerequisites from the README.
APT_BACKPORTS = ("suricata",)
APT_MAIN = ("python3-venv", "procps", "iproute2")
# Bump when the tree's recipe changes: a stale cached tree is then rebuilt.
TREE_RECIPE = "1 " + " ".join(APT_BACKPORTS + APT_MAIN)
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SystemdLabError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not SOURCES.exists():
        missing.append(str(SOURCES))
    return missing


def mirror() -> str:
    """The first URI of debian.sources' first stanza (the mirror this machine trusts)."""
    stanza = SOURCES.read_text().split("\n\n", 1)[0]
    for line in stanza.splitlines():
        if line.startswith("URIs:"):
            return line.split()[1]
    raise SystemdLabError(f"{SOURCES}: no URIs line in the first stanza")


def _run(argv: Sequence[str], timeout: float = 600, env: dict[str, str] | None = None) -> str:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        raise SystemdLabError(f"{' '.join(argv)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return str(p.stdout)


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{name}.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def bookworm_tree() -> Path:
    """The provisioned tree (minbase + systemd + dbus + Suricata 7 + python3-venv), cached."""
    tree = CACHE / "bookworm"
    stamp = tree / ".snl-recipe"
    with _locked("tree"):
        if stamp.exists() and stamp.read_text() == TREE_RECIPE:
            return tree
        tmp = CACHE / "bookworm.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=systemd,systemd-sysv,dbus",
                "bookworm",
                str(tmp),
                mirror(),
            ]
        )
        bpo = _run([str(ROOT / "scripts" / "apt-stanza.sh"), "bookworm-backports"])
        (tmp / "etc/apt/sources.list.d/bookworm-backports.sources").write_text(bpo)
        # Packages must not start services inside the chroot; the booted container starts them.
        policy = tmp / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        env = {"PATH": CONTAINER_PATH, "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
        apt = ["chroot", str(tmp), "apt-get", "-q", "-y", "--no-install-recommends"]
        _run([*apt, "update"], env=env)
        _run([*apt, "install", "-t", "bookworm-backports", *APT_BACKPORTS], env=env)
        _run([*apt, "install", *APT_MAIN], env=env)
        _run([*apt, "clean"], env=env)
        policy.unlink()
        (tmp / ".snl-recipe").write_text(TREE_RECIPE)
        shutil.rmtree(tree, ignore_errors=True)
        tmp.rename(tree)
    return tree


def wheelhouse() -> Path:
    """The project's dependencies (and pip's build backend) as wheels, for an offline install."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [*project["project"]["dependencies"], *project["build-system"]["requires"], "pip"]
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:12]
    house = CACHE / f"wheels-{key}"
    with _locked("wheels"):
        if (house / ".complete").exists():
            return house
        shutil.rmtree(house, ignore_errors=True)
        house.mkdir(parents=True)
        _run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(house), *reqs])
        (house / ".complete").write_text("\n".join(reqs))
    return house


@dataclass
class Overlay:
    """A writable throw-away root over the cached tree (the cache itself is never written)."""

    lower: Path
    work: Path

    @property
    def root(self) -> Path:
        return self.work / "root"

    copied: bool = False

    def __enter__(self) -> Overlay:
        for d in ("upper", "work", "root"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={self.lower},upperdir={self.work / 'upper'},workdir={self.work / 'work'}"
        try:
            _run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)])
        except SystemdLabError:  # no overlayfs here (e.g. nested in some CI containers): copy
            self.root.rmdir()
            _run(["cp", "-a", "--reflink=auto", str(self.lower), str(self.root)])
            self.copied = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.copied:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True)


class Container:
    """systemd-nspawn --boot of a tree, inside a network namespace the caller made."""

    def __init__(self, root: Path, netns: str, log: Path) -> None:
        self.root = root
        self.netns = netns
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    def boot(self, timeout: float = 120) -> None:
        argv = [
            "systemd-nspawn",
            "-D",
            str(self.root),
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            f"--network-namespace-path=/run/netns/{self.netns}",
            # A namespace of our own is not "private network" to nspawn: without this the
            # container's systemd (and so every unit) lacks CAP_NET_ADMIN (tap, ethtool).
            "--capability=CAP_NET_ADMIN",
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not self.init_pid:
            if self.proc.poll() is not None:
                raise SystemdLabError(
                    f"systemd-nspawn exited {self.proc.returncode}: {self._tail()}"
                )
            if time.monotonic() > deadline:
                raise SystemdLabError(f"no init in the container: {self._tail()}")
            self.init_pid = self._find_init()
            time.sleep(0.2)
        # --wait returns once boot is done ("running", or "degraded" with a failed unit), but
        # fails at once while PID 1 has no bus yet: retry until it gives one of the two.
        self.boot_state = ""
        while self.boot_state not in ("running", "degraded"):
            if time.monotonic() > deadline:
                raise SystemdLabError(f"boot never finished ({self.boot_state}): {self._tail()}")
            time.sleep(0.2)
            state = self.run(
                "systemctl", "is-system-running", "--wait", check=False, timeout=timeout
            )
            self.boot_state = state.stdout.strip()

    def _find_init(self) -> int:
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            for pid in children.read_text().split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        return 0

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", **(env or {})}
        p = subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-a", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )
        if check and p.returncode != 0:
            raise SystemdLabError(f"{' '.join(argv)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def sh(
        self,
        script: str,
        timeout: float = 120,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> str:
        p = self.run("sh", "-c", script, timeout=timeout, env=env, check=check)
        return p.stdout + (p.stderr if not check else "")

    def prop(self, unit: str, name: str) -> str:
        return self.run("systemctl", "show", "-P", name, unit).stdout.strip()

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "-u", unit, "--no-pager", "-o", "cat").stdout

    def poweroff(self, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.init_pid:
            self.run("systemctl", "poweroff", check=False)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def wait_until(
    what: str,
    probe: Callable[[], object],
    timeout: float = 60,
    every: float = 0.5,
    detail: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``probe()`` until true; a failure names what never happened (no timed assertion)."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemdLabError(f"gave up waiting for: {what}\n{detail()}")
        time.sleep(every)


def copy_project(dest: Path) -> None:
    """The checkout's tracked and new files (what a user's clone holds), without .git or caches."""
    files = _run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    ).split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if not src.is_file():
            continue  # deleted in the work tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    os.sync()
