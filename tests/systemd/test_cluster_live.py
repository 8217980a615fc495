"""docs/operations.md's three-node cluster, verbatim (10.0.0.1-3 on a private bridge): one
`systemctl kill -s KILL` of the scheduler that owns a per-second job loses no tick."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.systemd.conftest import host_runs_systemd
from tests.systemd.deploy import PAGE_ADDRESSES, config, deploy_keys, start_units
from tests.systemd.machine import Machine, wait_until

pytestmark = pytest.mark.timeout(420)  # the first test also builds the rootfs when uncached
NODES = {"n1": "a", "n2": "b", "n3": "c"}
TICK_JOB = "# name: tick\n* * * * * * root true\n"


@pytest.fixture(scope="module")
def bridge() -> Iterator[str]:
    """A host bridge with no address: the containers see only each other."""
    if host_runs_systemd():
        pytest.skip("PID 1 is systemd: the cluster check boots containers")
    name = f"zcbr{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True, timeout=10)
    subprocess.run(["ip", "link", "set", name, "up"], check=True, timeout=10)
    yield name
    subprocess.run(["ip", "link", "del", name], timeout=10)


@pytest.fixture(scope="module")
def cluster(machines: Callable[..., Machine], bridge: str) -> dict[str, Machine]:
    nodes = {name: machines(name, network=(f"--network-bridge={bridge}",)) for name in NODES}
    for name, node in nodes.items():
        ip = PAGE_ADDRESSES[NODES[name]]
        node.sh(f"ip addr add {ip}/24 dev host0 && ip link set host0 up", check=True)
        deploy_keys(node, NODES[name])
    share_public_keys([node.root / "etc/zcron/keys" for node in nodes.values()])
    for name, node in nodes.items():
        node.write("/etc/zcron.d/tick", TICK_JOB)
        start_units(node, config(NODES[name]), runs_sink=name == "n3")
    return nodes


def share_public_keys(key_dirs: list[Path]) -> None:
    """§2: every public `*.key` to every node, never a secret."""
    public = {key.name: key.read_bytes() for d in key_dirs for key in d.glob("*.key")}
    for directory in key_dirs:
        for name, data in public.items():
            (directory / name).write_bytes(data)


def tick_runs(sink_node: Machine, since: float) -> list[dict]:
    out = sink_node.sh(f"zcron runs tick --since {since:.0f} --limit 1000 --json").stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_killing_the_owning_scheduler_loses_no_tick(cluster: dict[str, Machine]) -> None:
    n3 = cluster["n3"]
    status = n3.sh("zcron status --json", check=True).stdout
    assert all(v["state"] == "live" for v in json.loads(status)["schedulers"].values()), status
    first = wait_until(lambda: len(ticks(tick_runs(n3, 0))) >= 3 and tick_runs(n3, 0), 20, "ticks")
    owner = next(n for n, sid in NODES.items() if sid == first[0]["scheduler"])
    killed_at = time.time()
    cluster[owner].sh("systemctl kill -s KILL zcron-scheduler", check=True)
    wait_until(lambda: cluster[owner].show("zcron-scheduler")["NRestarts"] == "1", 10, "restart")
    wait_until(lambda: cluster[owner].show("zcron-scheduler")["SubState"] == "running", 10, "up")
    time.sleep(4)  # ticks after the restart, fired by whoever owns the job then
    # from the first tick recorded (before the kill) to 4 s after it: each once
    window = range(min(ticks(first)), int(killed_at) + 5)
    wait_until(lambda: window[-1] + 1 in ticks(tick_runs(n3, 0)), 10, "the window recorded")
    counts = ticks(tick_runs(n3, 0))
    assert [t for t in window if counts[t] != 1] == [], (owner, counts)


def ticks(records: list[dict]) -> Counter:
    """Runs per whole-second tick (first attempts: a retry is not a duplicate)."""
    return Counter(round(r["tick"]) for r in records if r["attempt"] == 1)
