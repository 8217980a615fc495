"""jitter end to end (spec §3): 20 jobs on one */5 schedule start spread over the jitter,
each at the same offset every time, with ZCRON_TICK the scheduled instant."""

from __future__ import annotations

import pytest

from tests.harness import Cluster, Processes, wait_until
from zcron.job import jitter_delay

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]
JOBS = [f"spread-{n:02d}" for n in range(20)]
JITTER_S = 3.0


def test_jobs_sharing_a_schedule_start_spread_each_at_its_own_stable_offset(
    procs: Processes, cluster: Cluster
) -> None:
    (cluster.schedules / "spread.toml").write_text("".join(
        f'[{name}]\nschedule = "*/5 * * * * *"\ncommand = "echo $ZCRON_TICK"\n'
        f'jitter = "{JITTER_S:g}s"\n\n' for name in JOBS))  # fmt: skip
    config = str(cluster.config_path)
    procs.start("sink", "-c", config)
    wait_until(lambda: cluster.get_json_or_none("/api/jobs") is not None, 15, "the sink")
    procs.start("scheduler", "-c", config)
    procs.start("worker", "-c", config, "--id", "w1")

    def two_rounds() -> list[dict] | None:
        runs = [r for r in cluster.runs(limit=200, status="ok") if r["job"] in JOBS]
        return runs if len({r["tick"] for r in runs}) >= 2 and len(runs) >= 40 else None

    runs = wait_until(two_rounds, 45, "two rounds of the 20 jobs")
    offsets: dict[str, list[float]] = {}
    for rec in runs:
        assert rec["tick"] % 5 == 0 and float(rec["stdout_tail"]) == rec["tick"]  # ZCRON_TICK
        assert rec["delay"] == pytest.approx(jitter_delay(rec["job"], JITTER_S), abs=1e-6)
        offsets.setdefault(rec["job"], []).append(rec["started"] - rec["tick"])
    for name, seen in offsets.items():
        want = jitter_delay(name, JITTER_S)
        assert all(want <= o < want + 0.25 for o in seen), (name, want, seen)  # the same offset
    firsts = sorted(min(seen) for seen in offsets.values())
    assert firsts[-1] - firsts[0] > JITTER_S / 2, f"not spread: {firsts}"
