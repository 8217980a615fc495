"""Find a system tool a test needs, installing its Debian package when running as root."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

_updated = False


def ensure_tool(binary: str, package: str) -> str:
    """The path of `binary`; apt-get installs `package` first if it is missing and we are root.

    Fails the test (never skips) when the tool cannot be had: CI runs as root.
    """
    global _updated
    path = shutil.which(binary)
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(f"{binary} not found and cannot install {package} (not root or no apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _updated:
        subprocess.run(["apt-get", "update", "-q"], check=False, env=env, capture_output=True)
        _updated = True
    result = subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
        env=env,
        capture_output=True,
        text=True,
    )
    path = shutil.which(binary)
    if not path:
        pytest.fail(f"installing {package} for {binary} failed:\n{result.stderr[-2000:]}")
    return path
