"""Process control on a real worker: cwd, env, timeouts, memory, output, users, cancel.

One sink, scheduler and worker serve the whole module; each test writes one TOML job that
fires once (at a chosen second of the hour) and reads its record from the sink.
"""

from __future__ import annotations

import calendar
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from tests.harness import Cluster, Processes, make_cluster, wait_until
from zcron.config import Config, WorkerConfig
from zcron.errors import ConfigError
from zcron.process import Refused, resolve_user
from zcron.worker import SPAWNERS, Worker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, int]]:
    """A running cluster, and its worker's pid."""
    root = tmp_path_factory.mktemp("worker")
    (root / "logs").mkdir()
    procs = Processes(root / "logs")
    cluster = make_cluster(root)
    try:
        procs.start("sink", "-c", str(cluster.config_path))
        procs.start("scheduler", "-c", str(cluster.config_path))
        worker = procs.start("worker", "-c", str(cluster.config_path), "--id", "w1")
        wait_until(lambda: cluster.get_json_or_none("/api/jobs") is not None, 15, "the sink")
        yield cluster, worker.pid
    finally:
        procs.stop_all()


def run_once(cluster: Cluster, name: str, body: str, within: float = 20) -> dict:
    """Fire a TOML job once, two seconds from now; its record once it has finished."""
    at = time.gmtime(math.ceil(time.time()) + 2)
    path = cluster.schedules / f"{name}.toml"
    path.write_text(
        f'[{name}]\nschedule = "{at.tm_sec} {at.tm_min} * * * *"\ntimezone = "UTC"\n{body}'
    )
    try:
        runs = wait_until(lambda: cluster.runs(job=name), within, f"a record of {name}")
    finally:
        path.unlink()
    assert len(runs) == 1 and runs[0]["tick"] == calendar.timegm(at), runs
    return runs[0]


def live_group(pgid: int) -> list[int]:
    """Processes of a process group that are still alive (zombies are dead)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def test_job_runs_in_its_cwd_with_its_env(cluster: tuple[Cluster, int], tmp_path: Path) -> None:
    body = f"""command = 'pwd; echo "$GREETING $ZCRON_JOB $ZCRON_ATTEMPT $ZCRON_WORKER"'
cwd = "{tmp_path}"
env = {{ GREETING = "hello" }}
"""
    rec = run_once(cluster[0], "cwd-env", body)
    assert rec["status"] == "ok", rec
    assert rec["stdout_tail"] == f"{tmp_path}\nhello cwd-env 1 w1\n"


def test_timeout_kill_leaves_nothing_of_a_group_that_traps_term(
    cluster: tuple[Cluster, int], tmp_path: Path
) -> None:
    leader = tmp_path / "leader"
    body = f"""command = '''echo $$ > {leader}; trap "" TERM
for i in 1 2 3; do sh -c 'trap "" TERM; sleep 60' & done; sleep 60'''
timeout = "1s"
on_timeout = "kill"
"""
    rec = run_once(cluster[0], "stubborn", body)
    assert rec["status"] == "timeout" and rec["signal"] == 9, rec
    assert 1 + 4 <= rec["finished"] - rec["started"] < 1 + 5 + 2  # timeout, TERM, grace, KILL
    assert live_group(int(leader.read_text())) == []


def test_timeout_alert_lets_the_run_finish_and_records_timeout(
    cluster: tuple[Cluster, int],
) -> None:
    body = 'command = "sleep 1.5; echo done"\ntimeout = "500ms"\non_timeout = "alert"\n'
    rec = run_once(cluster[0], "overrun", body)
    assert (rec["status"], rec["exit_code"], rec["stdout_tail"]) == ("timeout", 0, "done\n")
    assert rec["finished"] - rec["started"] >= 1.5


def test_worker_memory_stays_bounded_while_a_job_prints_a_gigabyte(
    cluster: tuple[Cluster, int],
) -> None:
    cluster_, worker_pid = cluster
    before = peak_rss_kib(worker_pid)
    rec = run_once(cluster_, "loud", 'command = "head -c 1G /dev/zero; echo end >&2"\n', 60)
    grown_kib = peak_rss_kib(worker_pid) - before
    assert rec["status"] == "ok", rec
    assert len(rec["stdout_tail"]) == 4096 and set(rec["stdout_tail"]) == {"\0"}
    assert rec["stderr_tail"] == "end\n"
    assert grown_kib < 20 * 1024, f"worker peak RSS grew by {grown_kib} KiB"


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the process's peak resident set size so far."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


@pytest.mark.skipif(os.getuid() != 0, reason="switching user needs root")
def test_root_worker_runs_the_job_as_its_user(cluster: tuple[Cluster, int]) -> None:
    rec = run_once(cluster[0], "as-nobody", 'command = "id -un"\nuser = "nobody"\n')
    assert (rec["status"], rec["stdout_tail"]) == ("ok", "nobody\n"), rec


def test_unknown_user_is_refused_with_the_reason(cluster: tuple[Cluster, int]) -> None:
    rec = run_once(cluster[0], "ghost", 'command = "true"\nuser = "zcron-no-such-user"\n')
    assert rec["status"] == "refused", rec
    assert "unknown user 'zcron-no-such-user'" in rec["stderr_tail"]


def spawner_pids(pid: int) -> list[int]:
    """The worker's spawner processes (zcron.spawner_process), from /proc: its child, and
    those that child forked."""
    def children(parent: int) -> list[int]:
        found = []
        for task in Path(f"/proc/{parent}/task").glob("*"):
            found += [int(c) for c in (task / "children").read_text().split()]
        return [c for c in found if b"zcron.spawner" in Path(f"/proc/{c}/cmdline").read_bytes()]

    return [c for first in children(pid) for c in (first, *children(first))]


def test_a_dead_spawner_stops_the_worker_with_exit_1_and_says_why(
    procs: Processes, tmp_path: Path
) -> None:
    config = make_cluster(tmp_path).config_path
    worker = procs.start("worker", "-c", str(config), "--id", "w-spawner")
    spawners = wait_until(lambda: len(spawner_pids(worker.pid)) == SPAWNERS and spawner_pids(
        worker.pid), 15, "the worker's spawners")  # fmt: skip
    os.kill(spawners[-1], signal.SIGKILL)  # the last: the first's fork when there are more
    assert worker.wait(15) == 1
    assert "spawner exited" in procs.log(worker)
    for other in spawners[:-1]:
        wait_until(lambda other=other: not Path(f"/proc/{other}").exists(), 15,
                   "the other spawners' exit")  # fmt: skip


def test_worker_not_root_refuses_another_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 65534)
    with pytest.raises(Refused, match="cannot run jobs as user 'root'"):
        resolve_user("root")


# -- the worker's handlers, driven by hand (no sockets to a scheduler) ---------------------


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    config = Config(worker=WorkerConfig(id="w9", spool=str(tmp_path / "spool")))
    worker = Worker(config)
    worker.sink = worker.ctx.socket(zmq.DEALER)  # connected nowhere: results stay spooled
    worker.announce = lambda **_: None  # type: ignore[method-assign]  # no scheduler to tell
    yield worker
    for run in list(worker.runs.by_id.values()):
        run.signal_group(signal.SIGKILL)
    worker.sink.close(linger=0)
    worker.run_fds.close()
    for spawner in worker.spawners.values():
        spawner.close()


def job_message(run_id: str, command: str, **values: object) -> dict:
    return {
        "run_id": run_id, "job": "j", "tick": time.time(), "attempt": 1, "scheduler": "a",
        "pool": "default", "command": command, "shell": "/bin/sh", "user": None, "env": {},
        "cwd": None, "timeout": None, "on_timeout": "kill", "dispatched": time.time(),
        **values,
    }  # fmt: skip


def step(worker: Worker) -> None:
    """One turn of the worker's loop, without its sockets."""
    worker.handle_ready(dict(worker.poller.poll(20)))
    worker.release_due_runs()
    worker.enforce_timeouts(time.monotonic())


def step_until(worker: Worker, condition: Callable[[], object], what: str) -> object:
    return wait_until(lambda: step(worker) or condition(), 10, what)


def test_cancel_kills_the_group_and_records_killed_with_the_reason(worker: Worker) -> None:
    command = "trap 'echo bye >&2; exit 3' TERM; echo trapped; sleep 60 & wait"
    worker.arm(job_message("r1", command))
    run = worker.runs.by_id["r1"]
    step_until(worker, lambda: run.tails[0].text() == "trapped\n", "the job's trap")
    worker.cancel("r1", "overlap = replace: a newer tick", time.monotonic())
    rec = step_until(worker, lambda: worker.spool.pending.get("r1"), "the record")
    assert (rec["status"], rec["exit_code"]) == ("killed", 3), rec
    assert rec["stderr_tail"].startswith("bye\n")
    assert rec["stderr_tail"].endswith("cancelled: overlap = replace: a newer tick\n")
    assert live_group(run.pid) == [] and worker.runs.by_id == {}


def test_cancel_of_a_parked_run_never_starts_it(worker: Worker, tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    worker.arm(job_message("r2", f"touch {mark}", tick=time.time() + 30))
    worker.cancel("r2", "replaced", time.monotonic())
    rec = step_until(worker, lambda: worker.spool.pending.get("r2"), "the record")
    assert (rec["status"], rec["started"]) == ("killed", None)
    assert not mark.exists() and worker.runs.by_id == {}


def test_cancel_of_an_unknown_run_is_ignored(worker: Worker) -> None:
    worker.cancel("nope", "replaced", time.monotonic())
    assert worker.runs.by_id == {} and worker.spool.pending == {}


def test_sighup_keeps_the_settings_when_the_file_is_bad(worker: Worker) -> None:
    def broken() -> Config:
        raise ConfigError("zcron.conf: [worker] slots: expected a whole number >= 1")

    worker.load_config = broken
    worker.signals.reload = True
    worker.reload_if_asked()
    assert worker.slots == 4 and not worker.signals.reload


def test_sighup_takes_new_pools_and_slots(worker: Worker) -> None:
    worker.load_config = lambda: Config(worker=WorkerConfig(pool=("default", "db"), slots=7))
    worker.signals.reload = True
    worker.reload_if_asked()
    assert (worker.pools, worker.slots) == (["default", "db"], 7)


def test_memory_max_fails_an_allocation_above_it_and_allows_one_below(worker: Worker) -> None:
    for run_id, mib in (("big", 512), ("small", 16)):
        command = ["python3", "-c", f"bytearray({mib} << 20)"]
        worker.arm(job_message(run_id, command, memory_max=128 << 20))
    big = step_until(worker, lambda: worker.spool.pending.get("big"), "the big record")
    small = step_until(worker, lambda: worker.spool.pending.get("small"), "the small record")
    assert (big["status"], big["exit_code"]) == ("failed", 1), big
    assert "MemoryError" in big["stderr_tail"]
    assert small["status"] == "ok", small


def test_cancel_of_a_job_not_yet_armed_records_it_killed(worker: Worker) -> None:
    worker.runs.receive(job_message("r3", "true"))
    worker.cancel("r3", "replaced", time.monotonic())
    rec = worker.spool.pending["r3"]
    assert (rec["status"], rec["stderr_tail"]) == ("killed", "cancelled: replaced")
    assert not worker.runs.received


def test_the_runs_of_a_sigkilled_worker_end_with_it(procs: Processes, tmp_path: Path) -> None:
    """Its record says `lost`: the run must not go on running (a retry, or the next tick of
    an overlap = forbid job, would run beside it). The spawner ends the orphans' groups."""
    cluster = make_cluster(tmp_path)
    pidfile = tmp_path / "pid"
    (cluster.schedules / "long.toml").write_text(
        f"[long]\nschedule = \"* * * * * *\"\noverlap = \"forbid\"\n"
        f"command = 'echo $$ > {pidfile}; sleep 300'\n"
    )
    procs.start("sink", "-c", str(cluster.config_path))
    procs.start("scheduler", "-c", str(cluster.config_path))
    worker = procs.start("worker", "-c", str(cluster.config_path), "--id", "w1")
    pgid = wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 20, "the run")
    assert live_group(int(pgid))
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    wait_until(lambda: not live_group(int(pgid)), 10, "the orphaned run's group to end")
    lost = wait_until(lambda: cluster.runs(job="long", status="lost"), 20, "the lost record")
    assert "stopped answering" in lost[0]["stderr_tail"]


def test_a_run_that_ends_on_its_own_after_its_worker_died_is_recorded_true(
    procs: Processes, tmp_path: Path
) -> None:
    """The run outlives the SIGKILLed worker (it ignores the spawner's TERM) and exits 0
    within the grace: the spawner reports it, the restarted worker sends it, and its `ok`
    replaces the scheduler's `lost` guess (no run recorded lost that ran)."""
    cluster = make_cluster(tmp_path)
    started, done = tmp_path / "started", tmp_path / "done"
    (cluster.schedules / "stubborn.toml").write_text(
        '[stubborn]\nschedule = "0 0 1 1 *"\n'
        f"command = 'trap \"\" TERM; touch {started}; sleep 1; touch {done}'\n"
    )
    procs.start("sink", "-c", str(cluster.config_path))
    procs.start("scheduler", "-c", str(cluster.config_path))
    worker = procs.start("worker", "-c", str(cluster.config_path), "--id", "w1")
    def run_now() -> bool:
        argv = [sys.executable, "-m", "zcron", "run", "-c", str(cluster.config_path), "stubborn"]
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0

    wait_until(run_now, 20, "zcron run")
    wait_until(started.exists, 20, "the run to start")
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    lost = wait_until(lambda: cluster.runs(job="stubborn", status="lost"), 20, "the lost guess")
    wait_until(done.exists, 10, "the run to end on its own")
    spool = cluster.root / "worker"
    wait_until(lambda: list(spool.glob("orphans-*.rep")), 10, "the spawner's report")
    procs.start("worker", "-c", str(cluster.config_path), "--id", "w1")
    ok = wait_until(lambda: cluster.runs(job="stubborn", status="ok"), 20, "the true record")
    assert ok[0]["run_id"] == lost[0]["run_id"] and ok[0]["exit_code"] == 0
    assert "worker died" in ok[0]["stderr_tail"]
    assert cluster.runs(job="stubborn", status="lost") == []
