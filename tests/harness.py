"""Test harness: free ports, config files, real zcron processes, waiting on conditions."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from zcron.auth import write_keypair
from zcron.spool import pending_on_disk

REPO = Path(__file__).resolve().parent.parent


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    socks, ports = [], []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in socks:
        sock.close()
    return ports


def wait_until(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "condition",
    every: float = 0.02,
) -> Any:
    """Poll `condition` every `every` s until it returns something truthy; fail the test
    at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


@dataclass
class Cluster:
    """Addresses and paths of one test cluster on loopback."""

    root: Path
    schedulers: dict[str, int]
    sink_port: int
    http_port: int
    extra: str = ""
    slots: int = 8
    secure: bool = True  # CURVE keys for every process, as a real cluster (spec §7)
    config_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config_path = self.root / "zcron.conf"
        (self.root / "zcron.d").mkdir(exist_ok=True)
        if self.secure:
            for name in [*self.schedulers, "sink", "cli", *WORKER_IDS]:
                ensure_key(self.keys, name)
        self.write_config()

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def schedules(self) -> Path:
        return self.root / "zcron.d"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def write_config(self) -> None:
        peers = ", ".join(
            f'{sid} = "tcp://127.0.0.1:{port}"' for sid, port in self.schedulers.items()
        )
        keys = f'keys = "{self.keys}"' if self.secure else "insecure = true"
        clients = f'[clients]\ncli = ["{getpass.getuser()}"]\n' if self.secure else ""
        self.config_path.write_text(
            f"""[cluster]
schedulers = {{ {peers} }}
sink = "tcp://127.0.0.1:{self.sink_port}"
heartbeat = "100ms"
peer_timeout = "600ms"
{keys}

[scheduler]
schedules = "{self.schedules}"
state = "{self.root}/scheduler"

[worker]
slots = {self.slots}
spool = "{self.root}/worker"

{clients}
[sink]
http = "127.0.0.1:{self.http_port}"
data = "{self.root}/sink"
{self.extra}"""
        )

    def dealer(self, ctx: Any, server: str, as_key: str | None, identity: str | None = None) -> Any:
        """A DEALER to the sink or a scheduler (by id), speaking CURVE as key `as_key`
        (made if missing; None: plaintext, as a stranger would)."""
        import zmq
        import zmq.auth

        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = 1000
        if identity:
            sock.setsockopt(zmq.IDENTITY, identity.encode())
        if self.secure and as_key is not None:
            ensure_key(self.keys, as_key)
            public, secret = zmq.auth.load_certificate(str(self.keys / f"{as_key}.key_secret"))
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_serverkey = zmq.auth.load_certificate(str(self.keys / f"{server}.key"))[0]
        port = self.sink_port if server == "sink" else self.schedulers[server]
        sock.connect(f"tcp://127.0.0.1:{port}")
        return sock

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.http + path, timeout=5) as response:
            return json.loads(response.read())

    def get_json_or_none(self, path: str) -> Any:
        try:
            return self.get_json(path)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def runs(self, **params: Any) -> list[dict]:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        try:
            return self.get_json(f"/api/runs?{query}")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return []


# Worker ids tests use; a worker started with another --id gets its key made on the spot
# (ensure_key in Processes.start): schedulers re-read the keys directory on an unknown key.
WORKER_IDS = ("w1", "w2", "w3", socket.gethostname())


def ensure_key(keys: Path, name: str) -> None:
    """A key pair NAME in `keys` (made on first use)."""
    if not (keys / f"{name}.key_secret").exists():
        write_keypair(str(keys), name)


def ops_client(cluster: Cluster) -> Path:
    """A client key `ops` that may run as `nobody` only, and a config of its own whose keys
    directory holds the servers' public keys and its own pair only."""
    text = cluster.config_path.read_text()
    cluster.config_path.write_text(text.replace("[clients]\n", '[clients]\nops = ["nobody"]\n'))
    ops_keys = cluster.root / "ops-keys"
    ops_keys.mkdir(mode=0o700)
    ensure_key(cluster.keys, "ops")
    for name in ("a.key", "sink.key", "ops.key", "ops.key_secret"):
        shutil.copy2(cluster.keys / name, ops_keys / name)
    ops_config = cluster.root / "ops.conf"
    ops_config.write_text(cluster.config_path.read_text().replace(str(cluster.keys), str(ops_keys)))
    return ops_config


def keys_of(config_path: str) -> Path | None:
    """The keys directory a config file names, if any."""
    try:
        keys = tomllib.loads(Path(config_path).read_text()).get("cluster", {}).get("keys")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return Path(keys) if keys else None


def make_cluster(
    root: Path,
    scheduler_ids: tuple[str, ...] = ("a",),
    extra: str = "",
    slots: int = 8,
    secure: bool = True,
) -> Cluster:
    ports = free_ports(len(scheduler_ids) * 2 + 2)
    return Cluster(
        root=root,
        schedulers={sid: ports[2 * i] for i, sid in enumerate(scheduler_ids)},
        sink_port=ports[-2],
        http_port=ports[-1],
        extra=extra,
        slots=slots,
        secure=secure,
    )


class Processes:
    """Starts real zcron processes and stops every one of them by pid."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.started: list[subprocess.Popen] = []

    def start(
        self, *args: str, name: str | None = None, prefix: tuple[str, ...] = (), **kwargs: Any
    ) -> subprocess.Popen:
        """`python -m zcron ARGS`, run under `prefix` (e.g. faketime, ip netns exec) if given."""
        name = name or args[0]
        self.ensure_worker_key(args)
        log = open(self.logdir / f"{name}-{len(self.started)}.log", "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})}
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "zcron", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            **kwargs,
        )
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.started.append(proc)
        return proc

    @staticmethod
    def ensure_worker_key(args: tuple[str, ...]) -> None:
        """A worker needs a key named by its id when its config names a keys directory."""
        if not args or args[0] != "worker" or "-c" not in args or "--id" not in args:
            return
        keys = keys_of(args[args.index("-c") + 1])
        if keys is not None and keys.is_dir():
            ensure_key(keys, args[args.index("--id") + 1])

    def log(self, proc: subprocess.Popen) -> str:
        return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Signal the process and wait for it; SIGKILL its whole group if it does not exit."""
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_group(proc)
        return proc.returncode

    def kill_group(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                self.stop(proc, timeout=5)
            self.kill_group(proc)  # jobs the process left behind in its session


def tick_counts(
    records: list[dict], job: str, first: float, last: float, step: float = 1.0
) -> dict[float, int]:
    """For every expected instant of `job` in [first, last], how many distinct runs match it.

    Zero is a missed tick, two a duplicate; only first attempts count.
    """
    expected = {round(first + i * step, 6): set() for i in range(int((last - first) / step) + 1)}
    for rec in records:
        if rec["job"] == job and rec["attempt"] == 1 and round(rec["tick"], 6) in expected:
            expected[round(rec["tick"], 6)].add(rec["run_id"])
    return {tick: len(run_ids) for tick, run_ids in expected.items()}


def child_pids(pid: int) -> list[int]:
    """Direct children of a process, from /proc."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def metric_samples(cluster: Cluster, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample named `name` on the sink's /metrics."""
    try:
        with urllib.request.urlopen(cluster.http + "/metrics", timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return []  # the sink is not serving (yet): no samples, for wait_until to retry
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def metric_value(cluster: Cluster, name: str, **labels: str) -> float | None:
    """The sample whose labels are exactly `labels` (None if absent)."""
    return next((v for found, v in metric_samples(cluster, name) if found == labels), None)


def metric_total(cluster: Cluster, name: str) -> float:
    """A metric summed over all its label sets."""
    return sum(value for _, value in metric_samples(cluster, name))


def spooled(cluster: Cluster) -> int:
    """Records still waiting in the worker's and the scheduler's outboxes, on disk."""
    dirs = (cluster.root / "worker", cluster.root / "scheduler" / "spool")
    return sum(pending_on_disk(d) for d in dirs if d.exists())
