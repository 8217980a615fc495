"""The daemons' clocks: wall time for tick instants and records, monotonic for intervals.

Every daemon is given one Clock and reads time only through it, so a unit test can drive
a daemon's steps with a FakeClock in milliseconds of test time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from zcron.config import parse_duration
from zcron.daemon import poll_timeout_ms
from zcron.errors import ConfigError

# poll() wakes in whole milliseconds: the last stretch before an instant is spun, not slept.
SPIN_S = 0.002


class Clock:
    """The real clocks."""

    def now(self) -> float:
        """Wall-clock seconds (tick instants, records, what peers compare)."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds for intervals and deadlines: never steps when the wall clock does."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def spin_until(self, instant: float) -> None:
        """Busy-wait the last SPIN_S to a wall-clock instant (a poll would overshoot it)."""
        while self.now() < instant:
            pass

    def timeout_ms(self, wall: Iterable[float] = (), mono: Iterable[float] = ()) -> int:
        """Whole milliseconds until the earliest deadline, each on its own clock, rounded up:
        rounded down, a loop wakes before its deadline and spins on poll(0) until it comes."""
        now, now_mono = self.now(), self.monotonic()
        waits = [d - now for d in wall] + [d - now_mono for d in mono]
        wait = min(waits, default=math.inf)
        return poll_timeout_ms(wait, 0.0) if math.isfinite(wait) else -1


class FakeClock(Clock):
    """A clock that moves only when told: `advance` moves both clocks, `step_wall` only the
    wall clock (an operator or NTP stepping it)."""

    def __init__(self, wall: float = 1_700_000_000.0, mono: float = 1_000.0) -> None:
        self.wall = wall
        self.mono = mono

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def step_wall(self, seconds: float) -> None:
        self.wall += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def spin_until(self, instant: float) -> None:
        if self.wall < instant:
            self.advance(instant - self.wall)


def parse_time(name: str, text: str, now: float) -> float:
    """Unix seconds, ISO 8601 (naive = UTC), or a duration that long before `now` (`1h`);
    ConfigError naming `name` otherwise. Shared by the command line and the HTTP API."""
    try:
        value = float(text)
        if math.isfinite(value):
            return value
    except ValueError:
        pass
    for candidate in (text, text.replace(" ", "+")):  # a '+' offset arrives as a space
        try:
            stamp = datetime.fromisoformat(candidate)
            return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()
        except ValueError:
            pass
    try:
        return now - parse_duration(text, name)
    except ConfigError:
        raise ConfigError(
            f"{name}: expected Unix seconds, ISO 8601 (2026-11-23T03:00:00Z) "
            f"or a duration ago (1h), got {text!r}"
        ) from None
