"""What a run's end sets off: its retry, its chained children, its failure hook.

Every scheduler hears every run's end (workers send `finished` to all of them, and a
scheduler that records a run `lost` or `missed` tells its peers in `outcomes`), and each
decides the same follow-ups from it, with the same instant: the run's end plus a delay.
So a follow-up is known to every live scheduler, not only to the one that dispatched the
run: the owner of the follow-up (rendezvous over the job, as for a tick) fires it, and when
it dies first its successor does (pending.py keeps them; guarantee 10).

A follow-up is keyed by the run it starts, (job, tick, attempt): a retry is (job, tick,
n + 1), a chained child's run (child, tick, 1), a hook's run (JOB:on_failure, tick, n).
The first decision for a key wins (a child is fired or recorded `skipped`, never both),
and a key once done is never done again. Pure logic: no sockets, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from zcron.job import HOOK_SUFFIX, Job

RETRY_ON = ("failed", "timeout", "killed", "lost")
FAILED = ("failed", "timeout", "killed", "lost", "missed", "refused")  # spec §3 on_failure
MAX_PROGRESS = 100_000  # (child, tick) whose parents have not all ended; the oldest go first

Key = tuple[str, float, int]


@dataclass(frozen=True)
class Outcome:
    """How one run ended, as every scheduler learns it."""

    run_id: str
    job: str
    tick: float
    attempt: int
    status: str
    exit_code: int | None
    ended: float  # wall clock: the record's `finished`, else when it was recorded
    worker: str | None = None

    def wire(self) -> list:
        return [self.run_id, self.job, self.tick, self.attempt, self.status, self.exit_code,
                self.ended, self.worker]  # fmt: skip

    @classmethod
    def from_wire(cls, row: list) -> Outcome:
        return cls(*row)

    @classmethod
    def from_record(cls, rec: dict, now: float) -> Outcome:
        return cls(rec["run_id"], rec["job"], float(rec["tick"]), rec["attempt"], rec["status"],
                   rec["exit_code"], rec["finished"] or now, rec["worker"])  # fmt: skip


@dataclass(frozen=True)
class FollowUp:
    """One run (or one `skipped` record) to make at `at`, by the owner of `job`'s ticks."""

    kind: str  # retry | child | skip | hook
    job: str  # the defined job it belongs to: the retried job, the child, the failed job
    tick: float
    attempt: int  # of the run it starts (a hook: the failed run's attempt)
    at: float  # wall clock
    detail: dict = field(default_factory=dict, compare=False)  # avoid, why, the failed run

    @property
    def run_job(self) -> str:
        """The job name the follow-up's run is recorded under."""
        return self.job + HOOK_SUFFIX if self.kind == "hook" else self.job

    @property
    def key(self) -> Key:
        return (self.run_job, self.tick, self.attempt)

    def wire(self) -> list:
        return [self.kind, self.job, self.tick, self.attempt, self.at, self.detail]

    @classmethod
    def from_wire(cls, row: list) -> FollowUp:
        kind, job, tick, attempt, at, detail = row
        return cls(kind, job, float(tick), int(attempt), float(at), dict(detail))


def retry_of(job: Job, out: Outcome) -> FollowUp | None:
    """The next attempt after retry_delay, when the status is retried and attempts are left
    (preferring another worker than the one it failed on)."""
    if out.status not in RETRY_ON or out.attempt > job.retries:
        return None
    return FollowUp("retry", job.name, out.tick, out.attempt + 1, out.ended + job.retry_delay,
                    {"avoid": out.worker})  # fmt: skip


def hook_of(job: Job, out: Outcome) -> FollowUp | None:
    """The failure hook of a run that failed for good (after its retries)."""
    if not job.on_failure or out.status not in FAILED:
        return None
    failed = {"run_id": out.run_id, "status": out.status, "exit_code": out.exit_code}
    return FollowUp("hook", job.name, out.tick, out.attempt, out.ended, failed)


class FollowUps:
    """Decides follow-ups from outcomes; remembers which parents of a child's tick ended ok.

    `progress` maps (child, tick) to the parents whose run of that tick ended `ok` so far;
    it is given (pending.py makes it durable) so a restart keeps a half-finished chain."""

    def __init__(self, progress: dict[tuple[str, float], list[str]] | None = None) -> None:
        self.progress = progress if progress is not None else {}

    def decide(
        self, out: Outcome, jobs: Mapping[str, Job], children: Mapping[str, tuple[str, ...]]
    ) -> list[FollowUp]:
        """The follow-ups an outcome sets off. A hook's own run sets off none (no loop)."""
        job = jobs.get(out.job)
        if job is None or out.job.endswith(HOOK_SUFFIX):
            return []
        retry = retry_of(job, out)
        if retry is not None:
            return [retry]  # not the end of the tick yet: no hook, the children wait
        hook = hook_of(job, out)
        found = [hook] if hook is not None else []
        for name in children.get(job.name, ()):
            child = jobs.get(name)
            if child is not None:
                found += self.chained(child, out)
        return found

    def chained(self, child: Job, out: Outcome) -> list[FollowUp]:
        """A child's run of the tick once every parent's ended ok; `skipped` at once when
        one did not."""
        key = (child.name, out.tick)
        if out.status != "ok":
            self.progress.pop(key, None)
            why = (f"after: parent {out.job}'s run {out.run_id} of this tick ended "
                   f"{out.status}")  # fmt: skip
            return [FollowUp("skip", child.name, out.tick, 1, out.ended, {"why": why})]
        done = sorted({*self.progress.get(key, []), out.job})
        if any(parent not in done for parent in child.after):
            self.remember(key, done)
            return []
        self.progress.pop(key, None)
        return [FollowUp("child", child.name, out.tick, 1, out.ended)]

    def remember(self, key: tuple[str, float], parents: list[str]) -> None:
        self.progress.pop(key, None)
        self.progress[key] = parents
        while len(self.progress) > MAX_PROGRESS:
            del self.progress[next(iter(self.progress))]

    def forget_before(self, tick: float) -> int:
        """Drop chains whose tick is older than `tick` (a parent that never ends); how many."""
        old = [key for key in self.progress if key[1] < tick]
        for key in old:
            del self.progress[key]
        return len(old)


def hook_message(msg: dict, job: Job, hook: FollowUp) -> dict:
    """The job message of a failure hook, from the failed job's own message for the tick:
    its command is on_failure, recorded under JOB:on_failure, with the failed run's end in
    ZCRON_STATUS, ZCRON_EXIT_CODE and ZCRON_FAILED_RUN_ID (spec §3)."""
    failed = hook.detail
    code = failed.get("exit_code")
    env = {**msg["env"], "ZCRON_STATUS": str(failed.get("status", "")),
           "ZCRON_EXIT_CODE": "" if code is None else str(code),
           "ZCRON_FAILED_RUN_ID": str(failed.get("run_id", ""))}  # fmt: skip
    command = job.on_failure if isinstance(job.on_failure, str) else list(job.on_failure)
    hook_msg = {**msg, "job": hook.run_job, "command": command, "env": env, "delay": 0.0}
    hook_msg.pop("mailto", None)
    return hook_msg
