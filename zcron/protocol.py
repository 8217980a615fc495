"""Wire messages: small versioned msgpack maps, defined and validated in this one place.

Every message is a map {"v": VERSION, "t": TYPE, ...fields}. `decode` checks the version,
the type, every field's type and size, and rejects unknown fields, raising ProtocolError
with a short `reason` that labels `zcron_rejected_messages_total`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from zcron.errors import ProtocolError

VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20
MAX_NAME = 256
MAX_TEXT = 64 * 1024
MAX_PAIRS = 20_000
NAMES_PER_PART = 10_000
JOBS_PER_PART = 2_000
PAUSES_PER_PART = 1_000  # [job, paused, stamp, by]: under 600 bytes each
MAX_PARTS = 500  # a table of 1,000,000 jobs; more parts are a forgery, not a cluster
MAX_SLOTS = 100_000
MAX_ENDED = 4096  # runs ended in one turn, reported in one `ready`
MAX_RESULTS = 64  # records in one `results` (~25 KiB each at most: well inside a message)
# Every number on the wire is finite and within this (a float tick of 1e300 or NaN once
# stopped a job for good, and NaN breaks heap order silently): Unix seconds, counts, ids.
MAX_NUMBER = float(1 << 53)
MAX_ATTEMPT = 1000
MAX_DELAY_S = 86400.0  # jitter
MAX_OUTCOMES = 2_000  # rows of an `outcomes` message: under 700 bytes each
STATUSES = ("ok", "failed", "timeout", "killed", "lost", "skipped", "missed", "refused")

NUM = (int, float)
OPT_NUM = (int, float, type(None))
OPT_STR = (str, type(None))
OPT_INT = (int, type(None))

# field -> (accepted types, required, max length for str/list/dict)
RECORD = {
    "run_id": (str, True, MAX_NAME),
    "job": (str, True, MAX_NAME),
    "tick": (NUM, True, 0),
    "attempt": (int, True, 0),
    "scheduler": (OPT_STR, True, MAX_NAME),
    "worker": (OPT_STR, True, MAX_NAME),
    "pool": (str, True, MAX_NAME),
    "dispatched": (OPT_NUM, True, 0),
    "started": (OPT_NUM, True, 0),
    "finished": (OPT_NUM, True, 0),
    "exit_code": (OPT_INT, True, 0),
    "signal": (OPT_INT, True, 0),
    "status": (str, True, 16),
    "stdout_tail": (str, True, MAX_TEXT),
    "stderr_tail": (str, True, MAX_TEXT),
    "delay": (OPT_NUM, False, 0),  # the job's jitter delay after its tick, when it has one
}

SCHEMAS: dict[str, dict[str, tuple[Any, bool, int]]] = {
    # worker -> scheduler: free slots (credit) and liveness; `seen` counts jobs received
    "ready": {
        "worker": (str, True, MAX_NAME),
        "pools": (list, True, 64),
        "slots": (int, True, 0),
        "free": (int, True, 0),
        "seen": (int, True, 0),
        "running": (list, True, 4096),
        "running_jobs": (list, False, 4096),  # the job of each run in `running`, same order
        "parked": (list, False, 4096),  # runs received or armed, not released yet
        # prefetch (zcron/prefetch.py): jobs it takes beyond its free slots into its local
        # queue, and the queued ones (never started: a subset of `parked`)
        "room": (int, False, 0),
        "queued": (list, False, 4096),
        # batched into the turn's one `ready` (fewer sends and wake-ups): the runs that
        # ended, [[run_id, job, status, tick, attempt, exit_code, ended], ...] (as
        # `finished`: to every scheduler, each decides the follow-ups), and the ticks
        # received, [[job, tick], ...], with the same runs as [[job, tick, attempt], ...]
        # (as `accepted`)
        "ended": (list, False, MAX_ENDED),
        "ticks": (list, False, MAX_PAIRS),
        "runs": (list, False, MAX_PAIRS),
        "spool": (int, False, 0),  # results waiting for the sink's ack
        "handshake_failures": (int, False, 0),  # refused CURVE handshakes (with keys)
        "mail_failures": (int, False, 0),  # mails sendmail did not take (or no sendmail)
    },
    # scheduler -> worker: one attempt of one tick
    "job": {
        "run_id": (str, True, MAX_NAME),
        "job": (str, True, MAX_NAME),
        "tick": (NUM, True, 0),
        "attempt": (int, True, 0),
        "scheduler": (str, True, MAX_NAME),
        "pool": (str, True, MAX_NAME),
        "command": ((str, list), True, MAX_TEXT),
        "shell": (str, True, 4096),
        "user": (OPT_STR, True, MAX_NAME),
        "env": (dict, True, 1024),
        "cwd": (OPT_STR, True, 4096),
        "timeout": (OPT_NUM, True, 0),
        "on_timeout": (str, True, 16),
        "dispatched": (NUM, True, 0),
        "memory_max": (OPT_INT, False, 0),  # bytes (RLIMIT_AS); absent or None: no limit
        "delay": (NUM, False, 0),  # jitter: start this long after the tick (0 <= delay < 1 d)
        "mailto": (str, False, 1000),  # mail the output here when the run printed anything
    },
    # scheduler -> worker: kill this run's process group (overlap = replace), record `killed`
    "cancel": {"run_id": (str, True, MAX_NAME), "reason": (str, True, 256)},
    # scheduler -> worker: give back this queued run if it has not started (prefetch.py)
    "recall": {"run_id": (str, True, MAX_NAME)},
    # worker -> scheduler: these recalled (or, draining, queued) runs never started here
    "returned": {"run_ids": (list, True, 4096)},
    # worker -> every scheduler: these runs, queued in its last `ready`, started this turn
    # (a turn that sends no `ready`: ~60 bytes, not the ~10 KB of its lists)
    "started": {"worker": (str, True, MAX_NAME), "run_ids": (list, True, 4096)},
    # worker -> every scheduler: a run ended (frees overlap state; sets off follow-ups)
    "finished": {
        "run_id": (str, True, MAX_NAME),
        "job": (str, True, MAX_NAME),
        "status": (str, True, 16),
        # the run's tick, attempt, exit code and end: every scheduler decides its retry,
        # chained children and hook from them (followups.py); all four or none
        "tick": (NUM, False, 0),
        "attempt": (int, False, 0),
        "exit_code": (OPT_INT, False, 0),
        "ended": (NUM, False, 0),
    },
    # worker or scheduler -> sink: one run record (spec §5)
    "result": {"record": (dict, True, 64)},
    # worker or scheduler -> sink: a loop turn's records, each checked as a `result`'s
    # (one bad record is dropped and counted alone: check_record)
    "results": {"records": (list, True, MAX_RESULTS)},
    # sink -> sender: these run ids are stored durably
    "ack": {"run_ids": (list, True, 10000)},
    # scheduler -> sink: the jobs this scheduler knows and their next ticks
    "jobs": {
        "scheduler": (str, True, MAX_NAME),
        "jobs": (list, True, JOBS_PER_PART),
        "sent": (NUM, True, 0),
        # the table comes in `parts` messages with the same `sent`; parts = 0: no table in
        # this report (stats and liveness only; the previous table stands)
        "part": (int, False, 0),
        "parts": (int, False, 0),
        "stats": (dict, False, 64),  # counter and gauge name -> number (see sink metrics)
        "clock_offsets": (dict, False, 1024),  # peer id -> its clock minus ours, seconds
        "errors": (list, False, 1024),  # schedule-file errors, "file:line: message" each
        "reason": (OPT_STR, False, 1024),  # why this scheduler does not fire, None if it does
    },
    # scheduler -> scheduler, every heartbeat: liveness, incarnation, job-set digest, clock
    "heartbeat": {
        "scheduler": (str, True, MAX_NAME),
        "since": (NUM, True, 0),
        "sent": (NUM, True, 0),
        "digest": (str, True, 64),
        "eligible": (bool, True, 0),
        "reason": (OPT_STR, True, 1024),
        # each peer heard within peer_timeout -> the `sent` of its last heartbeat we got:
        # the echo that tells a peer we still hear it (peers.py, one-way cuts)
        "heard": (dict, False, 64),
        # since when (wall clock) the sender has seen a majority without a break; None: not now
        "quorum_since": (OPT_NUM, False, 0),
        # the workers live to the sender: a worker silent to us but heard by a peer is cut
        # off from us, not dead, and runs its parked runs itself (scheduler.py)
        "workers": (list, False, 4096),
        "pauses": (str, False, 64),  # digest of its pauses map (zcron/pauses.py); absent: empty
    },
    # scheduler -> scheduler: ticks it has just fired, [[job, tick], ...]
    "claims": {"scheduler": (str, True, MAX_NAME), "ticks": (list, True, MAX_PAIRS)},
    # worker -> every scheduler: ticks it has received, [[job, tick], ...] (takeover evidence),
    # and the same runs as [[job, tick, attempt], ...] (follow-ups done: pending.py)
    "accepted": {
        "worker": (str, True, MAX_NAME),
        "ticks": (list, True, MAX_PAIRS),
        "runs": (list, False, MAX_PAIRS),
    },
    # scheduler -> scheduler: run ends it recorded (lost, missed, skipped) as
    # [run_id, job, tick, attempt, status, exit_code, ended, worker], and the follow-ups it
    # started as [[job, tick, attempt], ...] (followups.py, pending.py)
    "outcomes": {
        "scheduler": (str, True, MAX_NAME),
        "outcomes": (list, True, MAX_OUTCOMES),
        "runs": (list, True, MAX_OUTCOMES),
    },
    # scheduler -> scheduler: send me your job names (our digests differ), and the answer
    "jobset_request": {"scheduler": (str, True, MAX_NAME)},
    "jobset": {
        "scheduler": (str, True, MAX_NAME),
        "digest": (str, True, 64),
        "part": (int, True, 0),
        "parts": (int, True, 0),
        "names": (list, True, NAMES_PER_PART),
    },
    # scheduler -> scheduler: pause entries [[job, paused, stamp, by], ...] (a change, or a
    # part of the whole map for a peer whose digest differs), and the request for the map
    "pauses": {"scheduler": (str, True, MAX_NAME), "entries": (list, True, PAUSES_PER_PART)},
    "pauses_request": {"scheduler": (str, True, MAX_NAME)},
    # scheduler -> worker: your id is taken by a live worker (spec §7, Identity)
    "refused": {"reason": (str, True, 1024)},
    # command line -> scheduler, and the reply
    "request": {"op": (str, True, 32), "args": (dict, True, 64)},
    "reply": {"ok": (bool, True, 0), "error": (OPT_STR, True, MAX_TEXT), "body": (object, True, 0)},
}


_SIZED = (str, list, dict)
_NUMERIC = (int, NUM, OPT_NUM, OPT_INT)
_ABSENT = object()


def _compile(schema: dict) -> tuple:
    """A schema as the checker walks it: (name, types, required, limit, numeric) per field,
    computed once rather than per message (decoding is on every hot path)."""
    return tuple((name, types, required, limit, types in _NUMERIC)
                 for name, (types, required, limit) in schema.items())  # fmt: skip


def _check_fields(values: Any, schema: dict, where: str) -> None:
    if not isinstance(values, dict):
        raise ProtocolError("malformed", f"{where} is not a map")
    unknown = values.keys() - schema.keys()
    if unknown:
        raise ProtocolError("unknown_field", f"{where}.{next(iter(unknown))!s:.40}")
    for name, types, required, limit, numeric in _COMPILED[id(schema)]:
        value = values.get(name, _ABSENT)
        if value is _ABSENT:
            if required:
                raise ProtocolError("missing_field", f"{where}.{name}")
            continue
        if numeric and value is not None:
            _check_number(value, f"{where}.{name}")
        if not isinstance(value, types):
            raise ProtocolError("bad_field", f"{where}.{name} has type {type(value).__name__}")
        if limit and isinstance(value, _SIZED) and len(value) > limit:
            raise ProtocolError("too_large", f"{where}.{name} longer than {limit}")


def _check_number(value: Any, where: str) -> None:
    if value.__class__ is bool:
        raise ProtocolError("bad_field", f"{where} is a bool")
    if isinstance(value, int | float) and not -MAX_NUMBER <= value <= MAX_NUMBER:
        # NaN fails both comparisons; inf and 1e300 the bound
        raise ProtocolError("bad_field", f"{where} is not a finite number in range")


def is_number(value: Any) -> bool:
    """A finite int or float within ±MAX_NUMBER, not a bool: what the wire accepts."""
    return (
        isinstance(value, int | float)
        and value.__class__ is not bool
        and -MAX_NUMBER <= value <= MAX_NUMBER
    )


def _require(ok: bool, detail: str) -> None:
    if not ok:
        raise ProtocolError("bad_field", detail)


def validate_record(rec: object) -> None:
    """One run record, as a `result` carries it (and each of a `results`' records)."""
    _require(isinstance(rec, dict), "a record is a map")
    _check_record({"record": rec})


def _check_record(msg: dict) -> None:
    rec = msg["record"]
    _check_fields(rec, RECORD, "record")
    _require(rec["status"] in STATUSES, "record.status")
    _require(bool(rec["run_id"]) and bool(rec["job"]), "record.run_id and job must be set")
    _require(1 <= rec["attempt"] <= MAX_ATTEMPT, "record.attempt out of range")


def _check_job(msg: dict) -> None:
    from zcron.job import mailto_problem  # here: the command line sends no job messages

    env, command = msg["env"], msg["command"]
    _require(bool(msg["run_id"]) and bool(msg["job"]), "job.run_id and job must be set")
    _require(1 <= msg["attempt"] <= MAX_ATTEMPT, "job.attempt out of range")
    _require(msg["timeout"] is None or msg["timeout"] > 0, "job.timeout must be > 0")
    _require(msg.get("memory_max") is None or msg["memory_max"] > 0, "job.memory_max > 0")
    _require(msg["on_timeout"] in ("kill", "alert"), "job.on_timeout: kill or alert")
    _require(0 <= msg.get("delay", 0) <= MAX_DELAY_S, "job.delay: 0 to a day")
    _require(all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()),
             "job.env must map strings to strings")  # fmt: skip
    _require(not isinstance(command, list) or (command and strings(command)),
             "job.command list must hold strings")  # fmt: skip
    _require(mailto_problem(msg.get("mailto", "")) is None, "job.mailto: addresses, no CR/LF")


def _check_numbers(msg: dict) -> None:
    tables = (msg.get("stats", {}), msg.get("clock_offsets", {}))
    _require(all(isinstance(k, str) and is_number(v)
                 for table in tables for k, v in table.items()),
             "jobs.stats and clock_offsets map names to numbers")  # fmt: skip
    _require(all(isinstance(e, str) and len(e) <= 4096 for e in msg.get("errors", [])),
             "jobs.errors must hold strings of at most 4 KiB")  # fmt: skip


def strings(values: list) -> bool:
    """Whether every item is a str."""
    return all(isinstance(v, str) for v in values)


def _check_ready(msg: dict) -> None:
    lists = (msg["pools"], msg["running"], msg.get("running_jobs", []), msg.get("parked", []),
             msg.get("queued", []))  # fmt: skip
    _require(all(map(strings, lists)), "ready lists must hold strings")
    _require(0 <= msg["free"] <= msg["slots"] <= MAX_SLOTS and msg["seen"] >= 0,
             "ready: 0 <= free <= slots <= MAX_SLOTS, seen >= 0")  # fmt: skip
    _require(0 <= msg.get("room", 0) <= MAX_SLOTS, "ready: 0 <= room <= MAX_SLOTS")
    _require(all(map(_is_ended, msg.get("ended", []))),
             "ready.ended: [run_id, job, status, tick, attempt, exit_code, ended]")
    _require(all(map(_is_tick_pair, msg.get("ticks", []))), "ready.ticks: [job, tick]")
    _require(all(map(is_run_key, msg.get("runs", []))), "ready.runs: [job, tick, attempt]")


def _is_ended(entry: Any) -> bool:
    """[run_id, job, status, tick, attempt, exit_code, ended]: a run's end (`finished`)."""
    if not isinstance(entry, list) or len(entry) != 7:
        return False
    run_id, job, status, tick, attempt, code, ended = entry
    return (
        _is_name(run_id) and _is_name(job) and status in STATUSES and is_number(tick)
        and _is_attempt(attempt) and _is_exit_code(code) and is_number(ended)
    )  # fmt: skip


def _check_run_ids(kind: str) -> Callable[[dict], None]:
    def check(msg: dict) -> None:
        _require(strings(msg["run_ids"]) and all(0 < len(r) <= MAX_NAME for r in msg["run_ids"]),
                 f"{kind}.run_ids must hold run ids")  # fmt: skip
    return check


def _check_heartbeat(msg: dict) -> None:
    _require(all(isinstance(w, str) and len(w) <= MAX_NAME for w in msg.get("workers", [])),
             "heartbeat.workers must hold worker ids")  # fmt: skip
    heard = msg.get("heard", {})
    _require(all(isinstance(k, str) and len(k) <= MAX_NAME and is_number(v)
                 for k, v in heard.items()), "heartbeat.heard maps ids to times")  # fmt: skip


def _check_parts(msg: dict) -> None:
    parts, part = msg.get("parts", 1), msg.get("part", 0)
    _require(0 <= parts <= MAX_PARTS and 0 <= part < max(parts, 1), "part/parts out of range")


# type -> the checks a schema cannot express (contents of lists and maps)
_NESTED = {
    "result": _check_record,
    "results": lambda m: _require(all(isinstance(r, dict) for r in m["records"]),
                                  "results.records must hold maps"),
    "job": _check_job,
    "claims": lambda m: _require(all(map(_is_tick_pair, m["ticks"])), "ticks: [job, tick]"),
    "accepted": lambda m: (
        _require(all(map(_is_tick_pair, m["ticks"])), "ticks: [job, tick]"),
        _require(all(map(is_run_key, m.get("runs", []))), "runs: [job, tick, attempt]"),
    ),
    "finished": lambda m: _require(
        len({"tick", "attempt", "ended"} & m.keys()) in (0, 3)
        and 1 <= m.get("attempt", 1) <= MAX_ATTEMPT and m["status"] in STATUSES,
        "finished: tick, attempt and ended all or none; a known status"),
    "outcomes": lambda m: (
        _require(all(map(is_outcome, m["outcomes"])), "outcomes: [run_id, job, tick, attempt, "
                 "status, exit_code, ended, worker]"),
        _require(all(map(is_run_key, m["runs"])), "runs: [job, tick, attempt]"),
    ),
    "jobs": lambda m: (_check_numbers(m), _check_parts(m)),
    "jobset": lambda m: (
        _require(strings(m["names"]), "jobset.names must hold strings"),
        _require(1 <= m["parts"], "jobset.parts >= 1"),
        _check_parts(m),
    ),
    "ready": _check_ready,
    "returned": _check_run_ids("returned"),
    "started": _check_run_ids("started"),
    "heartbeat": _check_heartbeat,
    "ack": lambda m: _require(strings(m["run_ids"]), "ack.run_ids must hold strings"),
    "pauses": lambda m: _require(all(map(is_pause, m["entries"])),
                                 "pauses.entries: [job, paused, stamp, by]"),
}


def _check_nested(kind: str, msg: dict) -> None:
    check = _NESTED.get(kind)
    if check is not None:
        check(msg)


def _is_tick_pair(pair: Any) -> bool:
    return (
        isinstance(pair, list)
        and len(pair) == 2
        and isinstance(pair[0], str)
        and len(pair[0]) <= MAX_NAME
        and is_number(pair[1])
    )


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME


def _is_exit_code(value: Any) -> bool:
    """A run's exit code on the wire: None (none was had) or a finite int, not a bool."""
    return value is None or (isinstance(value, int) and is_number(value))


def _is_attempt(value: Any) -> bool:
    return isinstance(value, int) and value.__class__ is not bool and 1 <= value <= MAX_ATTEMPT


def is_run_key(entry: Any) -> bool:
    """[job, tick, attempt]: one run (a follow-up's key, followups.py)."""
    return (
        isinstance(entry, list)
        and len(entry) == 3
        and _is_name(entry[0])
        and is_number(entry[1])
        and _is_attempt(entry[2])
    )


def is_outcome(row: Any) -> bool:
    """[run_id, job, tick, attempt, status, exit_code, ended, worker] (followups.Outcome)."""
    if not isinstance(row, list) or len(row) != 8:
        return False
    run_id, job, tick, attempt, status, code, ended, worker = row
    return (
        _is_name(run_id) and _is_name(job) and is_number(tick) and _is_attempt(attempt)
        and status in STATUSES and _is_exit_code(code)
        and is_number(ended) and (worker is None or _is_name(worker))
    )  # fmt: skip


def is_pause(entry: Any) -> bool:
    """[job, paused, stamp, by]: a job name, a bool, a finite number, a short string."""
    from zcron.job import NAME_RE

    return (
        isinstance(entry, list)
        and len(entry) == 4
        and isinstance(entry[0], str)
        and NAME_RE.match(entry[0]) is not None
        and isinstance(entry[1], bool)
        and is_number(entry[2])
        and isinstance(entry[3], str)
        and len(entry[3]) <= MAX_NAME
    )


_COMPILED = {id(schema): _compile(schema) for schema in (RECORD, *SCHEMAS.values())}


def validate(kind: str, fields: dict) -> None:
    """Check fields we built ourselves from outside input (a push, a persisted job) against
    the type's schema, as a receiver would; ProtocolError naming the field otherwise."""
    _check_fields(fields, SCHEMAS[kind], kind)
    _check_nested(kind, fields)


def check_window(value: float | None, now: float, behind: float, ahead: float, what: str) -> None:
    """Reject a time outside [now - behind, now + ahead] (spec §7: never persisted)."""
    if value is not None and not now - behind <= value <= now + ahead:
        raise ProtocolError("out_of_window", f"{what} {value:.3f} is {value - now:+.0f}s from now")


def encode(kind: str, **fields: Any) -> bytes:
    """Encode one message; the fields must satisfy the type's schema."""
    msg = {"v": VERSION, "t": kind, **fields}
    return msgpack.packb(msg, use_bin_type=True)


def decode(frame: bytes) -> tuple[str, dict]:
    """Decode and validate one frame into (type, fields); raise ProtocolError otherwise."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"{len(frame)} bytes")
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError("malformed", type(exc).__name__) from None
    if not isinstance(msg, dict):
        raise ProtocolError("malformed", "not a map")
    if msg.get("v") != VERSION:
        raise ProtocolError("version", f"version {msg.get('v')!r:.20}")
    kind = msg.get("t")
    schema = SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise ProtocolError("unknown_type", f"{kind!r:.40}")
    del msg["v"], msg["t"]
    _check_fields(msg, schema, kind)
    _check_nested(kind, msg)
    return kind, msg


def record(**values: Any) -> dict:
    """A run record (spec §5) with every field present; unset times and codes are None."""
    base = {name: None for name in RECORD}
    base.update(stdout_tail="", stderr_tail="", attempt=1, pool="default")
    base.update(values)
    return base


def run_record(msg: dict, worker_id: str | None, **values: object) -> dict:
    """A §5 record for the attempt described by a `job` message."""
    return record(
        run_id=msg["run_id"],
        job=msg["job"],
        tick=msg["tick"],
        attempt=msg["attempt"],
        scheduler=msg["scheduler"],
        worker=worker_id,
        pool=msg["pool"],
        dispatched=msg["dispatched"] or None,  # 0.0: made before any dispatch (skipped)
        delay=msg.get("delay") or None,
        **values,
    )
