"""Schedule files → jobs (spec §3): cron.d and TOML formats, file:line errors, last good version.

cron.d lines are read as /etc/cron.d reads them, with two choices of zcron's own: a user
column of ``-`` means the worker's own user (not ``*``: after five time fields a ``*`` would
parse as a sixth), and the command is kept verbatim (``%`` is not special; a trailing
``# comment`` goes to the shell, which ignores it). Where a cron file means something else
to zcron than to cron (``%``, ``@reboot``, ``MAILTO``, ``TZ``), or cron's own rule surprises
(day of month OR day of week), the line loads and a warning says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pwd
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from zcron.config import parse_duration
from zcron.cron import CronSchedule, is_cron_fields, local_timezone_name, parse_schedule, zone
from zcron.errors import ConfigError, ScheduleError

OWN_USER = "-"  # the cron.d user column for "the worker's own user"
NAME_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,200}\Z")
USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?\Z")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ENV_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)\Z")
_NAME_COMMENT = re.compile(r"#\s*name:\s*(.*?)\s*\Z")
_IGNORED = re.compile(r"^\.|~$|\.swp$|\.bak$|\.dpkg-[^.]*$|\.rpm[^.]*$")
_TOML_HEADER = re.compile(r"\s*\[\[?\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?\Z")
_TOML_ERROR_LINE = re.compile(r"\s*\(at line (\d+), column \d+\)\s*\Z")
_UNESCAPED_PERCENT = re.compile(r"(?<!\\)%")
CHOICES = {
    "on_timeout": ("kill", "alert"),
    "overlap": ("allow", "forbid", "replace"),
    "catch_up": ("none", "last", "all"),
}


@dataclass(frozen=True)
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
    # Parsed from schedule and timezone when not given; raises ValueError if they are bad.
    cron: CronSchedule = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.cron is None:
            object.__setattr__(self, "cron", parse_schedule(self.schedule, self.timezone))

    def next_after(self, t: float) -> float | None:
        """The first fire instant strictly after `t` (Unix seconds); None if none is left."""
        return self.cron.next_after(t)


@dataclass
class LoadResult:
    """Jobs by name, every error found, and whether the job set changed since the last load.

    `warnings` name lines that load but that zcron reads differently from cron.
    """

    jobs: dict[str, Job]
    errors: list[ScheduleError]
    changed: bool
    warnings: list[ScheduleError] = field(default_factory=list)


class ScheduleDir:
    """A schedule directory; each load keeps a broken file's last good version in force."""

    def __init__(self, directory: str):
        self.directory = directory
        self.jobs: dict[str, Job] = {}
        self._good: dict[str, list[Job]] = {}
        self._digest: str | None = None

    def load(self) -> LoadResult:
        """(Re)read every file of the directory."""
        try:
            paths = schedule_files(self.directory)
        except OSError as exc:
            error = ScheduleError(self.directory, 0, f"cannot read directory: {exc.strerror}")
            return LoadResult(dict(self.jobs), [error], False)
        parsed, warnings = _parse_files_warning(paths)
        self._good = {
            path: jobs if not errors else self._good[path]
            for path, (jobs, errors) in parsed.items()
            if not errors or path in self._good
        }
        self.jobs, duplicates = merge_jobs(self._good.items())
        new_digest = digest(self.jobs)
        changed, self._digest = new_digest != self._digest, new_digest
        errors = [e for _, file_errors in parsed.values() for e in file_errors]
        return LoadResult(dict(self.jobs), errors + duplicates, changed, warnings)


def load_paths(paths: list[str]) -> LoadResult:
    """Read schedule files and directories (for `zcron check`); broken files add no jobs."""
    files: list[str] = []
    errors: list[ScheduleError] = []
    for path in paths:
        try:
            files.extend(schedule_files(path) if os.path.isdir(path) else [path])
        except OSError as exc:
            errors.append(ScheduleError(path, 0, f"cannot read directory: {exc.strerror}"))
    parsed, warnings = _parse_files_warning(files)
    good = [(path, jobs) for path, (jobs, file_errors) in parsed.items() if not file_errors]
    jobs, duplicates = merge_jobs(good)
    errors += [e for _, file_errors in parsed.values() for e in file_errors]
    return LoadResult(jobs, errors + duplicates, True, warnings)


def schedule_files(directory: str) -> list[str]:
    """The files of a schedule directory that are read, in lexical order."""
    names = sorted(os.listdir(directory))
    paths = (os.path.join(directory, name) for name in names if not is_ignored(name))
    return [path for path in paths if os.path.isfile(path)]


def is_ignored(filename: str) -> bool:
    """Whether cron would skip this file name (dot files, editor and package-manager leftovers)."""
    return bool(_IGNORED.search(os.path.basename(filename)))


def parse_files(paths: Iterable[str]) -> dict[str, tuple[list[Job], list[ScheduleError]]]:
    """Each file's jobs and errors, in the given order."""
    return _parse_files_warning(paths)[0]


def parse_file(path: str, default_tz: str) -> tuple[list[Job], list[ScheduleError]]:
    """One file's jobs and errors; the format follows the extension."""
    jobs, errors, _ = _parse_file_warning(path, default_tz)
    return jobs, errors


def _parse_files_warning(
    paths: Iterable[str],
) -> tuple[dict[str, tuple[list[Job], list[ScheduleError]]], list[ScheduleError]]:
    """Each file's jobs and errors, in the given order, and the warnings of all of them."""
    default_tz = local_timezone_name()
    parsed, warnings = {}, []
    for path in paths:
        jobs, errors, file_warnings = _parse_file_warning(path, default_tz)
        parsed[path] = jobs, errors
        warnings += file_warnings
    return parsed, warnings


def _parse_file_warning(
    path: str, default_tz: str
) -> tuple[list[Job], list[ScheduleError], list[ScheduleError]]:
    try:
        text = _read_text(path)
        if path.endswith(".toml"):
            return *parse_toml(path, text, default_tz), []
        reader = read_crond(path, text, default_tz)
        return reader.jobs, reader.errors, reader.warnings
    except ScheduleError as exc:
        return [], [exc], []
    except Exception as exc:  # a hostile file must never stop a scheduler
        return [], [ScheduleError(path, 0, f"cannot parse: {exc!r}")], []


def merge_jobs(
    files: Iterable[tuple[str, list[Job]]],
) -> tuple[dict[str, Job], list[ScheduleError]]:
    """All jobs by name; a later definition of a name is dropped and reported."""
    jobs: dict[str, Job] = {}
    errors = []
    for _, file_jobs in files:
        for job in file_jobs:
            first = jobs.setdefault(job.name, job)
            if first is not job:
                path, line = _split_source(job.source)
                message = f'job "{job.name}" also defined at {first.source} (this one is ignored)'
                errors.append(ScheduleError(path, line, message))
    return jobs, errors


def digest(jobs: dict[str, Job]) -> str:
    """A short stable digest of what the jobs do (where they are written does not count)."""
    canonical = [
        [[f.name, getattr(job, f.name)] for f in fields(Job) if f.compare and f.name != "source"]
        for job in sorted(jobs.values(), key=lambda j: j.name)
    ]
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def to_wire(job: Job) -> dict:
    """A msgpack-able summary of a job."""
    return {
        "name": job.name,
        "schedule": job.schedule,
        "timezone": job.timezone,
        "pool": job.pool,
        "enabled": job.enabled,
        "source": job.source,
    }


def _read_text(path: str) -> str:
    # errors about a file as a whole carry line 0
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ScheduleError(path, 0, f"cannot read: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ScheduleError(path, line, "not valid UTF-8 text") from None


def _split_source(source: str) -> tuple[str, int]:
    path, _, line = source.rpartition(":")
    return path, int(line)


# cron.d format


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
        self.shell = "/bin/sh"
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
            raise self.error(number, f"bad job name {match.group(1)!r}: {_NAME_RULE}")
        return match.group(1)

    def set_variable(self, number: int, key: str, value: str) -> None:
        if "\0" in value:
            raise self.error(number, f"{key}: the value contains a NUL character")
        if key in ("CRON_TZ", "TZ"):
            self.timezone = self.zone_name(number, key, value.lstrip(":"))
        self.warn_variable(number, key, value)
        if key == "SHELL":
            if not value:
                raise self.error(number, "SHELL: expected the path of a shell, e.g. /bin/bash")
            self.shell = value
        self.env[key] = value

    def warn_variable(self, number: int, key: str, value: str) -> None:
        if key == "MAILTO" and value:
            self.warn(number, "MAILTO: zcron sends no mail; output is in the run records")
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
            schedule=schedule,
            timezone=self.timezone,
            command=command,
            source=f"{self.path}:{number}",
            shell=self.shell,
            user=None if user == OWN_USER else user,
            env=tuple(sorted(self.env.items())),
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


_NAME_RULE = "use 1-200 characters of A-Z a-z 0-9 _ . : @ -"
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


# TOML format


def parse_toml(path: str, text: str, default_tz: str) -> tuple[list[Job], list[ScheduleError]]:
    """Jobs and errors of a TOML file: one table per job, named by the table."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [], [_toml_syntax_error(path, text, str(exc))]
    except RecursionError:
        return [], [ScheduleError(path, 1, "TOML nested too deeply")]
    lines = _TomlLines(text)
    jobs: list[Job] = []
    errors: list[ScheduleError] = []
    for name, table in doc.items():
        job, job_errors = _toml_job(path, name, table, lines, default_tz)
        errors.extend(job_errors)
        if job is not None:
            jobs.append(job)
    return jobs, errors


def _toml_syntax_error(path: str, text: str, message: str) -> ScheduleError:
    match = _TOML_ERROR_LINE.search(message)
    if match:
        return ScheduleError(path, int(match.group(1)), message[: match.start()])
    return ScheduleError(path, text.count("\n") + 1, message)


def _toml_job(
    path: str, name: str, table: Any, lines: _TomlLines, default_tz: str
) -> tuple[Job | None, list[ScheduleError]]:
    """One job table → a Job, or every error in it."""
    header = lines.line_of(name)
    if not isinstance(table, dict):
        message = f"{name!r} is not a job table: write [{name}] with its keys on the lines below"
        return None, [ScheduleError(path, header, message)]
    errors = []
    if not NAME_RE.match(name):
        errors.append(ScheduleError(path, header, f"bad job name {name!r}: {_NAME_RULE}"))
    values = {}
    for key, value in table.items():
        try:
            values[key] = _toml_value(key, value)
        except ValueError as exc:
            errors.append(ScheduleError(path, lines.line_of(name, key), f"[{name}] {key}: {exc}"))
    errors += [
        ScheduleError(path, header, f"[{name}] has no {key} (it is required)")
        for key in ("schedule", "command")
        if key not in table
    ]
    bad_zone = "timezone" in table and "timezone" not in values
    values.setdefault("timezone", default_tz)
    if "schedule" in values and not bad_zone:
        try:
            values["cron"] = parse_schedule(values["schedule"], values["timezone"])
        except ValueError as exc:
            line = lines.line_of(name, "schedule")
            errors.append(ScheduleError(path, line, f"[{name}] schedule: {exc}"))
    if errors:
        return None, errors
    return Job(name=name, source=f"{path}:{header}", **values), []


def _toml_value(key: str, value: Any) -> Any:
    """A TOML key's value checked and converted; ValueError says what is allowed."""
    check = _TOML_KEYS.get(key)
    if check is None:
        raise ValueError(f"unknown key (known: {', '.join(_TOML_KEYS)})")
    return check(value)


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    if "\0" in value:
        raise ValueError("the string contains a NUL character")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"expected a name ({_NAME_RULE}), got {value!r}")
    return value


def _user(value: Any) -> str:
    if not isinstance(value, str) or not USER_RE.match(value):
        raise ValueError(f'expected a user name like "backup", got {value!r}')
    return value


def _timezone(value: Any) -> str:
    zone(_string(value))
    return value


def _duration(value: Any) -> float:
    try:
        seconds = parse_duration(value, "duration")
    except ConfigError:
        seconds = math.nan
    if not math.isfinite(seconds):
        raise ValueError(f'expected a duration like "250ms", "30s", "5m", "2h", got {value!r}')
    return seconds


def _timeout(value: Any) -> float:
    seconds = _duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero, got {value!r}")
    return seconds


_SIZE = re.compile(r"([0-9]+)([KMGT]?)\Z")


def _size(value: Any) -> int:
    """Bytes from a whole number or a size like "64K", "512M", "2G" (powers of 1024)."""
    match = _SIZE.match(value.strip().upper()) if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif match:
        size = int(match.group(1)) << (10 * " KMGT".index(match.group(2) or " "))
    else:
        raise ValueError(f'expected a size like "64K", "512M", "2G" or bytes, got {value!r}')
    if size <= 0:
        raise ValueError(f"expected a size above zero, got {value!r}")
    return size


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _retries(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def _choice(key: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in CHOICES[key]:
            raise ValueError(f"expected one of {', '.join(CHOICES[key])}, got {value!r}")
        return value

    return check


def _command(value: Any) -> str | tuple[str, ...]:
    if isinstance(value, str):
        return _string(value)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a string (run by the shell) or a list of strings: {value!r}")
    if not value[0] or any("\0" in v for v in value):
        raise ValueError("the program (first item) must be non-empty, and no item may hold NUL")
    return tuple(value)


def _env(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError(f'expected a table of NAME = "value", got {value!r}')
    for name, text in value.items():
        if not ENV_NAME_RE.match(name) or not isinstance(text, str) or "\0" in text:
            raise ValueError(f'{name}: expected NAME = "value" (a string), got {text!r}')
    return tuple(sorted(value.items()))


_TOML_KEYS: dict[str, Callable[[Any], Any]] = {
    "schedule": _string,
    "command": _command,
    "user": _user,
    "pool": _name,
    "timezone": _timezone,
    "timeout": _timeout,
    "on_timeout": _choice("on_timeout"),
    "retries": _retries,
    "retry_delay": _duration,
    "overlap": _choice("overlap"),
    "catch_up": _choice("catch_up"),
    "misfire_grace": _duration,
    "quorum": _bool,
    "jitter": _duration,
    "cwd": _string,
    "env": _env,
    "enabled": _bool,
    "shell": _string,
    "memory_max": _size,
}


class _TomlLines:
    """Line numbers of tables and keys in TOML text (tomllib reports no positions)."""

    def __init__(self, text: str):
        self.lines = text.split("\n")
        self.headers: dict[str, int] = {}
        for number, line in enumerate(self.lines, 1):
            match = _TOML_HEADER.match(line)
            if match:
                self.headers.setdefault(_bare_key(match.group(1)), number)

    def line_of(self, table: str, key: str | None = None) -> int:
        """The line of `[table]` (or of `key` inside it); the nearest known line otherwise."""
        start = self.headers.get(table)
        if start is None:
            return self._key_line(1, table) or 1
        if key is None:
            return start
        return self._key_line(start + 1, key) or start

    def _key_line(self, start: int, key: str) -> int | None:
        quoted = re.escape(key)
        pattern = re.compile(rf"\s*(?:{quoted}|\"{quoted}\"|'{quoted}')\s*[=.]")
        for number in range(start, len(self.lines) + 1):
            line = self.lines[number - 1]
            if pattern.match(line):
                return number
            if _TOML_HEADER.match(line):
                return None
        return None


def _bare_key(key: str) -> str:
    key = key.strip()
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'":
        return key[1:-1]
    return key
