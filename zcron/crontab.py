"""The cron.d schedule format (spec §3): lines as /etc/cron.d reads them, and the
warnings where zcron reads a cron file differently from cron."""

from __future__ import annotations

import hashlib
import pwd
import re
import sys
from pathlib import Path

from zcron.cron import is_cron_fields, parse_schedule, zone
from zcron.errors import ScheduleError
from zcron.job import NAME_RE, NAME_RULE, OWN_USER, USER_RE, Job, mailto_problem

_ENV_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)\Z")


_NAME_COMMENT = re.compile(r"#\s*name:\s*(.*?)\s*\Z")


_UNESCAPED_PERCENT = re.compile(r"(?<!\\)%")


def parse_crond(path: str, text: str, default_tz: str) -> tuple[list[Job], list[ScheduleError]]:
    """Jobs and errors of a cron.d file."""
    reader = read_crond(path, text, default_tz)
    return reader.jobs, reader.errors


def read_crond(path: str, text: str, default_tz: str) -> _CronDReader:
    """A cron.d file read: its `jobs`, `errors` and `warnings`."""
    reader = _CronDReader(path, default_tz)
    for number, line in enumerate(text.split("\n"), 1):
        try:
            reader.read_line(number, line.rstrip("\r"))
        except ScheduleError as exc:
            reader.errors.append(exc)
    return reader


class _CronDReader:
    """The state of one cron.d file as its lines are read: environment, shell, timezone."""

    def __init__(self, path: str, default_tz: str):
        self.path = path
        self.stem = re.sub(r"[^A-Za-z0-9_.:@-]", "_", Path(path).stem)[:180] or "job"
        self.env: dict[str, str] = {}
        self.job_env: tuple[tuple[str, str], ...] = ()  # env as jobs hold it, shared by them
        self.shell = "/bin/sh"
        self.mailto = ""  # MAILTO=: where the output of the jobs below is mailed
        self.timezone = default_tz
        self.jobs: list[Job] = []
        self.errors: list[ScheduleError] = []
        self.warnings: list[ScheduleError] = []
        self.name_above: str | None = None
        self.auto_names: dict[str, int] = {}

    def read_line(self, number: int, line: str) -> None:
        name, self.name_above = self.name_above, None
        text = line.strip()
        if not text:
            return
        if text.startswith("#"):
            self.name_above = self.name_comment(number, text)
        elif text.split()[0].lower() == "@reboot":
            self.warn(number, "@reboot is not supported (zcron fires on the clock only): skipped")
        elif match := _ENV_LINE.match(text):
            self.set_variable(number, match.group(1), _unquote(match.group(2)))
        else:
            self.jobs.append(self.job(number, line, name))

    def name_comment(self, number: int, text: str) -> str | None:
        match = _NAME_COMMENT.match(text)
        if match is None:
            return None
        if not NAME_RE.match(match.group(1)):
            raise self.error(number, f"bad job name {match.group(1)!r}: {NAME_RULE}")
        return match.group(1)

    def set_variable(self, number: int, key: str, value: str) -> None:
        if "\0" in value:
            raise self.error(number, f"{key}: the value contains a NUL character")
        if key in ("CRON_TZ", "TZ"):
            self.timezone = self.zone_name(number, key, value.lstrip(":"))
        self.warn_variable(number, key, value)
        if key == "MAILTO":
            if (problem := mailto_problem(value)) is not None:
                raise self.error(number, f"MAILTO: {problem}")
            self.mailto = value
        if key == "SHELL":
            if not value:
                raise self.error(number, "SHELL: expected the path of a shell, e.g. /bin/bash")
            self.shell = value
        self.env[key] = value
        self.job_env = tuple(sorted(self.env.items()))

    def warn_variable(self, number: int, key: str, value: str) -> None:
        if key == "TZ":
            self.warn(
                number,
                "TZ also sets the timezone of the schedules below (cron uses only CRON_TZ "
                "for that and passes TZ to the jobs)",
            )

    def zone_name(self, number: int, key: str, value: str) -> str:
        try:
            zone(value)
        except ValueError as exc:
            raise self.error(number, f"{key}: {exc}") from None
        return value

    def job(self, number: int, line: str, name: str | None) -> Job:
        schedule, user, command = self.split_job_line(number, line)
        try:
            cron = parse_schedule(schedule, self.timezone)
        except ValueError as exc:
            raise self.error(number, str(exc)) from None
        self.warn_job(number, schedule.split(), user, command)
        return Job(
            name=name or self.auto_name(schedule, user, command),
            schedule=cron.expression,  # the shared schedule's copy of the same text
            timezone=self.timezone,
            command=command,
            source=f"{self.path}:{number}",
            shell=self.shell,
            user=None if user == OWN_USER else sys.intern(user),
            env=self.job_env,
            mailto=self.mailto,
            cron=cron,
        )

    def split_job_line(self, number: int, line: str) -> tuple[str, str, str]:
        """(schedule, user, command) of a job line; the command is kept verbatim."""
        tokens = list(re.finditer(r"\S+", line))
        words = [t.group() for t in tokens]
        if words[0].startswith("@"):
            count = 1
        else:
            count = 6 if len(words) >= 6 and is_cron_fields(words[:6]) else 5
        if len(words) < count + 2:
            raise self.error(
                number,
                f"expected {_TIME_FIELDS[count]}, then a user (- = the worker's own), "
                "then a command",
            )
        user, command = words[count], line[tokens[count + 1].start() :].rstrip()
        if user != OWN_USER and not USER_RE.match(user):
            raise self.error(
                number,
                f"bad user {user!r}: the column after the time fields is the user the "
                "job runs as (- = the worker's own user)",
            )
        if "\0" in command:
            raise self.error(number, "the command contains a NUL character")
        return " ".join(words[:count]), user, command

    def warn_job(self, number: int, fields: list[str], user: str, command: str) -> None:
        """Warn where cron would run this line differently, or its day rule surprises."""
        if _UNESCAPED_PERCENT.search(command):
            self.warn(
                number,
                "% in the command: cron ends the command at the first unescaped % and sends "
                "the rest to its standard input (each further % a newline); zcron runs the "
                "command as written. Write \\% for a literal % in both",
            )
        if len(fields) >= 5 and not fields[-3].startswith("*") and not fields[-1].startswith("*"):
            self.warn(
                number,
                f"day of month {fields[-3]!r} and day of week {fields[-1]!r} are both "
                "restricted: the job fires on days matching EITHER (cron's OR rule, which "
                "zcron follows), not only on days matching both",
            )
        if len(fields) == 6 and fields[5] == "*" and user != OWN_USER and not _is_user(user):
            self.warn(
                number,
                f"read as six time fields (seconds first) and user {user!r}, who does not "
                "exist here; if * was meant as the user, write - for the worker's own user",
            )

    def warn(self, number: int, message: str) -> None:
        self.warnings.append(ScheduleError(self.path, number, message))

    def auto_name(self, schedule: str, user: str, command: str) -> str:
        """`<stem>-<hash of the line>`: stable when other lines change; -2, -3 for repeats."""
        line_hash = hashlib.sha1(f"{schedule}\n{user}\n{command}".encode(errors="replace"))
        name = f"{self.stem}-{line_hash.hexdigest()[:8]}"
        self.auto_names[name] = count = self.auto_names.get(name, 0) + 1
        return name if count == 1 else f"{name}-{count}"

    def error(self, number: int, message: str) -> ScheduleError:
        return ScheduleError(self.path, number, message)


_TIME_FIELDS = {1: "an @alias", 5: "5 time fields (or 6, seconds first)", 6: "6 time fields"}


def _is_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value
