"""clock.Clock/FakeClock, poll timeouts on two clocks, parse_time, and the Rejects helper."""

from __future__ import annotations

import logging

import pytest

from zcron.clock import Clock, FakeClock, parse_time
from zcron.daemon import Rejects
from zcron.errors import ConfigError

T0 = 1_700_000_000.0


def test_timeout_ms_takes_each_deadline_on_its_own_clock_and_rounds_up() -> None:
    clock = FakeClock(wall=T0, mono=50.0)
    assert clock.timeout_ms(wall=[T0 + 0.0101], mono=[60.0]) == 11
    assert clock.timeout_ms(wall=[T0 + 10], mono=[50.0005]) == 1  # never 0 before it is due
    assert clock.timeout_ms(wall=[T0 - 1]) == 0
    assert clock.timeout_ms() == -1  # nothing due: wait for a message


def test_a_stepped_wall_clock_moves_only_wall_deadlines() -> None:
    clock = FakeClock(wall=T0, mono=50.0)
    clock.step_wall(-5.0)
    assert clock.timeout_ms(wall=[T0], mono=[51.0]) == 1000
    assert clock.timeout_ms(wall=[T0]) == 5000


def test_spin_until_reaches_the_instant() -> None:
    clock = FakeClock(wall=T0)
    clock.spin_until(T0 + 0.002)
    assert clock.now() == T0 + 0.002
    real = Clock()
    target = real.now() + 0.001
    real.spin_until(target)
    assert real.now() >= target


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1700000000.5", T0 + 0.5), ("2023-11-14T22:13:20Z", T0), ("2023-11-14T22:13:20", T0),
     ("2023-11-14T23:13:20 01:00", T0), ("1h", T0 - 3600)],
)  # fmt: skip
def test_parse_time_takes_seconds_iso_8601_or_a_duration_ago(text: str, expected: float) -> None:
    assert parse_time("--since", text, now=T0) == expected


@pytest.mark.parametrize("text", ["nan", "inf", "yesterday", ""])
def test_parse_time_names_the_option_when_it_cannot_parse(text: str) -> None:
    with pytest.raises(ConfigError, match="^--since: expected"):
        parse_time("--since", text, now=T0)


def test_rejects_counts_every_drop_and_logs_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, reasons = FakeClock(), []
    rejects = Rejects(clock.monotonic, reasons.append, every_s=10.0)
    with caplog.at_level(logging.WARNING):
        for _ in range(1000):
            rejects("dropped message: malformed", "malformed")
        clock.advance(10.0)
        rejects("dropped message: bad_field", "bad_field")
    assert rejects.total == 1001 and len(reasons) == 1001
    assert [r.getMessage() for r in caplog.records] == [
        "dropped message: malformed (1 dropped so far)",
        "dropped message: bad_field (1001 dropped so far)",
    ]
