"""runs.RunTable: a run's states and indexes, and the one `forget` that drops them all."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

import pytest

from zcron.process import Run, Tail
from zcron.runs import ARMED, EXITED, RELEASED, REPORTED, RunTable

T0 = 1_700_000_000.0


def message(run_id: str, tick: float = T0, timeout: float | None = None) -> dict:
    return {"run_id": run_id, "job": "j", "tick": tick, "attempt": 1, "scheduler": "s1",
            "pool": "default", "dispatched": T0 - 1, "timeout": timeout}  # fmt: skip


def parked_run(run_id: str, request: int, **fields: object) -> Run:
    """A run as arming leaves it: output pipes ours, the parked stdin's write end."""
    (out_r, out_w), (err_r, err_w), (go_r, go_w) = os.pipe(), os.pipe(), os.pipe()
    for fd in (out_w, err_w, go_r):
        os.close(fd)
    out, err = Tail(), Tail()
    return Run(message(run_id, **fields), "w1", request, go_w, {out_r: out, err_r: err},
               (out, err))  # fmt: skip


@pytest.fixture
def table() -> Iterator[RunTable]:
    epoll = select.epoll()
    yield RunTable(epoll)
    epoll.close()


def test_a_run_goes_armed_released_exited_reported(table: RunTable) -> None:
    run = parked_run("r1", request=7, tick=T0, timeout=5.0)
    table.add(run)
    assert run.state == ARMED and len(table) == 1
    assert table.pop_armed(T0 - 0.1) is None
    tick, due = table.pop_armed(T0)
    assert (tick, due) == (T0, run)
    run.release(T0, now_mono=10.0)
    table.released(run)
    assert run.state == RELEASED and table.next_timeout() == 15.0
    assert table.spawn_answered(7, pid=4242, at=T0) is run
    assert table.reaped(4242, 0) is run and run.state == EXITED
    rec = table.forget(run, T0 + 1)
    assert run.state == REPORTED and (rec["status"], rec["exit_code"]) == ("ok", 0)


def test_forget_drops_every_index_and_closes_the_fds(table: RunTable) -> None:
    run = parked_run("r1", request=7, tick=T0 + 60)
    table.add(run)
    fds = run.pipes()
    table.spawn_answered(7, pid=4242, at=T0)
    table.add_timeout(3.0, run)
    table.forget(run, T0)
    assert (table.by_id, table.by_fd, table.by_request, table.by_pid) == ({}, {}, {}, {})
    assert len(table) == 0 and run.pipes() == []
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert table.pop_armed(T0 + 60) == (T0 + 60, None)  # heap entries of a forgotten run
    assert table.pop_timeout(3.0) == (3.0, None)


def test_a_received_job_counts_as_busy_and_can_be_taken_back(table: RunTable) -> None:
    table.receive(message("r1"))
    assert len(table) == 1
    assert table.take_received("nope") is None
    assert table.take_received("r1")["run_id"] == "r1"
    assert len(table) == 0


def test_a_pipe_closed_at_its_end_is_not_closed_again(table: RunTable) -> None:
    run = parked_run("r1", request=7)
    table.add(run)
    first = run.pipes()[0]
    table.close_pipe(first)
    assert first not in table.by_fd and run.pipes() != []
    table.forget(run, T0)
    assert table.by_fd == {}
