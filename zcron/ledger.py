"""The last fired tick of every job: from our own fires, peers' claims and workers' word.

A tick at or before a job's entry has fired somewhere and is never fired again; ticks
after it that are due and unfired are what a new owner catches up. The ledger is kept in
local LMDB (`[scheduler] state`) so a whole-cluster restart knows what it missed.
"""

from __future__ import annotations

import os

import lmdb
import msgpack

FLUSH_EVERY_S = 0.5
MAX_GROWTHS = 8  # 256 MiB doubled up to 8 times: 64 GiB


class TickLedger:
    """last(job) → the newest tick known to have fired; persisted in batches."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.env = lmdb.open(directory, map_size=256 << 20, max_dbs=2, subdir=True)
        self.db = self.env.open_db(b"last_fired")
        self.push_db = self.env.open_db(b"pushed")  # delayed one-offs not fired yet
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
        """Write what changed in one transaction, doubling the map when it is full (at most
        MAX_GROWTHS times: past that, the error says so instead of recursing on)."""
        for _ in range(MAX_GROWTHS):
            try:
                with self.env.begin(write=True, db=self.db) as txn:
                    for job in self.dirty:
                        txn.put(job.encode(), repr(self.fired[job]).encode())
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
                continue
            self.dirty.clear()
            return
        raise lmdb.MapFullError(f"ledger map still full at {self.env.info()['map_size']} bytes")

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
        with self.env.begin(write=True, db=self.push_db) as txn:
            txn.put(name.encode(), msgpack.packb(msg, use_bin_type=True))

    def drop_push(self, name: str) -> None:
        with self.env.begin(write=True, db=self.push_db) as txn:
            txn.delete(name.encode())

    def pushes(self) -> dict[str, dict]:
        with self.env.begin(db=self.push_db) as txn:
            return {k.decode(): msgpack.unpackb(v, raw=False) for k, v in txn.cursor()}

    def close(self) -> None:
        if self.dirty:
            self.flush()
        self.env.close()
