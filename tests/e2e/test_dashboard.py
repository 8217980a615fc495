"""The dashboard in real headless Chromium: the page's script runs, fetches /api/jobs and
/api/runs from a live sink, and shows the jobs that ran with their status."""

from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.harness import Cluster, Processes, make_cluster, wait_until
from tests.tools import ensure_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SCHEDULE = """\
# name: hello-dashboard
* * * * * *  -  echo hello
# name: always-fails
* * * * * *  -  echo broken >&2; exit 3
"""
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",  # let fetch() and the render finish before the dump
)


class Rows(HTMLParser):
    """Text of every cell of every row under <tbody id=...>, and each row's class."""

    def __init__(self, tbody_id: str) -> None:
        super().__init__()
        self.tbody_id = tbody_id
        self.inside = False
        self.rows: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tbody":
            self.inside = dict(attrs).get("id") == self.tbody_id
        elif self.inside and tag == "tr":
            self.rows.append((dict(attrs).get("class") or "", []))
        elif self.inside and tag == "td" and self.rows:
            self.rows[-1][1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside and self.rows and self.rows[-1][1]:
            self.rows[-1][1][-1] += data


def table(dom: str, tbody_id: str) -> list[tuple[str, list[str]]]:
    """(row class, cell texts) for every row of one table body."""
    parser = Rows(tbody_id)
    parser.feed(dom)
    return [(cls, [cell.strip() for cell in cells]) for cls, cells in parser.rows if cells]


def chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
    )


def start_cluster(procs: Processes, cluster: Cluster) -> None:
    cfg = str(cluster.config_path)
    procs.start("sink", "-c", cfg)
    procs.start("scheduler", "-c", cfg)
    procs.start("worker", "-c", cfg, "--id", "w1")


def ran(cluster: Cluster) -> bool:
    statuses = {(r["job"], r["status"]) for r in cluster.runs(limit=100)}
    return {("hello-dashboard", "ok"), ("always-fails", "failed")} <= statuses


def test_dashboard_in_chromium_shows_jobs_that_ran(procs: Processes, tmp_path: Path) -> None:
    browser = ensure_tool("chromium", "chromium")
    cluster = make_cluster(tmp_path)
    (cluster.schedules / "jobs").write_text(SCHEDULE)
    start_cluster(procs, cluster)
    wait_until(lambda: ran(cluster), 30, "an ok and a failed run in the sink")

    result = chromium(browser, tmp_path / "profile", "--dump-dom", cluster.http + "/")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "<title>zcron dashboard</title>" in dom
    assert 'id="banner" style="display: none' in dom, "the page could not reach the sink"

    jobs = {cells[0]: (cls, cells) for cls, cells in table(dom, "jobs")}
    assert set(jobs) >= {"hello-dashboard", "always-fails"}, jobs
    ok_class, ok_cells = jobs["hello-dashboard"]
    bad_class, bad_cells = jobs["always-fails"]
    assert "ok" in ok_cells and "bad" not in ok_class.split(), ok_cells
    assert "failed" in bad_cells and "bad" in bad_class.split(), "failures are highlighted"
    assert ok_cells[1].startswith("* * * * * *"), ok_cells
    assert any(cell.endswith(" ms") for cell in ok_cells), "lateness is shown"

    runs = table(dom, "runs")
    assert any("failed" in cells and cells[-1] == "broken" for _, cells in runs), runs
