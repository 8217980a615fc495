"""The TOML schedule format (spec §3): one table per job, every key validated, errors at
file:line."""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable
from typing import Any

from zcron.config import parse_duration
from zcron.cron import parse_schedule, zone
from zcron.errors import ConfigError, ScheduleError, did_you_mean, toml_position
from zcron.job import CHOICES, ENV_NAME_RE, NAME_RE, NAME_RULE, USER_RE, Job, mailto_problem

_TOML_HEADER = re.compile(r"\s*\[\[?\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?\Z")


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
    """`file:line:column: message`; an error at the end of the file is on its last line."""
    message, line, column = toml_position(message)
    if line is None:
        return ScheduleError(path, text.count("\n") + 1, message)
    return ScheduleError(path, line, message, column)


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
        errors.append(ScheduleError(path, header, f"bad job name {name!r}: {NAME_RULE}"))
    values = {}
    for key, value in table.items():
        try:
            values[key] = _toml_value(key, value)
        except ValueError as exc:
            errors.append(ScheduleError(path, lines.line_of(name, key), f"[{name}] {key}: {exc}"))
    errors += _required_keys(path, name, table, header, lines)
    bad_zone = "timezone" in table and "timezone" not in values
    values.setdefault("timezone", default_tz)
    if "after" in table:
        values.setdefault("schedule", "")  # chained: no instants of its own
    if "schedule" in values and not bad_zone and "after" not in table:
        try:
            values["cron"] = parse_schedule(values["schedule"], values["timezone"])
        except ValueError as exc:
            line = lines.line_of(name, "schedule")
            errors.append(ScheduleError(path, line, f"[{name}] schedule: {exc}"))
    if errors:
        return None, errors
    return Job(name=name, source=f"{path}:{header}", **values), []


def _required_keys(
    path: str, name: str, table: dict, header: int, lines: _TomlLines
) -> list[ScheduleError]:
    """`command` always; `schedule` unless the job is chained (`after`), which has none."""
    if "after" in table and "schedule" in table:
        line = lines.line_of(name, "schedule")
        why = "a chained job (after) has no schedule: its parents' ticks fire it"
        return [ScheduleError(path, line, f"[{name}] schedule: {why}")]
    needed = ("command",) if "after" in table else ("schedule", "command")
    return [
        ScheduleError(path, header, f"[{name}] has no {key} (it is required)")
        for key in needed
        if key not in table
    ]


def _toml_value(key: str, value: Any) -> Any:
    """A TOML key's value checked and converted; ValueError says what is allowed."""
    check = _TOML_KEYS.get(key)
    if check is None:
        known = ", ".join(_TOML_KEYS)
        raise ValueError(f"unknown key{did_you_mean(key, _TOML_KEYS)} (known: {known})")
    return check(value)


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    if "\0" in value:
        raise ValueError("the string contains a NUL character")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"expected a name ({NAME_RULE}), got {value!r}")
    return value


def _user(value: Any) -> str:
    if not isinstance(value, str) or not USER_RE.match(value):
        raise ValueError(f'expected a user name like "backup", got {value!r}')
    return value


def _mailto(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected addresses like "ops@example.com" ("" = never), got {value!r}')
    if (problem := mailto_problem(value)) is not None:
        raise ValueError(problem)
    return value


MAX_PARENTS = 64


def _after(value: Any) -> tuple[str, ...]:
    """The parents of a chained job: 1 to MAX_PARENTS distinct job names."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_PARENTS:
        raise ValueError(f'expected a list of 1 to {MAX_PARENTS} job names, got {value!r}')
    names = tuple(_name(v) for v in value)
    if len(set(names)) != len(names):
        raise ValueError(f"a parent is listed twice in {value!r}")
    return names


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
    "mailto": _mailto,
    "after": _after,
    "on_failure": _command,
}
