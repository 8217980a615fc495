"""LMDB store of run records: by run id, indexed by time and by job, with retention.

Layout (one environment, five named databases):
  runs    run key                        -> time key (where the record lives)
  time    time key = t8 + run key        -> msgpack record; t = finished, else started, else tick
  job     job prefix + time key          -> b""  (newest-first per job without a full scan)
  tick    job prefix + tick8             -> run key of the first attempt-1 run of that tick
  jobs    job key                        -> msgpack {job, last_run, last_time, last_success}

The sink thread writes; the HTTP thread reads in read-only transactions at the same time.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import lmdb
import msgpack

from zcron.errors import ZcronError

DEFAULT_MAP_SIZE = 256 << 20
MAX_GROWTHS = 24
MAX_KEY_PART = 200
# Records one query reads at most: a filter that matches almost nothing stops here instead
# of scanning millions of records while holding the map lock (HTTP says so in its answer).
MAX_EXAMINED = 200_000
# records of runs that never started: not runs, not duplicates (a refused run is dispatched
# again, as a run of its own, when its worker was fenced)
NOT_STARTED = ("skipped", "missed", "refused")
# What a scheduler writes for a run it could not see end (the worker went silent, no slot
# came): the worker's own record of the same run id, when it comes, is the truth (spec §8.11).
GUESSES = ("lost", "missed")
_DB_NAMES = (b"runs", b"time", b"job", b"tick", b"jobs")
_TOP = b"\xff" * 9


class StoreError(ZcronError):
    """The store cannot be opened (names the directory and the reason)."""


@dataclass
class Stored:
    """What one put_many changed: the new records, the duplicate runs among them,
    each job's new last-success time, and how many records the store now holds."""

    new: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    superseded: list[dict] = field(default_factory=list)  # new records that replaced a guess
    last_success: dict[str, float] = field(default_factory=dict)
    records: int = 0


def time_key(t: float) -> bytes:
    """8 bytes that sort like the float does (IEEE 754 with the sign bit folded)."""
    (bits,) = struct.unpack(">Q", struct.pack(">d", float(t) + 0.0))  # + 0.0: -0.0 == 0.0
    bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | 1 << 63
    return struct.pack(">Q", bits)


def key_time(key: bytes) -> float:
    """The float a time_key() encodes (its first 8 bytes)."""
    (bits,) = struct.unpack(">Q", key[:8])
    bits = bits & ~(1 << 63) if bits >> 63 else bits ^ 0xFFFFFFFFFFFFFFFF
    return struct.unpack(">d", struct.pack(">Q", bits))[0]


def name_key(text: str) -> bytes:
    """UTF-8 of a name; long ones are hashed to fit LMDB's 511-byte key limit.

    0xFF never occurs in UTF-8, so a hashed key cannot equal a plain one.
    """
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_KEY_PART:
        return raw
    return b"\xff" + hashlib.blake2b(raw, digest_size=20).digest()


def job_prefix(job: str) -> bytes:
    """A length-prefixed job key, so one job's prefix never matches another job's."""
    key = name_key(job)
    return bytes([len(key)]) + key


def record_time(rec: dict) -> float:
    """The instant a record is filed under: finished, else started, else tick."""
    for name in ("finished", "started", "tick"):
        if rec.get(name) is not None:
            return float(rec[name])
    return 0.0


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def tick_key(rec: dict) -> bytes:
    """The (job, tick, attempt) a run is filed under for duplicate detection."""
    return job_prefix(rec["job"]) + time_key(rec["tick"]) + struct.pack(">H", rec["attempt"])


def guess_key(rec: dict) -> bytes:
    """Where a scheduler's `missed` guess about a (job, tick, attempt) is filed: a run of it
    under another run id (a takeover fenced a quorum tick that did run) replaces it."""
    return tick_key(rec) + b"?"


def is_scheduler_guess(rec: dict) -> bool:
    """A record a scheduler wrote about a run it could not see end (no worker's word)."""
    return rec["status"] in GUESSES and not rec.get("worker")


def is_guess(rec: dict) -> bool:
    return rec["status"] == "missed" and not rec.get("worker")


def supersedes(new: dict, old: dict) -> bool:
    """A worker's record of a run replaces a scheduler's guess about it (lost, missed)."""
    return old["status"] in GUESSES and new["status"] not in GUESSES and bool(new.get("worker"))


def _last_run(rec: dict) -> dict:
    keys = ("status", "tick", "attempt", "dispatched", "started", "finished", "exit_code", "signal")
    return {k: rec.get(k) for k in keys}


class Store:
    """Run records in LMDB; synced commits, so an acked record survives a crash."""

    def __init__(self, path: str, map_size: int = DEFAULT_MAP_SIZE) -> None:
        self.path = path
        try:
            os.makedirs(path, exist_ok=True)
            self.env = lmdb.open(
                path, map_size=map_size, subdir=True, max_dbs=len(_DB_NAMES), readahead=False
            )
        except (OSError, lmdb.Error) as exc:
            raise StoreError(f"[sink] data {path}: cannot open the run store: {exc}") from None
        self.runs, self.time, self.job, self.tick, self.jobs = (
            self.env.open_db(name) for name in _DB_NAMES
        )
        self.max_examined = MAX_EXAMINED
        # Growing the map while a reader holds the old mapping is unsafe; readers take this.
        self._map_lock = threading.Lock()

    def close(self) -> None:
        """Close the environment; later calls fail."""
        with self._map_lock:
            self.env.close()

    def map_size(self) -> int:
        """The current size of the memory map in bytes."""
        return self.env.info()["map_size"]

    def put_many(self, records: Iterable[dict]) -> Stored:
        """Store records in one synced transaction; a run id already stored is skipped."""
        records = list(records)
        return self._write(lambda txn: self._put_all(txn, records))

    def _write(self, step: Callable[[lmdb.Transaction], Any]) -> Any:
        """Run step in a write transaction, doubling the map and retrying while it is full."""
        for _ in range(MAX_GROWTHS):
            try:
                with self.env.begin(write=True) as txn:
                    return step(txn)
            except lmdb.MapFullError:
                self._grow()
        raise StoreError(f"[sink] data {self.path}: map still full at {self.map_size()} bytes")

    def _grow(self) -> None:
        with self._map_lock:
            self.env.set_mapsize(self.map_size() * 2)

    def _put_all(self, txn: lmdb.Transaction, records: list[dict]) -> Stored:
        stored = Stored()
        rows: dict[str, dict] = {}
        for rec in records:
            if (is_guess(rec) and self._ran(txn, rec)) or not self._put_one(txn, rec, stored):
                continue
            if is_guess(rec):
                txn.put(guess_key(rec), name_key(rec["run_id"]), db=self.tick)
            elif rec.get("started") is not None:
                self._drop_guess(txn, rec, stored)
            stored.new.append(rec)
            if self._is_duplicate(txn, rec):
                stored.duplicates.append(rec)
                self._row(txn, rows, rec["job"])["duplicates"] += 1
            self._note_last(txn, rows, rec, stored)
        for job, row in rows.items():
            txn.put(name_key(job), _pack(row), db=self.jobs)
        stored.records = txn.stat(self.runs)["entries"]
        return stored

    def _put_one(self, txn: lmdb.Transaction, rec: dict, stored: Stored) -> bool:
        """Store a record unless its run id is stored already; one record per run id, the
        true one: a worker's record replaces a scheduler's `lost`/`missed` guess."""
        run = name_key(rec["run_id"])
        tkey = time_key(record_time(rec)) + run
        if not txn.put(run, tkey, overwrite=False, db=self.runs):
            old_tkey = txn.get(run, db=self.runs)
            old = _unpack(txn.get(old_tkey, db=self.time))
            if not supersedes(rec, old):
                return False
            self._unfile(txn, old_tkey, old)
            txn.put(run, tkey, db=self.runs)
            stored.superseded.append(rec)
        txn.put(tkey, _pack(rec), db=self.time)
        txn.put(job_prefix(rec["job"]) + tkey, b"", db=self.job)
        return True

    def _ran(self, txn: lmdb.Transaction, rec: dict) -> bool:
        """Whether a run of the record's (job, tick, attempt) is stored (a guess is moot)."""
        return txn.get(tick_key(rec), db=self.tick) is not None

    def _drop_guess(self, txn: lmdb.Transaction, rec: dict, stored: Stored) -> None:
        """A run that started replaces a `missed` guess filed for its (job, tick, attempt)."""
        run = txn.pop(guess_key(rec), db=self.tick)
        old_tkey = txn.get(run, db=self.runs) if run is not None else None
        if old_tkey is None:
            return
        self._unfile(txn, old_tkey, _unpack(txn.get(old_tkey, db=self.time)))
        txn.delete(run, db=self.runs)
        stored.superseded.append(rec)

    def _unfile(self, txn: lmdb.Transaction, tkey: bytes, rec: dict) -> None:
        """Remove a record from the time and job indexes and the duplicate index."""
        run = tkey[8:]
        txn.delete(tkey, db=self.time)
        txn.delete(job_prefix(rec["job"]) + tkey, db=self.job)
        # the second: stores before 0.2; the third: a `missed` guess
        for tick in (tick_key(rec), tick_key(rec)[:-2], guess_key(rec)):
            if txn.get(tick, db=self.tick) == run:
                txn.delete(tick, db=self.tick)

    def _is_duplicate(self, txn: lmdb.Transaction, rec: dict) -> bool:
        """File the first run of each (job, tick, attempt); a second one is a duplicate.
        A scheduler's guess is not a run: a `lost` written for a dispatch that a cut kept
        from its worker sat beside the tick's real run and was counted (63 counted against
        32 duplicates run in a 75 s nemesis); the worker's own record of it, if it ran,
        replaces the guess and is filed then."""
        if rec.get("status") in NOT_STARTED or is_scheduler_guess(rec):
            return False
        run = name_key(rec["run_id"])
        if txn.put(tick_key(rec), run, overwrite=False, db=self.tick):
            return False
        return txn.get(tick_key(rec), db=self.tick) != run

    def _row(self, txn: lmdb.Transaction, rows: dict, job: str) -> dict:
        if job not in rows:
            raw = txn.get(name_key(job), db=self.jobs)
            rows[job] = _unpack(raw) if raw else {"job": job, "last_time": None}
        rows[job].setdefault("duplicates", 0)
        return rows[job]

    def _note_last(self, txn: lmdb.Transaction, rows: dict, rec: dict, stored: Stored) -> None:
        job = rec["job"]
        row, when = self._row(txn, rows, job), record_time(rec)
        if row["last_time"] is None or when >= row["last_time"]:
            row.update(last_time=when, last_run=_last_run(rec))
        if rec.get("started") is not None and rec["tick"] > (row.get("last_started") or -1.0):
            row["last_started"] = rec["tick"]  # missed and refused ticks never started
        if rec["status"] == "ok" and when > (row.get("last_success") or float("-inf")):
            row["last_success"] = stored.last_success[job] = when

    def query(self, **filters: Any) -> list[dict]:
        """scan()'s records (job, since, until, status, limit as there)."""
        return self.scan(**filters)[0]

    def scan(
        self,
        job: str | None = None,
        since: float | None = None,
        until: float | None = None,
        status: Iterable[str] | str | None = None,
        limit: int = 100,
    ) -> tuple[list[dict], bool]:
        """Records newest first with since <= time < until (status: one name or several),
        and False if the scan stopped after examining max_examined records."""
        statuses = {status} if isinstance(status, str) else set(status or ())
        floor = time_key(since) if since is not None else b""
        prefix = job_prefix(job) if job is not None else b""
        upper = prefix + (time_key(until) if until is not None else _TOP)
        found: list[dict] = []
        with self._reader() as txn:
            db = self.job if job is not None else self.time
            for examined, key in enumerate(_keys_before(txn.cursor(db), prefix, upper)):
                tkey = key[len(prefix) :]
                if len(found) >= limit or tkey < floor:
                    break
                if examined >= self.max_examined:
                    return found, False
                rec = _unpack(txn.get(tkey, db=self.time))
                if not statuses or rec["status"] in statuses:
                    found.append(rec)
        return found, True

    def last_runs(self) -> dict[str, dict]:
        """Per job: {"last_run": {status, tick, started, finished, exit_code}, "last_success"}."""
        with self._reader() as txn:
            rows = [_unpack(raw) for _, raw in txn.cursor(self.jobs)]
        keys = ("last_run", "last_success", "last_started")
        return {row["job"]: {k: row.get(k) for k in keys} for row in rows}

    def duplicate_counts(self) -> dict[str, int]:
        """Per job: duplicate runs stored since the store was created (kept across restarts
        and purges, so zcron_duplicate_runs_total does not start over)."""
        with self._reader() as txn:
            rows = [_unpack(raw) for _, raw in txn.cursor(self.jobs)]
        return {row["job"]: row["duplicates"] for row in rows if row.get("duplicates")}

    def count(self) -> int:
        """How many run records are stored."""
        with self._reader() as txn:
            return txn.stat(self.runs)["entries"]

    def purge_older_than(self, cutoff: float, max_records: int = 1000) -> int:
        """Delete up to max_records records filed before cutoff, oldest first; return how many."""
        return self._write(lambda txn: self._purge(txn, time_key(cutoff), max_records))

    def _purge(self, txn: lmdb.Transaction, cutoff: bytes, max_records: int) -> int:
        doomed = []
        for tkey, raw in txn.cursor(self.time):
            if tkey >= cutoff or len(doomed) >= max_records:
                break
            doomed.append((tkey, _unpack(raw)))
        for tkey, rec in doomed:
            self._unfile(txn, tkey, rec)
            txn.delete(tkey[8:], db=self.runs)
        return len(doomed)

    def _reader(self) -> _Reader:
        return _Reader(self)


class _Reader:
    """A read-only transaction held under the map lock (see Store._grow)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> lmdb.Transaction:
        self.store._map_lock.acquire()
        try:
            self.txn = self.store.env.begin()
        except BaseException:
            self.store._map_lock.release()
            raise
        return self.txn

    def __exit__(self, *exc: object) -> None:
        try:
            self.txn.abort()
        finally:
            self.store._map_lock.release()


def _keys_before(cursor: lmdb.Cursor, prefix: bytes, upper: bytes) -> Iterator[bytes]:
    """Keys that start with prefix and sort below upper, from the highest down."""
    positioned = cursor.prev() if cursor.set_range(upper) else cursor.last()
    while positioned:
        key = cursor.key()
        if not key.startswith(prefix):
            return
        yield key
        positioned = cursor.prev()
