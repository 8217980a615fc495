"""The dashboard in real headless Chromium at a desktop's and a phone's width: states (ok,
failing, late, disabled), the cluster panel, schedule-file errors, removed jobs and pushes
out of the table, and nothing cut off at 390 px."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import REPO, Cluster, Processes, make_cluster, wait_until
from tests.tools import ensure_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SCHEDULE = """\
# name: hello-dashboard
* * * * * *  -  echo hello
# name: always-fails
* * * * * *  -  echo broken >&2; exit 3
# name: going-away
* * * * * *  -  true
"""
DISABLED = """\
[weekly-report]
schedule = "0 9 * * 1"
timezone = "America/New_York"
command = "echo report"
enabled = false
"""
BROKEN = "# name: bad-hour\n0 25 * * *  -  echo never\n"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
DESKTOP, PHONE = (1280, 900), (390, 844)
# Set to a directory (docs/) to keep the screenshots the README shows.
SCREENSHOTS = os.environ.get("ZCRON_SCREENSHOTS")
# What a test reads from the rendered page, collected in the page itself.
READ_PAGE = """JSON.stringify({
  rendered: document.body.dataset.rendered || "",
  scrollWidth: document.scrollingElement.scrollWidth,
  jobs: Object.fromEntries([...document.querySelectorAll("#jobs tr")].map(
    tr => [tr.dataset.job, [tr.dataset.state, tr.textContent]])),
  lists: Object.fromEntries([...document.querySelectorAll("ul[id], ol[id]")].map(
    list => [list.id, [...list.children].map(li => li.textContent)])),
})"""


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4), so a
    page can be given a phone's width: --window-size stops at 500 px in headless mode."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser, self.commands = os.pipe()
        self.replies, from_browser = os.pipe()
        # bash moves the pipe ends to fds 3 and 4 (dash cannot name fds above 9)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
        os.close(to_browser)
        os.close(from_browser)
        moves = f"exec 3<&{high[0]} 4>&{high[1]} {high[0]}<&- {high[1]}>&-"
        self.proc = subprocess.Popen(
            ["bash", "-c", f'{moves}; exec "$0" "$@"', binary, *CHROMIUM_FLAGS,
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            pass_fds=high, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for fd in high:
            os.close(fd)
        self.buffer, self.last_id, self.session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        attached = self.call("Target.attachToTarget", targetId=target, flatten=True)
        self.session = attached["sessionId"]

    def call(self, method: str, **params: Any) -> dict:
        """Send one command and wait for its answer (events in between are skipped)."""
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                ready, _, _ = select.select([self.replies], [], [], 30)
                chunk = os.read(self.replies, 1 << 20) if ready else b""
                assert chunk, f"Chromium did not answer {method}"
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.last_id:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def open(self, url: str, size: tuple[int, int]) -> dict:
        """Load url at size (narrow = a phone) and return READ_PAGE once it has rendered."""
        self.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1],
                  deviceScaleFactor=1, mobile=size[0] < 600)  # fmt: skip
        self.call("Page.navigate", url="about:blank")
        self.call("Page.navigate", url=url)
        return wait_until(self.rendered, 15, f"the page at {url} to render")

    def rendered(self) -> dict | None:
        result = self.call("Runtime.evaluate", expression=READ_PAGE, returnByValue=True)
        read = json.loads(result["result"].get("value") or "{}")
        return read if read.get("rendered") else None

    def screenshot(self, path: Path) -> None:
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        assert path.stat().st_size > 10_000, "an empty screenshot"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        os.close(self.commands)
        os.close(self.replies)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    chromium = Browser(ensure_tool("chromium", "chromium"), tmp_path / "profile")
    yield chromium
    chromium.close()


def screenshot(browser: Browser, tmp_path: Path, url: str, size: tuple[int, int]) -> None:
    """Full-page screenshots, kept in $ZCRON_SCREENSHOTS (docs/) when that is set."""
    folder = REPO / SCREENSHOTS if SCREENSHOTS else tmp_path
    browser.open(url, size)
    browser.screenshot(folder / f"dashboard-{size[0]}.png")


def start_cluster(procs: Processes, cluster: Cluster) -> subprocess.Popen:
    cfg = str(cluster.config_path)
    procs.start("sink", "-c", cfg)
    procs.start("scheduler", "-c", cfg)
    return procs.start("worker", "-c", cfg, "--id", "w1")


def push(cluster: Cluster) -> bool:
    argv = [sys.executable, "-m", "zcron", "push", "-c", str(cluster.config_path), "--", "true"]
    return subprocess.run(argv, capture_output=True, timeout=20).returncode == 0


def summary_state(cluster: Cluster, job: str) -> str | None:
    summary = cluster.get_json_or_none("/api/summary") or {"jobs": []}
    return next((j["state"] for j in summary["jobs"] if j["job"] == job), None)


def test_dashboard_shows_states_cluster_errors_and_fits_a_phone(
    procs: Processes, browser: Browser, tmp_path: Path
) -> None:
    cluster = make_cluster(tmp_path)
    (cluster.schedules / "jobs").write_text(SCHEDULE)
    (cluster.schedules / "weekly.toml").write_text(DISABLED)
    (cluster.schedules / "broken").write_text(BROKEN)
    worker = start_cluster(procs, cluster)
    wait_until(lambda: summary_state(cluster, "always-fails") == "failing", 30, "a failure")
    wait_until(lambda: push(cluster), 20, "a push to be accepted")
    wait_until(lambda: any(r["job"].startswith("push:") for r in cluster.runs(limit=200)), 20,
               "the push to run")  # fmt: skip
    (cluster.schedules / "jobs").write_text(SCHEDULE.split("# name: going-away")[0])
    wait_until(lambda: summary_state(cluster, "going-away") is None, 20, "the removal")

    desktop = browser.open(cluster.http + "/", DESKTOP)
    states = {job: state for job, (state, _) in desktop["jobs"].items()}
    assert states == {
        "hello-dashboard": "ok", "always-fails": "failing", "weekly-report": "disabled",
    }, "the removed job and the push are not rows; each job has one state"  # fmt: skip
    assert "exit 3" in desktop["jobs"]["always-fails"][1], "the state says why"
    lists = desktop["lists"]
    assert any(item.startswith("a live, firing") for item in lists["schedulers"]), lists
    assert any("default: w1 " in item for item in lists["pools"]), lists
    assert any(f"{cluster.schedules}/broken:2:" in e for e in lists["errors"]), lists
    assert lists["next-up"], "next up lists the coming ticks"

    phone = browser.open(cluster.http + "/?failing=1", PHONE)
    assert set(phone["jobs"]) == {"always-fails"}, "the filter in the URL applies"
    for url in ("/", "/?job=always-fails"):
        phone = browser.open(cluster.http + url, PHONE)
        assert phone["scrollWidth"] <= PHONE[0], f"{url} scrolls sideways at 390 px"
    for size in (DESKTOP, PHONE):
        screenshot(browser, tmp_path, cluster.http + "/", size)

    killed = time.monotonic()
    worker.send_signal(signal.SIGKILL)
    wait_until(lambda: summary_state(cluster, "hello-dashboard") == "late", 15, "late")
    assert time.monotonic() - killed < 10, "a per-second job shows late within seconds"
    after = browser.open(cluster.http + "/", PHONE)
    assert after["jobs"]["hello-dashboard"][0] == "late"

    def pool_without_worker() -> bool:  # the sink forgets a silent worker after 5 s
        pools = browser.open(cluster.http + "/", PHONE)["lists"]["pools"]
        return any(item == "default: no live worker" for item in pools)

    wait_until(pool_without_worker, 15, "the pool shown without a worker")
