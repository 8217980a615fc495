"""Chained jobs (`after`): the graph of parents and children, checked across all files.

A chained job whose parent is not defined, or that lies on a cycle, is an error at its
`file:line` and is not loaded (its own children then name an undefined parent, and so on),
so a bad chain never fires and the rest of the schedule stays in force (spec §3).
"""

from __future__ import annotations

from collections.abc import Mapping

from zcron.errors import ScheduleError
from zcron.job import HOOK_SUFFIX, Job


def children_of(jobs: Mapping[str, Job]) -> dict[str, tuple[str, ...]]:
    """Parent name -> the chained jobs that list it, in name order."""
    children: dict[str, list[str]] = {}
    for job in sorted(jobs.values(), key=lambda j: j.name):
        for parent in job.after:
            children.setdefault(parent, []).append(job.name)
    return {parent: tuple(names) for parent, names in children.items()}


def check_chains(jobs: dict[str, Job]) -> tuple[dict[str, Job], list[ScheduleError]]:
    """The jobs whose chains are sound, and an error for each one that is not."""
    errors = [_error(job, f'job "{job.name}": names ending in {HOOK_SUFFIX} are kept for '
                     "failure hooks") for job in jobs.values() if job.name.endswith(HOOK_SUFFIX)]
    good = {name: job for name, job in jobs.items() if not name.endswith(HOOK_SUFFIX)}
    for job in on_cycles(good):
        errors.append(_error(job, f'job "{job.name}": after = {list(job.after)} makes a cycle '
                             "(a job would wait for itself); it is not loaded"))
        del good[job.name]
    while bad := [j for j in good.values() if any(p not in good for p in j.after)]:
        for job in bad:
            missing = next(p for p in job.after if p not in good)
            errors.append(_error(job, f'job "{job.name}": after names "{missing}", which is not '
                                 "a loaded job; it is not loaded"))
            del good[job.name]
    return good, errors


def on_cycles(jobs: Mapping[str, Job]) -> list[Job]:
    """The jobs that lie on a cycle of `after` (each found by a depth-first walk)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cyclic: set[str] = set()
    for start in sorted(jobs):
        stack = [(start, iter(_parents(jobs, start)))]
        path = [start]
        state[start] = state.get(start) or 1
        if state[start] == 2:
            continue
        while stack:
            name, parents = stack[-1]
            parent = next(parents, None)
            if parent is None:
                state[name] = 2
                stack.pop()
                path.pop()
            elif state.get(parent) == 1:
                cyclic.update(path[path.index(parent):])
            elif state.get(parent) is None:
                state[parent] = 1
                path.append(parent)
                stack.append((parent, iter(_parents(jobs, parent))))
    return [jobs[name] for name in sorted(cyclic)]


def _parents(jobs: Mapping[str, Job], name: str) -> tuple[str, ...]:
    return tuple(p for p in jobs[name].after if p in jobs)


def _error(job: Job, message: str) -> ScheduleError:
    path, _, line = job.source.rpartition(":")
    return ScheduleError(path, int(line) if line.isdigit() else 0, message)
