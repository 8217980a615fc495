"""Many jobs: the scheduler's job table reaches the sink in parts, whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import Processes, make_cluster, wait_until

pytestmark = pytest.mark.timeout(90)


def test_a_job_table_larger_than_one_message_reaches_the_sink(tmp_path: Path, procs: Processes):
    cluster = make_cluster(tmp_path)
    lines = "".join(f"# name: yearly-{i:05d}\n0 0 1 1 *  -  true\n" for i in range(5000))
    (cluster.schedules / "many").write_text(lines)
    procs.start("sink", "-c", str(cluster.config_path))
    procs.start("scheduler", "-c", str(cluster.config_path))
    jobs = wait_until(
        lambda: (table := cluster.get_json_or_none("/api/jobs")) and len(table) == 5000 and table,
        60,
        "all 5,000 jobs on /api/jobs",
    )
    assert {j["job"] for j in jobs} == {f"yearly-{i:05d}" for i in range(5000)}
    assert all(j["next_tick"] for j in jobs)
