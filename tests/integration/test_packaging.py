"""Packaging: the wheel carries the `zcron` console script, the dashboard page, the systemd
units and every example; installed, `zcron` runs and the files land under share/zcron."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.harness import REPO

pytestmark = pytest.mark.timeout(180)

SHIPPED = [
    "share/zcron/systemd/zcron-scheduler.service",
    "share/zcron/systemd/zcron-worker@.service",
    "share/zcron/systemd/zcron-sink.service",
    "share/zcron/systemd/zcron.target",
    "share/zcron/etc/zcron.conf",
    "share/zcron/etc/zcron.d/example.toml",
    "share/zcron/etc/prometheus/zcron-alerts.yml",
    "share/zcron/etc/prometheus/scrape.yml",
    "share/zcron/etc/grafana/zcron.json",
    "share/doc/zcron/operations.md",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the working tree (the build must not write into it)."""
    root = tmp_path_factory.mktemp("package")
    source = root / "src"
    source.mkdir()
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(root / "dist")],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = (root / "dist").glob("zcron-*.whl")
    return path


def test_wheel_carries_units_examples_dashboard_and_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        console = archive.read(entry_points).decode()
    data = {name.split(".data/data/", 1)[1] for name in names if ".data/data/" in name}
    assert set(SHIPPED) <= data, set(SHIPPED) - data
    examples = {p.name for p in (REPO / "etc" / "zcron.d").iterdir() if p.is_file()}
    assert {f"share/zcron/etc/zcron.d/{name}" for name in examples} <= data
    assert "zcron/static/index.html" in names
    assert "[console_scripts]\nzcron = zcron.cli:main" in console


def test_installed_wheel_puts_zcron_on_path(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # Dependencies come from this interpreter's site-packages: nothing is downloaded.
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
        check=True,
        timeout=60,
    )
    # --ignore-installed: the zcron this test runs from may be installed in the parent too.
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps"]
    install.append("--ignore-installed")
    installed = subprocess.run([*install, str(wheel)], capture_output=True, text=True, timeout=90)
    assert installed.returncode == 0, installed.stderr[-3000:]
    version = subprocess.run(
        [str(venv / "bin" / "zcron"), "--version"], capture_output=True, text=True, timeout=30
    )
    assert version.returncode == 0 and version.stdout.startswith("zcron "), version
    for name in SHIPPED:
        assert (venv / name).is_file(), name
