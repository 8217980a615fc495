"""The last fired tick of every job: from our own fires, peers' claims and workers' word.

A tick at or before a job's entry has fired somewhere and is never fired again; ticks
after it that are due and unfired are what a new owner catches up. The ledger is kept in
local LMDB (`[scheduler] state`) so a whole-cluster restart knows what it missed.
"""

from __future__ import annotations

import logging
import os
import threading

import lmdb
import msgpack

from zcron import protocol
from zcron.errors import ProtocolError
from zcron.pauses import Pause

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 0.5
MAX_MAP_SIZE = 8 << 30  # the map doubles when full, up to this; then writes are refused


class LedgerFull(ValueError):
    """The ledger's map cannot grow further: the write (a push) is refused, not a crash."""


class TickLedger:
    """last(job) → the newest tick known to have fired; persisted in batches."""

    def __init__(self, directory: str):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.env = lmdb.open(directory, map_size=256 << 20, max_dbs=3, subdir=True, mode=0o700)
        self.db = self.env.open_db(b"last_fired")
        self.push_db = self.env.open_db(b"pushed")  # delayed one-offs not fired yet
        self.pause_db = self.env.open_db(b"pauses")  # zcron pause / resume (pauses.py)
        self.fired: dict[str, float] = {}
        self.dirty: set[str] = set()
        self.next_flush = 0.0
        with self.env.begin(db=self.db) as txn:
            for key, value in txn.cursor():
                self.fired[key.decode()] = float(value.decode())
        self.writer = ClaimWriter(self.env, self.db)

    def last(self, job: str) -> float | None:
        return self.fired.get(job)

    def note(self, job: str, tick: float) -> None:
        """Record that `tick` of `job` fired (older news changes nothing)."""
        if tick > self.fired.get(job, float("-inf")):
            self.fired[job] = tick
            self.dirty.add(job)

    def has_fired(self, job: str, tick: float) -> bool:
        return tick <= self.fired.get(job, float("-inf"))

    def flush_if_due(self, now_mono: float) -> None:
        self.dirty |= self.writer.take_back()  # what it could not write: done here (resize)
        if self.dirty and now_mono >= self.next_flush:
            self.flush()
            self.next_flush = now_mono + FLUSH_EVERY_S

    def flush_async(self) -> None:
        """Hand what changed to the writer thread and go on: its synced commit (~8 ms of
        fsync here, one per loop turn that fired) stood in the scheduler's loop, which
        could neither dispatch nor hear workers meanwhile: 73% of a busy scheduler's wall
        time at 2 slots (py-spy, a 5,000-job burst). The claims reached the peers first;
        what a SIGKILL loses is the same as before, the last fsync's worth."""
        if self.dirty:
            self.writer.submit({job: self.fired[job] for job in self.dirty})
            self.dirty.clear()

    def flush(self) -> None:
        """Write what changed in one transaction."""

        def write(txn: lmdb.Transaction) -> None:
            for job in self.dirty:
                txn.put(job.encode(), repr(self.fired[job]).encode(), db=self.db)

        try:
            self._write(write)
        except LedgerFull as exc:  # kept in memory (peers have the claims): retried later
            log.error("%s: the last fired ticks stay in memory only", exc)
            return
        self.dirty.clear()

    def _write(self, step) -> None:  # type: ignore[no-untyped-def]
        """Run `step` in a write transaction, doubling a full map up to MAX_MAP_SIZE."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    step(txn)
                return
            except lmdb.MapFullError:
                size = self.env.info()["map_size"]
                if size >= MAX_MAP_SIZE:
                    raise LedgerFull(f"the ledger is full ({size >> 20} MiB)") from None
                self.env.set_mapsize(min(size * 2, MAX_MAP_SIZE))

    def forget(self, keep: set[str]) -> None:
        """Drop jobs no longer defined, so the ledger does not grow forever."""
        gone = [job for job in self.fired if job not in keep]
        if not gone:
            return
        with self.env.begin(write=True, db=self.db) as txn:
            for job in gone:
                del self.fired[job]
                self.dirty.discard(job)
                txn.delete(job.encode())

    def save_push(self, name: str, msg: dict) -> None:
        """Keep a delayed `zcron push` until it fires, across restarts."""
        self.save_pushes({name: msg})

    def save_pushes(self, pushes: dict[str, dict]) -> None:
        """Keep pushes until they fire, all in one synced transaction: one fsync for a
        loop turn's pushes (~1-5 ms each on ext4, which capped one client at ~450/s)."""
        rows = [(name.encode(), msgpack.packb(msg, use_bin_type=True))
                for name, msg in pushes.items()]  # fmt: skip

        def write(txn: lmdb.Transaction) -> None:
            for key, data in rows:
                txn.put(key, data, db=self.push_db)

        self._write(write)

    def drop_push(self, name: str) -> None:
        with self.env.begin(write=True, db=self.push_db) as txn:
            txn.delete(name.encode())

    def pushes(self) -> dict[str, dict]:
        """The saved pushes, each checked as a job message again (a damaged or older entry
        is dropped with a log line, never put on the heap)."""
        with self.env.begin(db=self.push_db) as txn:
            saved = [(k.decode(), v) for k, v in txn.cursor()]
        pushes = {}
        for name, data in saved:
            try:
                msg = msgpack.unpackb(data, raw=False)
                protocol.validate("job", msg)
            except (ProtocolError, ValueError, TypeError) as exc:
                log.error("dropping saved push %s: %s", name, exc)
                self.drop_push(name)
                continue
            pushes[name] = msg
        return pushes

    def save_pauses(self, entries: dict[str, Pause]) -> None:
        """Keep pause entries across restarts (LedgerFull when the map cannot grow)."""
        rows = [(job.encode(), msgpack.packb(list(e))) for job, e in entries.items()]

        def write(txn: lmdb.Transaction) -> None:
            for key, value in rows:
                txn.put(key, value, db=self.pause_db)

        self._write(write)

    def pauses(self) -> dict[str, Pause]:
        """The saved pause entries; a damaged one is dropped with a log line."""
        with self.env.begin(db=self.pause_db) as txn:
            saved = [(k.decode(errors="replace"), v) for k, v in txn.cursor()]
        entries = {}
        for job, data in saved:
            try:
                stamp, paused, by = msgpack.unpackb(data)
                entry = Pause(float(stamp), paused, by)
            except (ValueError, TypeError) as exc:
                log.error("dropping saved pause of %s: %s", job, exc)
                continue
            if protocol.is_pause([job, entry.paused, entry.stamp, entry.by]):
                entries[job] = entry
        return entries

    def close(self) -> None:
        self.writer.stop()
        self.dirty |= self.writer.take_back()
        if self.dirty:
            self.flush()
        self.env.close()


class ClaimWriter:
    """A thread that commits the last fired ticks (synced), off the scheduler's loop. LMDB
    serializes write transactions across threads, and the commit releases the GIL (the
    loop went on with ≤ 1.6 ms gaps beside 120 commits/s). A map that is full is not grown
    here (no transaction of the loop's may be open then): those rows go back to the loop."""

    def __init__(self, env: lmdb.Environment, db: object) -> None:
        self.env, self.db = env, db
        self.pending: dict[str, float] = {}
        self.failed: dict[str, float] = {}
        self.stopping = False
        self.wake = threading.Condition()
        self.thread = threading.Thread(target=self.run, name="ledger-writer", daemon=True)
        self.thread.start()

    def submit(self, fired: dict[str, float]) -> None:
        with self.wake:
            for job, tick in fired.items():
                self.pending[job] = max(tick, self.pending.get(job, tick))
            self.wake.notify()

    def take_back(self) -> set[str]:
        """Jobs whose rows did not fit (the loop writes them, growing the map)."""
        if not self.failed:
            return set()
        with self.wake:
            jobs, self.failed = set(self.failed), {}
        return jobs

    def run(self) -> None:
        while True:
            with self.wake:
                while not self.pending and not self.stopping:
                    self.wake.wait()
                if not self.pending:
                    return
                rows, self.pending = self.pending, {}
            try:
                with self.env.begin(write=True, db=self.db) as txn:
                    for job, tick in rows.items():
                        txn.put(job.encode(), repr(tick).encode())
            except lmdb.MapFullError:
                with self.wake:
                    self.failed.update(rows)
            except lmdb.Error as exc:  # a closed or broken environment: nothing to do
                log.error("ledger writer: %s; %d claims kept in memory", exc, len(rows))
                with self.wake:
                    self.failed.update(rows)

    def stop(self) -> None:
        """Write what is pending, then end the thread."""
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.thread.join()
