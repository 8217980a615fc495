"""Cron expressions evaluated in a job's timezone: parsing, next fire instant, the DST rule.

An expression has 5 fields (minute first), 6 fields (seconds first) or is an @alias, in
cronie's syntax: numbers, month and weekday names, ``*``, ``a-b``, ``*/n``, ``a-b/n``,
``a/n`` (a to the end, every n), lists. Day-of-month and day-of-week combine as in cron:
OR when both are restricted, AND when either begins with ``*``.

Parsing and search are done here rather than by croniter: croniter 7.0.0 reads a
single-value range such as ``5-5`` as ``*``, and its search costs 20-60 µs a call, while
a per-second job asks every second. This search takes 1-10 µs.

Wall times are matched in the job's timezone and become fire instants by cronie's DST rule:

- A job is *wildcard* when its seconds, minute or hour field begins with ``*`` (cronie's
  ``MIN_STAR | HR_STAR`` test, extended to the seconds field); otherwise it is *fixed-time*.
- Spring-forward gap (the wall time does not exist): a fixed-time job fires once, at the
  transition instant (the first instant after the gap); a wildcard job skips those times.
- Autumn overlap (the wall time occurs twice): a fixed-time job fires once, at the first
  occurrence; a wildcard job fires at both, because it follows real time.

So a daily ``30 2 * * *`` job in Europe/Berlin fires exactly once on both transition days,
and a per-second job neither pauses nor repeats an instant.
"""

from __future__ import annotations

import math
import os
import re
import weakref
from bisect import bisect_left, bisect_right
from datetime import date, datetime, timedelta
from functools import cache, lru_cache
from zoneinfo import ZoneInfo

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
FIELDS = (
    ("second", "0-59"),
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or jan-dec"),
    ("day-of-week", "0-7 or sun-sat"),
)
_BOUNDS = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_NAMES = (
    {},
    {},
    {},
    {},
    {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)},
    {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())},
)
_ITEM = re.compile(
    r"(?:(\*)|([0-9]{1,4}|[A-Za-z]{3})(?:-([0-9]{1,4}|[A-Za-z]{3}))?)(?:/([0-9]{1,4}))?\Z"
)
# Zones whose offset never changes: no DST handling needed.
_FIXED_ZONES = {"UTC", "GMT", "UCT", "Universal", "Zulu", "Greenwich", "GMT0", "GMT+0", "GMT-0"}
# A backward transition this close after t can make earlier wall times fire after t
# (assumes no zone changes its offset twice within this span).
_OVERLAP_HORIZON_S = 86400.0
# The Gregorian calendar repeats every 400 years: no match by then means none ever.
_SEARCH_YEARS = 400
_EPOCH = datetime(1970, 1, 1)
_EPOCH_ORDINAL = _EPOCH.toordinal()
_ONE_DAY = timedelta(days=1)
# Jobs repeat few distinct fields (benchmarks/scale.py's 100,000 have ~150): the bound is
# against a hostile file, not for the jobs.
_FIELD_CACHE_SIZE = 4096


class CronSchedule:
    """A parsed cron expression bound to a timezone; `next_after` gives its fire instants."""

    # Slots: a scheduler may hold 100,000s; __weakref__: for parse_schedule's cache.
    __slots__ = (
        "expression",
        "timezone",
        "fixed_time",
        "_zone",
        "_fixed_offset",
        "_sets",
        "__weakref__",
    )

    def __init__(self, expression: str, timezone: str):
        fields = _six_fields(expression)
        self.expression = expression
        self.timezone = timezone
        self.fixed_time = not any(f.startswith("*") for f in fields[:3])
        self._zone = zone(timezone)
        self._fixed_offset = _fixed_offset(timezone, self._zone)
        self._sets = _FieldSets(fields, [_parse_field(i, f) for i, f in enumerate(fields)])
        if self._sets.next_wall(0.0) is None:
            raise ValueError(f"schedule {expression!r} never fires (no such date)")

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r}, {self.timezone!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CronSchedule):
            return NotImplemented
        return (self.expression, self.timezone) == (other.expression, other.timezone)

    def __hash__(self) -> int:
        return hash((self.expression, self.timezone))

    def next_after(self, t: float) -> float | None:
        """The first fire instant strictly after `t` (Unix seconds); None if none is left."""
        try:
            if self._fixed_offset is not None:
                wall = self._sets.next_wall(t + self._fixed_offset)
                return None if wall is None else wall - self._fixed_offset
            return self._next_in_zone(t)
        except (OverflowError, OSError, ValueError):
            return None  # beyond what datetime can represent (year 9999)

    def _next_in_zone(self, t: float) -> float | None:
        offset = self._offset_at(t)
        found = self._next_forward(t, t + offset)
        if not self.fixed_time:
            repeat = self._next_in_repeated_hour(t, offset, found)
            if repeat is not None and (found is None or repeat < found):
                found = repeat
        return found

    def _next_forward(self, t: float, wall: float) -> float | None:
        """The first fire after `t` among wall times after `wall`; each loop passes a transition."""
        for _ in range(64):
            match = self._sets.next_wall(wall)
            if match is None:
                return None
            before, after = self._offsets(match)
            if before == after:
                return match - before
            if before < after:  # in a spring-forward gap
                transition = self._transition(match - after, match - before)
                if self.fixed_time:
                    return transition
                wall = transition + after - 1
            elif match - before > t:  # first pass of an autumn overlap
                return match - before
            elif not self.fixed_time:
                return match - after
            else:  # t is in the second pass: skip the rest of the repeated wall times
                wall = self._transition(match - before, match - after) + before - 1
        return None

    def _next_in_repeated_hour(self, t: float, offset: float, found: float | None) -> float | None:
        """A wildcard job's first second-pass fire when an autumn overlap begins soon after `t`."""
        horizon = t + _OVERLAP_HORIZON_S if found is None else min(found, t + _OVERLAP_HORIZON_S)
        if self._offset_at(horizon) >= offset:
            return None
        transition = self._transition(t, horizon)
        later = self._offset_at(transition)
        if later >= offset:
            return None
        match = self._sets.next_wall(transition + later - 1)
        if match is None or match >= transition + offset:
            return None
        return match - later

    def _offset_at(self, instant: float) -> float:
        return datetime.fromtimestamp(instant, self._zone).utcoffset().total_seconds()

    def _offsets(self, wall: float) -> tuple[float, float]:
        """UTC offsets of a wall time's first and second reading (differ in a gap or overlap)."""
        aware = (_EPOCH + timedelta(seconds=wall)).replace(tzinfo=self._zone)
        first = aware.utcoffset().total_seconds()
        return first, aware.replace(fold=1).utcoffset().total_seconds()

    def _transition(self, lo: float, hi: float) -> float:
        """The first whole second in (lo, hi] whose UTC offset differs from lo's."""
        base = self._offset_at(lo)
        low, high = math.floor(lo), math.ceil(hi)
        while high - low > 1:
            mid = (low + high) // 2
            if self._offset_at(mid) == base:
                low = mid
            else:
                high = mid
        return float(high)


class _FieldSets:
    """The expanded fields; finds the next matching wall time (seconds since 1970, naive)."""

    __slots__ = (
        "seconds",
        "minutes",
        "hours",
        "minute_set",
        "hour_set",
        "doms",
        "months",
        "dows",
        "days_and",
        "first_time",
    )

    def __init__(self, fields: list[str], values: list[frozenset[int]]):
        self.seconds, self.minutes, self.hours = (_sorted_values(v) for v in values[:3])
        self.minute_set, self.hour_set = values[1], values[2]
        self.doms, self.months, self.dows = values[3], values[4], values[5]
        self.days_and = fields[3].startswith("*") or fields[5].startswith("*")
        self.first_time = self.hours[0] * 3600 + self.minutes[0] * 60 + self.seconds[0]

    def next_wall(self, wall: float) -> float | None:
        """The first matching wall time strictly after `wall`; None if none within 400 years."""
        start = math.floor(wall) + 1
        days, time_of_day = divmod(start, 86400)
        day = date.fromordinal(_EPOCH_ORDINAL + days)
        found = self._time_at_or_after(time_of_day) if self._day_matches(day) else None
        if found is None:
            day = self._next_day(day, day.year + _SEARCH_YEARS)
            if day is None:
                return None
            found = self.first_time
        return float((day.toordinal() - _EPOCH_ORDINAL) * 86400 + found)

    def _day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.doms
        in_week = day.isoweekday() % 7 in self.dows
        return in_month and in_week if self.days_and else in_month or in_week

    def _next_day(self, day: date, last_year: int) -> date | None:
        """The first matching day after `day`, skipping months that are not allowed."""
        while day.year <= last_year:
            day += _ONE_DAY
            if day.month not in self.months:
                day = self._first_allowed_month(day) - _ONE_DAY
            elif self._day_matches(day):
                return day
        return None

    def _first_allowed_month(self, day: date) -> date:
        year, month = day.year, day.month
        while month not in self.months:
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return date(year, month, 1)

    def _time_at_or_after(self, time_of_day: int) -> int | None:
        """The first allowed time of day (seconds) at or after `time_of_day`, if any."""
        hour, rest = divmod(time_of_day, 3600)
        minute, second = divmod(rest, 60)
        if hour in self.hour_set:
            if minute in self.minute_set:
                i = bisect_left(self.seconds, second)
                if i < len(self.seconds):
                    return time_of_day - second + self.seconds[i]
            i = bisect_right(self.minutes, minute)
            if i < len(self.minutes):
                return hour * 3600 + self.minutes[i] * 60 + self.seconds[0]
        i = bisect_right(self.hours, hour)
        if i < len(self.hours):
            return self.hours[i] * 3600 + self.minutes[0] * 60 + self.seconds[0]
        return None


# Jobs share few expressions: one schedule per (expression, timezone) while a job holds it.
_schedules: weakref.WeakValueDictionary[tuple[str, str], CronSchedule] = (
    weakref.WeakValueDictionary()
)


def parse_schedule(expression: str, timezone: str) -> CronSchedule:
    """Parse a cron expression for a timezone; raise ValueError saying what is wrong.

    Equal arguments give the same (immutable) schedule while any job holds it.
    """
    key = (expression, timezone)
    schedule = _schedules.get(key)
    if schedule is None:
        schedule = _schedules[key] = CronSchedule(expression, timezone)
    return schedule


def is_cron_fields(tokens: list[str]) -> bool:
    """Whether these 5 or 6 tokens all parse as cron time fields."""
    if len(tokens) not in (5, 6):
        return False
    try:
        fields = _six_fields(" ".join(tokens))
    except ValueError:
        return False
    return all(_is_field(index, field) for index, field in enumerate(fields))


def local_timezone_name() -> str:
    """The local zone: $TZ, else /etc/timezone, else /etc/localtime's link target, else UTC."""
    for name in (_tz_from_env(), _tz_from_etc_timezone(), _tz_from_localtime()):
        if name and _is_zone(name):
            return name
    return "UTC"


@cache
def zone(name: str) -> ZoneInfo:
    """The ZoneInfo for an IANA name (cached); ValueError naming the zone if unknown."""
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        raise ValueError(
            f"unknown timezone {name!r} (use an IANA name, e.g. Europe/Berlin)"
        ) from None


def _is_zone(name: str) -> bool:
    try:
        zone(name)
    except ValueError:
        return False
    return True


def _six_fields(expression: str) -> list[str]:
    """The six fields (seconds first) of an expression or alias; ValueError if malformed."""
    text = expression.strip()
    if text.startswith("@"):
        text = _expand_alias(text)
    fields = text.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise ValueError(
            f"schedule {expression!r} has {len(fields)} fields; expected 5 (minute first), "
            "6 (seconds first) or an @alias such as @daily"
        )
    return fields


def _expand_alias(text: str) -> str:
    alias = text.lower()
    if alias == "@reboot":
        raise ValueError("@reboot is not supported: zcron has no boot")
    if alias not in ALIASES:
        raise ValueError(f"unknown schedule alias {text!r} (known: {', '.join(ALIASES)})")
    return ALIASES[alias]


@lru_cache(maxsize=_FIELD_CACHE_SIZE)
def _parse_field(index: int, field: str) -> frozenset[int]:
    """The values one field allows (day-of-week 7 is Sunday, 0); ValueError naming the field.

    Cached and shared by every schedule with the same field.
    """
    values: set[int] = set()
    for item in field.split(","):
        values |= _parse_item(index, field, item)
    return frozenset(v % 7 for v in values) if index == 5 else frozenset(values)


@lru_cache(maxsize=_FIELD_CACHE_SIZE)
def _is_field(index: int, field: str) -> bool:
    """Whether a field parses; cached, as every 5-field cron.d line asks it of its user."""
    try:
        _parse_field(index, field)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=_FIELD_CACHE_SIZE)
def _sorted_values(values: frozenset[int]) -> tuple[int, ...]:
    return tuple(sorted(values))


def _parse_item(index: int, field: str, item: str) -> set[int]:
    match = _ITEM.match(item)
    if match is None:
        raise _field_error(index, field)
    star, first, last, step = match.groups()
    low, high = _BOUNDS[index]
    if star:
        start, end = (low, 6) if index == 5 else (low, high)
    else:
        start = _field_value(index, field, first)
        end = _field_value(index, field, last) if last else (start if step is None else high)
    if start > end or (step is not None and int(step) == 0):
        raise _field_error(index, field)
    return set(range(start, end + 1, int(step or 1)))


def _field_value(index: int, field: str, token: str) -> int:
    value = int(token) if token.isdigit() else _NAMES[index].get(token.lower(), -1)
    low, high = _BOUNDS[index]
    if not low <= value <= high:
        raise _field_error(index, field)
    return value


def _field_error(index: int, field: str) -> ValueError:
    name, allowed = FIELDS[index]
    return ValueError(f"bad {name} field {field!r} (allowed: {allowed}, *, a-b, */n, lists)")


def _fixed_offset(name: str, tz: ZoneInfo) -> float | None:
    if name in _FIXED_ZONES or name.startswith("Etc/"):
        return tz.utcoffset(_EPOCH).total_seconds()
    return None


def _tz_from_env() -> str | None:
    value = os.environ.get("TZ", "").lstrip(":")
    return _zone_key_of_path(value) if value.startswith("/") else value or None


def _tz_from_etc_timezone() -> str | None:
    try:
        with open("/etc/timezone", encoding="utf-8") as f:
            return f.readline().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _tz_from_localtime() -> str | None:
    try:
        return _zone_key_of_path(os.path.realpath("/etc/localtime"))
    except OSError:
        return None


def _zone_key_of_path(path: str) -> str | None:
    _, found, key = path.partition("zoneinfo/")
    return key if found else None
