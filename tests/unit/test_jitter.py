"""jitter (spec §3): a stable delay per job name in [0, jitter), on the heap and the wire."""

from __future__ import annotations

import pytest

from zcron.errors import ProtocolError
from zcron.job import Job, jitter_delay
from zcron.plan import LEAD_S, Plan
from zcron.protocol import decode, encode, record


def job(name: str, jitter: float = 3.0) -> Job:
    return Job(
        name=name,
        schedule="*/5 * * * * *",
        command="true",
        jitter=jitter,
        timezone="UTC",
        source="t.toml:1",
    )


def test_each_name_gets_the_same_delay_every_time_within_the_jitter() -> None:
    delays = [jitter_delay(f"job-{n}", 3.0) for n in range(200)]
    assert delays == [jitter_delay(f"job-{n}", 3.0) for n in range(200)]
    assert all(0 <= d < 3.0 for d in delays)
    assert min(delays) < 0.5 and max(delays) > 2.5  # spread over the window
    assert jitter_delay("job-1", 0.0) == 0.0


def test_the_heap_dispatches_a_jittered_tick_its_delay_later_with_the_same_tick() -> None:
    plan = Plan()
    plan.plan(job("a"), 1000.0)
    entry = plan.pop_due(2000.0)
    assert entry.tick == 1000.0
    assert entry.dispatch_at == 1000.0 + jitter_delay("a", 3.0) - LEAD_S


def test_the_delay_travels_validated_and_lands_in_the_record() -> None:
    msg = dict(run_id="r", job="a", tick=1.0, attempt=1, scheduler="s", pool="default",
               command="true", shell="/bin/sh", user=None, env={}, cwd=None, timeout=None,
               on_timeout="kill", dispatched=1.0)  # fmt: skip
    assert decode(encode("job", **msg, delay=1.5))[1]["delay"] == 1.5
    for bad in (-1.0, 2e5):
        with pytest.raises(ProtocolError, match="delay"):
            decode(encode("job", **msg, delay=bad))
    rec = record(run_id="r", job="a", tick=1.0, status="ok", delay=1.5)
    assert decode(encode("result", record=rec))[1]["record"]["delay"] == 1.5
