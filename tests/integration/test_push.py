"""Pipelined pushes from one client: batched commits, and an acknowledged push is on disk."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.harness import Processes, make_cluster, wait_until
from zcron.client import SchedulerClient
from zcron.config import Config, load_config
from zcron.errors import ZcronError
from zcron.ledger import TickLedger

pytestmark = pytest.mark.timeout(90)


def answers(config: Config) -> bool:
    try:
        with SchedulerClient(config, "a") as client:
            return client.ask("status", {})["ok"]
    except ZcronError:
        return False


def test_every_acknowledged_push_survives_a_sigkill_right_after_the_ack(
    tmp_path: Path, procs: Processes
) -> None:
    cluster = make_cluster(tmp_path)
    scheduler = procs.start("scheduler", "-c", str(cluster.config_path))
    config = load_config(str(cluster.config_path))
    wait_until(lambda: answers(config), 20, "the scheduler")
    at = time.time() + 3600  # delayed: they stay in the ledger, none fires meanwhile
    request = {"command": ["true"], "pool": "default", "timeout": None, "at": at}
    with SchedulerClient(config, "a") as client:
        replies = list(client.ask_many("push", ({**request} for _ in range(2000))))
    scheduler.send_signal(signal.SIGKILL)  # at once: no flush, no close of the ledger
    scheduler.wait(10)
    assert all(reply["ok"] for reply in replies), [r for r in replies if not r["ok"]][:3]
    acknowledged = {reply["body"]["job"] for reply in replies}
    assert len(acknowledged) == 2000
    ledger = TickLedger(str(tmp_path / "scheduler" / "ledger"))
    try:
        saved = ledger.pushes()
    finally:
        ledger.env.close()
    assert acknowledged <= set(saved), f"{len(acknowledged - set(saved))} acknowledged, not saved"
    assert {msg["run_id"] for msg in saved.values()} >= {r["body"]["run_id"] for r in replies}


def test_pipelined_pushes_run_and_a_bad_one_is_refused_in_its_place(
    tmp_path: Path, procs: Processes
) -> None:
    cluster = make_cluster(tmp_path)
    procs.start("sink", "-c", str(cluster.config_path))
    procs.start("worker", "-c", str(cluster.config_path), "--id", "w1")
    procs.start("scheduler", "-c", str(cluster.config_path))
    config = load_config(str(cluster.config_path))
    wait_until(lambda: answers(config), 20, "the scheduler")
    marks = [tmp_path / f"ran-{n}" for n in range(40)]
    requests = [{"command": ["touch", str(mark)], "pool": "default", "timeout": None,
                 "at": time.time()} for mark in marks]  # fmt: skip
    requests.insert(20, {**requests[0], "pool": ""})
    with SchedulerClient(config, "a") as client:
        replies = list(client.ask_many("push", requests, window=8))
    assert [reply["ok"] for reply in replies] == [True] * 20 + [False] + [True] * 20
    assert "pool must be a pool name" in replies[20]["error"]
    wait_until(lambda: all(mark.exists() for mark in marks), 30, "every pushed command to run")
