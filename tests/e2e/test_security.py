"""Spec §7 with real processes: CURVE on every socket, strangers and plaintext shut out,
failed handshakes counted, 0600 secret keys, the loopback bind rule, a job's clean env.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth

from tests.harness import Cluster, Processes, make_cluster, metric_total, wait_until
from zcron.protocol import encode, record

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

NAMES = ("a", "b", "w1", "sink", "cli")
NO_REPLY_MS = 1500


def zcron(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zcron", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A keys directory made by `zcron keygen` for the scheduler, worker, sink and CLI."""
    directory = tmp_path_factory.mktemp("keys")
    for name in NAMES:
        out = zcron("keygen", str(directory), name)
        assert out.returncode == 0, out.stderr
    return directory


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def with_keys(cluster: Cluster, keys: Path, config: Path | None = None) -> Path:
    """A copy of the cluster's config with `[cluster] keys` set."""
    path = config or cluster.config_path
    lines = [x for x in cluster.config_path.read_text().splitlines() if not x.startswith("keys =")]
    text = "\n".join(lines) + "\n"
    path.write_text(text.replace("[cluster]\n", f'[cluster]\nkeys = "{keys}"\n', 1))
    return path


def status(config: Path) -> dict:
    out = zcron("status", "-c", str(config), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["schedulers"]["a"]


def start_keyed_cluster(procs: Processes, cluster: Cluster, keys: Path, env: dict) -> None:
    with_keys(cluster, keys)
    config = str(cluster.config_path)
    procs.start("sink", "-c", config)
    wait_until(lambda: cluster.get_json_or_none("/api/jobs") is not None, 15, "the sink's HTTP")
    for sid in cluster.schedulers:
        procs.start("scheduler", "-c", config, "--id", sid)
    procs.start("worker", "-c", config, "--id", "w1", env=env)


def test_keygen_writes_secret_keys_0600_and_public_keys_readable(keys: Path) -> None:
    for name in NAMES:
        assert stat.S_IMODE((keys / f"{name}.key_secret").stat().st_mode) == 0o600
        assert stat.S_IMODE((keys / f"{name}.key").stat().st_mode) == 0o644
        public, secret = zmq.auth.load_certificate(keys / f"{name}.key_secret")
        assert secret is not None and zmq.auth.load_certificate(keys / f"{name}.key")[0] == public


def test_keyed_cluster_runs_a_job_whose_env_holds_no_daemon_secrets(
    procs: Processes, tmp_path: Path, keys: Path
) -> None:
    cluster = make_cluster(tmp_path, ("a", "b"))
    (cluster.schedules / "env").write_text("# name: env\n* * * * * *  -  env\n")
    daemon_env = {"NOTIFY_SOCKET": "@zcron-test-no-such-socket", "ZCRON_KEYS_DIR": str(keys)}
    start_keyed_cluster(procs, cluster, keys, daemon_env)

    runs = wait_until(lambda: cluster.runs(job="env", status="ok"), 20, "a run over CURVE")
    env_lines = runs[0]["stdout_tail"].splitlines()
    assert "ZCRON_JOB=env" in env_lines
    assert not [line for line in env_lines if line.startswith(("NOTIFY_SOCKET=", "WATCHDOG"))]
    assert not [line for line in env_lines if str(keys) in line], env_lines
    view = status(cluster.config_path)  # the CLI over CURVE with the `cli` key
    assert view["state"] == "live" and view["counters"]["handshake_failures"] == 0
    assert view["peers"]["b"]["state"] == "live"  # the peer mesh runs over CURVE too


def stranger_dealer(ctx: zmq.Context, stranger: Path, server_key: Path) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(
        stranger / "cli.key_secret"
    )
    sock.curve_serverkey = zmq.auth.load_certificate(server_key)[0]
    return sock


def plaintext_dealer(ctx: zmq.Context) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    return sock


def test_strangers_and_plaintext_clients_fail_the_handshake_on_every_port(
    procs: Processes, tmp_path: Path, keys: Path, ctx: zmq.Context
) -> None:
    cluster = make_cluster(tmp_path)
    (cluster.schedules / "tick").write_text("# name: tick\n* * * * * *  -  true\n")
    start_keyed_cluster(procs, cluster, keys, {})
    wait_until(lambda: cluster.runs(job="tick"), 20, "a run over CURVE")
    # A stranger: a good keypair that is not in the keys directory, who knows every
    # server's public key; its own keys directory makes the CLI use that keypair.
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    stranger.chmod(0o700)  # a keys directory others may read is refused before any handshake
    zmq.auth.create_certificates(stranger, "cli")
    (stranger / "cli.key_secret").chmod(0o600)
    shutil.copy(keys / "a.key", stranger / "a.key")
    schedulers = f"tcp://127.0.0.1:{cluster.schedulers['a']}"
    sink = f"tcp://127.0.0.1:{cluster.sink_port}"

    clients = {
        "stranger": lambda key: stranger_dealer(ctx, stranger, keys / key),
        "plaintext": lambda key: plaintext_dealer(ctx),
    }
    sent = []
    for who, make in clients.items():
        to_scheduler = make("a.key")
        to_scheduler.connect(schedulers)
        to_scheduler.send(encode("request", op="status", args={}))
        to_sink = make("sink.key")
        to_sink.connect(sink)
        forged = record(run_id=f"forged-{who}", job=f"forged-{who}", tick=time.time())
        to_sink.send(encode("result", record={**forged, "status": "ok"}))
        sent += [
            (f"the scheduler answered a {who}", to_scheduler),
            (f"the sink acked a {who}", to_sink),
        ]
    time.sleep(NO_REPLY_MS / 1000)  # a window for a reply that must not come
    for what, sock in sent:
        assert not sock.poll(0), what

    assert cluster.runs(job="forged-stranger") == [] and cluster.runs(job="forged-plaintext") == []
    stranger_config = with_keys(cluster, stranger, tmp_path / "stranger.conf")
    out = zcron("status", "-c", str(stranger_config))
    assert out.returncode == 1 and "CURVE handshake failed" in out.stdout, out

    assert metric_total(cluster, "zcron_handshake_failures_total") >= 2
    assert status(cluster.config_path)["counters"]["handshake_failures"] >= 3
    assert all(p.poll() is None for p in procs.started)
    newest = cluster.runs(job="tick", limit=1)[0]["tick"]
    wait_until(lambda: cluster.runs(job="tick", limit=1)[0]["tick"] > newest, 5, "runs go on")


def test_a_missing_own_secret_key_is_a_config_error_naming_the_file(
    cluster: Cluster, keys: Path
) -> None:
    with_keys(cluster, keys)
    out = zcron("worker", "-c", str(cluster.config_path), "--id", "w2")
    assert out.returncode == 2
    assert f"{keys}/w2.key_secret" in out.stderr and "no such file" in out.stderr, out.stderr


def non_loopback_address() -> str:
    """This machine's own non-loopback IPv4 address, else the wildcard."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            address = probe.getsockname()[0]
    except OSError:
        return "0.0.0.0"
    return address if not address.startswith("127.") else "0.0.0.0"


@pytest.mark.parametrize("role", ["scheduler", "sink"])
def test_binding_a_non_loopback_address_without_keys_exits_2_unless_insecure(
    procs: Processes, tmp_path: Path, role: str
) -> None:
    cluster = make_cluster(tmp_path, secure=False)
    cluster.config_path.write_text(cluster.config_path.read_text().replace("insecure = true\n", ""))
    host = non_loopback_address()
    port = cluster.schedulers["a"] if role == "scheduler" else cluster.sink_port
    text = cluster.config_path.read_text().replace(
        f"tcp://127.0.0.1:{port}", f"tcp://{host}:{port}"
    )
    cluster.config_path.write_text(text)
    out = zcron(role, "-c", str(cluster.config_path))
    assert out.returncode == 2
    if os.geteuid() == 0:  # as root, no keys is refused before any bind (spec §7)
        assert "refusing to start" in out.stderr and "as root without [cluster] keys" in out.stderr
    else:
        assert f"refusing to bind tcp://{host}:{port}" in out.stderr
        assert "not a loopback address" in out.stderr
    assert "insecure = true" in out.stderr

    cluster.config_path.write_text(text.replace("[cluster]\n", "[cluster]\ninsecure = true\n"))
    proc = procs.start(role, "-c", str(cluster.config_path))
    target = "0.0.0.0" if host == "0.0.0.0" else host
    wait_until(lambda: _accepts(target, port) or proc.poll() is not None, 10, f"{role} bound")
    assert proc.poll() is None, procs.log(proc)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
