"""Issue 12's attacks, each a regression test: who may make a command run, and as whom.

Every probe of a local attacker runs as an unprivileged user (`runuser -u zcron-probe`,
made here when we are root; skipped otherwise), against a cluster run as root with its
keys, as `zcron up` and the units run it. Each attack must change nothing: no command
runs, no tick is suppressed, no record is lost, altered or added, nothing crashes.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import shutil
import site
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tests.harness import (
    REPO,
    Cluster,
    Processes,
    make_cluster,
    ops_client,
    spooled,
    wait_until,
)
from zcron.protocol import decode, encode, record

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PROBE = "zcron-probe"
NO_ANSWER_S = 1.5
# what the CLI says when it has no key it may use, or no server talks to it
REFUSALS = ("cannot read", "no readable secret key", "did not answer")


@pytest.fixture(scope="module")
def probe() -> str:
    """An unprivileged local user (made once, left in place: useradd is slow) who can run
    a Python that imports zcron and its dependencies from this checkout."""
    if os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("probing as another local user needs root and runuser")
    try:
        pwd.getpwnam(PROBE)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/false",
                        PROBE], check=True, capture_output=True)  # fmt: skip
    if probe_python() is None:
        pytest.skip(f"no Python that {PROBE} may run imports zcron's dependencies from here")
    return PROBE


def _probe_env() -> list[str]:
    path = os.pathsep.join([str(REPO), *site.getsitepackages()])
    return [f"PYTHONPATH={path}", "HOME=/tmp", f"PATH={os.environ.get('PATH', '/usr/bin')}"]


@functools.cache
def probe_python() -> str | None:
    """Our interpreter if the probe user may run it (a pyenv under /root it may not), else
    the system's of the same version, which loads the same compiled modules."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/python{version}"):
        ok = subprocess.run(
            ["runuser", "-u", PROBE, "--", "env", *_probe_env(), python, "-c",
             f"import sys, zmq, msgpack, zcron; assert sys.version.startswith('{version}')"],
            capture_output=True, timeout=30,
        )  # fmt: skip
        if ok.returncode == 0:
            return python
    return None


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory the probe user can read (its scripts and configs live here)."""
    path = Path(tempfile.mkdtemp(prefix="zcron-probe-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_probe(user: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run `python ARGV...` as the unprivileged user, importing zcron from this checkout."""
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", *_probe_env(), probe_python(), *argv],
        capture_output=True, text=True, timeout=timeout, cwd="/tmp",
    )  # fmt: skip


def probe_config(cluster: Cluster, public_dir: Path, keys: str | None) -> Path:
    """The cluster's addresses as the probe knows them, with `keys` in place of ours."""
    lines = [x for x in cluster.config_path.read_text().splitlines() if not x.startswith("keys")]
    text = "\n".join(lines) + "\n"
    if keys:
        text = text.replace("[cluster]\n", f'[cluster]\nkeys = "{keys}"\n', 1)
    path = public_dir / "probe.conf"
    path.write_text(text)
    path.chmod(0o644)
    return path


def start(procs: Processes, cluster: Cluster, *, scheduler: bool = True, sink: bool = True,
          worker: bool = True) -> None:  # fmt: skip
    config = str(cluster.config_path)
    if sink:
        procs.start("sink", "-c", config)
        wait_until(lambda: cluster.get_json_or_none("/api/jobs") is not None, 15, "the sink")
    if scheduler:
        procs.start("scheduler", "-c", config)
    if worker:
        procs.start("worker", "-c", config, "--id", "w1")


TICK_JOB = "# name: tick\n* * * * * *  root  true\n"


def newest_tick(cluster: Cluster) -> float:
    runs = cluster.runs(job="tick", limit=1)
    return runs[0]["tick"] if runs else 0.0


def still_ticking(cluster: Cluster, since: float) -> None:
    wait_until(lambda: newest_tick(cluster) > since + 1, 15, "the job to keep firing")


def test_a_local_user_cannot_push_or_fire_a_root_job(
    procs: Processes, tmp_path: Path, probe: str, public_dir: Path
) -> None:
    cluster = make_cluster(tmp_path)
    marker = public_dir / "ran-as-root"
    (cluster.schedules / "rootjob").write_text(
        f"# name: rootjob\n0 0 1 1 *  root  touch {marker}\n"
    )
    start(procs, cluster)
    wait_until(lambda: cluster.get_json("/api/jobs"), 15, "the job table")
    for keys in (str(cluster.keys), None):  # our keys (unreadable to it), or none at all
        config = str(probe_config(cluster, public_dir, keys))
        for argv in (("push", "--", "touch", str(marker)), ("run", "rootjob")):
            out = as_probe(probe, "-m", "zcron", argv[0], "-c", config, *argv[1:])
            assert out.returncode != 0, (keys, argv, out.stdout)
            assert any(why in out.stderr for why in REFUSALS), out.stderr
    # A raw request in plaintext, as a script of its own: the handshake never completes.
    script = public_dir / "raw.py"
    script.write_text(
        textwrap.dedent(f"""
        import zmq
        from zcron.protocol import encode
        sock = zmq.Context().socket(zmq.DEALER)
        sock.linger = 0
        sock.connect("tcp://127.0.0.1:{cluster.schedulers["a"]}")
        sock.send(encode("request", op="push", args={{"command": ["touch", "{marker}"],
                  "pool": "default", "at": 0, "timeout": None}}))
        print("answered" if sock.poll({int(NO_ANSWER_S * 1000)}) else "silent")
    """)
    )
    assert as_probe(probe, str(script)).stdout.strip() == "silent"
    time.sleep(NO_ANSWER_S)  # a window for a run that must not happen
    assert not marker.exists()
    assert not [r for r in cluster.runs(limit=100) if r["job"] in ("rootjob", "push")]


def test_a_client_key_runs_only_as_the_users_it_is_given(
    procs: Processes, cluster: Cluster
) -> None:
    text = cluster.config_path.read_text()
    cluster.config_path.write_text(
        "\n".join(
            'cli = ["nobody"]' if line.startswith("cli = ") else line
            for line in text.splitlines()
        ) + "\n"
    )  # fmt: skip
    (cluster.schedules / "rootjob").write_text("# name: rootjob\n0 0 1 1 *  root  true\n")
    start(procs, cluster)
    zcron = [sys.executable, "-m", "zcron"]
    config = ["-c", str(cluster.config_path)]
    out = subprocess.run([*zcron, "push", *config, "--", "id", "-un"], capture_output=True,
                         text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0 and "as nobody" in out.stdout, out
    run = wait_until(lambda: cluster.runs(status="ok"), 20, "the push to run")[0]
    assert run["stdout_tail"].strip() == "nobody"
    for argv, why in ((["push", *config, "--user", "root", "--", "true"], "as 'root'"),
                      (["run", *config, "rootjob"], "may not run rootjob as 'root'")):  # fmt: skip
        out = subprocess.run([*zcron, *argv], capture_output=True, text=True, timeout=30)
        assert out.returncode == 1 and why in out.stderr, out


def squat(user: str, public_dir: Path, port: int, role: str, seconds: float) -> dict:
    """As the unprivileged user, bind a port a restarting zcron server left free and act as
    that server for a while: hand every connecting worker a root job (a scheduler), or ack
    every result (the sink). Returns what the squatter saw."""
    marker = public_dir / f"squatted-{role}"
    script = public_dir / f"squat_{role}.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, time, zmq
        from zcron.protocol import decode, encode
        sock = zmq.Context().socket(zmq.ROUTER)
        sock.linger = 0
        sock.bind("tcp://127.0.0.1:{port}")
        heard, deadline = 0, time.monotonic() + {seconds}
        while time.monotonic() < deadline:
            if not sock.poll(50):
                continue
            who, frame = sock.recv_multipart()[:2]
            heard += 1
            if "{role}" == "scheduler":
                job = dict(run_id="squat", job="squat", tick=time.time(), attempt=1,
                           scheduler="a", pool="default", command="touch {marker}",
                           shell="/bin/sh", user="root", env={{}}, cwd=None, timeout=None,
                           on_timeout="kill", dispatched=time.time())
                sock.send_multipart([who, encode("job", **job)])
            else:
                kind, msg = decode(frame)
                if kind == "result":
                    sock.send_multipart([who, encode("ack", run_ids=[msg["record"]["run_id"]])])
        print(json.dumps({{"heard": heard}}))
    """)
    )
    out = as_probe(user, str(script), timeout=seconds + 30)
    assert out.returncode == 0, out.stderr
    return {**json.loads(out.stdout), "ran": marker.exists()}


def test_a_squatter_on_the_schedulers_port_never_reaches_the_root_worker(
    procs: Processes, cluster: Cluster, probe: str, public_dir: Path
) -> None:
    (cluster.schedules / "tick").write_text(TICK_JOB)
    start(procs, cluster, scheduler=False)  # the scheduler is restarting: its port is free
    seen = squat(probe, public_dir, cluster.schedulers["a"], "scheduler", 4.0)
    assert seen == {"heard": 0, "ran": False}  # the worker never completed a handshake
    # and it was not cut off for good: the real scheduler, back, reaches it
    start(procs, cluster, sink=False, worker=False)
    wait_until(lambda: cluster.runs(job="tick"), 20, "the real scheduler's jobs to run")


def test_a_squatter_on_the_sinks_port_cannot_make_workers_drop_records(
    procs: Processes, cluster: Cluster, probe: str, public_dir: Path
) -> None:
    (cluster.schedules / "tick").write_text(TICK_JOB)
    start(procs, cluster, sink=False)
    wait_until(lambda: spooled(cluster) >= 2, 20, "records waiting for a sink")
    seen = squat(probe, public_dir, cluster.sink_port, "sink", 3.0)
    assert seen["heard"] == 0
    assert spooled(cluster) >= 2  # nothing was acked away
    start(procs, cluster, scheduler=False, worker=False)
    wait_until(lambda: cluster.runs(job="tick", limit=3) and spooled(cluster) <= 1, 45,
               "the real sink to get the spooled records")  # fmt: skip
    ticks = [r["tick"] for r in cluster.runs(job="tick", limit=1000)]
    assert len(ticks) == len(set(ticks)) and len(ticks) >= 3


def forgeries(now: float) -> list[tuple[str, str, bytes]]:
    """(target, what, frame) sent with worker w1's own key: a key holder acting beyond
    its role or its id, and values no honest process sends."""
    job = {"run_id": "x", "job": "x", "tick": now, "attempt": 1, "scheduler": "a",
           "pool": "default", "command": "true", "shell": "/bin/sh", "user": "root",
           "env": {}, "cwd": None, "on_timeout": "kill", "dispatched": now}  # fmt: skip
    forged = record(run_id="forged", job="tick", tick=now, status="ok", worker="w1",
                    started=now, finished=1e300)  # fmt: skip
    return [
        ("a", "claims as scheduler a", encode("claims", scheduler="a", ticks=[["tick", 1e300]])),
        ("a", "accepted tick 1e300", encode("accepted", worker="w1", ticks=[["tick", 1e300]])),
        ("a", "accepted far ahead", encode("accepted", worker="w1", ticks=[["tick", now + 600]])),
        ("a", "accepted as w2", encode("accepted", worker="w2", ticks=[["tick", now + 1]])),
        ("a", "started as w2", encode("started", worker="w2", run_ids=["x"])),
        ("a", "started, a NaN run id", encode("started", worker="w1", run_ids=[float("nan")])),
        ("a", "started, 5,000 run ids", encode("started", worker="w1", run_ids=["x"] * 5000)),
        (
            "a",
            "a push from a worker key",
            encode(
                "request",
                op="push",
                args={"command": ["true"], "pool": "default", "at": now, "timeout": None},
            ),
        ),
        (
            "a",
            "a heartbeat as b",
            encode(
                "heartbeat",
                scheduler="b",
                since=0.0,
                sent=now,
                digest="",
                eligible=True,
                reason=None,
            ),
        ),
        (
            "a",
            "a NaN push",
            encode(
                "request",
                op="push",
                args={"command": ["true"], "pool": "default", "at": float("nan"), "timeout": None},
            ),
        ),
        ("sink", "finished 1e300", encode("result", record=forged)),
        (
            "sink",
            "a record as w2",
            encode("result", record={**forged, "finished": now, "worker": "w2"}),
        ),
        (
            "sink",
            "a turn's records, one as w2",
            encode("results", records=[{**forged, "finished": now, "worker": "w2"}]),
        ),
        (
            "sink",
            "a job table as a",
            encode("jobs", scheduler="a", jobs=[], sent=now, part=0, parts=10**9),
        ),
        ("sink", "a job of NaN timeout", encode("job", **{**job, "timeout": float("nan")})),
    ]


def test_forged_frames_from_a_worker_key_change_nothing(procs: Processes, cluster: Cluster) -> None:
    (cluster.schedules / "tick").write_text(TICK_JOB)
    start(procs, cluster)
    wait_until(lambda: newest_tick(cluster), 20, "a first run")
    ctx = zmq.Context()
    try:
        sockets = {t: cluster.dealer(ctx, t, as_key="w1") for t in ("a", "sink")}
        for target, _, frame in forgeries(time.time()):
            sockets[target].send(frame)
        for target, sock in sockets.items():
            assert not sock.poll(int(NO_ANSWER_S * 1000)), f"{target} answered a forgery"
    finally:
        ctx.destroy(linger=0)
    since = newest_tick(cluster)
    still_ticking(cluster, since)
    assert not cluster.runs(job="x") and not [r for r in cluster.runs() if r["run_id"] == "forged"]
    assert cluster.get_json("/api/jobs")  # the API still answers (a NaN once made it 500)
    assert all(p.poll() is None for p in procs.started)
    # Nothing was persisted: a restarted scheduler fires the job as before.
    scheduler = next(p for p in procs.started if "scheduler" in " ".join(p.args))
    procs.stop(scheduler)
    procs.start("scheduler", "-c", str(cluster.config_path))
    still_ticking(cluster, newest_tick(cluster))


def test_a_second_worker_with_a_live_workers_id_is_refused_and_the_first_keeps_working(
    procs: Processes, cluster: Cluster, tmp_path: Path
) -> None:
    (cluster.schedules / "tick").write_text(TICK_JOB)
    start(procs, cluster)
    wait_until(lambda: newest_tick(cluster), 20, "a first run")
    other = tmp_path / "other.conf"  # its own spool: the same id from another directory
    other.write_text(cluster.config_path.read_text().replace(f"{tmp_path}/worker",
                                                             f"{tmp_path}/worker-2"))  # fmt: skip
    second = procs.start("worker", "-c", str(other), "--id", "w1", name="second-w1")
    assert second.wait(20) == 2
    assert "in use by a live worker" in procs.log(second)
    since = newest_tick(cluster)
    still_ticking(cluster, since)
    assert {r["worker"] for r in cluster.runs(job="tick", limit=5)} == {"w1"}


def test_a_second_up_in_the_same_directory_is_refused(
    procs: Processes, cluster: Cluster, tmp_path: Path
) -> None:
    (cluster.schedules / "tick").write_text(TICK_JOB)
    data = tmp_path / "updata"
    args = ("-c", str(cluster.config_path), "--data", str(data))
    first = procs.start("up", *args, name="up-1")
    wait_until(lambda: newest_tick(cluster), 30, "the first up to run the job")
    second = procs.start("up", *args, name="up-2")
    assert second.wait(20) == 1
    assert f"zcron up is already running here (pid {first.pid}" in procs.log(second)
    assert first.poll() is None
    still_ticking(cluster, newest_tick(cluster))


def test_up_makes_owner_only_keys_that_its_own_cli_uses(
    procs: Processes, tmp_path: Path, probe: str, public_dir: Path
) -> None:
    cluster = make_cluster(tmp_path, secure=False)
    plain = cluster.config_path.read_text().replace("insecure = true\n", "")
    cluster.config_path.write_text(plain)
    (cluster.schedules / "tick").write_text(TICK_JOB)
    data = tmp_path / "updata"
    procs.start("up", "-c", str(cluster.config_path), "--data", str(data))
    up_conf = data / "zcron-up.conf"
    wait_until(lambda: up_conf.exists() and cluster.runs(job="tick"), 30, "up's first run")
    assert (up_conf.stat().st_mode & 0o777) == 0o600 and (data.stat().st_mode & 0o077) == 0
    for secret in (data / "keys").glob("*.key_secret"):
        assert secret.stat().st_mode & 0o777 == 0o600
    out = subprocess.run([sys.executable, "-m", "zcron", "push", "-c", str(up_conf), "--",
                          "true"], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    shutil.copy(up_conf, public_dir / "up.conf")
    (public_dir / "up.conf").chmod(0o644)
    out = as_probe(probe, "-m", "zcron", "push", "-c", str(public_dir / "up.conf"), "--", "true")
    assert out.returncode != 0 and any(why in out.stderr for why in REFUSALS[:2]), out


def test_jobs_a_worker_cannot_read_give_their_slots_back(
    procs: Processes, cluster: Cluster
) -> None:
    """`timeout = "x"` once was dropped by the worker but counted in flight for ever: `slots`
    such jobs left the pool at 0 free slots. Here the test is scheduler a (it holds a's key)."""
    import zmq.auth

    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        router.linger = 0
        router.curve_server = True
        router.curve_publickey, router.curve_secretkey = zmq.auth.load_certificate(
            str(cluster.keys / "a.key_secret")
        )
        router.bind(f"tcp://127.0.0.1:{cluster.schedulers['a']}")  # no ZAP: any client key
        procs.start("worker", "-c", str(cluster.config_path), "--id", "w1")

        def ready() -> tuple[bytes, dict]:
            while True:
                assert router.poll(10_000), "no ready from the worker"
                identity, frame = router.recv_multipart()
                kind, msg = decode(frame)
                if kind == "ready":
                    return identity, msg

        identity, first = ready()
        bad = encode("job", run_id="bad", job="j", tick=time.time(), attempt=1, scheduler="a",
                     pool="default", command="true", shell="/bin/sh", user=None, env={},
                     cwd=None, timeout="x", on_timeout="kill", dispatched=time.time())  # fmt: skip
        for _ in range(first["slots"] + 1):
            router.send_multipart([identity, bad])
        deadline = time.monotonic() + 10
        while (msg := ready()[1])["seen"] < first["slots"] + 1:
            assert time.monotonic() < deadline, msg
        assert msg["free"] == msg["slots"]  # every slot is free again
    finally:
        ctx.destroy(linger=0)


def test_cancel_kills_a_running_command_and_drops_a_delayed_push_for_allowed_clients_only(
    procs: Processes, cluster: Cluster
) -> None:
    ops_config = ops_client(cluster)
    start(procs, cluster)
    config = ["-c", str(cluster.config_path)]

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "zcron", *argv], capture_output=True,
                              text=True, timeout=30)  # fmt: skip

    def run_id_of(out: subprocess.CompletedProcess) -> str:
        assert out.returncode == 0, out.stderr
        return out.stdout.split("(run ")[1].split(")")[0]

    running = run_id_of(cli("push", *config, "--", "sleep", "300"))
    delayed = run_id_of(cli("push", *config, "--in", "1h", "--", "touch", "/nonexistent/x"))
    wait_until(lambda: '"running": 1' in cli("status", *config, "--json").stdout, 20,
               "the sleep to run")  # fmt: skip
    refused = cli("cancel", "-c", str(ops_config), running)
    assert refused.returncode == 1 and "may not cancel" in refused.stderr, refused
    for run_id, status in ((running, "killed"), (delayed, "skipped")):
        out = cli("cancel", *config, run_id)
        assert out.returncode == 0 and f"cancelled run {run_id}" in out.stdout, out
        rec = wait_until(lambda r=run_id: [x for x in cluster.runs(limit=50) if x["run_id"] == r],
                         20, f"{status} record")  # fmt: skip
        assert rec[0]["status"] == status, rec
    assert cli("cancel", *config, "no-such-run").returncode == 1
