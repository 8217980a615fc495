"""Metric names, labels and buckets as spec §6 names them; job_labels off drops job_name."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from zcron.metrics import Metrics
from zcron.protocol import record

T0 = 1_795_000_000.0


def finished(job: str, status: str = "ok", attempt: int = 1, late: float = 0.003) -> dict:
    return record(
        run_id=f"{job}-{status}-{attempt}",
        job=job,
        tick=T0,
        attempt=attempt,
        started=T0 + late,
        finished=T0 + late + 2.0,
        status=status,
    )


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from the exposition text."""
    text = metrics.exposition()[0].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_spec_metric_names_are_exposed() -> None:
    metrics = Metrics()
    metrics.observe_new([finished("a")], T0 + 10)
    metrics.count_duplicates([finished("a")])
    metrics.set_last_success({"a": T0 + 2})
    metrics.set_slots({("default", "busy"): 1, ("default", "free"): 3}, workers=1)
    metrics.reject("malformed")
    text = metrics.exposition()[0].decode()
    for name, kind in (
        ("zcron_runs_total", "counter"),
        ("zcron_dispatch_lateness_seconds", "histogram"),
        ("zcron_run_duration_seconds", "histogram"),
        ("zcron_missed_ticks_total", "counter"),
        ("zcron_duplicate_runs_total", "counter"),
        ("zcron_job_last_success_timestamp_seconds", "gauge"),
        ("zcron_worker_slots", "gauge"),
        ("zcron_schedulers", "gauge"),
        ("zcron_sink_records", "gauge"),
        ("zcron_rejected_messages_total", "counter"),
        ("zcron_sink_ingest_lag_seconds", "histogram"),
        ("zcron_sink_batch_size", "histogram"),
    ):
        assert f"# TYPE {name} {kind}\n" in text, name
    assert 'job="' not in text and 'instance="' not in text


def test_runs_are_counted_per_job_and_status() -> None:
    metrics = Metrics()
    metrics.observe_new([finished("a"), finished("a", "failed"), finished("b", "missed")], T0)
    got = samples(metrics)
    assert got[("zcron_runs_total", (("job_name", "a"), ("status", "ok")))] == 1
    assert got[("zcron_runs_total", (("job_name", "a"), ("status", "failed")))] == 1
    assert got[("zcron_missed_ticks_total", (("job_name", "b"),))] == 1


def test_lateness_buckets_start_at_half_a_millisecond_and_skip_retries() -> None:
    metrics = Metrics()
    metrics.observe_new([finished("a", late=0.0004), finished("a", attempt=2, late=30)], T0)
    got = samples(metrics)
    assert got[("zcron_dispatch_lateness_seconds_bucket", (("le", "0.0005"),))] == 1
    assert got[("zcron_dispatch_lateness_seconds_count", ())] == 1
    assert got[("zcron_run_duration_seconds_count", ())] == 2
    assert ("zcron_run_duration_seconds_bucket", (("le", "3600.0"),)) in got


def test_last_success_only_moves_forward() -> None:
    metrics = Metrics()
    metrics.set_last_success({"a": T0 + 5})
    metrics.set_last_success({"a": T0 + 1})
    assert samples(metrics)[("zcron_job_last_success_timestamp_seconds", (("job_name", "a"),))] == (
        T0 + 5
    )


def test_slots_of_a_vanished_pool_disappear() -> None:
    metrics = Metrics()
    metrics.set_slots({("db", "busy"): 1, ("db", "free"): 0}, workers=1)
    metrics.set_slots({("default", "busy"): 0, ("default", "free"): 4}, workers=1)
    got = samples(metrics)
    assert got[("zcron_worker_slots", (("pool", "default"), ("state", "free")))] == 4
    assert ("zcron_worker_slots", (("pool", "db"), ("state", "busy"))) not in got


def test_schedulers_report_live_and_dead_even_when_zero() -> None:
    got = samples(Metrics())
    assert got[("zcron_schedulers", (("state", "live"),))] == 0
    assert got[("zcron_schedulers", (("state", "dead"),))] == 0


def test_job_labels_off_drops_job_name() -> None:
    metrics = Metrics(job_labels=False)
    metrics.observe_new([finished("a"), finished("b", "missed")], T0)
    metrics.count_duplicates([finished("a")])
    metrics.set_last_success({"a": T0 + 5, "b": T0 + 9})
    text = metrics.exposition()[0].decode()
    assert "job_name" not in text
    got = samples(metrics)
    assert got[("zcron_runs_total", (("status", "ok"),))] == 1
    assert got[("zcron_missed_ticks_total", ())] == 1
    assert got[("zcron_duplicate_runs_total", ())] == 1
    assert got[("zcron_job_last_success_timestamp_seconds", ())] == T0 + 9


def test_known_jobs_have_counters_at_zero_and_pushes_share_one_label() -> None:
    metrics = Metrics()
    metrics.know_jobs(["nightly", "push:1a2b3c"])
    got = samples(metrics)
    assert got[("zcron_missed_ticks_total", (("job_name", "nightly"),))] == 0
    assert got[("zcron_duplicate_runs_total", (("job_name", "nightly"),))] == 0
    assert got[("zcron_runs_total", (("job_name", "nightly"), ("status", "missed")))] == 0
    metrics.observe_new([finished("push:aaaa"), finished("push:bbbb")], T0 + 10)
    metrics.set_last_success({"push:aaaa": T0 + 2})
    got = samples(metrics)
    assert got[("zcron_runs_total", (("job_name", "push"), ("status", "ok")))] == 2
    assert got[("zcron_job_last_success_timestamp_seconds", (("job_name", "push"),))] == T0 + 2
    assert not any("push:" in str(labels) for _, labels in got)


def test_schedule_errors_count_broken_files_per_live_scheduler() -> None:
    metrics = Metrics()
    reports = [
        {"scheduler": "a", "live": True, "errors": ["f:1: x", "f:3: y", "g:2: z"]},
        {"scheduler": "b", "live": True, "stats": {}},
        {"scheduler": "c", "live": False, "errors": ["f:1: x"]},
    ]
    metrics.watch_cluster(lambda: reports, lambda: [])
    got = samples(metrics)
    assert got[("zcron_schedule_errors", (("scheduler", "a"),))] == 2
    assert got[("zcron_schedule_errors", (("scheduler", "b"),))] == 0
    assert ("zcron_schedule_errors", (("scheduler", "c"),)) not in got
