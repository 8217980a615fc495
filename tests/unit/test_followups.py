"""Follow-ups decided from run outcomes (followups.py), held until done (pending.py), the
chain checks (chains.py) and the wire fields they travel in; a fake clock throughout."""

from __future__ import annotations

from pathlib import Path

import pytest

from zcron import protocol
from zcron.chains import check_chains, children_of
from zcron.errors import ProtocolError
from zcron.followups import FollowUp, FollowUps, Outcome, hook_message
from zcron.job import Job
from zcron.pending import Pending
from zcron.schedule import load_paths
from zcron.tomljobs import parse_toml

T = 1_795_000_000.0  # a tick


def job(name: str, **fields: object) -> Job:
    fields.setdefault("schedule", "" if fields.get("after") else "* * * * * *")
    return Job(name=name, timezone="UTC", command="true", source=f"jobs.toml:{len(name)}",
               **fields)  # type: ignore[arg-type]  # fmt: skip


def out(name: str, status: str = "ok", attempt: int = 1, ended: float = T + 2) -> Outcome:
    return Outcome(f"run-{name}-{attempt}", name, T, attempt, status,
                   0 if status == "ok" else 3, ended, "w1")  # fmt: skip


def decide(jobs: list[Job], outcome: Outcome, chains: FollowUps | None = None) -> list:
    by_name = {j.name: j for j in jobs}
    return (chains or FollowUps()).decide(outcome, by_name, children_of(by_name))


def test_a_failed_run_with_retries_left_is_retried_after_retry_delay_elsewhere() -> None:
    (retry,) = decide([job("a", retries=2, retry_delay=30.0)], out("a", "failed"))
    assert (retry.kind, retry.key, retry.at) == ("retry", ("a", T, 2), T + 32)
    assert retry.detail == {"avoid": "w1"}


@pytest.mark.parametrize("status", ["failed", "timeout", "killed", "lost"])
def test_the_last_attempt_that_fails_runs_the_hook_once(status: str) -> None:
    jobs = [job("a", retries=1, on_failure="page")]
    assert [f.kind for f in decide(jobs, out("a", status, attempt=1))] == ["retry"]
    (hook,) = decide(jobs, out("a", status, attempt=2))
    assert (hook.kind, hook.key, hook.at) == ("hook", ("a:on_failure", T, 2), T + 2)
    assert hook.detail == {"run_id": "run-a-2", "status": status, "exit_code": 3}


@pytest.mark.parametrize("status", ["missed", "refused"])
def test_missed_and_refused_are_not_retried_but_hooked(status: str) -> None:
    (hook,) = decide([job("a", retries=3, on_failure="page")], out("a", status))
    assert hook.kind == "hook"


@pytest.mark.parametrize("status", ["ok", "skipped"])
def test_ok_and_skipped_runs_set_off_no_hook_or_retry(status: str) -> None:
    assert decide([job("a", retries=3, on_failure="page")], out("a", status)) == []


def test_a_hooks_own_failure_sets_off_nothing() -> None:
    assert decide([job("a", on_failure="exit 1")], out("a:on_failure", "failed")) == []


def test_a_child_fires_with_its_parents_tick_once_every_parent_ended_ok() -> None:
    jobs = [job("p1"), job("p2"), job("c", after=("p1", "p2"))]
    chains = FollowUps()
    assert decide(jobs, out("p1"), chains) == []
    assert chains.progress == {("c", T): ["p1"]}
    (child,) = decide(jobs, out("p2", ended=T + 5), chains)
    assert (child.kind, child.key, child.at) == ("child", ("c", T, 1), T + 5)
    assert chains.progress == {}


def test_a_child_is_skipped_naming_the_parent_that_failed_after_its_retries() -> None:
    jobs = [job("p", retries=1), job("c", after=("p",))]
    assert [f.kind for f in decide(jobs, out("p", "failed"))] == ["retry"]
    (skip,) = decide(jobs, out("p", "timeout", attempt=2))
    assert (skip.kind, skip.key) == ("skip", ("c", T, 1))
    assert "parent p's run run-p-2 of this tick ended timeout" in skip.detail["why"]


def test_a_retried_parent_that_succeeds_fires_the_child() -> None:
    jobs = [job("p", retries=1), job("c", after=("p",))]
    (child,) = decide(jobs, out("p", "ok", attempt=2))
    assert child.key == ("c", T, 1)


def test_chains_forget_ticks_whose_parents_never_all_end() -> None:
    chains = FollowUps()
    decide([job("p1"), job("p2"), job("c", after=("p1", "p2"))], out("p1"), chains)
    assert chains.forget_before(T) == 0 and chains.forget_before(T + 1) == 1


def test_hook_message_carries_the_failed_runs_end() -> None:
    failed = job("a", on_failure=("/bin/page", "oncall"), env=(("LANG", "C"),))
    hook = FollowUp("hook", "a", T, 2, T + 2, {"run_id": "r1", "status": "killed",
                                               "exit_code": None})  # fmt: skip
    msg = {"job": "a", "tick": T, "attempt": 2, "env": {"LANG": "C"}, "command": "true",
           "mailto": "ops@example.com", "delay": 1.5}  # fmt: skip
    hooked = hook_message(msg, failed, hook)
    assert hooked["job"] == "a:on_failure" and hooked["command"] == ["/bin/page", "oncall"]
    assert hooked["env"] == {"LANG": "C", "ZCRON_STATUS": "killed", "ZCRON_EXIT_CODE": "",
                             "ZCRON_FAILED_RUN_ID": "r1"}  # fmt: skip
    assert "mailto" not in hooked and hooked["delay"] == 0.0 and hooked["tick"] == T


# -- pending.py -------------------------------------------------------------------------


def pending(tmp_path: Path, jobs: list[Job]) -> Pending:
    store = Pending(str(tmp_path / "pending"), {}, (86400.0, 10.0))
    store.set_jobs({j.name: j for j in jobs})
    return store


def test_the_owner_starts_a_due_follow_up_once_and_tells_its_peers(tmp_path: Path) -> None:
    store = pending(tmp_path, [job("a", retries=1, retry_delay=5.0)])
    store.note(out("a", "failed"), ours=True)
    started: list[FollowUp] = []
    store.fire_due(T + 6, lambda j, at: True, lambda f, j: started.append(f))
    assert started == []  # due at T + 7
    store.fire_due(T + 7, lambda j, at: True, lambda f, j: started.append(f))
    store.fire_due(T + 8, lambda j, at: True, lambda f, j: started.append(f))
    assert [f.key for f in started] == [("a", T, 2)]
    (sent,) = store.take_messages()
    assert sent["runs"] == [["a", T, 2]]
    assert [Outcome.from_wire(row) for row in sent["outcomes"]] == [out("a", "failed")]
    assert store.take_messages() == []


def test_a_follow_up_waits_for_its_owner_and_survives_a_restart(tmp_path: Path) -> None:
    jobs = [job("a", retries=1)]
    store = pending(tmp_path, jobs)
    store.note(out("a", "failed"))
    store.fire_due(T + 3, lambda j, at: False, lambda f, j: pytest.fail("not ours"))
    assert store.next_at(T + 3, 2.0) == T + 5  # due, not ours: looked at again
    store.close()
    again = pending(tmp_path, jobs)  # the owner died; so did we, and we came back
    started: list[FollowUp] = []
    again.fire_due(T + 4, lambda j, at: True, lambda f, j: started.append(f))
    assert [f.key for f in started] == [("a", T, 2)]
    again.close()


def test_a_follow_up_a_peer_or_worker_started_is_never_started_here(tmp_path: Path) -> None:
    store = pending(tmp_path, [job("p"), job("c", after=("p",))])
    store.heard_done([["c", T, 1]], T + 1)  # the claim came before the parent's end
    store.note(out("p"))
    assert not store.items
    store.note(out("p", "ok", attempt=1))
    store.fire_due(T + 9, lambda j, at: True, lambda f, j: pytest.fail("done elsewhere"))


def test_a_half_finished_chain_survives_a_restart(tmp_path: Path) -> None:
    jobs = [job("p1"), job("p2"), job("c", after=("p1", "p2"))]
    store = pending(tmp_path, jobs)
    store.note(out("p1"))
    store.close()
    again = pending(tmp_path, jobs)
    again.note(out("p2"))
    assert list(again.items) == [("c", T, 1)]
    again.close()


def test_follow_ups_nobody_started_are_dropped_and_counted(tmp_path: Path) -> None:
    store = pending(tmp_path, [job("a", retries=1, misfire_grace=60.0)])
    store.note(out("a", "failed"))
    store.fire_due(T + 2 + 60 + 601, lambda j, at: False, lambda f, j: None)
    assert not store.items and store.counters == {"followups_expired": 1}


# -- chains.py and the TOML keys -------------------------------------------------------


def test_unknown_parents_and_cycles_are_errors_at_the_jobs_line() -> None:
    jobs = {j.name: j for j in [job("p"), job("c", after=("p",)), job("x", after=("y",)),
                                 job("y", after=("x",)), job("z", after=("nope",)),
                                 job("zz", after=("z",))]}  # fmt: skip
    good, errors = check_chains(jobs)
    assert sorted(good) == ["c", "p"]
    text = "\n".join(map(str, errors))
    assert "jobs.toml:1: job \"x\": after = ['y'] makes a cycle" in text
    assert 'jobs.toml:1: job "y"' in text
    assert 'jobs.toml:1: job "z": after names "nope"' in text
    assert 'jobs.toml:2: job "zz": after names "z"' in text


def test_a_self_chain_is_a_cycle() -> None:
    good, (error,) = check_chains({"s": job("s", after=("s",))})
    assert not good and "makes a cycle" in str(error)


def test_toml_after_and_on_failure_parse_with_line_numbers(tmp_path: Path) -> None:
    text = ('[p]\nschedule = "@daily"\ncommand = "x"\non_failure = ["/bin/page", "me"]\n\n'
            '[c]\nafter = ["p"]\ncommand = "y"\n')  # fmt: skip
    (p, c), errors = parse_toml("jobs.toml", text, "UTC")
    assert not errors and p.on_failure == ("/bin/page", "me")
    assert c.after == ("p",) and c.schedule == "" and c.next_after(T) is None
    _, (error,) = parse_toml("jobs.toml", text.replace('after = ["p"]', 'after = ["p"]\n'
                                                      'schedule = "@daily"'), "UTC")  # fmt: skip
    assert str(error).startswith("jobs.toml:8: [c] schedule: a chained job")
    _, (error,) = parse_toml("jobs.toml", text.replace('["p"]', '["p", "p"]'), "UTC")
    assert str(error).startswith("jobs.toml:7: [c] after: a parent is listed twice")


def test_zcron_check_reports_a_cycle_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[x]\nafter = ["y"]\ncommand = "true"\n')
    (tmp_path / "b.toml").write_text('[y]\nafter = ["x"]\ncommand = "true"\n')
    result = load_paths([str(tmp_path)])
    assert not result.jobs
    assert [f"{e.path}:{e.line}" for e in result.errors] == [
        f"{tmp_path}/a.toml:1", f"{tmp_path}/b.toml:1"]  # fmt: skip


def test_names_ending_in_on_failure_are_kept_for_hooks() -> None:
    good, (error,) = check_chains({"a:on_failure": job("a:on_failure")})
    assert not good and "failure hooks" in str(error)


# -- the wire --------------------------------------------------------------------------


def test_finished_carries_a_runs_end_all_or_nothing() -> None:
    base = {"run_id": "r", "job": "a", "status": "failed"}
    full = {**base, "tick": T, "attempt": 2, "exit_code": 3, "ended": T + 1}
    assert protocol.decode(protocol.encode("finished", **full))[1] == full
    assert protocol.decode(protocol.encode("finished", **base))[1] == base
    for bad in ({**base, "tick": T}, {**full, "attempt": 0}, {**full, "ended": float("nan")},
                {**full, "status": "great"}):  # fmt: skip
        with pytest.raises(ProtocolError):
            protocol.decode(protocol.encode("finished", **bad))


def test_outcomes_and_accepted_runs_are_validated() -> None:
    row = out("a", "lost").wire()
    msg = {"scheduler": "a", "outcomes": [row], "runs": [["a", T, 2]]}
    assert protocol.decode(protocol.encode("outcomes", **msg))[1] == msg
    for bad in ([*row[:4], "gone", *row[5:]], row[:7], [*row[:6], float("inf"), "w1"],
                [*row[:3], True, *row[4:]]):  # fmt: skip
        with pytest.raises(ProtocolError):
            protocol.decode(protocol.encode("outcomes", **{**msg, "outcomes": [bad]}))
    for bad_key in (["a", T], ["a", T, 0], ["", T, 1], ["a", "T", 1]):
        with pytest.raises(ProtocolError):
            protocol.decode(protocol.encode("accepted", worker="w1", ticks=[],
                                            runs=[bad_key]))  # fmt: skip
    with pytest.raises(ProtocolError, match="too_large|longer"):
        protocol.decode(protocol.encode("outcomes", **{**msg, "runs": [["a", T, 1]] * 2001}))


def test_hook_runs_have_a_metrics_series_from_the_start() -> None:
    from zcron.sink import Reports

    reports = Reports(["a"])
    table = [{"name": "j", "on_failure": True}, {"name": "k"}, {"name": "c", "after": ["j"]}]
    reports.note_jobs({"scheduler": "a", "sent": T, "jobs": table}, T)
    assert sorted(reports.metric_names()) == ["c", "j", "j:on_failure", "k"]
    assert reports.snapshot(T)[0]["jobs"][2]["after"] == ["j"]


def test_outcomes_out_of_the_window_are_dropped_and_counted(tmp_path: Path) -> None:
    dropped: list[str] = []
    store = Pending(str(tmp_path / "pending"), {}, (86400.0, 10.0), dropped.append)
    store.set_jobs({"a": job("a", retries=1)})
    far = Outcome("r", "a", T, 1, "failed", 1, T + 3600, "w1")
    store.on_outcomes({"outcomes": [far.wire()], "runs": []}, T)
    old = T - 2 * 86400
    store.on_accepted({"worker": "w1", "ticks": [], "runs": [["a", old, 1], ["a", T, 1]]}, T)
    store.on_finished({"run_id": "r", "job": "a", "status": "failed", "tick": old,
                       "attempt": 1, "ended": T}, "w1", T)  # fmt: skip
    assert not store.items
    assert [d.split(":")[0] for d in dropped] == ["dropped outcomes", "dropped finished"]
    store.on_finished({"run_id": "r", "job": "a", "status": "failed", "tick": T,
                       "attempt": 1, "ended": T + 1}, "w1", T)  # fmt: skip
    assert list(store.items) == [("a", T, 2)]


def test_a_worker_reports_ends_only_of_runs_it_took(tmp_path: Path) -> None:
    dropped: list[str] = []
    store = Pending(str(tmp_path / "pending"), {}, (86400.0, 10.0), dropped.append)
    store.set_jobs({"a": job("a", on_failure="page"), "b": job("b")})
    end = {"run_id": "r", "job": "a", "status": "failed", "tick": T, "attempt": 1, "ended": T}
    store.on_accepted({"worker": "w1", "ticks": [], "runs": [["a", T, 1], ["b", T, 1]]}, T)
    assert list(store.taken) == [("w1", "a", T, 1)]  # b's end sets nothing off
    store.on_finished(end, "w2", T)  # another worker's key: not its run
    assert not store.items and "did not take" in dropped[0]
    store.on_finished(end, "w1", T)
    store.on_finished(end, "w1", T)  # told twice: one hook
    assert list(store.items) == [("a:on_failure", T, 1)] and len(dropped) == 2


def test_a_follow_up_whose_start_stalled_stays_pending(tmp_path: Path) -> None:
    store = pending(tmp_path, [job("a", retries=1)])
    store.note(out("a", "failed"))

    def stalled(followup: FollowUp, job: Job) -> None:
        raise TimeoutError("stalled")  # as fence.Stalled: nothing was sent

    with pytest.raises(TimeoutError):
        store.fire_due(T + 3, lambda j, at: True, stalled)
    assert list(store.items) == [("a", T, 2)] and store.take_messages() == []


def test_many_ends_go_to_the_peers_in_messages_the_wire_accepts(tmp_path: Path) -> None:
    store = pending(tmp_path, [job("a", retries=1)])
    for n in range(4500):
        store.note(Outcome(f"r{n}", "a", T + n, 2, "failed", 1, T + n, None), ours=True)
    messages = store.take_messages()
    assert [len(m["outcomes"]) for m in messages] == [2000, 2000, 500]
    for fields in messages:
        protocol.decode(protocol.encode("outcomes", scheduler="a", **fields))


def test_only_a_scheduler_key_sends_outcomes_and_only_as_itself() -> None:
    from zcron.roles import Roles

    roles = Roles({"a": "tcp://x:1", "b": "tcp://y:1"}, {})
    msg = {"scheduler": "a", "outcomes": [], "runs": []}
    roles.check("outcomes", msg, roles.sender("a"))
    for key, reason in (("w1", "unauthorized"), ("b", "impersonation")):
        with pytest.raises(ProtocolError) as caught:
            roles.check("outcomes", msg, roles.sender(key))
        assert caught.value.reason == reason
