"""Pools sized as users size them (issue 14): slots = cores, like Celery's -c.

zcron (`zcron up --slots S`, one worker) at --slots beside its default (4), APScheduler 3
with a ProcessPoolExecutor of S and Celery beat + prefork -c S on Redis, on every workload:

- N jobs every second (1, 100, 1,000: the last an overload at small S): ticks started in
  the window, missed as the system itself records it (zcron: `missed` records at the sink;
  APScheduler: its "maximum number of running instances" skips; Celery records none), and
  p50/p99 lateness from the job's own clock (common.summarize);
- a burst of N jobs due at one instant: all started after, and the rate;
- ad-hoc pushes from one client (zcron: one connection, pipelined, SchedulerClient.ask_many;
  acknowledged/s is N over the time to the last reply, every push then in LMDB), until run;
- the `zcron` command line's start (push, status, runs: median wall of N invocations);
- the peak PSS of all of a system's processes in each (their trees, jobs included; PSS
  shares a page among the processes that map it, so the sum is what the system costs).

    python3 -m benchmarks --parts pool --slots 2 [--quick]
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks import burst, push, systems
from benchmarks.common import (
    NOOP_COMMAND,
    REPO,
    Processes,
    attempt,
    children,
    free_port,
    shell_jobs,
    sink_query,
    sleep_until,
    summarize,
    wait_until,
    write_config,
    write_crond,
)

DEFAULT_SLOTS = 4  # zcron's [worker] slots when unset (zcron.config.WorkerConfig)
PSS_EVERY_S = 0.25
APS_SKIPPED = re.compile(rb"maximum number of running instances reached|was missed by")


def pss_kb(pid: int) -> int:
    """Proportional set size of one process, KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        pids.append(todo.pop())
        try:
            todo += children(pids[-1])
        except OSError:  # it exited meanwhile (a job's shell at 1,000/s)
            pass
    return pids


class PeakPss:
    """Samples the summed PSS of the process trees of `roots()` every PSS_EVERY_S, in a
    thread, until stop(); `stop` returns {"peak_pss_mib": the largest sum seen}."""

    def __init__(self, roots: Callable[[], list[int]]) -> None:
        self.roots, self.peak_kb = roots, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        # Reading smaps_rollup walks each process's page tables: with zcron's 100 parked
        # shells at 100 jobs/s, sampling at nice 0 put 20-30 ms on the seconds it hit (p99
        # 81 against 61 ms unsampled). At nice 19 (per thread on Linux) it waits for idle
        # CPU, which comes between the seconds' drains, while the shells are still parked.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while not self.done.wait(PSS_EVERY_S):
            pids = {p for root in self.roots() for p in tree(root)}
            self.peak_kb = max(self.peak_kb, sum(pss_kb(p) for p in pids))
            self.sampled(time.time())

    def sampled(self, now: float) -> None:
        """After each sample (PeerProbe notes where the scheduler's log stood)."""

    def stop(self, first: float = 0.0, last: float | None = None) -> dict:
        self.done.set()
        self.thread.join()
        return {"peak_pss_mib": round(self.peak_kb / 1024, 1)}


class PeerProbe(PeakPss):
    """A peer's peak PSS, and the runs its scheduler recorded as skipped (APScheduler logs
    each; Celery beat records nothing: its tasks wait in Redis however late)."""

    def __init__(self, run: Processes) -> None:
        self.run, self.log = run, run.root / "scheduler.log"
        self.log_sizes: list[tuple[float, int]] = []  # (when, size): skips logged by then
        super().__init__(lambda: [p.pid for p in run.procs.values()])

    def sampled(self, now: float) -> None:
        self.log_sizes.append((now, self.log.stat().st_size if self.log.exists() else 0))

    def stop(self, first: float = 0.0, last: float | None = None) -> dict:
        """APScheduler skips a tick when it is due: those logged from tick `first` until
        tick `last` (else until now) are the window's, within a sample (0.25 s)."""
        found = super().stop(first, last)
        if "BENCH_POOL" in self.run.env and self.log.exists():
            until = float("inf") if last is None else last + 0.5
            start = max((size for when, size in self.log_sizes if when <= first), default=0)
            end = max((size for when, size in self.log_sizes if when <= until), default=0)
            with open(self.log, "rb") as log:
                log.seek(start)
                found["missed_recorded"] = len(APS_SKIPPED.findall(log.read(end - start)))
        return found


def peer_env(system: str, slots: int) -> dict[str, str]:
    """The peers' pools of `slots`: processes, as zcron's slots are."""
    if system == "apscheduler":
        return {"BENCH_POOL": f"process:{slots}"}
    return {"BENCH_CONCURRENCY": str(slots)}


@contextmanager
def zcron_up(
    slots: int, label: str, jobs: Callable[[Path], list[tuple[str, str]]], header: list[str]
) -> Iterator[tuple[Processes, Path, int]]:
    """`zcron up` with one worker of `slots` slots and the cron.d lines `jobs(out)`;
    yields (its Processes, the config, the sink's HTTP port)."""
    with Processes(f"zcron-{label}-{slots}") as run:
        http = free_port()
        config = write_config(run.root, write_crond(run.root, header, jobs(run.out)), slots, http)
        run.python("up", "-m", "zcron", "up", "-c", str(config))
        yield run, config, http


def up_probe(run: Processes) -> PeakPss:
    return PeakPss(lambda: [run.procs["up"].pid])


def missed_records(http: int, first: float, last: float) -> int:
    """`missed` records the sink holds for ticks first … last (filed under their tick)."""
    count, until = 0, last + 0.5
    while True:
        page = sink_query(http, status="missed", since=first, until=until, limit=10_000)
        count += sum(1 for r in page if first <= r["tick"] <= last)
        if len(page) < 10_000:
            return count
        until = min(r["tick"] for r in page)


def latency_zcron(jobs: int, seconds: int, slots: int) -> dict:
    """N per-second jobs through `zcron up --slots S`, as latency.measure (2 s warm-up, the
    window, 1.5 s for the last to start); then the sink's `missed` records of its ticks."""
    lines = lambda out: shell_jobs(jobs, out)  # noqa: E731
    with zcron_up(slots, "second", lines, ["SHELL=/bin/bash"]) as (run, config, http):
        probe = up_probe(run)
        time.sleep(2.0)
        first = int(time.time()) + 1
        sleep_until(first + seconds)
        time.sleep(1.5)
        found = probe.stop()
        last = first + seconds - 1
        # A tick still waiting for a slot at the end is recorded missed when a newer one
        # replaces it (within a period): a second more, then the records reach the sink.
        time.sleep(2.0)
        found["missed_recorded"] = missed_records(http, first, last)
        found["alive"] = run.alive()
        return {**summarize(run.out, jobs, first, seconds), **found}


def burst_zcron(jobs: int, slots: int, lead_s: float, timeout_s: float) -> dict:
    """`jobs` no-ops due at one instant through `zcron up --slots S`, from the sink's records."""
    tick = int(time.time() + lead_s)
    with Processes(f"zcron-burst-{slots}") as run:
        config, http = burst.write_setup(run.root, jobs, slots, tick)
        run.python("up", "-m", "zcron", "up", "-c", str(config))
        probe = up_probe(run)
        done: list[dict] = []

        def all_recorded() -> bool:
            nonlocal done
            done = burst.records(http, tick)
            return len(done) >= jobs

        wait_until(all_recorded, lead_s + timeout_s)
        found = probe.stop()
    started = [r["started"] for r in done if r["started"]]
    finished = [r["finished"] for r in done if r["finished"]]
    statuses: dict[str, int] = {}
    for rec in done:
        statuses[rec["status"]] = statuses.get(rec["status"], 0) + 1
    return {"statuses": statuses, **burst.timeline(jobs, tick, started, finished), **found}


def cli_ms(argv: list[str], runs: int) -> float:
    """Median wall ms of `python3 -m zcron ARGV` over `runs` invocations, with bytecode
    cached as an installed package has it (pip compiles at install): PYTHONDONTWRITEBYTECODE
    is dropped for these runs, and two warm-up runs write it (~10-20 ms of compiling)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    walls = []
    for n in range(runs + 2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "zcron", *argv], cwd=REPO, capture_output=True,
                       env=env)  # fmt: skip
        if n >= 2:
            walls.append((time.perf_counter() - start) * 1000)
    return statistics.median(walls)


def push_zcron(jobs: int, slots: int, cli_runs: int, timeout_s: float = 120.0) -> dict:
    """`jobs` pushes pipelined over one connection, until all have run; then the CLI's start."""
    from zcron.client import SchedulerClient
    from zcron.config import load_config

    with zcron_up(slots, "push", lambda out: [], []) as (run, path, http):
        config = load_config(str(path))
        if not wait_until(lambda: push.worker_slots_free(config), 30):
            return {"error": "no worker slots after 30 s", "log": run.log_tails()}
        probe = up_probe(run)
        request = {"command": NOOP_COMMAND, "pool": "default", "timeout": None}
        first = time.time()
        with SchedulerClient(config, "a") as client:
            pushes = ({**request, "at": time.time()} for _ in range(jobs))
            replies = list(client.ask_many("push", pushes))
        last = time.time()
        result = push.until_recorded(http, jobs, first, last, timeout_s)
        result.update(probe.stop(), refused=sum(not r["ok"] for r in replies))
        result["acknowledged_per_s"] = jobs / (last - first)
        result["cli_ms"] = {
            "push": cli_ms(["push", "-c", str(path), "--", *NOOP_COMMAND], cli_runs),
            "status": cli_ms(["status", "-c", str(path)], cli_runs),
            "runs": cli_ms(["runs", "-c", str(path)], cli_runs),
        }
        return result


PEERS = ("apscheduler", "celery")


def rows(only: list[str], slots: int, zcron: Callable[[int], dict],
         peer: Callable[[str, dict], dict]) -> list[dict]:  # fmt: skip
    """One workload: zcron at `slots` and at its default, then each peer at `slots`."""
    out = []
    if "zcron" in only:
        for size in dict.fromkeys((slots, DEFAULT_SLOTS)):
            out.append({"system": "zcron", "slots": size, **attempt(zcron, size)})
    for system in (s for s in PEERS if s in only):
        out.append({"system": system, "slots": slots,
                    **attempt(peer, system, peer_env(system, slots))})  # fmt: skip
    return out


def measure(slots: int, jobs: list[int], seconds: int, burst_jobs: int, push_jobs: int,
            cli_runs: int, only: list[str]) -> dict:  # fmt: skip
    """Every workload of the part at `slots` (see the module's text)."""
    report: dict = {"slots": slots, "latency": [], "burst": [], "push": []}
    for n in jobs:
        print(f"pool: {n} jobs/s at {slots} slots, {seconds} s", flush=True)
        report["latency"] += rows(
            only, slots, lambda size, n=n: latency_zcron(n, seconds, size),
            lambda system, env, n=n: systems.measure(system, n, seconds, PeerProbe, **env),
        )  # fmt: skip
    burst.raise_fd_limit()
    print(f"pool: burst of {burst_jobs} at {slots} slots", flush=True)
    report["burst"] = rows(
        only, slots, lambda size: burst_zcron(burst_jobs, size, 10.0, 180.0),
        lambda system, env: burst.measure_peer(system, burst_jobs, 12.0, 180.0, PeerProbe, **env),
    )  # fmt: skip
    print(f"pool: {push_jobs} pushes at {slots} slots", flush=True)
    report["push"] = rows(
        only, slots, lambda size: push_zcron(push_jobs, size, cli_runs),
        lambda system, env: push.measure_peer(system, push_jobs, 120.0, PeerProbe, **env),
    )  # fmt: skip
    return report
