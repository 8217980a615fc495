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
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from zcron.chains import check_chains
from zcron.cron import local_timezone_name
from zcron.crontab import read_crond
from zcron.errors import ScheduleError
from zcron.filetrust import untrusted
from zcron.job import Job
from zcron.tomljobs import parse_toml

_IGNORED = re.compile(r"^\.|~$|\.swp$|\.bak$|\.dpkg-[^.]*$|\.rpm[^.]*$")


@dataclass
class LoadResult:
    """Jobs by name, every error found, whether the job set changed since the last load,
    and its digest.

    `warnings` name lines that load but that zcron reads differently from cron. `appeared`
    holds the errors that were not there at the previous load, each saying what zcron does
    about it (a daemon logs these, so a file that stays broken is logged once).
    """

    jobs: dict[str, Job]
    errors: list[ScheduleError]
    changed: bool
    digest: str
    warnings: list[ScheduleError] = field(default_factory=list)
    appeared: list[str] = field(default_factory=list)


class ScheduleDir:
    """A schedule directory; each load keeps a broken file's last good version in force."""

    def __init__(self, directory: str):
        self.directory = directory
        self.jobs: dict[str, Job] = {}
        self._good: dict[str, list[Job]] = {}
        self._digest: str | None = None
        self._reported: set[str] = set()

    def load(self) -> LoadResult:
        """(Re)read every file of the directory."""
        try:
            why = untrusted(os.stat(self.directory), "directory")
            paths = schedule_files(self.directory) if why is None else []
        except OSError as exc:
            why = f"cannot read directory: {exc.strerror}"
        if why is not None:
            error = ScheduleError(self.directory, 0, why)
            said = [f"{error} (the jobs loaded before stay in force)"]
            result = LoadResult(dict(self.jobs), [error], False, digest(self.jobs))
            result.appeared = self._appeared(said)
            return result
        parsed, warnings = _parse_files_warning(paths)
        had_good = set(self._good)
        self._good = {
            path: jobs if not errors else self._good[path]
            for path, (jobs, errors) in parsed.items()
            if not errors or path in self._good
        }
        self.jobs, duplicates = merge_jobs(self._good.items())
        new_digest = digest(self.jobs)
        changed, self._digest = new_digest != self._digest, new_digest
        errors = [e for _, file_errors in parsed.values() for e in file_errors]
        said = [f"{e} {_consequence(e.path in had_good)}" for e in errors]
        result = LoadResult(dict(self.jobs), errors + duplicates, changed, new_digest, warnings)
        result.appeared = self._appeared(said + [str(e) for e in duplicates])
        return result

    def _appeared(self, messages: list[str]) -> list[str]:
        """The messages not reported at the previous load; they are the reported ones now."""
        new = [m for m in messages if m not in self._reported]
        self._reported = set(messages)
        return new


def _consequence(had_good_version: bool) -> str:
    if had_good_version:
        return "(the file's last good version stays in force)"
    return "(no job of this file is loaded until it is fixed)"


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
    return LoadResult(jobs, errors + duplicates, True, digest(jobs), warnings)


def schedule_files(directory: str) -> list[str]:
    """The files of a schedule directory that are read, in lexical order."""
    names = sorted(os.listdir(directory))
    paths = (os.path.join(directory, name) for name in names if not is_ignored(name))
    return [path for path in paths if os.path.isfile(path)]


def is_ignored(filename: str) -> bool:
    """Whether cron would skip this file name (dot files, editor and package-manager leftovers)."""
    return bool(_IGNORED.search(os.path.basename(filename)))


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
    """All jobs by name; a later definition of a name is dropped and reported, and so is
    a chained job whose `after` names an unknown job or makes a cycle (chains.py)."""
    jobs: dict[str, Job] = {}
    errors = []
    for _, file_jobs in files:
        for job in file_jobs:
            first = jobs.setdefault(job.name, job)
            if first is not job:
                path, line = _split_source(job.source)
                message = (
                    f'job "{job.name}" also defined at {first.source}: this definition is '
                    "ignored, the rest of its file is loaded"
                )
                errors.append(ScheduleError(path, line, message))
    jobs, chain_errors = check_chains(jobs)
    return jobs, errors + chain_errors


def digest(jobs: dict[str, Job]) -> str:
    """A short stable digest of what the jobs do (where they are written does not count).

    The SHA-256 of one JSON list of [[field, value], ...] per job, by name; it is fed one
    job at a time, as the whole list of 100,000 jobs would take ~200 MB at once.
    """
    sha = hashlib.sha256()
    separator = b"["
    for job in sorted(jobs.values(), key=lambda j: j.name):
        row = [[name, getattr(job, name)] for name in _DIGEST_FIELDS]
        sha.update(separator + _CANONICAL_JSON.encode(row).encode())
        separator = b","
    sha.update(b"[]" if not jobs else b"]")
    return sha.hexdigest()[:16]


_DIGEST_FIELDS = tuple(f.name for f in fields(Job) if f.compare and f.name != "source")
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def to_wire(job: Job) -> dict:
    """A msgpack-able summary of a job."""
    return {
        "name": job.name,
        "schedule": job.schedule,
        "timezone": job.timezone,
        "pool": job.pool,
        "enabled": job.enabled,
        "source": job.source,
        **({"after": list(job.after)} if job.after else {}),
        **({"on_failure": True} if job.on_failure else {}),
    }


def _read_text(path: str) -> str:
    # errors about a file as a whole carry line 0
    try:
        with open(path, "rb") as source:  # the checks and the read are of the same file
            why = untrusted(os.fstat(source.fileno()))
            data = source.read() if why is None else b""
    except OSError as exc:
        raise ScheduleError(path, 0, f"cannot read: {exc.strerror}") from None
    if why is not None:
        raise ScheduleError(path, 0, why)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ScheduleError(path, line, "not valid UTF-8 text") from None


def _split_source(source: str) -> tuple[str, int]:
    path, _, line = source.rpartition(":")
    return path, int(line)


# cron.d format


# TOML format
