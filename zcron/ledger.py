"""The last fired tick of every job: from our own fires, peers' claims and workers' word.

A tick at or before a job's entry has fired somewhere and is never fired again; ticks
after it that are due and unfired are what a new owner catches up. The ledger is kept in
local LMDB (`[scheduler] state`) so a whole-cluster restart knows what it missed.
"""

from __future__ import annotations

import os

import lmdb

FLUSH_EVERY_S = 0.5


class TickLedger:
    """last(job) → the newest tick known to have fired; persisted in batches."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.env = lmdb.open(directory, map_size=256 << 20, max_dbs=1, subdir=True)
        self.db = self.env.open_db(b"last_fired")
        self.fired: dict[str, float] = {}
        self.dirty: set[str] = set()
        self.next_flush = 0.0
        with self.env.begin(db=self.db) as txn:
            for key, value in txn.cursor():
                self.fired[key.decode()] = float(value.decode())

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
        if self.dirty and now_mono >= self.next_flush:
            self.flush()
            self.next_flush = now_mono + FLUSH_EVERY_S

    def flush(self) -> None:
        """Write what changed in one transaction."""
        try:
            with self.env.begin(write=True, db=self.db) as txn:
                for job in self.dirty:
                    txn.put(job.encode(), repr(self.fired[job]).encode())
        except lmdb.MapFullError:
            self.env.set_mapsize(self.env.info()["map_size"] * 2)
            return self.flush()
        self.dirty.clear()

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

    def close(self) -> None:
        if self.dirty:
            self.flush()
        self.env.close()
