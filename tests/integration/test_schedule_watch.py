"""A running scheduler follows its schedule directory: symlinked files' edits, and the
directory removed (no busy loop) and created again."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import Cluster, Processes, wait_until

pytestmark = pytest.mark.timeout(90)


def start(procs: Processes, cluster: Cluster) -> subprocess.Popen:
    procs.start("sink", "-c", str(cluster.config_path))
    procs.start("worker", "-c", str(cluster.config_path), "--id", "w1")
    return procs.start("scheduler", "-c", str(cluster.config_path))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_edit_to_a_symlinked_schedule_file_is_followed(
    tmp_path: Path, procs: Processes, cluster: Cluster
) -> None:
    managed = tmp_path / "managed"
    managed.mkdir()
    (managed / "jobs").write_text("# name: first\n* * * * * * - true\n")
    (cluster.schedules / "jobs").symlink_to(managed / "jobs")
    start(procs, cluster)
    wait_until(lambda: cluster.runs(job="first"), 30, "a run of the linked file's job")
    # config management rewrites the target; the link in the directory does not change
    (managed / "jobs").write_text("# name: second\n* * * * * * - true\n")
    wait_until(lambda: cluster.runs(job="second"), 20, "a run of the edited target's job")


def test_a_removed_schedule_directory_costs_no_cpu_and_is_seen_again(
    procs: Processes, cluster: Cluster
) -> None:
    (cluster.schedules / "a").write_text("# name: before\n* * * * * * - true\n")
    scheduler = start(procs, cluster)
    wait_until(lambda: cluster.runs(job="before"), 30, "a run before the removal")
    shutil.rmtree(cluster.schedules)
    time.sleep(1.0)  # the reload after the removal settles
    used = cpu_seconds(scheduler.pid)
    time.sleep(2.0)  # the measurement window: a busy loop would use ~all of it
    assert cpu_seconds(scheduler.pid) - used < 0.4
    assert scheduler.poll() is None
    assert re.search(r"firing from \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", procs.log(scheduler))
    cluster.schedules.mkdir()
    (cluster.schedules / "b").write_text("# name: after\n* * * * * * - true\n")
    wait_until(lambda: cluster.runs(job="after"), 20, "a run after the directory came back")


def test_a_broken_file_is_logged_once_with_what_zcron_does_about_it(
    procs: Processes, cluster: Cluster
) -> None:
    (cluster.schedules / "bad.toml").write_text("[x]\nschedule = \n")
    (cluster.schedules / "good").write_text("# name: one\n* * * * * * - true\n")
    scheduler = start(procs, cluster)
    wait_until(lambda: cluster.runs(job="one"), 30, "a run of the good file's job")
    for name in ("two", "three"):  # two more reloads while bad.toml stays broken
        (cluster.schedules / "good").write_text(f"# name: {name}\n* * * * * * - true\n")
        wait_until(lambda name=name: cluster.runs(job=name), 20, f"a run of {name}")
    said = [line for line in procs.log(scheduler).splitlines() if "bad.toml:2:" in line]
    assert len(said) == 1, said
    assert said[0].endswith("(no job of this file is loaded until it is fixed)")
