"""The client commands: check, next, run, push, cancel, pause, resume, status, runs, keygen."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from zoneinfo import ZoneInfo

import zmq

from zcron import clock, protocol
from zcron.auth import Security, write_keypair
from zcron.config import Config, load_config, parse_duration
from zcron.errors import ConfigError, ProtocolError, ScheduleError, ZcronError
from zcron.job import Job
from zcron.net import make_socket
from zcron.schedule import load_paths

REQUEST_TIMEOUT_MS = 2000


def _iso(instant: float, tz: str) -> str:
    return datetime.fromtimestamp(instant, ZoneInfo(tz)).isoformat(timespec="seconds")


def fire_times(job: Job, count: int, after: float) -> list[float]:
    times: list[float] = []
    instant: float | None = after
    while len(times) < count and (instant := job.next_after(instant)) is not None:
        times.append(instant)
    return times


def cmd_check(args: dict) -> int:
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


class SchedulerClient:
    """One connection to one scheduler for a series of requests, each answered before the
    next: the command line makes one; a program pushing many keeps it (a connection per
    request cost ~3 ms, most of a push)."""

    def __init__(self, config: Config, scheduler_id: str):
        self.scheduler_id = scheduler_id
        self.address = config.scheduler_address(scheduler_id)
        self.security = Security.for_client(config.cluster)
        self.sock = make_socket(zmq.Context.instance(), zmq.DEALER)
        try:
            self.security.client(self.sock, scheduler_id)
            self.sock.connect(self.address)
        except BaseException:
            self.close()
            raise

    def ask(self, op: str, args: dict) -> dict:
        """Send one request and return the reply (ZcronError when none comes in time)."""
        where = f"scheduler {self.scheduler_id} at {self.address}"
        self.sock.send(protocol.encode("request", op=op, args=args))
        if not self.sock.poll(REQUEST_TIMEOUT_MS):
            self.close()  # a late reply must not be taken for the next request's
            raise ZcronError(f"{where} did not answer{_why(self.security)}")
        try:
            kind, reply = protocol.decode(self.sock.recv())
        except ProtocolError as exc:
            raise ZcronError(f"{where}: bad reply: {exc}") from None
        if kind != "reply":
            raise ZcronError(f"{where}: unexpected {kind!r}")
        return reply

    def close(self) -> None:
        if not self.sock.closed:
            self.sock.close(linger=0)
            self.security.close()

    def __enter__(self) -> SchedulerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(config: Config, op: str, args: dict, scheduler_id: str) -> dict:
    """Send one request to one scheduler and return its reply (ZcronError when none)."""
    with SchedulerClient(config, scheduler_id) as client:
        return client.ask(op, args)


def _why(security: Security) -> str:
    if not security.handshake_failures:
        return ""
    return (
        f" (CURVE handshake failed: is {security.name}.key trusted there, "
        f"and is its public key in {security.keys_dir} current?)"
    )


def ask_any(
    config: Config, op: str, args: dict, refused: type[ZcronError] = ZcronError
) -> dict:
    """Ask the schedulers in turn until one accepts the request; when none does, raise
    `refused` if one answered (with its reason), else ZcronError (none reachable)."""
    errors, answered = [], False
    for sid in config.cluster.schedulers:
        try:
            reply = request(config, op, args, sid)
        except ZcronError as exc:
            errors.append(str(exc))
            continue
        if reply["ok"]:
            return reply["body"]
        answered = True
        errors.append(f"scheduler {sid}: {reply['error']}")
    raise (refused if answered else ZcronError)("; ".join(errors))


def cmd_run(args: dict) -> int:
    config = load_config(args.get("--config"))
    body = ask_any(config, "run", {"job": args["JOB"]})
    run = f" (run {body['run_id']})" if body.get("run_id") else ""
    print(f"fired {body['job']}{run} at {_iso(body['tick'], 'UTC')} ({body['tick']:.6f})")
    return 0


def parse_time(text: str, option: str) -> float:
    """Unix seconds, ISO 8601 (naive = UTC), or a duration meaning that long ago."""
    return clock.parse_time(option, text, time.time())


def cmd_push(args: dict) -> int:
    config = load_config(args.get("--config"))
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
    config = load_config(args.get("--config"))
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
    config = load_config(args.get("--config"))
    body = ask_any(config, op, {"job": args["JOB"]}, refused=ConfigError)
    state = "paused" if body["paused"] else "resumed"
    print(f"{body['job']} {state} (since {body['at']}, by {body['by']})")
    return 0


def cmd_status(args: dict) -> int:
    config = load_config(args.get("--config"))
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
    config = load_config(args.get("--config"))
    params = {"limit": str(_positive_int(args.get("--limit") or "20", "--limit"))}
    if args.get("JOB"):
        params["job"] = args["JOB"]
    if args.get("--since"):
        params["since"] = f"{parse_time(args['--since'], '--since'):.6f}"
    if args.get("--status"):
        params["status"] = args["--status"]
    runs = _get_runs(f"http://{config.sink.http}/api/runs?{urllib.parse.urlencode(params)}")
    if args.get("--json"):
        for run in runs:
            print(json.dumps(run, sort_keys=True))
    else:
        print_runs(runs)
    return 0


def _get_runs(url: str) -> list[dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            runs = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        try:
            body = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            pass
        # 400: the sink did not accept our arguments, a usage error (exit 2).
        error = ConfigError if exc.code == 400 else ZcronError
        raise error(f"{url}: HTTP {exc.code}: {body}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ZcronError(f"cannot reach the sink at {url}: {exc}") from None
    return runs


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
    public, secret = write_keypair(args["DIR"], args["NAME"])
    print(f"wrote {public} and {secret}")
    return 0
