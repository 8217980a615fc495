"""The README's Quick start as a new user on a PEP 668 system meets it, and CI (`.ci/run`)
running its test command verbatim, then lint, whatever the tests did."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

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


def run_ci(root: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "ZCRON_CI_TOOLS": "skip"}
    return subprocess.run(
        [str(root / ".ci" / "run")], capture_output=True, text=True, env=env, timeout=30
    )


def test_ci_lints_even_when_the_tests_fail_and_keeps_their_status(tmp_path: Path) -> None:
    root = fake_repo(tmp_path, "exit 3")
    done = run_ci(root)
    assert done.returncode == 3 and (root / "linted").exists(), done.stderr


def test_ci_passes_only_when_tests_and_lint_pass(tmp_path: Path) -> None:
    assert run_ci(fake_repo(tmp_path / "ok", "true")).returncode == 0
    root = fake_repo(tmp_path / "lint", "printf '#!/bin/sh\\nexit 1\\n' > .venv/bin/ruff")
    assert run_ci(root).returncode == 1
