"""Find a system tool a test needs; skip the test, with the reason, when it is missing.

Tests never install anything: `.ci/run` installs the Debian packages the full suite needs
(the README lists them), and elsewhere a missing tool skips only the tests that need it.
"""

from __future__ import annotations

import shutil

import pytest


def ensure_tool(binary: str, package: str) -> str:
    """The path of `binary`; skips the calling test when it is not on PATH."""
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not found (Debian package {package}; .ci/run installs it)")
    return path
