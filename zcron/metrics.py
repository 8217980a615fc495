"""Every zcron_* metric, defined once on the sink's own registry (spec §6).

Per-job metrics carry the `job_name` label (never `job`: Prometheus owns it) unless
`[sink] job_labels = false`, for very large job counts. One-off pushes share
job_name="push", so a thousand pushes are not a thousand series.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from zcron.cron import parse_schedule
from zcron.dashboard import is_push, schedule_error_files
from zcron.protocol import STATUSES

LATENESS_BUCKETS = (
    *(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5),
    *(1, 2.5, 5, 10, 30, 60),
)
DURATION_BUCKETS = (
    *(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5),
    *(1, 5, 10, 30, 60, 300, 900, 1800, 3600),
)
LAG_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1)


class Metrics:
    """The sink's metrics; update methods take run records and report snapshots."""

    def __init__(self, job_labels: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.job_labels = job_labels
        job = ("job_name",) if job_labels else ()
        reg = self.registry
        self.runs = Counter(
            "zcron_runs_total", "Run records stored, by status.", (*job, "status"), registry=reg
        )
        self.missed = Counter(
            "zcron_missed_ticks_total", "Ticks no worker could start in time.", job, registry=reg
        )
        self.duplicates = Counter(
            "zcron_duplicate_runs_total",
            "Second and later attempt-1 runs of one (job, tick).",
            job,
            registry=reg,
        )
        self.last_success = Gauge(
            "zcron_job_last_success_timestamp_seconds",
            "When the job last finished ok (Unix seconds).",
            job,
            registry=reg,
        )
        self.lateness = Histogram(
            "zcron_dispatch_lateness_seconds",
            "Started minus scheduled tick, first attempts.",
            buckets=LATENESS_BUCKETS,
            registry=reg,
        )
        self.duration = Histogram(
            "zcron_run_duration_seconds",
            "Finished minus started.",
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.worker_slots = Gauge(
            "zcron_worker_slots", "Slots of live workers.", ("pool", "state"), registry=reg
        )
        self.schedulers = Gauge(
            "zcron_schedulers", "Schedulers by liveness.", ("state",), registry=reg
        )
        self.workers = Gauge("zcron_workers", "Live workers reporting to the sink.", registry=reg)
        self.records = Gauge("zcron_sink_records", "Run records stored.", registry=reg)
        self.rejected = Counter(
            "zcron_rejected_messages_total",
            "Messages dropped as malformed or unexpected.",
            ("reason",),
            registry=reg,
        )
        self.ingest_lag = Histogram(
            "zcron_sink_ingest_lag_seconds",
            "Stored minus finished (spooled results show up here).",
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "zcron_sink_batch_size",
            "Records per write transaction.",
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.commit_seconds = Histogram(
            "zcron_sink_commit_seconds",
            "Time to write and sync one batch.",
            buckets=COMMIT_BUCKETS,
            registry=reg,
        )
        self._last_success: dict[str, float] = {}
        self._slot_labels: set[tuple[str, str]] = set()
        self._known_jobs: set[str] = set()
        self.schedulers.labels("live").set(0)
        self.schedulers.labels("dead").set(0)

    def _job(self, metric, job: str):  # type: ignore[no-untyped-def]
        return metric.labels(job_label(job)) if self.job_labels else metric

    def know_jobs(self, jobs: Iterable[str]) -> None:
        """Give every per-job counter a series at 0 for jobs not seen before, so that
        increase() sees their first event."""
        if not self.job_labels:
            return
        for job in {job_label(j) for j in jobs} - self._known_jobs:
            self._known_jobs.add(job)
            self.missed.labels(job)
            self.duplicates.labels(job)
            for status in STATUSES:
                self.runs.labels(job, status)

    def observe_new(self, records: Iterable[dict], stored_at: float) -> None:
        """Count newly stored records (never redeliveries) and time their phases."""
        for rec in records:
            job, status = job_label(rec["job"]), rec["status"]
            if self.job_labels:
                self.runs.labels(job, status).inc()
            else:
                self.runs.labels(status).inc()
            if status == "missed":
                self._job(self.missed, job).inc()
            self.observe_times(rec, stored_at)

    def observe_times(self, rec: dict, stored_at: float) -> None:
        """Lateness (first attempts only: retries wait on purpose), duration, ingest lag."""
        tick, started, finished = rec.get("tick"), rec.get("started"), rec.get("finished")
        if rec.get("attempt") == 1 and started is not None and tick is not None:
            # from the instant it was due: the tick plus its jitter delay (spec §3)
            self.lateness.observe(max(0.0, started - tick - (rec.get("delay") or 0.0)))
        if started is not None and finished is not None:
            self.duration.observe(max(0.0, finished - started))
        if finished is not None:
            self.ingest_lag.observe(max(0.0, stored_at - finished))

    def count_duplicates(self, records: Iterable[dict]) -> None:
        """One per duplicate run the store detected."""
        for rec in records:
            self._job(self.duplicates, rec["job"]).inc()

    def restore_duplicates(self, counts: Mapping[str, int]) -> None:
        """After a restart: the duplicates the store has counted since it was created."""
        for job, count in counts.items():
            self._job(self.duplicates, job).inc(count)

    def set_last_success(self, last: Mapping[str, float]) -> None:
        """Raise each job's last-success time (the unlabelled gauge keeps the newest of all)."""
        for job, when in last.items():
            key = job_label(job) if self.job_labels else ""
            if when > self._last_success.get(key, float("-inf")):
                self._last_success[key] = when
                self._job(self.last_success, job).set(when)

    def reject(self, reason: str) -> None:
        """Count one dropped message."""
        self.rejected.labels(reason).inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        """One write transaction of `size` records took `seconds`."""
        self.batch_size.observe(size)
        self.commit_seconds.observe(seconds)

    def set_slots(self, slots: Mapping[tuple[str, str], int], workers: int) -> None:
        """Replace the {(pool, state): n} slot gauges; pools no longer reported disappear."""
        for labels, value in slots.items():
            self.worker_slots.labels(*labels).set(value)
        for labels in self._slot_labels - set(slots):
            self.worker_slots.remove(*labels)
        self._slot_labels = set(slots)
        self.workers.set(workers)

    def set_schedulers(self, live: int, dead: int) -> None:
        """How many schedulers are live and dead."""
        self.schedulers.labels("live").set(live)
        self.schedulers.labels("dead").set(dead)

    def watch_cluster(
        self, schedulers: Callable[[], list[dict]], workers: Callable[[], list[dict]]
    ) -> None:
        """Expose what schedulers and workers report about themselves, read at scrape time."""
        self.registry.register(ClusterCollector(schedulers, workers, self.job_labels))

    def watch_handshakes(self, failures: Callable[[], int]) -> None:
        """Expose the sink's own failed CURVE handshakes (strangers, plaintext clients)."""
        self.registry.register(HandshakeCollector(failures))

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text page and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def job_label(job: str) -> str:
    """The job_name label of a job: its name, or "push" for every one-off push."""
    return "push" if is_push(job) else job


class HandshakeCollector:
    """`zcron_handshake_failures_total`, read from the sink's socket monitor at scrape time."""

    def __init__(self, failures: Callable[[], int]) -> None:
        self.failures = failures

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "zcron_handshake_failures",
            "Failed CURVE handshakes on the sink's socket: strangers and plaintext clients.",
            value=self.failures(),
        )


# stats key reported by a scheduler -> (metric name, help, counter?)
SCHEDULER_STATS = {
    "takeovers": ("zcron_scheduler_takeovers", "Dead peers whose jobs it took over.", True),
    "caught_up": ("zcron_scheduler_caught_up_ticks", "Ticks fired late by catch-up.", True),
    "rejected": ("zcron_scheduler_rejected_messages", "Messages a scheduler dropped.", True),
    "waiting": ("zcron_scheduler_waiting_ticks", "Due ticks waiting for a free slot.", False),
    "eligible": ("zcron_scheduler_eligible", "1 while the scheduler fires ticks.", False),
    "digests_agree": (
        "zcron_config_digest_agrees",
        "1 when the scheduler's job set matches every live peer's.",
        False,
    ),
    "live_peers": ("zcron_scheduler_live_peers", "Peers the scheduler sees live.", False),
    "followups_pending": (
        "zcron_scheduler_followups_pending",
        "Retries, chained runs and failure hooks a scheduler holds until one is started.",
        False,
    ),
    "followups_expired": (
        "zcron_scheduler_followups_expired",
        "Follow-ups dropped because nobody started them long past their instant.",
        True,
    ),
    "followups_dropped": (
        "zcron_scheduler_followups_dropped",
        "Follow-ups refused because too many were pending.",
        True,
    ),
    "recalls": (
        "zcron_scheduler_recalls",
        "Queued runs asked back from a busy worker for a free one (prefetch).",
        True,
    ),
    "returned": (
        "zcron_scheduler_returned_runs",
        "Queued runs workers gave back unstarted (recalled, or draining) and sent again.",
        True,
    ),
    "handshake_failures": (
        "zcron_scheduler_handshake_failures",
        "Failed CURVE handshakes on a scheduler's sockets.",
        True,
    ),
}


class ClusterCollector:
    """Scheduler and worker self-reports (sent to the sink) as metric families."""

    def __init__(
        self,
        schedulers: Callable[[], list[dict]],
        workers: Callable[[], list[dict]],
        job_labels: bool = True,
    ) -> None:
        self.schedulers = schedulers
        self.workers = workers
        self.job_labels = job_labels

    def collect(self) -> Iterator[Metric]:
        reports = [r for r in self.schedulers() if r.get("live")]
        yield from self.scheduler_families(reports)
        if self.job_labels:
            yield self.job_intervals(reports)
        yield self.job_paused(reports, self.job_labels)
        yield self.pool_workers(reports, self.workers())
        offsets = GaugeMetricFamily(
            "zcron_peer_clock_offset_seconds",
            "A peer's clock minus the reporting scheduler's, from heartbeats.",
            labels=["scheduler", "peer"],
        )
        spool = GaugeMetricFamily(
            "zcron_spool_records", "Results waiting for the sink's ack.", labels=["role", "id"]
        )
        for report in reports:
            for peer, offset in report.get("clock_offsets", {}).items():
                offsets.add_metric([report["scheduler"], peer], offset)
            if "spool" in report.get("stats", {}):
                spool.add_metric(["scheduler", report["scheduler"]], report["stats"]["spool"])
        failures = CounterMetricFamily(
            "zcron_worker_handshake_failures",
            "Failed CURVE handshakes seen by a worker.",
            labels=["worker"],
        )
        mail = CounterMetricFamily(
            "zcron_mail_failures",
            "Mails of run output (MAILTO) a worker could not hand to sendmail.",
            labels=["worker"],
        )
        for worker in self.workers():
            if "spool" in worker:
                spool.add_metric(["worker", worker["worker"]], worker["spool"])
            if "handshake_failures" in worker:
                failures.add_metric([worker["worker"]], worker["handshake_failures"])
            if "mail_failures" in worker:
                mail.add_metric([worker["worker"]], worker["mail_failures"])
        yield offsets
        yield spool
        yield failures
        yield mail
        yield self.schedule_errors(reports)

    @staticmethod
    def schedule_errors(reports: list[dict]) -> Metric:
        """Files whose last change failed to parse, per live scheduler (0: all good)."""
        family = GaugeMetricFamily(
            "zcron_schedule_errors",
            "Schedule files whose last change failed to parse (their last good version runs).",
            labels=["scheduler"],
        )
        for report in reports:
            family.add_metric([report["scheduler"]], schedule_error_files(report.get("errors", [])))
        return family

    @staticmethod
    def scheduler_families(reports: list[dict]) -> Iterator[Metric]:
        for key, (name, doc, counter) in SCHEDULER_STATS.items():
            family_type = CounterMetricFamily if counter else GaugeMetricFamily
            family = family_type(name, doc, labels=["scheduler"])
            for report in reports:
                if key in report.get("stats", {}):
                    family.add_metric([report["scheduler"]], report["stats"][key])
            yield family

    @staticmethod
    def pool_workers(reports: list[dict], workers: list[dict]) -> Metric:
        """Live workers per pool, 0 for a pool that jobs name but no worker serves."""
        family = GaugeMetricFamily(
            "zcron_pool_workers", "Live workers serving the pool.", labels=["pool"]
        )
        counts = {job["pool"]: 0 for r in reports for job in r.get("jobs", []) if job["pool"]}
        for worker in workers:
            for pool in set(worker["pools"]):
                counts[pool] = counts.get(pool, 0) + 1
        for pool, count in sorted(counts.items()):
            family.add_metric([pool], count)
        return family

    @staticmethod
    def job_paused(reports: list[dict], job_labels: bool) -> Metric:
        """1 for a job paused with `zcron pause`, 0 for every other known job (the newest
        live report wins: peers agree within a heartbeat). Without job labels: how many."""
        paused: dict[str, bool] = {}
        for report in sorted(reports, key=lambda r: r.get("seen", 0.0)):
            paused.update((job["name"], bool(job.get("paused"))) for job in report.get("jobs", []))
        help_text = "1 while the job is paused (zcron pause), else 0."
        if not job_labels:
            help_text = "Jobs paused with zcron pause."
            return GaugeMetricFamily("zcron_job_paused", help_text, value=sum(paused.values()))
        family = GaugeMetricFamily("zcron_job_paused", help_text, labels=["job_name"])
        for job, value in sorted(paused.items()):
            if not is_push(job):
                family.add_metric([job], float(value))
        return family

    @staticmethod
    def job_intervals(reports: list[dict]) -> Metric:
        """The longest gap between fire times of each job's schedule (for "no success
        within its period" alerts)."""
        family = GaugeMetricFamily(
            "zcron_job_interval_seconds",
            "Longest gap between two fire times of the job's schedule.",
            labels=["job_name"],
        )
        seen = set()
        for report in reports:
            for job in report.get("jobs", []):
                if job["name"] in seen or not job.get("schedule"):
                    continue
                seen.add(job["name"])
                interval = schedule_interval(job["schedule"], job.get("timezone") or "UTC")
                if interval is not None:
                    family.add_metric([job["name"]], interval)
        return family


@lru_cache(maxsize=4096)
def schedule_interval(schedule: str, timezone: str, fires: int = 50) -> float | None:
    """The longest gap among a schedule's next `fires` fire times (cached per schedule)."""
    try:
        cron = parse_schedule(schedule, timezone)
    except ValueError:
        return None
    instants: list[float] = []
    instant: float | None = time.time()
    while len(instants) < fires and (instant := cron.next_after(instant)) is not None:
        instants.append(instant)
    gaps = [b - a for a, b in zip(instants, instants[1:], strict=False)]
    return max(gaps) if gaps else None
