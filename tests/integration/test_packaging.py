"""Packaging: the wheel carries the `zcron` console script, the dashboard page, the systemd
units, every example, the man pages, shell completion and the licence; installed, `zcron`
runs and the files land under share/."""

from __future__ import annotations

import configparser
import glob
import os
import re
import shutil
import site
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
    "share/doc/zcron/LICENSE",
    "share/man/man1/zcron.1",
    "share/man/man5/zcron.d.5",
    "share/bash-completion/completions/zcron",
    "share/zsh/site-functions/_zcron",
]


BUILD_OUTPUT = {".git", ".venv", "__pycache__", "build", "dist", ".zcron", ".pytest_cache"}


def source_files() -> list[str]:
    """The tree's files: git's list in a clone, else every file but build output (an
    unpacked source archive)."""
    command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    try:
        listed = subprocess.run(command, cwd=REPO, capture_output=True)
    except FileNotFoundError:  # no git installed
        listed = None
    if listed is not None and listed.returncode == 0:
        names = filter(None, listed.stdout.decode().split("\0"))
        return [name for name in names if (REPO / name).is_file()]
    files = (path.relative_to(REPO) for path in REPO.rglob("*") if path.is_file())
    return [str(path) for path in files if not is_build_output(path.parts)]


def is_build_output(parts: tuple[str, ...]) -> bool:
    return bool(BUILD_OUTPUT & set(parts)) or any(
        part.endswith((".egg-info", "_cache")) for part in parts
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the working tree (the build must not write into it)."""
    root = tmp_path_factory.mktemp("package")
    source = root / "src"
    source.mkdir()
    for name in source_files():
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
    assert any(".dist-info/" in n and n.endswith("LICENSE") for n in names)


def test_installed_wheel_puts_zcron_on_path(wheel: Path, tmp_path: Path) -> None:
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode:
        pytest.skip(f"no pip for {sys.executable}")
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    python = str(venv / "bin" / "python")
    # The dependencies (and pip) come from this interpreter's site-packages through a .pth
    # file: nothing is downloaded. Not --system-site-packages: run from a venv, that gives
    # the base interpreter's packages, not this venv's.
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "zz-outer.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # --ignore-installed: the zcron this test runs from may be installed in the parent too.
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed"]
    installed = subprocess.run([*install, str(wheel)], capture_output=True, text=True, timeout=90)
    assert installed.returncode == 0, installed.stderr[-3000:]
    zcron = str(venv / "bin" / "zcron")
    version = subprocess.run([zcron, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("zcron "), version
    examples = str(venv / "share" / "zcron" / "etc" / "zcron.d")
    checked = subprocess.run(
        [zcron, "check", "-c", "/dev/null", examples], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr
    for name in SHIPPED:
        assert (venv / name).is_file(), name


def supported_versions() -> list[str]:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    found = re.findall(r"Python :: (3\.\d+)$", setup["metadata"]["classifiers"], re.M)
    return sorted(found, key=lambda v: int(v.split(".")[1]))


def interpreter(version: str) -> str | None:
    """A working python{version} here (pyenv's shims exist also for versions not selected)."""
    candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python")))
    candidates.append(shutil.which(f"python{version}"))
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    return None


def test_every_python_the_classifiers_name_compiles_zcron(tmp_path: Path) -> None:
    versions = supported_versions()
    assert versions == ["3.11", "3.12", "3.13"]
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert running in versions
    found = {v: interpreter(v) for v in versions}
    for version, python in found.items():
        if python is None:
            continue  # not on this machine: `.ci/run` under that version covers it
        compiled = subprocess.run(
            [python, "-m", "compileall", "-q", str(REPO / "zcron"), str(REPO / "tests")],
            env={**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path / version)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert compiled.returncode == 0, (version, compiled.stdout + compiled.stderr)
