"""A Jepsen-style nemesis for zcron: random faults on a real cluster, and a checker that
compares what the jobs themselves wrote (the truth) with what the sink recorded.

Faults, one at a time with a quiet gap after each: SIGKILL (then a restart) of a scheduler,
a worker or the sink; SIGSTOP/SIGCONT of a scheduler or a worker; and, as root, cuts of one
scheduler on loopback with iptables: `in` drops what reaches its port (it hears nobody,
workers cannot reach it), `out` drops every packet it sends (it is heard by nobody: each
scheduler runs under its own group id, matched by `-m owner --gid-owner`), `both` does both.

The checker looks at every (job, tick) of the run and counts, per fault nearest before the
tick: silent misses (no run and no record), duplicates (one (job, tick, attempt) run more
than once; quorum jobs must have none), runs recorded `lost` that ran, records that claim
a run that never ran, runs without a record, and overlap = forbid violations.

`python -m tests.nemesis --seconds 300 --seed 7` runs it outside pytest and prints the
table; tests/e2e/test_nemesis.py runs a short seeded one in CI and a long one under -m soak.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import Cluster, Processes, make_cluster, metric_samples, spooled, wait_until

SCHEDULERS = ("a", "b", "c")
WORKERS = ("w1", "w2")
QUORUM_JOBS = [f"q{i}" for i in range(6)]
PLAIN_JOBS = [f"n{i}" for i in range(8)]
FORBID_JOBS = ["f0", "f1"]  # overlap = forbid, each run lasts 1.5 s: every other tick skipped
RETRY_JOBS = ["r0"]  # fails on attempt 1, retried once 1 s later
# Scheduler i runs with group id GID_BASE + i (cuts match on it), a range of this process's
# own: two nemesis runs at once (two checkouts on one machine) cut each other's schedulers
# with one base (seen: a scheduler deaf for 3 s with no fault of its own run).
GID_BASE = 47000 + 3 * (os.getpid() % 6000)
SETTLE_S = 4.0  # after the last fault: the cluster back to steady state before the end
FAULTS = ("kill_scheduler", "stop_scheduler", "kill_worker", "stop_worker", "kill_sink")
CUTS = ("cut_in", "cut_out", "cut_both")


def truth_command(truth: Path, body: str = "") -> str:
    """A command that appends `job tick attempt run_id start|end time` lines (one write
    each, under PIPE_BUF: appends from many processes do not interleave)."""
    line = '"$ZCRON_JOB $ZCRON_TICK $ZCRON_ATTEMPT $ZCRON_RUN_ID'
    start = f'echo {line} start $(date +%s.%N)" >> {truth}'
    end = f'echo {line} end $(date +%s.%N)" >> {truth}'
    return f"{start}; {body}{end}"


def jobs_toml(truth: Path) -> str:
    tables = []
    for name in QUORUM_JOBS:
        tables.append(f'[{name}]\nschedule = "* * * * * *"\nquorum = true\n'
                      f"command = '{truth_command(truth)}'\n")  # fmt: skip
    for name in PLAIN_JOBS:
        tables.append(f"[{name}]\nschedule = \"* * * * * *\"\ncommand = '{truth_command(truth)}'\n")
    for name in FORBID_JOBS:
        cmd = truth_command(truth, "sleep 1.5; ")
        tables.append(f'[{name}]\nschedule = "* * * * * *"\noverlap = "forbid"\n'
                      f"command = '{cmd}'\n")  # fmt: skip
    for name in RETRY_JOBS:
        cmd = truth_command(truth, '[ "$ZCRON_ATTEMPT" -gt 1 ] || exit 3; ')
        tables.append(f'[{name}]\nschedule = "*/2 * * * * *"\nretries = 1\nretry_delay = "1s"\n'
                      f"command = '{cmd}'\n")  # fmt: skip
    return "\n".join(tables)


@dataclass
class Fault:
    kind: str
    target: str
    at: float  # wall clock when it began
    until: float  # when it was undone (restart, SIGCONT, cut healed)


@dataclass
class Nemesis:
    """The cluster under test, its processes by name, and the faults done to it."""

    cluster: Cluster
    procs: Processes
    rng: random.Random
    cuts: bool  # iptables cuts (root, iptables and setpriv present)
    running: dict[str, subprocess.Popen] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)

    def start(self, name: str) -> None:
        env = {"ZCRON_LOG_TIMES": "1"}  # the logs of a failed run, read beside the faults
        config = str(self.cluster.config_path)
        if name in SCHEDULERS:
            gid = GID_BASE + SCHEDULERS.index(name)
            prefix = ("setpriv", f"--regid={gid}", "--clear-groups") if self.cuts else ()
            proc = self.procs.start("scheduler", "-c", config, "--id", name,
                                    name=f"sched-{name}", prefix=prefix, env=env)  # fmt: skip
        elif name in WORKERS:
            proc = self.procs.start("worker", "-c", config, "--id", name, name=name, env=env)
        else:
            proc = self.procs.start("sink", "-c", config, name="sink", env=env)
        self.running[name] = proc

    def start_all(self) -> None:
        for name in ("sink", *WORKERS, *SCHEDULERS):
            self.start(name)

    def kinds(self) -> tuple[str, ...]:
        return FAULTS + (CUTS if self.cuts else ())

    def one_fault(self) -> Fault:
        kind = self.rng.choice(self.kinds())
        role = kind.split("_", 1)[1]
        pool = {"scheduler": SCHEDULERS, "worker": WORKERS, "sink": ("sink",)}.get(role, SCHEDULERS)
        target = self.rng.choice(pool)
        length = self.rng.uniform(0.3, 4.0)
        began = time.time()
        getattr(self, kind.split("_")[0])(kind, target, length)
        fault = Fault(kind, target, began, time.time())
        self.faults.append(fault)
        return fault

    def kill(self, kind: str, target: str, length: float) -> None:
        proc = self.running[target]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        time.sleep(length)  # the fault itself: down this long
        self.start(target)

    def stop(self, kind: str, target: str, length: float) -> None:
        proc = self.running[target]
        proc.send_signal(signal.SIGSTOP)
        time.sleep(length)  # the fault itself: stopped this long
        proc.send_signal(signal.SIGCONT)

    def cut(self, kind: str, target: str, length: float) -> None:
        gid = GID_BASE + SCHEDULERS.index(target)
        rules = cut_rules(kind, self.cluster.schedulers[target], gid)
        for rule in rules:
            iptables("-I", *rule)
        try:
            time.sleep(length)  # the fault itself: cut this long
        finally:
            for rule in rules:
                iptables("-D", *rule)

    def run(self, seconds: float, gap: float = 3.0) -> tuple[float, float]:
        """Faults for `seconds` with `gap` s of quiet after each; the checked window."""
        begin = math.ceil(time.time()) + 1.0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.one_fault()
            time.sleep(gap)  # quiet between faults: one fault at a time
        end = math.floor(time.time() + SETTLE_S)
        return begin, float(end)


def cut_rules(kind: str, port: int, gid: int) -> list[tuple[str, ...]]:
    into = ("INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-j", "DROP")
    out = ("OUTPUT", "-o", "lo", "-m", "owner", "--gid-owner", str(gid), "-j", "DROP")
    return {"cut_in": [into], "cut_out": [out], "cut_both": [into, out]}[kind]


def iptables(*args: str) -> None:
    subprocess.run(["iptables", "-w", *args], check=True, capture_output=True)


def can_cut() -> bool:
    return os.geteuid() == 0 and bool(shutil.which("iptables")) and bool(shutil.which("setpriv"))


# -- the checker ---------------------------------------------------------------------------


@dataclass
class Ran:
    job: str
    tick: float
    attempt: int
    run_id: str
    start: float
    end: float | None = None


def read_truth(path: Path) -> dict[str, Ran]:
    """run id -> what the job itself wrote."""
    ran: dict[str, Ran] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split()
        if len(parts) != 6:
            continue
        job, tick, attempt, run_id, what, at = parts
        if what == "start":
            ran[run_id] = Ran(job, round(float(tick), 6), int(attempt), run_id, float(at))
        elif run_id in ran:
            ran[run_id].end = float(at)
    return ran


def expected_ticks(begin: float, end: float) -> list[tuple[str, float]]:
    every = [(job, float(t)) for job in QUORUM_JOBS + PLAIN_JOBS + FORBID_JOBS
             for t in range(int(begin), int(end) + 1)]  # fmt: skip
    every += [(job, float(t)) for job in RETRY_JOBS
              for t in range(int(begin), int(end) + 1) if t % 2 == 0]  # fmt: skip
    return every


def check(
    truth: dict[str, Ran], records: list[dict], faults: list[Fault], begin: float, end: float,
) -> dict[str, Counter]:  # fmt: skip
    """Problems per kind, each counted under the fault nearest before its tick ("none" in a
    quiet stretch): the table of the issue."""
    table: dict[str, Counter] = defaultdict(Counter)

    def blame(tick: float) -> Counter:
        near = [f for f in faults if f.at - 1.0 <= tick <= f.until + 6.0]
        return table[near[-1].kind if near else "none"]

    in_window = [r for r in records if begin <= r["tick"] <= end]
    ran = [run for run in truth.values() if begin <= run.tick <= end]
    check_ticks(ran, in_window, begin, end, blame)
    check_runs(ran, truth, records, in_window, blame)
    for job in FORBID_JOBS:
        spans = sorted((r.start, r.end or r.start, r.tick) for r in truth.values() if r.job == job)
        for (_, first_end, first), (second_start, _, second) in zip(spans, spans[1:], strict=False):
            # two runs of one tick are a duplicate (counted above), not an overlap of ticks
            if second_start < first_end - 0.01 and first != second:
                blame(second_start)["forbid_violation"] += 1
    return table


def check_ticks(ran: list[Ran], in_window: list[dict], begin: float, end: float, blame) -> None:
    """Per expected (job, tick): a silent miss, a miss that was recorded, duplicates."""
    recorded = {(r["job"], round(r["tick"], 6)) for r in in_window}
    ran_by_tick: dict[tuple[str, float], list[Ran]] = defaultdict(list)
    for run in ran:
        ran_by_tick[(run.job, run.tick)].append(run)
    for key in expected_ticks(begin, end):
        row = blame(key[1])
        row["ticks"] += 1
        runs = ran_by_tick.get(key, [])
        if not runs:
            row["not_run_recorded" if key in recorded else "silent_miss"] += 1
        attempts = Counter(r.attempt for r in runs)
        row["dup_quorum" if key[0] in QUORUM_JOBS else "dup"] += sum(
            n - 1 for n in attempts.values()
        )


def check_runs(
    ran: list[Ran], truth: dict[str, Ran], records: list[dict], in_window: list[dict], blame,
) -> None:  # fmt: skip
    """Per run: recorded at all, recorded `lost` although it ran; per record: a run that
    the record says ran but never did."""
    by_run_id = {r["run_id"]: r for r in records}
    for run in ran:
        rec = by_run_id.get(run.run_id)
        if rec is None:
            blame(run.tick)["ran_unrecorded"] += 1
        elif rec["status"] == "lost" and run.end is not None:
            blame(run.tick)["lost_but_ran"] += 1  # it ran to its end: `lost` is untrue
    for rec in in_window:
        if rec["status"] in ("ok", "failed") and rec["run_id"] not in truth:
            blame(rec["tick"])["recorded_not_run"] += 1


def true_duplicates(truth: dict[str, Ran]) -> int:
    """Runs beyond the first of each (job, tick, attempt) that the jobs themselves wrote,
    over the whole run (warm-up and settling too, as the sink's counter)."""
    per_attempt = Counter((run.job, run.tick, run.attempt) for run in truth.values())
    return sum(n - 1 for n in per_attempt.values())


def counted_duplicates(cluster: Cluster) -> float:
    return sum(v for labels, v in metric_samples(cluster, "zcron_duplicate_runs_total"))


def settle(nemesis: Nemesis, end: float) -> list[dict]:
    """Everything running again and every record delivered; the records."""
    cluster = nemesis.cluster
    for name, proc in nemesis.running.items():
        if proc.poll() is not None:
            nemesis.start(name)

    waiting: list[str] = []

    def delivered() -> list[dict] | None:
        if (left := spooled(cluster)) > 0:
            waiting[:] = [f"{left} records spooled"]
            return None
        runs = all_runs(cluster)
        # end + 3: the 1.5 s runs of the forbid jobs at the end have finished by then
        done = {r["job"] for r in runs if r["tick"] >= end + 3 and r["finished"]}
        waiting[:] = [f"no finished run after the end yet of {sorted(set(PLAIN_JOBS) - done)}"]
        return runs if done >= set(PLAIN_JOBS) else None

    try:
        return wait_until(delivered, 60, "every record delivered after the faults", every=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {waiting[0] if waiting else ''}") from None


def all_runs(cluster: Cluster) -> list[dict]:
    """Every record of the nemesis jobs (one query per job: the API returns 10,000 at most)."""
    names = QUORUM_JOBS + PLAIN_JOBS + FORBID_JOBS + RETRY_JOBS
    return [rec for name in names for rec in cluster.runs(job=name, limit=10000)]


COLUMNS = ["ticks", "silent_miss", "not_run_recorded", "dup", "dup_quorum", "lost_but_ran",
           "recorded_not_run", "ran_unrecorded", "forbid_violation"]  # fmt: skip


def format_table(table: dict[str, Counter]) -> str:
    columns = COLUMNS
    lines = ["| fault | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for fault in sorted(table):
        lines.append(f"| {fault} | " + " | ".join(str(table[fault][c]) for c in columns) + " |")
    return "\n".join(lines)


def nemesis_cluster(root: Path) -> Cluster:
    cluster = make_cluster(root, SCHEDULERS, slots=40)
    (cluster.schedules / "jobs.toml").write_text(jobs_toml(root / "truth"))
    return cluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    opts = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="zcron-nemesis-"))
    (root / "logs").mkdir()
    procs = Processes(root / "logs")
    nemesis = Nemesis(nemesis_cluster(root), procs, random.Random(opts.seed), can_cut())
    try:
        nemesis.start_all()
        wait_until(lambda: len({r["scheduler"] for r in nemesis.cluster.runs(limit=1000)}) == 3,
                   40, "all three schedulers firing", every=0.5)  # fmt: skip
        begin, end = nemesis.run(opts.seconds)
        records = settle(nemesis, end)
        truth = read_truth(root / "truth")
        table = check(truth, records, nemesis.faults, begin, end)
        print(format_table(table))
        print(f"faults: {Counter(f.kind for f in nemesis.faults)}")
        (root / "faults.txt").write_text("".join(
            f"{f.kind} {f.target} {f.at:.3f} {f.until:.3f}\n" for f in nemesis.faults))
        print(f"duplicates run: {true_duplicates(truth)}, zcron_duplicate_runs_total: "
              f"{counted_duplicates(nemesis.cluster):.0f}")
    finally:
        procs.stop_all()
        if not opts.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
