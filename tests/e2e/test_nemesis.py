"""The nemesis (tests/nemesis.py): random faults on a real three-scheduler cluster, checked
per (job, tick) against what the jobs themselves wrote. A short seeded run here; a long one
under `-m soak` (ZCRON_NEMESIS_S seconds of faults, default 600)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests import nemesis
from tests.harness import Processes, wait_until

pytestmark = [pytest.mark.slow]


def run_nemesis(tmp_path: Path, procs: Processes, seconds: float, seed: int) -> None:
    cluster = nemesis.nemesis_cluster(tmp_path)
    chaos = nemesis.Nemesis(cluster, procs, random.Random(seed), nemesis.can_cut())
    chaos.start_all()
    wait_until(lambda: len({r["scheduler"] for r in cluster.runs(limit=500)}) == 3, 40,
               "all three schedulers firing", every=0.5)  # fmt: skip
    begin, end = chaos.run(seconds)
    records = nemesis.settle(chaos, end)
    truth = nemesis.read_truth(tmp_path / "truth")
    table = nemesis.check(truth, records, chaos.faults, begin, end)
    print(nemesis.format_table(table))
    total = sum(table.values(), start=nemesis.Counter())
    plain_dups = total["dup"]
    counted = nemesis.counted_duplicates(cluster)
    true_dups = nemesis.true_duplicates(truth)
    print(f"faults {[(f.kind, f.target) for f in chaos.faults]}; duplicates: {true_dups} ran, "
          f"{counted:.0f} counted")
    assert total["ticks"] > 0
    for problem in ("silent_miss", "dup_quorum", "lost_but_ran", "recorded_not_run",
                    "ran_unrecorded"):  # fmt: skip
        assert total[problem] == 0, f"{problem}: {total[problem]}\n{nemesis.format_table(table)}"
    # Outside cuts: no duplicate of any job, no overlap of an overlap = forbid job. Under a
    # cut a quorum = false job may run on both sides (counted), and a forbid job's run on
    # the far side is not known to this one (docs/design.md, "What is not guaranteed").
    outside = [kind for kind in table if kind not in nemesis.CUTS]
    for problem in ("dup", "forbid_violation"):
        found = sum(table[kind][problem] for kind in outside)
        assert found == 0, f"{problem} outside cuts: {found}\n{nemesis.format_table(table)}"
    assert true_dups >= plain_dups
    assert counted == true_dups, f"zcron_duplicate_runs_total {counted}, duplicates run {true_dups}"


@pytest.mark.timeout(300)
def test_a_short_seeded_nemesis_finds_every_tick_run_once_and_recorded_true(
    tmp_path: Path, procs: Processes
) -> None:
    run_nemesis(tmp_path, procs, seconds=75, seed=20261202)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_a_long_nemesis(tmp_path: Path, procs: Processes) -> None:
    seconds = float(os.environ.get("ZCRON_NEMESIS_S", "600"))
    run_nemesis(tmp_path, procs, seconds, seed=int(os.environ.get("ZCRON_NEMESIS_SEED", "1")))
