"""plan.Plan: the heap of due entries, generations, bursts' extra lead, one-off pushes."""

from __future__ import annotations

import pytest

from zcron.job import Job
from zcron.plan import ARM_RATE_PER_S, LEAD_S, Due, Plan

T0 = 1_700_000_000.0


def job(name: str = "j", **fields: object) -> Job:
    return Job(name=name, schedule="* * * * * *", timezone="UTC", command="true",
               source="t:1", **fields)  # fmt: skip


def test_entries_come_due_lead_s_before_their_tick_in_order() -> None:
    plan = Plan()
    a, b = job("a"), job("b", overlap="forbid")
    plan.jobs = {"a": a, "b": b}
    plan.plan(a, T0 + 2)
    plan.plan(b, T0 + 1)
    assert plan.pop_due(T0) is None
    assert plan.pop_due(T0 + 1) == Due(T0 + 1, T0 + 1, 1, "b")  # forbid: at the instant
    assert plan.pop_due(T0 + 2) == Due(T0 + 2 - LEAD_S, T0 + 2, 1, "a")


def test_a_burst_at_one_instant_is_dispatched_earlier_and_earlier() -> None:
    plan = Plan()
    for i in range(3):
        plan.plan(job(f"j{i}"), T0)
    leads = sorted(T0 - entry.dispatch_at for entry in plan.due)
    assert leads == pytest.approx(
        [LEAD_S, LEAD_S + 1 / ARM_RATE_PER_S, LEAD_S + 2 / ARM_RATE_PER_S]
    )


def test_a_changed_or_removed_jobs_older_entries_are_not_current() -> None:
    plan = Plan()
    old = job()
    plan.jobs = {"j": old}
    plan.plan(old, T0)
    new = job(timeout=5.0)
    plan.plan(new, T0 + 1)
    plan.jobs = {"j": new}
    assert plan.current(plan.pop_due(T0)) is None
    assert plan.current(plan.pop_due(T0 + 1)) is new
    plan.plan(new, T0 + 2)
    plan.replace_jobs({})
    assert plan.current(plan.pop_due(T0 + 2)) is None
    assert plan.next_instant == {}


def test_a_push_fires_once_and_is_then_forgotten() -> None:
    plan = Plan()
    plan.plan_push("push:1", {"tick": T0})
    entry = plan.pop_due(T0)
    assert entry.dispatch_at == T0 - LEAD_S
    assert plan.take_push(entry) == {"tick": T0}
    assert plan.take_push(entry) is None
    assert plan.pushed == {} and "push:1" not in plan.generation


def test_handled_is_the_newer_of_the_last_fire_and_a_tick_waiting_here() -> None:
    plan = Plan()
    plan.queued["j"] = T0 + 3
    assert plan.handled("j", T0) == T0 + 3
    assert plan.handled("j", T0 + 5) == T0 + 5
    assert plan.handled("j", None) is None
