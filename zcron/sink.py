"""Sink: results → store (idempotent on run id) → ack; job and slot reports → metrics and HTTP.

One ROUTER socket at [cluster] sink. A `result` is acknowledged only after the LMDB
transaction holding it has committed, which is what lets workers spool losslessly.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import lmdb
import zmq
from prometheus_client import disable_created_metrics

from zcron.auth import Security
from zcron.clock import Clock
from zcron.config import Config, check_secure, load_daemon_config
from zcron.control import MAX_PUSH_AHEAD_S
from zcron.daemon import Notifier, Rejects, Signals, run_daemon
from zcron.errors import ProtocolError
from zcron.fence import ahead_bound_s
from zcron.http import Api, HttpServer
from zcron.job import HOOK_SUFFIX
from zcron.log import setup_logging
from zcron.metrics import Metrics
from zcron.net import bind, make_socket
from zcron.protocol import MAX_NAME, check_window, decode, encode, validate_record
from zcron.roles import Roles, Sender
from zcron.statedir import hold
from zcron.store import Store, StoreError

log = logging.getLogger(__name__)

MAX_BATCH = 500
# Records wait this long for others to share their synced commit: a commit per loop turn
# was ~2 fsyncs for a record or two at 2 slots (a third of the sink's CPU in system time).
# The senders keep a record until its ack (spool.py), so nothing waits unsafely.
GROUP_COMMIT_S = 0.01
SCHEDULER_DEAD_S = 10.0
WORKER_GONE_S = 5.0
FORGET_SCHEDULER_S = 3600.0
EXPIRE_EVERY_S = 1.0
PURGE_EVERY_S = 5.0
PURGE_BACKLOG_S = 0.05  # a bounded purge left more behind: come back soon, between batches
PURGE_BATCH = 1000
MAX_WORKERS = 10_000  # slot reports kept at once: a flood of invented ids is bounded
RECORD_TIMES = ("tick", "dispatched", "started", "finished")

# field of a `jobs` entry -> accepted types; other fields are ignored (newer schedulers)
JOB_ENTRY = {
    "schedule": (str, type(None)),
    "timezone": (str, type(None)),
    "pool": (str, type(None)),
    "enabled": (bool, type(None)),
    "source": (str, type(None)),
    "next_tick": (int, float, type(None)),
    "paused": (bool, type(None)),  # zcron pause (schedulers agree within a heartbeat)
    "after": (list, type(None)),  # a chained job's parents (names, at most 64)
    "on_failure": (bool, type(None)),  # it has a failure hook (runs as JOB:on_failure)
}
MAX_PARENTS = 64


@dataclass
class Batch:
    """Records drained from the socket in one go, and whom to ack for which run ids."""

    records: list[dict] = field(default_factory=list)
    senders: dict[bytes, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, sender: bytes, record: dict) -> None:
        self.records.append(record)
        self.senders[sender].append(record["run_id"])


def check_record(rec: dict, now: float, retention: float, ahead: float) -> dict:
    """A decoded record the store can key and JSON can carry: names set, times finite and
    within [now - retention, now + ahead] (a finished of 1e300 once broke the dashboard
    for good and silenced the no-success alert)."""
    for name in ("run_id", "job"):
        if not rec[name]:
            raise ProtocolError("bad_field", f"record.{name} is empty")
    # A delayed push cancelled before it ran is recorded `skipped` with its future tick.
    never_ran = rec["status"] == "skipped" and rec["started"] is None
    for name in RECORD_TIMES:
        if rec[name] is not None and not math.isfinite(rec[name]):
            raise ProtocolError("bad_field", f"record.{name} is not finite")
        limit = MAX_PUSH_AHEAD_S if name == "tick" and never_ran else ahead
        check_window(rec[name], now, retention, limit, f"record.{name}")
    return rec


def check_job_entry(entry: Any) -> dict:
    """One entry of a `jobs` report, reduced to the fields the sink shows; needs a name."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        raise ProtocolError("bad_field", "jobs entry needs a name")
    if len(entry["name"]) > MAX_NAME:
        raise ProtocolError("too_large", "jobs entry name")
    clean = {"name": entry["name"]}
    for name, types in JOB_ENTRY.items():
        value = entry.get(name)
        # Display-only fields: one of an unexpected type is left out, not the whole table.
        wrong = not isinstance(value, types) or (
            name == "next_tick"
            and value is not None
            and (isinstance(value, bool) or not math.isfinite(value))
        ) or (name == "after" and value is not None and not (
            len(value) <= MAX_PARENTS
            and all(isinstance(p, str) and len(p) <= MAX_NAME for p in value)))  # fmt: skip
        clean[name] = None if wrong else value
    return clean


class Reports:
    """The latest job table per scheduler and slot report per worker.

    Written by the sink thread, read by HTTP threads: every access holds the lock.
    """

    def __init__(self, configured: Iterable[str] = ()) -> None:
        self.configured = set(configured)
        self.lock = threading.Lock()
        self.schedulers: dict[str, dict] = {}
        self.workers: dict[str, dict] = {}
        self.partial: dict[str, dict] = {}  # scheduler -> parts of a job table being received
        self.first_seen: dict[str, float] = {}  # job -> wall clock it was first reported

    def note_jobs(self, fields: dict, now: float) -> None:
        """Keep a scheduler's latest report; its job table once all parts have arrived.
        Only configured schedulers report: partial tables are bounded by their number."""
        sid = fields["scheduler"]
        if sid not in self.configured:
            raise ProtocolError("unknown_scheduler", f"jobs from {sid!r:.40}")
        jobs = self.assemble(sid, fields)
        with self.lock:
            previous = self.schedulers.get(sid, {})
            self.schedulers[sid] = {
                "scheduler": sid,
                "sent": fields["sent"],
                "jobs": previous.get("jobs", []) if jobs is None else jobs,
                "stats": fields.get("stats", {}),
                "clock_offsets": fields.get("clock_offsets", {}),
                "errors": fields.get("errors", []),
                "reason": fields.get("reason"),
                "seen": now,
            }
            if jobs is not None:
                self.note_first_seen(jobs)

    def note_first_seen(self, jobs: list[dict]) -> None:
        """Remember when each job first appeared (a job that never ran is late from then)."""
        wall = time.time()
        for entry in jobs:
            self.first_seen.setdefault(entry["name"], wall)
        if len(self.first_seen) > 2 * sum(len(r["jobs"]) for r in self.schedulers.values()):
            known = {e["name"] for r in self.schedulers.values() for e in r["jobs"]}
            self.first_seen = {k: v for k, v in self.first_seen.items() if k in known}

    def assemble(self, sid: str, fields: dict) -> list[dict] | None:
        """A complete job table from the parts of one report, or None while incomplete."""
        parts = fields.get("parts", 1)
        if parts == 0:
            return None
        entries = [check_job_entry(entry) for entry in fields["jobs"]]
        if parts == 1:
            return entries
        pending = self.partial.get(sid)
        if pending is None or pending["sent"] != fields["sent"]:
            pending = self.partial[sid] = {"sent": fields["sent"], "parts": {}}
        pending["parts"][fields.get("part", 0)] = entries
        if len(pending["parts"]) < parts:
            return None
        del self.partial[sid]
        return [entry for part in sorted(pending["parts"]) for entry in pending["parts"][part]]

    def note_worker(self, fields: dict, now: float) -> None:
        """Keep a worker's slot report (at most MAX_WORKERS of them)."""
        with self.lock:
            if fields["worker"] not in self.workers and len(self.workers) >= MAX_WORKERS:
                raise ProtocolError("too_many_workers", fields["worker"][:40])
            self.workers[fields["worker"]] = {**fields, "seen": now}

    def worker_reports(self) -> list[dict]:
        with self.lock:
            return list(self.workers.values())

    def expire(self, now: float) -> None:
        """Forget workers gone quiet, and scheduler reports too old to mean anything."""
        with self.lock:
            for wid in [w for w, r in self.workers.items() if now - r["seen"] > WORKER_GONE_S]:
                del self.workers[wid]
            stale = [s for s, r in self.schedulers.items() if now - r["seen"] > FORGET_SCHEDULER_S]
            for sid in stale:
                del self.schedulers[sid]

    def scheduler_states(self, now: float) -> tuple[int, int]:
        """(live, dead) over the configured schedulers and any others that reported."""
        with self.lock:
            ids = self.configured | set(self.schedulers)
            live = sum(1 for sid in ids if self._live(sid, now))
        return live, len(ids) - live

    def _live(self, sid: str, now: float) -> bool:
        report = self.schedulers.get(sid)
        return report is not None and now - report["seen"] <= SCHEDULER_DEAD_S

    def slots(self) -> tuple[dict[tuple[str, str], int], int]:
        """({(pool, "busy"|"free"): slots} over live workers, how many workers)."""
        totals: dict[tuple[str, str], int] = defaultdict(int)
        with self.lock:
            workers = list(self.workers.values())
        for report in workers:
            free = max(0, report["free"])
            busy = max(0, report["slots"] - free)
            for pool in set(report["pools"]):
                totals[(pool, "busy")] += busy
                totals[(pool, "free")] += free
        return dict(totals), len(workers)

    def job_names(self) -> list[str]:
        """Every job name in a kept job table."""
        with self.lock:
            return list(self.first_seen)

    def metric_names(self) -> list[str]:
        """The job_name labels with a series from the start: every job, and JOB:on_failure
        of each job with a failure hook (its runs are counted under that name)."""
        with self.lock:
            hooks = {entry["name"] + HOOK_SUFFIX for report in self.schedulers.values()
                     for entry in report["jobs"] if entry.get("on_failure")}  # fmt: skip
            return [*self.first_seen, *hooks]

    def first_seen_times(self) -> dict[str, float]:
        with self.lock:
            return dict(self.first_seen)

    def snapshot(self, now: float) -> list[dict]:
        """Every kept job table, with `live` set for schedulers heard from lately."""
        with self.lock:
            return [{**r, "live": self._live(sid, now)} for sid, r in self.schedulers.items()]


class Sink:
    """The sink daemon: run() → poll() → handle_frames() → store_batch() → ack()."""

    def __init__(
        self, config: Config, store: Store, metrics: Metrics, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.store = store
        self.metrics = metrics
        self.reports = Reports(config.cluster.schedulers)
        self.signals = Signals()
        self.notifier = Notifier()
        self.ctx = zmq.Context()
        self.security = Security.from_config(config.cluster, "sink")
        self.roles = Roles(config.cluster.schedulers, config.clients)
        # how far ahead a record's times may be: dispatch lead plus the clocks' disagreement
        self.ahead_s = ahead_bound_s(config.cluster)
        metrics.watch_handshakes(lambda: self.security.handshake_failures)
        self.sock = make_socket(self.ctx, zmq.ROUTER)
        self.poller = zmq.Poller()
        self.http: HttpServer | None = None
        self.next_purge = 0.0
        self.next_expire = 0.0
        self.rejects = Rejects(self.clock.monotonic, metrics.reject)
        self.batch = Batch()  # records drained, not yet committed (group commit)
        self.commit_at = 0.0

    def start(self) -> None:
        """Install signal handlers, bind ZeroMQ and HTTP, then tell systemd we are ready."""
        cluster = self.config.cluster
        self.signals.install()
        self.security.server(self.sock)
        bind(self.sock, cluster.sink, cluster.insecure, cluster.keys)
        api = Api(self.store, self.metrics, self.reports)
        self.http = HttpServer(
            self.config.sink.http, api, cluster.insecure, self.config.sink.http_hosts
        )
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.signals.fd, zmq.POLLIN)
        self.restore_metrics()
        self.http.start()
        self.notifier.ready(f"sink on {cluster.sink}")
        url = self.http.url
        log.info("sink on %s  dashboard %s/  metrics %s/metrics", cluster.sink, url, url)

    def restore_metrics(self) -> None:
        """After a restart, the last-success gauges and the record count come from the store."""
        last = self.store.last_runs().items()
        self.metrics.set_last_success(
            {job: row["last_success"] for job, row in last if row["last_success"] is not None}
        )
        self.metrics.records.set(self.store.count())
        self.metrics.restore_duplicates(self.store.duplicate_counts())
        self.metrics.know_jobs(job for job, _ in last)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the exit code."""
        while not self.signals.stopping:
            self.poll(self.timeout_ms())
            now = self.clock.monotonic()
            self.commit_if_due(now)
            self.purge_if_due(now)
            self.expire_reports(now)
            self.notifier.watchdog_if_due(now)
        return 0

    def timeout_ms(self) -> int:
        """Milliseconds until the next timed step is due (rounded up, as every daemon's)."""
        watchdog = self.notifier.watchdog_due(self.clock.monotonic())
        due = [self.next_purge, self.next_expire, watchdog]
        if self.batch.records:
            due.append(self.commit_at)
        return self.clock.timeout_ms(mono=due)

    def snapshot(self) -> list[dict]:
        """The schedulers' latest reports, for the HTTP API and the metrics."""
        return self.reports.snapshot(self.clock.monotonic())

    def poll(self, timeout_ms: int) -> None:
        """Wait for frames or a signal, and handle what arrived."""
        ready = dict(self.poller.poll(timeout_ms))
        if self.signals.fd in ready:
            self.signals.drain()
            self.signals.reload = False  # nothing to reload; HUP only must not kill us
        if self.sock in ready:
            self.handle_frames()

    def handle_frames(self) -> None:
        """Drain what is readable (up to MAX_BATCH) into the batch; it is stored in one
        transaction when full or GROUP_COMMIT_S after its first record (commit_if_due)."""
        batch = self.batch
        for _ in range(MAX_BATCH):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            sender = self.roles.sender(self.security.sender(frames[-1]))
            had = len(batch.records)
            self.handle_message([f.bytes for f in frames], batch, self.clock.monotonic(), sender)
            if not had and batch.records:
                self.commit_at = self.clock.monotonic() + GROUP_COMMIT_S
        if len(batch.records) >= MAX_BATCH:
            self.commit()

    def commit_if_due(self, now: float) -> None:
        if self.batch.records and now >= self.commit_at:
            self.commit()

    def commit(self) -> None:
        batch, self.batch = self.batch, Batch()
        self.store_batch(batch)

    def handle_message(self, frames: list[bytes], batch: Batch, now: float, sender: Sender) -> None:
        """Decode one [identity, payload] message, check its sender may send it; a bad or
        unauthorized one is dropped and counted."""
        try:
            if len(frames) != 2:
                raise ProtocolError("malformed", f"{len(frames)} frames")
            kind, fields = decode(frames[1])
            if kind not in ("result", "results", "jobs", "ready"):
                raise ProtocolError("unexpected_type", kind)
            self.roles.check(kind, fields, sender)
            if kind == "result":
                rec = check_record(
                    fields["record"], self.clock.now(), self.config.sink.retention, self.ahead_s
                )
                batch.add(frames[0], rec)
            elif kind == "results":
                self.take_records(frames[0], fields["records"], batch, sender)
            elif kind == "jobs":
                self.reports.note_jobs(fields, now)
            else:
                self.reports.note_worker(fields, now)
        except ProtocolError as exc:
            self.rejects(f"dropped a message: {exc}", exc.reason)

    def take_records(self, identity: bytes, records: list[dict], batch: Batch, sender: Sender
                     ) -> None:  # fmt: skip
        """A turn's records from one sender: each checked alone, a bad one dropped and
        counted (the sender resends it, unacknowledged, and it is dropped again: the good
        ones beside it are stored)."""
        now = self.clock.now()
        for rec in records:
            try:
                validate_record(rec)
                self.roles.check_record(rec, sender)
                batch.add(identity, check_record(rec, now, self.config.sink.retention,
                                                 self.ahead_s))  # fmt: skip
            except ProtocolError as exc:
                self.rejects(f"dropped a record: {exc}", exc.reason)

    def store_batch(self, batch: Batch) -> None:
        """Write the batch in one synced transaction, then ack; on failure ack nothing."""
        began = self.clock.monotonic()
        try:
            stored = self.store.put_many(batch.records)
        except (lmdb.Error, StoreError) as exc:
            log.error("cannot store %d records (senders will resend): %s", len(batch.records), exc)
            return
        # the duplicates first: /api/runs shows the commit already, and a reader of both
        # should rarely see the records before their count
        self.metrics.count_duplicates(stored.duplicates)
        self.metrics.observe_batch(len(batch.records), self.clock.monotonic() - began)
        self.metrics.observe_new(stored.new, self.clock.now())
        self.metrics.set_last_success(stored.last_success)
        self.metrics.records.set(stored.records)
        for rec in stored.duplicates:
            log.warning("duplicate run of %s tick %.6f: %s", rec["job"], rec["tick"], rec["run_id"])
        for rec in stored.superseded:
            log.info("run %s of %s ran after all (%s): its record replaces the scheduler's "
                     "guess", rec["run_id"], rec["job"], rec["status"])  # fmt: skip
        self.ack(batch.senders)

    def ack(self, senders: dict[bytes, list[str]]) -> None:
        """Tell each sender which of its run ids are stored; a vanished peer will resend."""
        for identity, run_ids in senders.items():
            try:
                self.sock.send_multipart([identity, encode("ack", run_ids=run_ids)], zmq.NOBLOCK)
            except zmq.Again:
                pass

    def purge_if_due(self, now: float) -> None:
        """Delete a bounded batch of records past retention, so ingest never stalls."""
        if now < self.next_purge:
            return
        self.next_purge = now + PURGE_EVERY_S
        cutoff = self.clock.now() - self.config.sink.retention
        try:
            purged = self.store.purge_older_than(cutoff, PURGE_BATCH)
        except (lmdb.Error, StoreError) as exc:
            log.error("cannot purge old records: %s", exc)
            return
        if purged >= PURGE_BATCH:
            self.next_purge = now + PURGE_BACKLOG_S
        self.metrics.records.dec(purged)

    def expire_reports(self, now: float) -> None:
        """Drop silent workers and refresh the liveness and slot gauges."""
        if now < self.next_expire:
            return
        self.next_expire = now + EXPIRE_EVERY_S
        self.reports.expire(now)
        self.metrics.set_schedulers(*self.reports.scheduler_states(now))
        self.metrics.set_slots(*self.reports.slots())
        self.metrics.know_jobs(self.reports.metric_names())

    def close(self) -> None:
        """Stop HTTP first (its threads read the store), then the socket, then LMDB."""
        self.notifier.stopping()
        if self.http is not None:
            self.http.stop()
        if self.batch.records:
            self.commit()  # stored and acked, not resent to a restarted sink
        self.sock.close(linger=0)
        self.security.close()
        self.ctx.term()
        self.store.close()
        log.info("sink stopped")


def cmd_sink(args: dict) -> int:
    """`zcron sink [-c FILE]`: run the sink in the foreground until SIGTERM."""
    setup_logging("zcron-sink")
    disable_created_metrics()  # `_created` series would double /metrics for nothing here
    config = load_daemon_config(args)
    check_secure(config, "sink")
    os.umask(0o077)  # the store's files are owner-only (it starts no processes)
    lock = hold(config.sink.data, "the sink")  # LMDB itself lets two writers share it
    metrics = Metrics(config.sink.job_labels)
    sink = Sink(config, Store(config.sink.data), metrics)
    metrics.watch_cluster(sink.snapshot, lambda: sink.reports.worker_reports())
    try:
        return run_daemon(sink)
    finally:
        os.close(lock)
