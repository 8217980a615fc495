"""croniter as an independent oracle for zcron's cron evaluation.

zcron evaluates expressions itself (see zcron/cron.py for why: croniter 7 reads a
single-value range such as `5-5` as `*`, and its search is 10x slower). These tests pin
croniter's seconds-field convention and check both agree wherever croniter is right.
"""

from datetime import UTC, datetime

from croniter import croniter
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from zcron.cron import parse_schedule

START = datetime(2026, 11, 23, 1, 2, 3, tzinfo=UTC).timestamp()


def croniter_next(expression: str, after: float) -> float:
    return croniter(expression, after, second_at_beginning=True).get_next(float)


def test_croniter_reads_a_sixth_field_as_seconds_last_unless_pinned() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    seconds_last = croniter("*/5 * * * * 30", start).get_next(datetime)
    seconds_first = croniter("30 */5 * * * *", start, second_at_beginning=True).get_next(datetime)
    assert (seconds_last.minute, seconds_last.second) == (0, 30)
    assert seconds_first == seconds_last
    assert parse_schedule("30 */5 * * * *", "UTC").next_after(start.timestamp()) == (
        seconds_first.timestamp()
    )


def test_single_value_ranges_mean_that_value() -> None:
    # croniter 7.0.0 fires `5-5 * * * *` every minute; cron fires it at minute 5.
    fires = parse_schedule("5-5 * * * *", "UTC").next_after(START)
    assert datetime.fromtimestamp(fires, UTC).minute == 5


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    value = st.integers(low, high)
    return st.one_of(
        st.just("*"),
        value.map(str),
        st.tuples(value, value).filter(lambda r: r[0] < r[1]).map(lambda r: f"{r[0]}-{r[1]}"),
        st.integers(1, high - low).map(lambda n: f"*/{n}"),
        st.lists(value, min_size=2, max_size=4, unique=True).map(lambda v: ",".join(map(str, v))),
    )


@settings(max_examples=300, deadline=None)
@given(
    _field(0, 59),
    _field(0, 59),
    _field(0, 23),
    _field(1, 28),
    _field(1, 12),
    _field(0, 6),
    st.floats(0, 86400 * 400),
)
def test_next_fire_agrees_with_croniter_in_utc(sec, minute, hour, dom, month, dow, offset):
    # cron ANDs day-of-month and day-of-week when either starts with "*"; croniter ORs
    # them unless one is exactly "*": leave that difference out.
    assume(not (dom.startswith("*/") or dow.startswith("*/")))
    expression = f"{sec} {minute} {hour} {dom} {month} {dow}"
    after = START + offset
    assert parse_schedule(expression, "UTC").next_after(after) == croniter_next(expression, after)
