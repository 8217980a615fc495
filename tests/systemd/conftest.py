"""Fixtures of the live-systemd tier: the cached rootfs with zcron installed by the commands
of docs/operations.md, and booted machines (containers, or the host when PID 1 is systemd)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import REPO
from tests.systemd.machine import Host, Machine
from tests.systemd.rootfs import cached_rootfs

CAP_SYS_ADMIN = 21
TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
}
OPERATIONS = REPO / "docs" / "operations.md"
TIMINGS: dict[str, float] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/systemd/" in str(item.fspath):
            item.add_marker(pytest.mark.systemd)


def host_runs_systemd() -> bool:
    return Path("/proc/1/comm").read_text().strip() == "systemd"


def container_obstacle() -> str | None:
    """Why containers cannot be booted here, or None. Installs missing tools as root."""
    if os.geteuid() != 0:
        return "the live-systemd tier boots containers: run as root"
    status = Path("/proc/self/status").read_text()
    cap_eff = int(re.search(r"^CapEff:\s*(\w+)", status, re.M).group(1), 16)
    if not cap_eff & (1 << CAP_SYS_ADMIN):
        return "the live-systemd tier needs CAP_SYS_ADMIN (mounts, namespaces)"
    missing = sorted({pkg for tool, pkg in TOOLS.items() if not shutil.which(tool)})
    if missing:
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", *missing]
        if not shutil.which("apt-get") or subprocess.run(apt, capture_output=True).returncode:
            return f"the live-systemd tier needs {', '.join(missing)} (apt-get install failed)"
    return None


def operations_block(heading: str, lang: str = "sh") -> str:
    """The first ```lang block under the docs/operations.md section titled `heading`."""
    text = OPERATIONS.read_text()
    section = text[text.index(f"## {heading}") :]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def install_commands() -> str:
    """Section 1 of docs/operations.md, verbatim but for installing the checkout's wheels
    from a local directory (no index: the containers have no network)."""
    commands = operations_block("1. Install")
    pip = "/opt/zcron/bin/pip install zcron"
    assert pip in commands, "docs/operations.md changed its install command"
    return commands.replace(pip, f"{pip} --no-index --find-links /var/tmp/zcron-wheels", 1)


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout's wheel and its dependencies', built outside the containers."""
    started = time.monotonic()
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    TIMINGS["wheels"] = time.monotonic() - started
    return out


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Iterator[Path]:
    """The rootfs with zcron installed by operations.md §1, as the overlays' lower layer.
    Where PID 1 is systemd, the host itself (installed with sudo) instead."""
    if host_runs_systemd():
        Host().install(wheels, "set -e\n" + install_commands())
        yield Path("/")
        return
    obstacle = container_obstacle()
    if obstacle:
        pytest.skip(obstacle)
    tarball, built_s = cached_rootfs()
    TIMINGS["rootfs build (0: cached)"] = built_s
    started = time.monotonic()
    root = Path(tmp_path_factory.mktemp("rootfs"))
    subprocess.run(["tar", "-C", str(root), "-xf", str(tarball)], check=True, timeout=300)
    shutil.copytree(wheels, root / "var/tmp/zcron-wheels")
    (root / "etc/hostname").unlink(missing_ok=True)  # debootstrap's copy of ours: nspawn -M
    installer = Machine("zcron-install", root, root.parent / "installer", [], overlay=False)
    try:
        installer.boot()
        installer.sh("set -e\n" + install_commands(), timeout=300, check=True)
    finally:
        installer.remove()
    TIMINGS["extract + install"] = time.monotonic() - started
    yield root
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], timeout=120)


@pytest.fixture(scope="module")
def machines(
    base: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Machine]]:
    """A factory: machines("n1", network=[...]) boots a container named n1 on an overlay
    of `base` (the hostname, hence the worker ids, is the name)."""
    made: list[Machine] = []

    def make(name: str, network: tuple[str, ...] = ("--private-network",)) -> Machine:
        if host_runs_systemd():
            pytest.skip("PID 1 is systemd: this check boots containers")
        machine = Machine(name, base, tmp_path_factory.mktemp(name), list(network))
        made.append(machine)
        machine.boot()
        return machine

    yield make
    for machine in made:
        machine.remove()


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    if TIMINGS:
        line = ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items())
        terminalreporter.write_line(f"live-systemd tier: {line}")
