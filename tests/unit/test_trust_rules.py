"""The trust rules that only compute (spec §7): values bounded at decode, roles per key,
cron's file rule, one bad spool byte costing one record, state directories held once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zcron import ledger as ledger_module
from zcron.auth import check_keys_dir, load_secret, write_keypair
from zcron.errors import ConfigError, ProtocolError
from zcron.filetrust import untrusted
from zcron.ledger import LedgerFull, TickLedger
from zcron.protocol import check_window, decode, encode, record
from zcron.roles import ANYONE, CLIENT, SCHEDULER, SINK, WORKER, Roles
from zcron.spool import Spool, frame, read_segment
from zcron.statedir import DirectoryBusy, hold

JOB = dict(run_id="r", job="j", tick=1.0, attempt=1, scheduler="a", pool="default",
           command="true", shell="/bin/sh", user=None, env={}, cwd=None, timeout=None,
           on_timeout="kill", dispatched=1.0)  # fmt: skip


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e300, 2.0**60])
def test_non_finite_and_huge_numbers_are_rejected_at_decode(bad: float) -> None:
    for frame_ in (
        encode("job", **{**JOB, "tick": bad}),
        encode("job", **{**JOB, "timeout": bad}),
        encode("claims", scheduler="a", ticks=[["j", bad]]),
        encode("accepted", worker="w", ticks=[["j", bad]]),
        encode("result", record=record(run_id="r", job="j", tick=1.0, status="ok", finished=bad)),
    ):
        with pytest.raises(ProtocolError):
            decode(frame_)


def test_ill_typed_and_out_of_range_job_fields_are_rejected() -> None:
    for change in ({"timeout": "x"}, {"timeout": 0}, {"attempt": 0}, {"on_timeout": "boom"},
                   {"run_id": ""}, {"env": {"A": 1}}):  # fmt: skip
        with pytest.raises(ProtocolError):
            decode(encode("job", **{**JOB, **change}))
    decode(encode("job", **JOB))


def test_multi_part_tables_are_bounded_in_count() -> None:
    with pytest.raises(ProtocolError):
        decode(encode("jobs", scheduler="a", jobs=[], sent=1.0, part=0, parts=10**9))
    with pytest.raises(ProtocolError):
        decode(encode("jobs", scheduler="a", jobs=[], sent=1.0, part=5, parts=2))


def test_times_outside_the_window_are_refused() -> None:
    check_window(100.0, 100.0, 10, 3, "tick")
    for value in (89.0, 103.5):
        with pytest.raises(ProtocolError, match="out_of_window|from now"):
            check_window(value, 100.0, 10, 3, "tick")


ROLES = Roles({"a": "tcp://x:1", "b": "tcp://y:1"}, {"deploy": ("deploy",)})


def test_roles_follow_key_names() -> None:
    assert [ROLES.role_of(n) for n in ("a", "sink", "cli", "deploy", "w1")] == [
        SCHEDULER, SINK, CLIENT, CLIENT, WORKER]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "msg", "key", "allowed"),
    [
        ("heartbeat", {"scheduler": "a"}, "a", True),
        ("heartbeat", {"scheduler": "b"}, "a", False),  # another scheduler's id
        ("heartbeat", {"scheduler": "a"}, "w1", False),  # a worker posing as a scheduler
        ("claims", {"scheduler": "a"}, "w1", False),
        ("ready", {"worker": "w1"}, "w1", True),
        ("ready", {"worker": "w2"}, "w1", False),
        ("accepted", {"worker": "w1"}, "a", False),
        ("started", {"worker": "w1"}, "w1", True),
        ("started", {"worker": "w2"}, "w1", False),  # another worker's runs
        ("started", {"worker": "w1"}, "a", False),  # a scheduler posing as a worker
        ("request", {"op": "push"}, "cli", True),
        ("request", {"op": "push"}, "w1", False),  # a worker's key pushes nothing
        ("request", {"op": "push"}, "a", False),
        ("jobs", {"scheduler": "a"}, "a", True),
        ("jobs", {"scheduler": "a"}, "sink", False),
        ("ack", {}, "w1", False),
    ],
)
def test_each_message_needs_its_role_and_its_own_id(
    kind: str, msg: dict, key: str, allowed: bool
) -> None:
    check = lambda: ROLES.check(kind, msg, ROLES.sender(key))  # noqa: E731
    if allowed:
        check()
    else:
        with pytest.raises(ProtocolError):
            check()
    ROLES.check(kind, msg, ANYONE)  # no keys (insecure = true): anyone may do anything


def test_records_are_written_by_the_worker_that_ran_or_the_scheduler_that_dispatched() -> None:
    rec = record(run_id="r", job="j", tick=1.0, status="ok", worker="w1", scheduler="a")
    for key in ("w1", "a"):
        ROLES.check("result", {"record": rec}, ROLES.sender(key))
    for key in ("w2", "b", "cli", "sink"):
        with pytest.raises(ProtocolError):
            ROLES.check("result", {"record": rec}, ROLES.sender(key))
    # a turn's records: a worker or scheduler key may send them (each record is then
    # checked alone as above, at the sink); a client or the sink may not
    for key in ("w1", "a"):
        ROLES.check("results", {"records": [rec]}, ROLES.sender(key))
    for key in ("cli", "sink"):
        with pytest.raises(ProtocolError):
            ROLES.check("results", {"records": [rec]}, ROLES.sender(key))


def test_client_users_come_from_the_config() -> None:
    assert ROLES.users_of("deploy") == ("deploy",)
    assert ROLES.users_of("cli") == ()  # a client key with no users may run nothing
    assert ROLES.users_of(None) is None  # no keys: no rule


def test_keygen_never_follows_a_symlink_nor_overwrites(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    write_keypair(str(keys), "a")
    with pytest.raises(ConfigError, match="exists"):
        write_keypair(str(keys), "a")
    target = tmp_path / "victim"
    target.write_text("keep me")
    (keys / "b.key_secret").symlink_to(target)
    with pytest.raises(ConfigError, match="exists"):
        write_keypair(str(keys), "b")
    assert target.read_text() == "keep me"
    (tmp_path / "link").symlink_to(keys)
    with pytest.raises(ConfigError, match="symlink"):
        write_keypair(str(tmp_path / "link"), "c")


def test_loose_keys_directories_and_secrets_are_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    write_keypair(str(keys), "a")
    keys.chmod(0o757)
    with pytest.raises(ConfigError, match="open to others"):
        check_keys_dir(str(keys))
    keys.chmod(0o750)
    (keys / "a.key_secret").chmod(0o640)
    with pytest.raises(ConfigError, match="readable or writable by others"):
        load_secret(str(keys), "a")


def test_schedule_files_others_could_write_are_untrusted(tmp_path: Path) -> None:
    path = tmp_path / "jobs"
    path.write_text("* * * * * * - true\n")
    path.chmod(0o644)
    assert untrusted(path.stat()) is None
    path.chmod(0o646)
    assert "writable by others" in untrusted(path.stat())
    path.chmod(0o644)
    os.link(path, tmp_path / "jobs2")
    assert "hard links" in untrusted(path.stat())
    stat = os.stat(path)
    foreign = os.stat_result((stat.st_mode, 0, 0, 1, 65534, 65534, *stat[6:]))
    assert "owned by" in untrusted(foreign)


def test_one_bad_byte_in_a_spool_segment_costs_one_record(tmp_path: Path) -> None:
    recs = [record(run_id=f"r{n}", job="j", tick=1.0, status="ok") for n in range(5)]
    data = bytearray(b"".join(frame(r) for r in recs))
    data[len(frame(recs[0])) + 20] ^= 0xFF  # inside the second record
    with pytest.raises(ValueError) as caught:
        read_segment(bytes(data))
    assert sorted(caught.value.args[1]) == ["r0", "r2", "r3", "r4"]
    (tmp_path / "seg-1.rec").write_bytes(bytes(data))
    assert sorted(Spool(str(tmp_path)).pending) == ["r0", "r2", "r3", "r4"]


def test_a_state_directory_is_held_by_one_process(tmp_path: Path) -> None:
    fd = hold(str(tmp_path / "state"), "scheduler a")
    try:
        assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
        with pytest.raises(DirectoryBusy, match=f"pid {os.getpid()}"):
            hold(str(tmp_path / "state"), "scheduler a")  # flock: per open file
    finally:
        os.close(fd)
    os.close(hold(str(tmp_path / "state"), "scheduler a"))


def test_a_full_ledger_refuses_a_push_instead_of_crashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = TickLedger(str(tmp_path / "ledger"))
    monkeypatch.setattr(ledger_module, "MAX_MAP_SIZE", ledger.env.info()["map_size"])
    big = {**JOB, "command": "x" * 60_000}
    with pytest.raises(LedgerFull):
        for n in range(100_000):
            ledger.save_push(f"push:{n}", big)
    for n in range(2000):  # claims go on being noted; a flush that cannot write says so
        ledger.note(f"job-{n}" * 20, 1.0)
    ledger.flush()
    assert ledger.last("job-0" * 20) == 1.0
    ledger.env.close()
