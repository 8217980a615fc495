"""Cron expressions: field order, aliases, errors, the DST rule, and a brute-force oracle."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from zcron.cron import (
    ALIASES,
    is_cron_fields,
    local_timezone_name,
    parse_schedule,
    zone,
)


def at(text: str) -> float:
    """Unix seconds of an ISO time with an explicit offset."""
    return datetime.fromisoformat(text).timestamp()


def fires(expression: str, tz: str, start: float, end: float) -> list[float]:
    """Every fire instant in (start, end], by iterating next_after."""
    schedule, found, t = parse_schedule(expression, tz), [], start
    while (t := schedule.next_after(t)) is not None and t <= end:
        found.append(t)
    return found


def local_day(day: str, tz: str) -> tuple[float, float]:
    """The UTC window [start, end) of a local calendar day."""
    first = datetime.fromisoformat(day).replace(tzinfo=zone(tz))
    return first.timestamp(), (first + timedelta(days=1)).replace(tzinfo=zone(tz)).timestamp()


# -- field order, aliases, errors ----------------------------------------------------------


def test_six_fields_put_seconds_first():
    t0 = at("2026-01-01T00:00:00+00:00")
    assert fires("*/5 * * * * *", "UTC", t0 - 1, t0 + 12) == [t0, t0 + 5, t0 + 10]


def test_six_fields_with_zero_seconds_fire_every_minute():
    t0 = at("2026-01-01T00:00:00+00:00")
    assert fires("0 * * * * *", "UTC", t0, t0 + 180) == [t0 + 60, t0 + 120, t0 + 180]


def test_five_fields_put_minutes_first_at_second_zero():
    t0 = at("2026-01-01T00:00:00+00:00")
    assert fires("*/15 * * * *", "UTC", t0, t0 + 3600) == [t0 + 900 * k for k in (1, 2, 3, 4)]


def test_next_after_is_strictly_after_a_fire_instant():
    schedule = parse_schedule("0 3 * * *", "UTC")
    t = at("2026-05-05T03:00:00+00:00")
    assert schedule.next_after(t) == t + 86400
    assert schedule.next_after(t - 0.5) == t


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_aliases_fire_like_their_expressions(alias):
    t = at("2026-02-11T13:14:15+00:00")
    end = t + 3 * 366 * 86400
    assert fires(alias, "UTC", t, end)[:5] == fires(ALIASES[alias], "UTC", t, end)[:5]


def test_alias_is_case_insensitive():
    assert parse_schedule("@Daily", "UTC").next_after(0) == 86400


def test_reboot_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="@reboot is not supported: zcron has no boot"):
        parse_schedule("@reboot", "UTC")


@pytest.mark.parametrize(
    "expression, message",
    [
        ("* * * * * * *", "has 7 fields; expected 5"),
        ("* * * *", "has 4 fields"),
        ("", "has 0 fields"),
        ("@fortnightly", "unknown schedule alias"),
        ("61 * * * *", "bad minute field '61'"),
        ("0 24 * * *", "bad hour field '24'"),
        ("0 0 32 * *", "bad day-of-month field '32'"),
        ("0 0 * 13 *", "bad month field '13'"),
        ("0 0 * * 8", "bad day-of-week field '8'"),
        ("60 * * * * *", "bad second field '60'"),
        ("*/0 * * * *", "bad minute field"),
        ("0 0 L * *", "bad day-of-month field 'L'"),
        ("0 0 15W * *", "bad day-of-month field"),
        ("0 0 ? * mon", "bad day-of-month field '?'"),
        ("0 0 * * mon#2", "bad day-of-week field"),
        ("H * * * *", "bad minute field 'H'"),
        ("0 0 * foo *", "bad month field 'foo'"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6 *", "never fires"),
    ],
)
def test_bad_expressions_say_what_is_wrong(expression, message):
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        parse_schedule(expression, "UTC")


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "../etc/passwd", "/etc/localtime", "Europe"])
def test_unknown_timezone_is_a_value_error(tz):
    with pytest.raises(ValueError, match="unknown timezone"):
        parse_schedule("* * * * *", tz)


def test_names_of_months_and_weekdays_are_accepted():
    # 2026-03-02 is a Monday
    t = at("2026-03-01T00:00:00+00:00")
    assert parse_schedule("0 9 * mar MON-wed", "UTC").next_after(t) == at(
        "2026-03-02T09:00:00+00:00"
    )


def test_sunday_is_both_zero_and_seven():
    t = at("2026-03-02T00:00:00+00:00")
    sunday = at("2026-03-08T00:00:00+00:00")
    assert parse_schedule("0 0 * * 7", "UTC").next_after(t) == sunday
    assert parse_schedule("0 0 * * 0", "UTC").next_after(t) == sunday


def test_day_of_month_or_day_of_week_when_both_are_restricted():
    # the 13th, or any Friday: 2026-02-06 (Fri), 2026-02-13 (Fri and 13th), 2026-02-20
    t = at("2026-02-01T00:00:00+00:00")
    found = fires("0 0 13 * 5", "UTC", t, t + 21 * 86400)
    assert [datetime.fromtimestamp(f, UTC).day for f in found] == [6, 13, 20]


def test_day_of_month_and_day_of_week_when_one_starts_with_a_star():
    # cron ANDs them when either field begins with '*': odd days that are Fridays
    t = at("2026-02-01T00:00:00+00:00")
    found = fires("0 0 */2 * 5", "UTC", t, t + 60 * 86400)
    days = [datetime.fromtimestamp(f, UTC) for f in found]
    assert days and all(d.day % 2 == 1 and d.isoweekday() == 5 for d in days)


def test_february_29_fires_in_leap_years_only():
    t = at("2096-03-01T00:00:00+00:00")
    assert parse_schedule("0 0 29 2 *", "UTC").next_after(t) == at("2104-02-29T00:00:00+00:00")


def test_is_cron_fields():
    assert is_cron_fields(["*/5", "*", "*", "*", "*", "*"])
    assert is_cron_fields(["0", "3", "*", "*", "1-5"])
    assert not is_cron_fields(["0", "0", "*", "jan", "*", "*"])  # names only for month, weekday
    assert not is_cron_fields(["0", "3", "*", "*", "1-5", "backup"])
    assert not is_cron_fields(["@daily", "*", "*", "*", "*"])
    assert not is_cron_fields(["*", "*", "*", "*"])
    assert not is_cron_fields(["*", "*", "*", "*", "*", "*", "*"])


def test_local_timezone_name_follows_tz(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    assert local_timezone_name() == "Europe/Berlin"
    monkeypatch.setenv("TZ", ":America/New_York")
    assert local_timezone_name() == "America/New_York"
    monkeypatch.setenv("TZ", "/usr/share/zoneinfo/Asia/Tokyo")
    assert local_timezone_name() == "Asia/Tokyo"


def test_local_timezone_name_falls_back_to_a_real_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Not/AZone")
    zone(local_timezone_name())


def test_zones_are_cached():
    assert zone("Europe/Berlin") is zone("Europe/Berlin")


def test_schedules_compare_by_expression_and_zone():
    assert parse_schedule("@daily", "UTC") == parse_schedule("@daily", "UTC")
    assert parse_schedule("@daily", "UTC") != parse_schedule("@daily", "Europe/Berlin")
    assert "@daily" in repr(parse_schedule("@daily", "UTC"))


def test_jobs_with_one_expression_and_zone_share_one_schedule():
    assert parse_schedule("0 3 * * 1-5", "UTC") is parse_schedule("0 3 * * 1-5", "UTC")
    assert parse_schedule("0 3 * * 1-5", "UTC") is not parse_schedule("0 3 * * 1-5", "Etc/UTC")


def test_far_future_ends_quietly():
    assert parse_schedule("* * * * * *", "Europe/Berlin").next_after(253402300799.0) is None
    assert parse_schedule("0 0 1 1 *", "UTC").next_after(at("9999-06-01T00:00:00+00:00")) is None


# -- the DST rule ---------------------------------------------------------------------------

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


@pytest.mark.parametrize("expression", ["30 2 * * *", "0 30 2 * * *"])
def test_fixed_time_in_the_spring_gap_fires_once_at_the_transition(expression):
    start, end = local_day("2026-03-29", BERLIN)
    assert fires(expression, BERLIN, start - 1, end - 1) == [at("2026-03-29T03:00:00+02:00")]


@pytest.mark.parametrize("expression", ["30 2 * * *", "0 30 2 * * *"])
def test_fixed_time_in_the_autumn_overlap_fires_once_at_the_first_pass(expression):
    start, end = local_day("2026-10-25", BERLIN)
    assert fires(expression, BERLIN, start - 1, end - 1) == [at("2026-10-25T02:30:00+02:00")]


def test_fixed_time_is_daily_around_both_transitions():
    start, end = at("2026-03-20T00:00:00+00:00"), at("2026-11-05T00:00:00+00:00")
    found = fires("30 2 * * *", BERLIN, start, end)
    days = [datetime.fromtimestamp(f, zone(BERLIN)).date() for f in found]
    assert (
        days == sorted(set(days)) and len(days) == (date(2026, 11, 4) - date(2026, 3, 20)).days + 1
    )


def test_several_fixed_times_in_the_gap_fire_once():
    start, end = local_day("2026-03-29", BERLIN)
    found = fires("0 10,40 2 * * *", BERLIN, start, end)
    assert found == [at("2026-03-29T03:00:00+02:00")]


def test_wildcard_minutes_fire_in_both_passes_of_the_repeated_hour():
    # local 02:00-03:00 happens twice: 00:00Z-02:00Z
    start, end = at("2026-10-25T00:00:00+00:00"), at("2026-10-25T02:00:00+00:00")
    found = fires("* * * * *", BERLIN, start - 1, end - 1)
    assert len(found) == 120 and found == [start + 60 * k for k in range(120)]


def test_wildcard_minutes_skip_the_spring_gap():
    start, end = local_day("2026-03-29", BERLIN)
    assert len(fires("* * * * *", BERLIN, start - 1, end - 1)) == 23 * 60


def test_star_minute_makes_a_fixed_hour_job_wildcard_as_in_cronie():
    spring, autumn = local_day("2026-03-29", BERLIN), local_day("2026-10-25", BERLIN)
    assert fires("*/15 2 * * *", BERLIN, spring[0], spring[1]) == []
    assert len(fires("*/15 2 * * *", BERLIN, autumn[0], autumn[1])) == 8


@pytest.mark.parametrize(
    "tz, spring, autumn",
    [
        (BERLIN, "2026-03-29T01:00:00+00:00", "2026-10-25T01:00:00+00:00"),
        (NEW_YORK, "2026-03-08T07:00:00+00:00", "2026-11-01T06:00:00+00:00"),
    ],
)
def test_per_second_job_neither_pauses_nor_repeats_across_transitions(tz, spring, autumn):
    for transition in (at(spring), at(autumn)):
        found = fires("* * * * * *", tz, transition - 3600, transition + 3600)
        assert found == [transition - 3599 + k for k in range(7200)]
        found = fires("*/5 * * * * *", tz, transition - 3600, transition + 3600)
        assert all(b - a == 5 for a, b in zip(found, found[1:], strict=False))
        assert len(found) == 1440


def test_new_york_fixed_times_fire_once_on_transition_days():
    spring, autumn = local_day("2026-03-08", NEW_YORK), local_day("2026-11-01", NEW_YORK)
    assert fires("30 2 * * *", NEW_YORK, spring[0], spring[1]) == [at("2026-03-08T03:00:00-04:00")]
    assert fires("30 1 * * *", NEW_YORK, autumn[0], autumn[1]) == [at("2026-11-01T01:30:00-04:00")]
    assert len(fires("*/10 1 * * *", NEW_YORK, autumn[0], autumn[1])) == 12


def test_fixed_time_asked_during_the_second_pass_waits_for_the_next_day():
    t = at("2026-10-25T02:10:00+01:00")  # second pass of 02:00-03:00
    assert parse_schedule("30 2 * * *", BERLIN).next_after(t) == at("2026-10-26T02:30:00+01:00")
    # every second of 02:xx is fixed-time too: none of them fires again in the second pass
    dense = parse_schedule("0-59 0-59 2 * * *", BERLIN)
    assert dense.next_after(t) == at("2026-10-26T02:00:00+01:00")


def test_wildcard_asked_just_before_the_overlap_finds_the_second_pass():
    t = at("2026-10-25T02:59:59+02:00")
    schedule = parse_schedule("*/20 * * * *", BERLIN)
    assert schedule.next_after(t) == at("2026-10-25T02:00:00+01:00")


def test_lord_howe_half_hour_shift():
    # Australia/Lord_Howe moves its clock by 30 minutes
    found = fires(
        "* * * * * *",
        "Australia/Lord_Howe",
        at("2026-04-04T14:00:00+00:00"),
        at("2026-04-04T16:00:00+00:00"),
    )
    assert all(b - a == 1 for a, b in zip(found, found[1:], strict=False))


def test_next_after_stays_fast_across_transitions():
    started = time.perf_counter()
    fires("* * * * * *", BERLIN, at("2026-10-25T00:00:00+00:00"), at("2026-10-25T02:00:00+00:00"))
    fires("30 2 * * *", BERLIN, at("2026-01-01T00:00:00+00:00"), at("2027-01-01T00:00:00+00:00"))
    assert time.perf_counter() - started < 2.0  # 7,565 calls; ~10 µs each when healthy


# -- a brute-force oracle -------------------------------------------------------------------

# (name, low, high) of each field, seconds first; day-of-week 7 is Sunday
RANGES = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
STAR_RANGES = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
MONTHS = "jan feb mar apr may jun jul aug sep oct nov dec".split()
DAYS = "sun mon tue wed thu fri sat".split()


@dataclass
class Field:
    text: str
    values: frozenset[int]


@dataclass
class Expression:
    fields: list[Field]

    @property
    def text(self) -> str:
        return " ".join(f.text for f in self.fields)

    @property
    def wildcard(self) -> bool:
        return any(f.text.startswith("*") for f in self.fields[:3])

    def day_matches(self, day: date) -> bool:
        _, _, _, dom, month, dow = self.fields
        if day.month not in month.values:
            return False
        in_month, in_week = day.day in dom.values, day.isoweekday() % 7 in dow.values
        if dom.text.startswith("*") or dow.text.startswith("*"):
            return in_month and in_week
        return in_month or in_week

    def wall_matches(self, wall: datetime) -> bool:
        second, minute, hour = self.fields[:3]
        return (
            wall.second in second.values
            and wall.minute in minute.values
            and wall.hour in hour.values
            and self.day_matches(wall.date())
        )


def name_of(index: int, value: int, use_name: bool) -> str:
    if use_name and index == 4:
        return MONTHS[value - 1]
    if use_name and index == 5 and value < 7:
        return DAYS[value]
    return str(value)


@st.composite
def items(draw, index: int) -> tuple[str, set[int]]:
    low, high = RANGES[index]
    kind = draw(st.sampled_from(["star", "value", "range"]))
    step = draw(st.one_of(st.none(), st.integers(1, max(1, (high - low) // 2))))
    suffix = "" if step is None else f"/{step}"
    use_name = draw(st.booleans())
    if kind == "star":
        star_low, star_high = STAR_RANGES[index]
        return "*" + suffix, set(range(star_low, star_high + 1, step or 1))
    first = draw(st.integers(low, high))
    if kind == "value":
        return name_of(index, first, use_name), {first}
    last = draw(st.integers(first, high))
    text = f"{name_of(index, first, use_name)}-{name_of(index, last, use_name)}{suffix}"
    return text, set(range(first, last + 1, step or 1))


@st.composite
def fields_(draw, index: int) -> Field:
    parts = draw(st.lists(items(index), min_size=1, max_size=3))
    values = set().union(*(v for _, v in parts))
    if index == 5:
        values = {v % 7 for v in values}
    return Field(",".join(t for t, _ in parts), frozenset(values))


@st.composite
def expressions(draw) -> Expression:
    return Expression([draw(fields_(i)) for i in range(6)])


def brute_next_wall(expr: Expression, wall: float, max_days: int) -> float | None:
    """The first matching wall second after `wall`, by walking days, hours, minutes, seconds."""
    start = math.floor(wall) + 1
    first_day = date(1970, 1, 1) + timedelta(days=start // 86400)
    second, minute, hour = (sorted(f.values) for f in expr.fields[:3])
    for k in range(max_days):
        day = first_day + timedelta(days=k)
        if not expr.day_matches(day):
            continue
        base = (day - date(1970, 1, 1)).days * 86400
        for h in hour:
            if base + h * 3600 + 3599 < start:
                continue
            for m in minute:
                if base + h * 3600 + m * 60 + 59 < start:
                    continue
                for s in second:
                    if base + h * 3600 + m * 60 + s >= start:
                        return float(base + h * 3600 + m * 60 + s)
    return None


instants = st.floats(at("2000-01-01T00:00:00+00:00"), at("2040-01-01T00:00:00+00:00"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=expressions(), t=instants, tz=st.sampled_from(["UTC", "Asia/Tokyo", "Asia/Kolkata"]))
def test_next_after_agrees_with_brute_force_in_zones_without_dst(expr, t, tz):
    offset = 0.0 if tz == "UTC" else datetime.now(zone(tz)).utcoffset().total_seconds()
    try:
        schedule = parse_schedule(expr.text, tz)
    except ValueError as exc:
        assert "never fires" in str(exc)
        assert brute_next_wall(expr, 0, 8 * 366) is None
        return
    found = schedule.next_after(t)
    if found is None:
        assert brute_next_wall(expr, t + offset, 8 * 366) is None
        return
    days = int((found - t) / 86400) + 2
    assert found == brute_next_wall(expr, t + offset, days) - offset


@settings(max_examples=60, deadline=None)
@given(expr=expressions(), t=instants, tz=st.sampled_from(["UTC", BERLIN, NEW_YORK]))
def test_fire_instants_are_strictly_after_and_increasing(expr, t, tz):
    try:
        schedule = parse_schedule(expr.text, tz)
    except ValueError:
        assume(False)
    found = []
    for _ in range(10):
        nxt = schedule.next_after(t)
        if nxt is None:
            break
        assert nxt > t
        found.append(nxt)
        t = nxt
    assert found == sorted(set(found))


TRANSITIONS = [
    (BERLIN, "2026-03-29T01:00:00+00:00"),
    (BERLIN, "2026-10-25T01:00:00+00:00"),
    (NEW_YORK, "2026-03-08T07:00:00+00:00"),
    (NEW_YORK, "2026-11-01T06:00:00+00:00"),
]


def dst_hours() -> st.SearchStrategy[Field]:
    """Hour fields that touch the transition hours often enough to matter."""
    return st.sampled_from(
        [
            Field("*", frozenset(range(24))),
            Field("*/2", frozenset(range(0, 24, 2))),
            Field("1", frozenset({1})),
            Field("2", frozenset({2})),
            Field("1-3", frozenset({1, 2, 3})),
            Field("2,3", frozenset({2, 3})),
        ]
    )


def small_field(low: int, high: int) -> st.SearchStrategy[Field]:
    return st.sampled_from(
        [
            Field("*", frozenset(range(low, high + 1))),
            Field("*/7", frozenset(range(low, high + 1, 7))),
            Field("0", frozenset({0})),
            Field("30", frozenset({30})),
            Field("0-59/20", frozenset({0, 20, 40})),
            Field("15,45", frozenset({15, 45})),
        ]
    )


def brute_fires(expr: Expression, tz: str, start: int, end: int) -> list[float]:
    """The DST rule, instant by instant: matching walls (first pass only if fixed-time),
    plus a fixed-time job's gap transitions when some wall time in the gap matches."""
    zinfo, found = zone(tz), set()
    previous = datetime.fromtimestamp(start, zinfo)
    for s in range(start + 1, end + 1):
        now = datetime.fromtimestamp(s, zinfo)
        wall = now.replace(tzinfo=None)
        if expr.wall_matches(wall) and (expr.wildcard or now.fold == 0):
            found.add(float(s))
        jump = (now.utcoffset() - previous.utcoffset()).total_seconds()
        if jump > 0 and not expr.wildcard:
            gap = (wall - timedelta(seconds=jump + 1 - k) for k in range(1, int(jump) + 1))
            if any(expr.wall_matches(w) for w in gap):
                found.add(float(s))
        previous = now
    return sorted(found)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from(TRANSITIONS),
    second=small_field(0, 59),
    minute=small_field(0, 59),
    hour=dst_hours(),
    shift=st.integers(-5400, 600),
)
def test_dst_rule_agrees_with_an_instant_by_instant_oracle(where, second, minute, hour, shift):
    tz, transition = where
    star = [
        Field("*", frozenset(range(1, 32))),
        Field("*", frozenset(range(1, 13))),
        Field("*", frozenset(range(7))),
    ]
    expr = Expression([second, minute, hour, *star])
    start = int(at(transition)) + shift
    end = start + 2 * 3600
    assert fires(expr.text, tz, start, end) == brute_fires(expr, tz, start, end)
