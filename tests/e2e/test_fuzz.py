"""Spec §8.6 with real processes: hostile frames, floods and a full sink disk.

Random and mutated-valid frames go to the scheduler's and the sink's ROUTER while a
per-second job runs: the processes stay up, every tick still runs exactly once, and the
drops are counted. A flood of 100k frames meets the high-water marks with the sink's memory
bounded; a full disk keeps results spooled on the worker until space returns.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.harness import (
    Cluster,
    Processes,
    make_cluster,
    metric_total,
    spooled,
    tick_counts,
    wait_until,
)
from zcron.errors import ProtocolError
from zcron.protocol import decode, encode, record

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

FUZZ_S = 10.0
JOB = "every-second"
# Names the live cluster uses: a forged *valid* message naming one of them is a legitimate
# command from anyone who reaches an unkeyed port (see docs/security.md), not hostile input.
REAL_NAMES = {"a", "w1", "default", JOB, "scheduler-a"}

TEMPLATES = [
    ("ready", dict(worker="fz", pools=["fuzz"], slots=2, free=1, seen=0, running=[])),
    ("finished", dict(run_id="r1", job="fuzz-job", status="ok")),
    ("result", dict(record=record(run_id="fz-1", job="fuzz-job", tick=1.0, status="ok"))),
    ("jobs", dict(scheduler="zz", jobs=[{"name": "fuzz-job", "next_tick": 2.0}], sent=1.0)),
    (
        "heartbeat",
        dict(scheduler="zz", since=1.0, sent=1.0, digest="d", eligible=True, reason=None),
    ),
    ("claims", dict(scheduler="zz", ticks=[["fuzz-job", 1.0]])),
    ("accepted", dict(worker="fz", ticks=[["fuzz-job", 1.0]])),
    ("jobset_request", dict(scheduler="zz")),
    ("jobset", dict(scheduler="zz", digest="d", part=0, parts=2, names=["fuzz-job"])),
    ("request", dict(op="status", args={})),
    ("reply", dict(ok=True, error=None, body={})),
    ("ack", dict(run_ids=["fz-1"])),
]

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@st.composite
def mutated_valid(draw: st.DrawFn) -> bytes:
    """A valid message with one field replaced, dropped or added, or its bytes corrupted."""
    kind, fields = draw(st.sampled_from(TEMPLATES))
    msg = {"v": 1, "t": kind, **fields}
    how = draw(st.sampled_from(["replace", "drop", "add", "bytes"]))
    key = draw(st.sampled_from(sorted(msg)))
    if how == "replace":
        msg[key] = draw(values)
    elif how == "drop":
        del msg[key]
    elif how == "add":
        msg[draw(st.text(max_size=8))] = draw(values)
    frame = msgpack.packb(msg, use_bin_type=True)
    if how == "bytes" and frame:
        at = draw(st.integers(0, len(frame) - 1))
        frame = frame[:at] + draw(st.binary(max_size=4)) + frame[at + draw(st.integers(0, 4)) :]
    return frame


frames = st.one_of(
    st.lists(st.binary(max_size=64), min_size=1, max_size=4),  # raw and multipart garbage
    values.map(lambda v: [msgpack.packb(v, use_bin_type=True)]),  # well-formed msgpack
    st.lists(mutated_valid(), min_size=1, max_size=2),
)


def harmless(parts: list[bytes]) -> bool:
    """Not a valid message that names the live cluster's scheduler, worker, pool or job."""
    if len(parts) != 1:
        return True
    try:
        kind, fields = decode(parts[0])
    except ProtocolError:
        return True
    return not (_names(fields) & REAL_NAMES) and not (
        kind == "request" and fields.get("op") in ("run", "push")
    )


def _names(value: object) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return {n for k, v in value.items() for n in _names(k) | _names(v)}
    if isinstance(value, list):
        return {n for v in value for n in _names(v)}
    return set()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def dealer(ctx: zmq.Context, cluster: Cluster, server: str) -> zmq.Socket:
    """A connection with worker w1's key: hostile frames from a key holder reach the
    decoders (a stranger's never get past the handshake)."""
    return cluster.dealer(ctx, server, as_key="w1")


def scheduler_counters(cluster: Cluster) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "zcron", "status", "-c", str(cluster.config_path), "--json"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return json.loads(out.stdout)["schedulers"]["a"]["counters"]


def start_cluster(procs: Processes, cluster: Cluster, command: str = "true") -> None:
    (cluster.schedules / "tick").write_text(f"# name: {JOB}\n* * * * * *  -  {command}\n")
    config = str(cluster.config_path)
    procs.start("sink", "-c", config)
    wait_until(lambda: cluster.get_json_or_none("/api/jobs") is not None, 15, "the sink's HTTP")
    procs.start("scheduler", "-c", config)
    procs.start("worker", "-c", config, "--id", "w1")
    wait_until(lambda: cluster.runs(job=JOB, status="ok"), 20, "the first run")


def every_tick_once(cluster: Cluster, first: float, last: float) -> dict | None:
    """{tick: count} over [first, last] once nothing is spooled and every tick is stored."""
    if spooled(cluster):
        return None
    counts = tick_counts(cluster.runs(job=JOB, limit=1000), JOB, first, last)
    return counts if min(counts.values()) > 0 else None


def test_fuzzed_frames_on_every_socket_are_dropped_counted_and_ticks_run_once(
    procs: Processes, tmp_path: Path, ctx: zmq.Context
) -> None:
    cluster = make_cluster(tmp_path)
    start_cluster(procs, cluster)
    targets = [
        dealer(ctx, cluster, "a"),
        dealer(ctx, cluster, "sink"),
    ]
    first = math.ceil(time.time()) + 1.0
    stop_at = time.monotonic() + FUZZ_S
    sent = [0]

    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(batch=st.lists(st.tuples(frames, st.integers(0, 1)), min_size=1, max_size=20))
    def fuzz(batch: list[tuple[list[bytes], int]]) -> None:
        for parts, target in batch:
            if time.monotonic() > stop_at or not harmless(parts):
                continue
            try:
                targets[target].send_multipart(parts, zmq.NOBLOCK)
                sent[0] += 1
            except zmq.Again:
                pass  # the high-water mark: the flood test measures that path

    while time.monotonic() < stop_at:  # hypothesis has no time budget: rounds of 50
        fuzz()
    last = math.floor(time.time()) - 1.0
    print(f"fuzz: {sent[0]} messages in {FUZZ_S:.0f} s")
    assert sent[0] > 1000, sent[0]
    assert all(p.poll() is None for p in procs.started), "a process died under fuzzing"

    counts = wait_until(lambda: every_tick_once(cluster, first, last), 20, "every tick stored")
    assert set(counts.values()) == {1}, {t: n for t, n in counts.items() if n != 1}
    assert metric_total(cluster, "zcron_rejected_messages_total") > 100
    assert scheduler_counters(cluster)["rejected"] > 100


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


FLOOD = 100_000
MAX_RSS_GROWTH = 32 << 20  # measured ~14 MiB; unbounded queues would hold ~70 MiB


def test_a_flood_of_100k_frames_meets_the_hwm_with_sink_memory_bounded(
    procs: Processes, tmp_path: Path, ctx: zmq.Context
) -> None:
    cluster = make_cluster(tmp_path)
    sink = procs.start("sink", "-c", str(cluster.config_path))
    wait_until(lambda: cluster.get_json_or_none("/api/jobs") is not None, 15, "the sink's HTTP")
    base = rss_bytes(sink.pid)
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_bytes(sink.pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    # Valid-looking results (one field wrong, so each is fully decoded, then dropped).
    bad = record(run_id="f" * 32, job="flood", tick=1.0, stdout_tail="x" * 400)
    frame = encode("result", record={**bad, "status": "bogus"})
    flooder = dealer(ctx, cluster, "sink")
    blocked = 0
    try:
        for _ in range(FLOOD):
            while True:
                try:
                    flooder.send(frame, zmq.NOBLOCK)
                    break
                except zmq.Again:  # the high-water mark holds the flood back
                    blocked += 1
                    time.sleep(0.001)
        assert cluster.get_json("/api/runs?limit=1") == []  # serving during the flood
        wait_until(
            lambda: metric_total(cluster, "zcron_rejected_messages_total") >= FLOOD,
            60,
            "all dropped",
        )
    finally:
        done.set()
        sampler.join()
    assert blocked > 0, "the flood never met the high-water mark"
    print(f"flood: RSS {base >> 20} MiB, peak {peak[0] >> 20} MiB, HWM met {blocked} times")
    assert peak[0] - base < MAX_RSS_GROWTH, f"RSS grew {(peak[0] - base) >> 20} MiB"

    honest = dealer(ctx, cluster, "sink")
    honest.send(
        encode(
            "result",
            record=record(run_id="after", job="after", tick=time.time(), status="ok", worker="w1"),
        )
    )
    assert honest.poll(5000), "no ack after the flood"
    assert decode(honest.recv()) == ("ack", {"run_ids": ["after"]})
    assert sink.poll() is None


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs for the sink's data (root only); unmounted after the test."""
    mount = tmp_path / "sinkdata"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {out.stderr.decode().strip()}")
    yield mount
    if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem is full."""
    filler = directory / "filler"
    chunk = b"\0" * (64 << 10)
    with open(filler, "wb", buffering=0) as out:  # nothing left to flush at close
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError:
            pass
    return filler


def test_a_full_sink_disk_keeps_results_spooled_until_space_returns(
    small_tmpfs: Path, procs: Processes, tmp_path: Path
) -> None:
    cluster = make_cluster(tmp_path)
    text = cluster.config_path.read_text()
    cluster.config_path.write_text(text.replace(f"{tmp_path}/sink", f"{small_tmpfs}/sink"))
    start_cluster(procs, cluster, command="head -c 3000 /dev/urandom | base64")
    first = math.ceil(time.time()) + 1.0
    filler = fill(small_tmpfs)

    wait_until(lambda: spooled(cluster) >= 3, 30, "results spooled on the worker")
    stored = len(cluster.runs(job=JOB, limit=1000))  # the sink still serves reads
    time.sleep(2.0)  # resends come every second or two: none of them may be acked
    assert spooled(cluster) >= 3 and len(cluster.runs(job=JOB, limit=1000)) == stored
    assert all(p.poll() is None for p in procs.started)

    filler.unlink()
    last = math.floor(time.time()) - 1.0
    counts = wait_until(lambda: every_tick_once(cluster, first, last), 30, "spool delivered")
    assert set(counts.values()) == {1}, {t: n for t, n in counts.items() if n != 1}
