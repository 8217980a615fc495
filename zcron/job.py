"""A job as zcron runs it, and the rules its fields follow in both schedule formats."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # zcron.cron (zoneinfo) and hashlib load when a job is made: the
    from zcron.cron import CronSchedule  # command line's protocol import needs neither

OWN_USER = "-"  # the cron.d user column for "the worker's own user"


NAME_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,200}\Z")


USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?\Z")


ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


CHOICES = {
    "on_timeout": ("kill", "alert"),
    "overlap": ("allow", "forbid", "replace"),
    "catch_up": ("none", "last", "all"),
}


@dataclass(frozen=True, slots=True)  # slots: a scheduler holds 100,000s of jobs
class Job:
    """One scheduled job as its file defines it; `next_after` gives its fire instants."""

    name: str
    schedule: str
    timezone: str
    command: str | tuple[str, ...]  # str: run via the shell; tuple: exec'd as is
    source: str  # "path:line" where it was defined
    shell: str = "/bin/sh"
    user: str | None = None  # None: the worker's own user
    pool: str = "default"
    timeout: float | None = None
    on_timeout: str = "kill"
    retries: int = 0
    retry_delay: float = 0.0
    overlap: str = "allow"
    catch_up: str = "all"
    misfire_grace: float = 60.0
    quorum: bool = False
    jitter: float = 0.0
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()  # sorted, hashable
    enabled: bool = True
    memory_max: int | None = None  # bytes of address space (RLIMIT_AS); None: no limit
    mailto: str = ""  # mail a run's output here when it printed anything; "": never
    after: tuple[str, ...] = ()  # a chained job: fires when these jobs' runs of a tick end ok
    on_failure: str | tuple[str, ...] = ""  # run once per failed run (followups.py); "": none
    # Parsed from schedule and timezone when not given (shared by jobs with the same
    # schedule and timezone); raises ValueError if they are bad.
    cron: CronSchedule | NoSchedule = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.cron is None:
            from zcron.cron import parse_schedule

            cron = NO_SCHEDULE if self.after else parse_schedule(self.schedule, self.timezone)
            object.__setattr__(self, "cron", cron)

    def next_after(self, t: float) -> float | None:
        """The first fire instant strictly after `t` (Unix seconds); None if none is left."""
        return self.cron.next_after(t)

    @property
    def delay_s(self) -> float:
        """This job's share of its `jitter`: a stable delay in [0, jitter) from its name."""
        return jitter_delay(self.name, self.jitter)


class NoSchedule:
    """A chained job's schedule: it has no instants of its own (its parents' ticks fire it)."""

    expression = ""
    fixed_time = False

    def next_after(self, t: float) -> None:
        return None

    def __repr__(self) -> str:
        return "NoSchedule()"


NO_SCHEDULE = NoSchedule()
HOOK_SUFFIX = ":on_failure"  # a job's failure hook runs under the job name JOB:on_failure


def jitter_delay(name: str, jitter: float) -> float:
    """Dkron's `~`, Jenkins' `H`: the same delay for a name every time (and on every
    scheduler), spread evenly over [0, jitter) across names; to the microsecond."""
    if jitter <= 0:
        return 0.0
    import hashlib

    spread = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2.0**64
    return round(spread * jitter, 6)


# cronie's safe_p: an address starts with a letter or digit and holds only these
MAILTO_ADDRESS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9@!:%.,_+-]*\Z")
MAX_MAILTO = 1000


def mailto_problem(value: str) -> str | None:
    """What is wrong with a MAILTO value (comma-separated addresses, "" = never), or None.
    Only cronie's safe characters: no space inside an address, no CR or LF to add headers."""
    if len(value) > MAX_MAILTO:
        return f"longer than {MAX_MAILTO} characters"
    if not value.strip():
        return None
    bad = [a.strip() for a in value.split(",") if not MAILTO_ADDRESS_RE.match(a.strip())]
    if bad:
        return (f"bad address {bad[0][:60]!r}: comma-separated addresses of letters, digits "
                "and @!:%.,_+- (starting with a letter or digit)")  # fmt: skip
    return None


def mail_addresses(value: str) -> str:
    """A checked MAILTO value as the To: header writes it ("" = never mail)."""
    return ", ".join(a.strip() for a in value.split(",")) if value.strip() else ""


NAME_RULE = "use 1-200 characters of A-Z a-z 0-9 _ . : @ -"
