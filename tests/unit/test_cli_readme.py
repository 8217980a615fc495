"""The README's Quick start as a new user on a PEP 668 system meets it, and CI (`.ci/run`)
running its test command verbatim, then lint, whatever the tests did."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def quick_start_blocks(readme: str) -> list[str]:
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_quick_start_is_two_commands_in_a_venv() -> None:
    up, suite = quick_start_blocks((REPO / "README.md").read_text())
    for block in (up, suite):
        assert block.startswith("python3 -m venv .venv && ")
        # PEP 668: no pip into the system Python; every pip and python is the venv's
        assert "python3 -m pip" not in block and " pip " not in f" {block} "
    assert ".venv/bin/pip install . " in up and up.endswith(".venv/bin/zcron up")
    assert ".venv/bin/pip install '.[test]'" in suite
    assert suite.endswith(".venv/bin/python -m pytest")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    shown = subprocess.run(
        [str(REPO / ".ci" / "run"), "--show"], capture_output=True, text=True, timeout=10
    )
    assert shown.returncode == 0
    assert shown.stdout.strip() == quick_start_blocks((REPO / "README.md").read_text())[1]


def fake_repo(tmp_path: Path, test_command: str) -> Path:
    """A tree with this .ci/run whose README's test command is `test_command`, and a
    ruff (in .venv/bin, where the command's venv puts it) that records it ran."""
    (tmp_path / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    ruff = "mkdir -p .venv/bin && printf '#!/bin/sh\\ntouch linted\\n' > .venv/bin/ruff"
    (tmp_path / "README.md").write_text(
        "# x\n\n## Quick start\n\n```sh\ntrue\n```\n\n"
        f"```sh\n{ruff} && chmod +x .venv/bin/ruff && {test_command}\n```\n\n## Next\n"
    )
    return tmp_path


def run_ci(root: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = env or {"PATH": "/usr/bin:/bin", "ZCRON_CI_TOOLS": "skip"}
    return subprocess.run(
        [str(root / ".ci" / "run")], capture_output=True, text=True, env=env, timeout=30
    )


TOOLS = "chromium promtool systemd-analyze faketime ip iptables debootstrap systemd-nspawn"


def only_these_on_path(directory: Path, tools: list[str]) -> dict:
    """An environment whose PATH holds the shell utilities .ci/run uses, stub `tools`, and
    an apt-get that records its arguments."""
    directory.mkdir()
    for name in ("bash", "awk", "id", "rm", "dirname", "mkdir", "chmod", "touch", "cat"):
        (directory / name).symlink_to(shutil.which(name))
    for name in tools:
        (directory / name).write_text("#!/bin/sh\n")
        (directory / name).chmod(0o755)
    (directory / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {directory}/apt.log\n')
    (directory / "apt-get").chmod(0o755)
    return {"PATH": str(directory)}


def test_ci_installs_nothing_when_the_tools_are_there(tmp_path: Path) -> None:
    root = fake_repo(tmp_path / "repo", "true")
    env = only_these_on_path(tmp_path / "bin", TOOLS.split())
    assert run_ci(root, env).returncode == 0
    assert not (tmp_path / "bin" / "apt.log").exists()


def test_ci_installs_the_suites_tools_as_root_when_one_is_missing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip(".ci/run installs only as root")
    root = fake_repo(tmp_path / "repo", "true")
    env = only_these_on_path(tmp_path / "bin", TOOLS.split()[:-1])
    assert run_ci(root, env).returncode == 0
    update, install = (tmp_path / "bin" / "apt.log").read_text().splitlines()
    assert update.startswith("-o DPkg::Lock::Timeout=600 update")
    assert install == (
        "-o DPkg::Lock::Timeout=600 install -y --no-install-recommends chromium prometheus "
        "systemd faketime iproute2 iptables debootstrap systemd-container"
    )


def test_ci_lints_even_when_the_tests_fail_and_keeps_their_status(tmp_path: Path) -> None:
    root = fake_repo(tmp_path, "exit 3")
    done = run_ci(root)
    assert done.returncode == 3 and (root / "linted").exists(), done.stderr


def test_ci_passes_only_when_tests_and_lint_pass(tmp_path: Path) -> None:
    assert run_ci(fake_repo(tmp_path / "ok", "true")).returncode == 0
    root = fake_repo(tmp_path / "lint", "printf '#!/bin/sh\\nexit 1\\n' > .venv/bin/ruff")
    assert run_ci(root).returncode == 1
