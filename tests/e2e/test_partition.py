"""A real network partition between schedulers (network namespaces): quorum jobs fire only
on the majority side, other jobs fire on both sides and the duplicates are counted."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Processes, free_ports, tick_counts, wait_until
from tests.tools import ensure_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]
MAJORITY_IP, MINORITY_IP = "10.77.0.1", "10.77.0.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[tuple[str, str]]:
    """A namespace joined to ours by a veth pair; yields (namespace, our veth's name)."""
    ensure_tool("ip", "iproute2")
    if os.geteuid() != 0:
        pytest.skip("the partition test needs root for network namespaces (CI runs as root)")
    name, veth = f"zcron{os.getpid()}", f"zc{os.getpid() % 100000}"
    ip("netns", "add", name)
    try:
        ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
        ip("link", "set", f"{veth}p", "netns", name)
        ip("addr", "add", f"{MAJORITY_IP}/24", "dev", veth)
        ip("link", "set", veth, "up")
        ip("netns", "exec", name, "ip", "addr", "add", f"{MINORITY_IP}/24", "dev", f"{veth}p")
        ip("netns", "exec", name, "ip", "link", "set", f"{veth}p", "up")
        ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name, veth
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def write_config(root: Path, ports: list[int], side: str) -> Path:
    (root / "zcron.d").mkdir(exist_ok=True)
    path = root / f"zcron-{side}.conf"
    hosts = {"a": MAJORITY_IP, "b": MAJORITY_IP, "c": MINORITY_IP}
    peers = ", ".join(
        f'{sid} = "tcp://{host}:{ports[i]}"' for i, (sid, host) in enumerate(hosts.items())
    )
    path.write_text(f"""[cluster]
schedulers = {{ {peers} }}
sink = "tcp://{MAJORITY_IP}:{ports[3]}"
heartbeat = "100ms"
peer_timeout = "600ms"
insecure = true   # test hosts on a private veth link, no keys

[scheduler]
schedules = "{root}/zcron.d"
state = "{root}/state-{side}"

[worker]
slots = 20
spool = "{root}/spool-{side}"

[sink]
http = "127.0.0.1:{ports[4]}"
data = "{root}/sink"
""")
    return path


JOBS = """
[q]
schedule = "* * * * * *"
command = "true"
quorum = true

[n]
schedule = "* * * * * *"
command = "true"
"""


def start_in(procs: Processes, netns: str | None, *args: str) -> subprocess.Popen:
    prefix = ("ip", "netns", "exec", netns) if netns else ()
    return procs.start(*args, name=f"{args[0]}-{len(procs.started)}", prefix=prefix)


def test_quorum_jobs_fire_only_on_the_majority_side(tmp_path: Path, procs: Processes, netns):
    name, veth = netns
    ports = free_ports(5)
    majority = write_config(tmp_path, ports, "major")
    minority = write_config(tmp_path, ports, "minor")
    (tmp_path / "zcron.d" / "jobs.toml").write_text(JOBS)
    http = f"http://127.0.0.1:{ports[4]}"
    start_in(procs, None, "sink", "-c", str(majority))
    start_in(procs, None, "worker", "-c", str(majority), "--id", "w-major")
    start_in(procs, name, "worker", "-c", str(minority), "--id", "w-minor")
    for sid in "ab":
        start_in(procs, None, "scheduler", "-c", str(majority), "--id", sid)
    start_in(procs, name, "scheduler", "-c", str(minority), "--id", "c")

    def runs() -> list[dict]:
        try:
            return json.loads(
                urllib.request.urlopen(f"{http}/api/runs?limit=10000", timeout=5).read()
            )
        except OSError:
            return []

    wait_until(lambda: {r["job"] for r in runs()} >= {"q", "n"}, 40, "both jobs to run")
    ip("link", "set", veth, "down")
    cut = time.time()
    split_from = float(int(cut + 0.6 + 0.1 + 0.5) + 1)  # peer_timeout + heartbeat + lead
    wait_until(lambda: time.time() > split_from + 4, 10, "4 s of partition")
    split_to = float(int(time.time()) - 1)
    ip("link", "set", veth, "up")
    healed = time.time()

    def minority_delivered() -> list[dict] | None:
        found = runs()
        late = [r for r in found if r["scheduler"] == "c" and r["job"] == "n"]
        return found if any(r["tick"] >= split_to for r in late) else None

    records = wait_until(minority_delivered, 40, "the minority side's results after the heal")
    during = [r for r in records if split_from <= r["tick"] <= split_to]
    q_counts = tick_counts(during, "q", split_from, split_to)
    assert set(q_counts.values()) == {1}, q_counts
    assert {r["scheduler"] for r in during if r["job"] == "q"} <= {"a", "b"}
    n_counts = tick_counts(during, "n", split_from, split_to)
    assert all(count == 2 for count in n_counts.values()), n_counts

    def duplicates_counted() -> float:
        """The metric, which the sink updates just after the commit that /api/runs reads."""
        metrics = urllib.request.urlopen(f"{http}/metrics", timeout=5).read().decode()
        prefix = 'zcron_duplicate_runs_total{job_name="n"}'
        return next((float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith(prefix)), 0.0)  # fmt: skip

    wait_until(lambda: duplicates_counted() >= len(n_counts), 10, "the duplicates counted")
    assert healed > split_to
