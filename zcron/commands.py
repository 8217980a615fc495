"""The client commands: check, next, run, push, cancel, pause, resume, status, runs, keygen."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from zcron.configfile import load_client_config, parse_duration
from zcron.errors import ConfigError, ZcronError

if TYPE_CHECKING:
    from zcron.errors import ScheduleError
    from zcron.job import Job

# What a command needs is imported in it: `zcron push` and `status` start in ~50 ms
# instead of ~160, `runs` in ~40 (python -X importtime: ZeroMQ, the schedule parsers,
# urllib, zoneinfo, logging and the CURVE server side load only where used, and the client
# commands read the configuration with zcron.configfile, not zcron.config's dataclasses;
# checked by tests/integration/test_cli_imports.py).


def _iso(instant: float, tz: str) -> str:
    from datetime import UTC, datetime

    if tz == "UTC":  # what push, cancel and runs print: no zoneinfo to load
        return datetime.fromtimestamp(instant, UTC).isoformat(timespec="seconds")
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(instant, ZoneInfo(tz)).isoformat(timespec="seconds")


def fire_times(job: Job, count: int, after: float) -> list[float]:
    times: list[float] = []
    instant: float | None = after
    while len(times) < count and (instant := job.next_after(instant)) is not None:
        times.append(instant)
    return times


def cmd_check(args: dict) -> int:
    import json

    from zcron.config import load_config
    from zcron.schedule import load_paths

    config = load_config(args.get("--config"))
    paths = args.get("PATH") or [config.scheduler.schedules]
    result = load_paths(paths)
    now = time.time()
    jobs = sorted(result.jobs.values(), key=job_place)
    if args.get("--json"):
        for job in jobs:
            print(json.dumps(job_json(job, fire_times(job, 3, now))))
        for kind, problems in (("error", result.errors), ("warning", result.warnings)):
            for problem in problems:
                print(json.dumps(problem_json(kind, problem)))
        return 2 if result.errors else 0
    for job in jobs:
        nexts = ", ".join(_iso(t, job.timezone) for t in fire_times(job, 3, now)) or "never"
        if job.after:
            nexts = f"after {', '.join(job.after)}"
        print(f"{job.source}  {job.name}  [{job.schedule}] {job.timezone}  next: {nexts}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    counts = f"{len(result.jobs)} jobs, {len(result.errors)} errors"
    print(f"{counts}, {len(result.warnings)} warnings", file=sys.stderr)
    return 2 if result.errors else 0


def job_place(job: Job) -> tuple[str, int]:
    """(file, line) where the job is written."""
    path, _, line = job.source.rpartition(":")
    return path, int(line) if line.isdigit() else 0


def job_json(job: Job, instants: list[float]) -> dict:
    """A job as `check --json` and `next --json` print it (instants in UTC seconds)."""
    path, line = job_place(job)
    return {
        "kind": "job",
        "job": job.name,
        "file": path,
        "line": line,
        "schedule": job.schedule,
        "timezone": job.timezone,
        "next": instants,
        **({"after": list(job.after)} if job.after else {}),
    }


def problem_json(kind: str, problem: ScheduleError) -> dict:
    return {"kind": kind, "file": problem.path, "line": problem.line, "message": problem.message}


def cmd_next(args: dict) -> int:
    import json

    from zcron.config import load_config
    from zcron.schedule import load_paths

    config = load_config(args.get("--config"))
    count = _positive_int(args.get("-n") or "5", "-n")
    result = load_paths([config.scheduler.schedules])
    names = [args["JOB"]] if args.get("JOB") else sorted(result.jobs)
    if args.get("JOB") and args["JOB"] not in result.jobs:
        raise ConfigError(f"no job named {args['JOB']!r} in {config.scheduler.schedules}")
    now = time.time()
    for name in names:
        job = result.jobs[name]
        instants = fire_times(job, count, now)
        if args.get("--json"):
            print(json.dumps(job_json(job, instants)))
            continue
        print(f"{name}  [{job.schedule}] {job.timezone}")
        for instant in instants:
            print(f"  {_iso(instant, job.timezone)}  {_iso(instant, 'UTC')}  {instant:.0f}")
    return 0


def _positive_int(text: str, option: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{option}: expected a whole number >= 1, got {text!r}")
    return value


def cmd_run(args: dict) -> int:
    from zcron.client import ask_any

    config = load_client_config(args.get("--config"))
    body = ask_any(config, "run", {"job": args["JOB"]})
    run = f" (run {body['run_id']})" if body.get("run_id") else ""
    print(f"fired {body['job']}{run} at {_iso(body['tick'], 'UTC')} ({body['tick']:.6f})")
    return 0


def parse_time(text: str, option: str) -> float:
    """Unix seconds, ISO 8601 (naive = UTC), or a duration meaning that long ago."""
    from zcron import clock

    return clock.parse_time(option, text, time.time())


def cmd_push(args: dict) -> int:
    from zcron.client import ask_any

    config = load_client_config(args.get("--config"))
    at = time.time()
    if args.get("--at"):
        at = parse_time(args["--at"], "--at")
    elif args.get("--in"):
        at += parse_duration(args["--in"], "--in")
    timeout = parse_duration(args["--timeout"], "--timeout") if args.get("--timeout") else None
    if not args.get("COMMAND"):
        raise ConfigError("push: give the command after --")
    body = ask_any(
        config,
        "push",
        {
            "command": args["COMMAND"],
            "pool": args.get("--pool") or "default",
            "at": at,
            "timeout": timeout,
            "user": args.get("--user"),
        },
    )
    user = f" as {body['user']}" if body.get("user") else ""
    print(f"pushed {body['job']} (run {body['run_id']}){user} for {_iso(body['tick'], 'UTC')}")
    return 0


def cmd_cancel(args: dict) -> int:
    from zcron.client import ask_any

    config = load_client_config(args.get("--config"))
    body = ask_any(config, "cancel", {"run_id": args["RUN_ID"]})
    print(f"cancelled run {body['run_id']} of {body['job']} ({body['cancelled']})")
    return 0


def cmd_pause(args: dict) -> int:
    return _set_paused(args, "pause")


def cmd_resume(args: dict) -> int:
    return _set_paused(args, "resume")


def _set_paused(args: dict, op: str) -> int:
    """Pause or resume a job on every scheduler (one takes it and tells the others). A job
    no scheduler knows, or a key that may not, is exit 2; no scheduler reachable, exit 1."""
    from zcron.client import ask_any

    config = load_client_config(args.get("--config"))
    body = ask_any(config, op, {"job": args["JOB"]}, refused=ConfigError)
    state = "paused" if body["paused"] else "resumed"
    print(f"{body['job']} {state} (since {body['at']}, by {body['by']})")
    return 0


def cmd_status(args: dict) -> int:
    import json

    from zcron.client import request

    config = load_client_config(args.get("--config"))
    views = {}
    for sid in config.cluster.schedulers:
        try:
            reply = request(config, "status", {}, sid)
            views[sid] = {"state": "live", **(reply["body"] or {})}
        except ConfigError:
            raise  # our own key or config is wrong: exit 2, not "unreachable"
        except ZcronError as exc:
            views[sid] = {"state": "dead", "error": str(exc)}
    if args.get("--json"):
        print(json.dumps({"schedulers": views}, sort_keys=True))
    else:
        _print_status(views)
    return 0 if any(v["state"] == "live" for v in views.values()) else 1


def _print_status(views: dict) -> None:
    digests = {v.get("digest") for v in views.values() if v["state"] == "live"}
    for sid, view in views.items():
        if view["state"] != "live":
            print(f"scheduler {sid}: unreachable ({view['error']})")
            continue
        agree = "agrees" if len(digests) == 1 else "DIFFERS"
        firing = "firing" if view.get("eligible", True) else f"NOT firing: {view['reason']}"
        print(
            f"scheduler {sid}: live, {firing}, owns {view.get('owned', '?')} of "
            f"{view['jobs']} jobs, digest {view['digest']} ({agree})"
        )
        for pid, peer in sorted(view.get("peers", {}).items()):
            offset = peer["clock_offset"]
            clock = f", clock {offset * 1000:+.1f}ms" if offset is not None else ""
            print(
                f"  sees {pid}: {peer['state']}{', eligible' if peer['eligible'] else ''}"
                f", digest {peer['digest'] or '-'}{clock}"
            )
        for pool, slots in sorted(view["pools"].items()):
            print(
                f"  pool {pool}: {slots['workers']} workers, {slots['free']}/{slots['slots']} "
                "slots free"
            )
        for error in view.get("errors", []):
            print(f"  schedule error: {error}")
    _print_paused(views)


def _print_paused(views: dict) -> None:
    """Paused jobs, as the live schedulers report them (they agree within a heartbeat)."""
    paused: dict[str, dict] = {}
    for view in views.values():
        paused.update(view.get("paused", {}) if view["state"] == "live" else {})
    for job, entry in sorted(paused.items()):
        print(f"paused: {job} (since {_iso(entry['since'], 'UTC')}, by {entry['by']})")


def cmd_runs(args: dict) -> int:
    from urllib.parse import urlencode

    config = load_client_config(args.get("--config"))
    params = {"limit": str(_positive_int(args.get("--limit") or "20", "--limit"))}
    if args.get("JOB"):
        params["job"] = args["JOB"]
    if args.get("--since"):
        params["since"] = f"{parse_time(args['--since'], '--since'):.6f}"
    if args.get("--status"):
        params["status"] = args["--status"]
    runs = _get_runs(config.sink.http, f"/api/runs?{urlencode(params)}")
    if args.get("--json"):
        import json

        for run in runs:
            print(json.dumps(run, sort_keys=True))
    else:
        print_runs(runs)
    return 0


def _get_runs(http: str, path: str) -> list[dict]:
    import json

    from zcron.sinkapi import ApiError, get_json

    url = f"http://{http}{path}"
    try:
        return get_json(http, path)
    except ApiError as exc:
        body = exc.body
        try:
            body = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            pass
        # 400: the sink did not accept our arguments, a usage error (exit 2).
        error = ConfigError if exc.code == 400 else ZcronError
        raise error(f"{url}: HTTP {exc.code}: {body}") from None
    except (OSError, ValueError) as exc:
        raise ZcronError(f"cannot reach the sink at {url}: {exc}") from None


RUNS_HEADER = ("TICK (UTC)", "STATUS", "LATE", "TOOK", "JOB", "WORKER", "RUN")


def print_runs(runs: list[dict]) -> None:
    """A header line, then one aligned line per run."""
    rows = [RUNS_HEADER, *(_run_row(run) for run in runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(RUNS_HEADER) - 1)]
    for row in rows:
        cells = [
            cell.rjust(width) if i in (2, 3) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        print("  ".join([*cells, row[-1]]))


def _run_row(run: dict) -> tuple[str, ...]:
    started, finished = run.get("started"), run.get("finished")
    late = f"{(started - run['tick']) * 1000:.1f}ms" if started else "-"
    took = f"{(finished - started) * 1000:.1f}ms" if finished and started else "-"
    return (
        _iso(run["tick"], "UTC"),
        run["status"],
        late,
        took,
        run["job"],
        run.get("worker") or "-",
        run["run_id"],
    )


def cmd_keygen(args: dict) -> int:
    from zcron.auth import write_keypair

    public, secret = write_keypair(args["DIR"], args["NAME"])
    print(f"wrote {public} and {secret}")
    return 0
