"""Fixtures shared by every test: real processes that are always stopped by pid."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Cluster, Processes, make_cluster


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Processes]:
    """Start zcron processes with procs.start(...); all are stopped even on failure."""
    logdir = tmp_path / "logs"
    logdir.mkdir()
    processes = Processes(logdir)
    yield processes
    processes.stop_all()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for path in sorted(logdir.iterdir()):
            print(f"----- {path.name}\n{path.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    """A one-scheduler loopback cluster config on free ports under tmp_path."""
    return make_cluster(tmp_path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
