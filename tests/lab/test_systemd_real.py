"""The systemd pair on stock Debian under a real systemd (root, about a minute from a warm cache).

Claims, each checked in a booted Debian bookworm container (tests/lab/systemd_lab.py) where the
project, Suricata 7 and the units are installed the way README's "Live" section tells a user:
(1) normalizer.service (Type=notify) reaches active, Debian's own suricata.service runs with our
drop-in (the include, the tap) and eve-enricher.service runs as the project's user, reading the
eve.json Suricata writes and writing into its own log directory; (2) killing or stopping the
normalizer leaves Suricata running (same process); (3) a stalled loop (SIGSTOP) is killed by the
watchdog and restarted, Suricata untouched; (4) with no tap and a normalizer that cannot start,
Suricata still starts its engine (the drop-in creates the tap) and the fixed normalizer later
comes up on that tap by its own restarts; (5) after all that, a PROXY v2 capture replayed onto
the container's capture interface comes out of the enricher as alerts naming the attacker and
the proxy hop (so the Suricata that started on a tap nobody fed reads it once fed).
The tests share one booted container and run in file order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab.systemd_lab import (
    Container,
    Overlay,
    bookworm_tree,
    copy_project,
    missing_tools,
    wait_until,
    wheelhouse,
)

pytestmark = [pytest.mark.root, pytest.mark.lab]

ROOT = Path(__file__).resolve().parents[2]
PCAP = ROOT / "pcaps" / "haproxy-v2-tlv.pcap"
ATTACKER = "198.51.100.10"  # the client named in the capture's PROXY v2 headers
PROXY = "192.0.2.1"  # the capture's proxy, as in the shipped config.toml
SIDS = set(range(9100001, 9100011))  # pcaps/haproxy-v2-tlv.yaml: each once
SRC = "/root/suricata-normalizer"  # the user's clone
ENRICHED = "/var/log/eve-enricher/eve-enriched.json"
WATCHDOG_DROPIN = "/etc/systemd/system/normalizer.service.d/test-watchdog.conf"


@dataclass
class Box:
    container: Container
    replay_ns: str  # holds the peers of the container's eth0 and eth1


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, overlay mount, network namespaces, nspawn)")
    missing = missing_tools()
    if missing:
        pytest.skip(f"missing: {', '.join(missing)} (scripts/setup.sh installs them)")
    tree = bookworm_tree()
    wheels = wheelhouse()
    d = tmp_path_factory.mktemp("systemd")
    # The container's network: eth0 (the stock config's af-packet interface) and eth1 (the
    # capture port, normalizer.env's default), veths whose peers sit in a replay namespace.
    ns, rns = f"snl-sd-{os.getpid()}", f"snl-sdr-{os.getpid()}"
    _ip("netns", "add", ns)
    _ip("netns", "add", rns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "mgmt0", "netns", rns)
        _ip("-n", ns, "link", "add", "eth1", "type", "veth", "peer", "name", "rpl0", "netns", rns)
        for n, dev in ((ns, "eth0"), (ns, "eth1"), (rns, "mgmt0"), (rns, "rpl0")):
            _ip("-n", n, "link", "set", dev, "up")
        with Overlay(tree, d / "overlay") as ov:
            copy_project(ov.root / SRC.lstrip("/"))
            shutil.copytree(wheels, ov.root / "root" / "wheels")
            box = Container(ov.root, ns, d / "nspawn.log")
            try:
                box.boot()
                # udev makes /dev/net/tun 0666 on Debian (50-udev-default.rules); a container
                # has no udev and nspawn copies the node's mode from this host, which may be 0600.
                box.run("chmod", "0666", "/dev/net/tun")
                _install(box)
                yield Box(box, rns)
            finally:
                box.poweroff()
    finally:
        for n in (ns, rns):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def _install(box: Container) -> None:
    """README, "Live", installing with systemd; pip offline from the wheelhouse."""
    offline = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/root/wheels"}
    box.sh(f"cd {SRC} && scripts/install-units.sh", timeout=300, env=offline)
    # The capture interface, as the user edits it (the shipped example may name another).
    box.sh("sed -i -E 's/--iface [^ \"]+/--iface eth1/' /etc/suricata-normalizer/normalizer.env")
    # The operator's rules where Debian's suricata.yaml looks (suricata-update puts them there).
    box.sh(
        "mkdir -p /var/lib/suricata/rules"
        " && cp /etc/suricata/rules/decoy.rules /var/lib/suricata/rules/suricata.rules"
    )
    box.sh("systemctl enable --now normalizer eve-enricher && systemctl restart suricata")


def _active(box: Container, unit: str) -> bool:
    return box.prop(unit, "ActiveState") == "active"


def _pid(box: Container, unit: str) -> int:
    return int(box.prop(unit, "MainPID"))


def _enriched_alerts(box: Container) -> list[dict[str, Any]]:
    text = box.run("cat", ENRICHED, check=False).stdout
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [e for e in events if e.get("event_type") == "alert"]


def test_pair_reaches_active_with_suricata_on_the_tap(lab: Box) -> None:
    box = lab.container
    for unit in ("normalizer", "suricata", "eve-enricher"):
        wait_until(f"{unit} active", lambda u=unit: _active(box, u))
    assert box.prop("normalizer", "Type") == "notify"
    assert box.prop("normalizer", "SubState") == "running"
    assert "live on eth1 -> tap snl0" in box.journal("normalizer")
    # Debian's unit, our drop-in: the include, and ordered after the normalizer without needing it.
    assert "/etc/systemd/system/suricata.service.d/normalizer.conf" in box.prop(
        "suricata", "DropInPaths"
    )
    assert "--include /etc/suricata/normalizer.yaml" in box.prop("suricata", "ExecStart")
    assert "normalizer.service" in box.prop("suricata", "Wants").split()
    assert "normalizer.service" in box.prop("suricata", "After").split()
    assert "normalizer.service" not in box.prop("suricata", "Requires").split()
    assert "suricata.service" not in box.prop("normalizer", "RequiredBy").split()
    wait_until(
        "Suricata capturing snl0",
        lambda: "snl0" in box.run("cat", "/var/log/suricata/suricata.log").stdout,
    )
    # The enricher runs as the project's user, reads eve.json and owns its output directory.
    pid = _pid(box, "eve-enricher")
    assert box.sh(f"stat -c %U /proc/{pid}").strip() == "suricata-normalizer"
    assert box.sh("stat -c %U:%G:%a /var/log/suricata").strip() == "root:root:755"
    eve_mode = box.sh("stat -c %U:%G:%a /var/log/suricata/eve.json").strip()
    assert eve_mode == "root:root:644", eve_mode
    assert box.sh("stat -c %U:%a /var/log/eve-enricher").strip() == "suricata-normalizer:750"


def _replay_and_check(lab: Box) -> None:
    """Replay the capture onto eth1; wait until the enricher wrote each sid's alert."""
    subprocess.run(
        ["ip", "netns", "exec", lab.replay_ns, "tcpreplay", "-q", "--pps=500", "-i", "rpl0"]
        + [str(PCAP)],
        check=True,
        capture_output=True,
    )
    box = lab.container
    want = Counter(dict.fromkeys(SIDS, 1))
    wait_until(
        "each sid once in the enriched output",
        lambda: _sids(_enriched_alerts(box)) >= want,
        timeout=90,
        detail=lambda: _diagnose(box),
    )
    alerts = _enriched_alerts(box)
    assert _sids(alerts) == want
    assert {a["src_ip"] for a in alerts} == {ATTACKER}
    assert {a["proxy"]["wire"]["src_ip"] for a in alerts} == {PROXY}


def _diagnose(box: Container) -> str:
    eve = box.run("cat", "/var/log/suricata/eve.json").stdout.splitlines()
    raw = [json.loads(x) for x in eve if '"event_type":"alert"' in x]
    rejected = box.run("cat", "/var/log/eve-enricher/eve-rejected.json", check=False).stdout
    head = (
        f"Suricata's alerts {sorted(_sids(raw).items())}, src {sorted({a['src_ip'] for a in raw})}"
        f"\nenriched {sorted(_sids(_enriched_alerts(box)).items())}"
        f"\nrejected lines: {len(rejected.splitlines())}\n"
    )
    return head + box.sh(
        "systemctl --no-pager status normalizer suricata eve-enricher | cat;"
        " grep -c '\"alert\"' /var/log/suricata/eve.json; tail -5 /var/log/suricata/suricata.log;"
        " journalctl -u normalizer -u eve-enricher -o cat --no-pager | tail -20;"
        " grep -o '\"capture\":{[^}]*}' /var/log/suricata/eve.json | tail -2",
        check=False,
    )


def _sids(alerts: list[dict[str, Any]]) -> Counter[int]:
    return Counter(a["alert"]["signature_id"] for a in alerts)


def test_killing_and_stopping_the_normalizer_leave_suricata_running(lab: Box) -> None:
    box = lab.container
    suricata = _pid(box, "suricata")
    before = _pid(box, "normalizer")
    box.run("systemctl", "kill", "-s", "KILL", "normalizer")
    wait_until(
        "normalizer restarted after SIGKILL",
        lambda: _active(box, "normalizer") and _pid(box, "normalizer") not in (0, before),
    )
    assert _active(box, "suricata") and _pid(box, "suricata") == suricata
    box.run("systemctl", "stop", "normalizer")
    assert box.prop("normalizer", "ActiveState") == "inactive"
    assert _active(box, "suricata") and _pid(box, "suricata") == suricata
    box.run("systemctl", "start", "normalizer")
    assert _active(box, "normalizer")
    assert _active(box, "suricata") and _pid(box, "suricata") == suricata


def test_watchdog_restarts_a_stalled_normalizer(lab: Box) -> None:
    box = lab.container
    # A short watchdog for the test; TimeoutAbortSec short too: a stopped process cannot act on
    # the watchdog's SIGABRT, so systemd's SIGKILL after the abort timeout ends it.
    box.sh(
        f"mkdir -p {os.path.dirname(WATCHDOG_DROPIN)} && printf '[Service]\\nWatchdogSec=3s\\n"
        f"TimeoutAbortSec=2s\\n' > {WATCHDOG_DROPIN} && systemctl daemon-reload"
        " && systemctl restart normalizer"
    )
    try:
        suricata = _pid(box, "suricata")
        stalled = _pid(box, "normalizer")
        box.run("kill", "-STOP", str(stalled))
        wait_until(
            "normalizer restarted by the watchdog",
            lambda: _active(box, "normalizer") and _pid(box, "normalizer") not in (0, stalled),
            timeout=90,
        )
        assert "Watchdog timeout" in box.journal("normalizer")
        assert _active(box, "suricata") and _pid(box, "suricata") == suricata
    finally:
        box.sh(
            f"rm -f {WATCHDOG_DROPIN} && systemctl daemon-reload && systemctl restart normalizer"
        )


def test_a_normalizer_that_cannot_start_leaves_suricata_capturing(lab: Box) -> None:
    """No tap and a normalizer that fails before creating one (a bad option, exit 2): Suricata
    still starts its engine (its drop-in creates the tap; without it Suricata 7 starts no
    capture at all); once fixed, the normalizer's own restarts bring it up on that tap."""
    box = lab.container
    env = "/etc/suricata-normalizer/normalizer.env"
    log = "/var/log/suricata/suricata.log"
    box.sh(f"systemctl stop suricata normalizer && ip link del snl0 && cp {env} {env}.good")
    box.sh(f"sed -i 's/--iface eth1/--iface eth1 --no-such-option/' {env}")
    try:
        log_start = len(box.run("cat", log).stdout)
        box.run("systemctl", "start", "suricata")  # its Wants= starts the normalizer too
        wait_until(
            "the normalizer failing at start",
            lambda: "status=2/INVALIDARGUMENT" in box.journal("normalizer"),
        )
        wait_until(
            "Suricata's engine started without the normalizer",
            lambda: "Engine started" in box.run("cat", log).stdout[log_start:],
            timeout=90,
        )
        assert "snl0" in box.sh("ip -o link show dev snl0")  # made by the drop-in, and up:
        assert "snl0: failed to init socket" not in box.run("cat", log).stdout[log_start:]
        assert _active(box, "suricata")
        assert box.prop("normalizer", "ActiveState") != "active"
        suricata = _pid(box, "suricata")
    finally:
        box.sh(f"mv {env}.good {env}")
    wait_until("the normalizer up again by its own restarts", lambda: _active(box, "normalizer"))
    assert _active(box, "suricata") and _pid(box, "suricata") == suricata


def test_replayed_proxy_v2_capture_becomes_enriched_alerts_naming_the_attacker(lab: Box) -> None:
    """Last, so the chain is shown working after the kill, stop, watchdog restart and failed
    start above (Suricata then runs on the tap its drop-in made). Once only: a second replay of
    the same flows (same tuples and sequence numbers) joins Suricata's existing flows and
    raises nothing."""
    _replay_and_check(lab)
    box = lab.container
    assert (
        box.run("test", "-s", "/var/lib/eve-enricher/checkpoint.json", check=False).returncode == 0
    )
