"""Fixtures for the real-component lab: skip cleanly without root or tools, record once.

Why session scope: recording all scenarios takes about a minute of real traffic (SYN loss alone
costs one second per connection), so captures and Suricata runs are made once and shared.
``LAB_SCENARIOS=haproxy-v2,nginx-v1`` restricts the run to some scenarios.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import Lab
from tests.lab.scenarios import SCENARIOS, ScenarioCaptures
from tests.lab.services import STREAM_MODULE
from tests.lab.suricata_run import Event, run_suricata

TOOLS = ("ip", "ss", "ethtool", "nft", "tcpdump", "haproxy", "nginx", "curl", "openssl", "suricata")


def selected_scenarios() -> list[str]:
    wanted = [s for s in os.environ.get("LAB_SCENARIOS", "").split(",") if s]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        raise pytest.UsageError(
            f"LAB_SCENARIOS: unknown {sorted(unknown)}; known {list(SCENARIOS)}"
        )
    return wanted or list(SCENARIOS)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scenario" in metafunc.fixturenames:
        metafunc.parametrize("scenario", selected_scenarios())


@pytest.fixture(scope="session")
def lab_ready() -> None:
    """Skip (not fail) where the lab cannot run: not root, or a tool is missing."""
    if os.geteuid() != 0:
        pytest.skip("lab needs root (network namespaces, veth, bridge, nftables)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not Path(STREAM_MODULE).exists():
        missing.append(STREAM_MODULE)
    if missing:
        pytest.skip(f"lab tools missing: {', '.join(missing)} (run scripts/setup.sh)")


@pytest.fixture(scope="session")
def lab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lab")


@pytest.fixture(scope="session")
def captures(lab_ready: None, lab_dir: Path) -> Iterator[dict[str, ScenarioCaptures]]:
    """Every selected scenario recorded once (raw + baseline), namespaces gone afterwards."""
    with Lab() as lab:
        recorded = {name: SCENARIOS[name](lab, lab_dir) for name in selected_scenarios()}
    yield recorded


@pytest.fixture(scope="session")
def suricata(lab_ready: None) -> Callable[[Path], list[Event]]:
    """run_suricata with a per-session cache: each pcap is analysed once."""
    cache: dict[Path, list[Event]] = {}

    def get(pcap: Path) -> list[Event]:
        if pcap not in cache:
            cache[pcap] = run_suricata(pcap, outdir=pcap.with_suffix(".suricata"))
        return cache[pcap]

    return get
