"""Time expressions: durations and every point-in-time form, São Paulo DST edges included."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from qt_cli.core.errors import TimeParseError, UsageError
from qt_cli.core.timeparse import (
    format_ns,
    get_tz,
    parse_duration_ns,
    parse_duration_s,
    parse_time,
)

S = 1_000_000_000
# 2025-08-08 12:00:00 UTC = 09:00 in São Paulo (-03:00, no DST since 2019)
NOW = int(datetime(2025, 8, 8, 15, 30, tzinfo=UTC).timestamp()) * S  # 12:30 local


def utc_ns(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) * S  # type: ignore[misc]


def test_durations() -> None:
    assert parse_duration_ns("250ms") == 250_000_000
    assert parse_duration_ns("1.5m") == 90 * S
    assert parse_duration_ns("30d") == 30 * 86_400 * S
    assert parse_duration_ns("5") == 5 * S
    assert parse_duration_s("2h") == 7200.0
    with pytest.raises(TimeParseError, match="expected a number with a unit"):
        parse_duration_ns("soon")


def test_now_and_relative() -> None:
    assert parse_time("now", now_ns=NOW) == NOW
    assert parse_time("-15m", now_ns=NOW) == NOW - 15 * 60 * S
    assert parse_time("-2h", now_ns=NOW) == NOW - 7200 * S
    assert parse_time("now-90s", now_ns=NOW) == NOW - 90 * S
    assert parse_time("+5m", now_ns=NOW) == NOW + 300 * S
    assert parse_time("-1d", now_ns=NOW) == NOW - 86_400 * S


def test_iso_in_the_exchange_zone_by_default() -> None:
    assert parse_time("2025-08-08T09:00") == utc_ns(2025, 8, 8, 12, 0)
    assert parse_time("2025-08-08 09:00:01") == utc_ns(2025, 8, 8, 12, 0, 1)
    assert parse_time("2025-08-08T09:00:01.250") == utc_ns(2025, 8, 8, 12, 0, 1) + 250_000_000
    assert parse_time("2025-08-08T09:00:00.000000001") == utc_ns(2025, 8, 8, 12) + 1


def test_iso_with_an_offset_ignores_the_zone() -> None:
    assert parse_time("2025-08-08T12:00Z") == utc_ns(2025, 8, 8, 12)
    assert parse_time("2025-08-08T12:00:00+00:00", tz="Asia/Tokyo") == utc_ns(2025, 8, 8, 12)
    assert parse_time("2025-08-08T09:00-03:00", tz="UTC") == utc_ns(2025, 8, 8, 12)
    assert parse_time("2025-08-08T09:00:00-0300") == utc_ns(2025, 8, 8, 12)


def test_other_zones() -> None:
    assert parse_time("2025-08-08T12:00", tz="UTC") == utc_ns(2025, 8, 8, 12)
    assert parse_time("2025-08-08T13:00", tz="Europe/London") == utc_ns(2025, 8, 8, 12)
    with pytest.raises(UsageError, match="time zone 'Mars/Olympus' is unknown"):
        parse_time("09:00", tz="Mars/Olympus")


def test_dates() -> None:
    assert parse_time("2025-08-08") == utc_ns(2025, 8, 8, 3)
    assert parse_time("08/08/2025") == utc_ns(2025, 8, 8, 3)
    assert parse_time("08/08/2025 09:00:00.250") == utc_ns(2025, 8, 8, 12) + 250_000_000
    assert parse_time("today", now_ns=NOW) == utc_ns(2025, 8, 8, 3)
    assert parse_time("yesterday", now_ns=NOW) == utc_ns(2025, 8, 7, 3)


def test_time_of_day_is_today_in_the_zone() -> None:
    assert parse_time("09:00", now_ns=NOW) == utc_ns(2025, 8, 8, 12)
    assert parse_time("17:45:30", now_ns=NOW) == utc_ns(2025, 8, 8, 20, 45, 30)
    assert parse_time("9:05:00.5", now_ns=NOW) == utc_ns(2025, 8, 8, 12, 5) + S // 2
    # 01:00 UTC on the 9th is still the 8th in São Paulo
    late_evening = utc_ns(2025, 8, 9, 1)
    assert parse_time("10:00", now_ns=late_evening) == utc_ns(2025, 8, 8, 13)
    assert parse_time("10:00", now_ns=late_evening, tz="UTC") == utc_ns(2025, 8, 9, 10)


def test_epoch_milliseconds() -> None:
    assert parse_time("1754654400000") == 1_754_654_400_000 * 1_000_000
    with pytest.raises(TimeParseError, match="epoch seconds"):
        parse_time("1754654400")


def test_dst_years_use_the_offset_of_the_time() -> None:
    # January 2018: São Paulo on summer time (-02:00)
    assert parse_time("2018-01-15T10:00") == utc_ns(2018, 1, 15, 12)
    # July 2018: standard time (-03:00)
    assert parse_time("2018-07-15T10:00") == utc_ns(2018, 7, 15, 13)


def test_spring_forward_gap_moves_to_the_jump() -> None:
    # 2018-11-04 00:00 -03:00 the clocks jumped to 01:00 -02:00: 00:00-00:59 never happened
    jump = utc_ns(2018, 11, 4, 3)
    assert parse_time("2018-11-04T00:30") == jump
    assert parse_time("2018-11-04T00:00") == jump
    assert parse_time("2018-11-04T01:00") == jump  # first valid wall time: the same instant
    assert parse_time("2018-11-03T23:59") == jump - 60 * S
    assert parse_time("2018-11-04") == jump  # the day's midnight does not exist either


def test_autumn_overlap_takes_earliest_or_latest() -> None:
    # 2019-02-17 00:00 -02:00 the clocks went back to 2019-02-16 23:00 -03:00
    first = utc_ns(2019, 2, 17, 1, 30)  # 23:30 -02:00
    second = utc_ns(2019, 2, 17, 2, 30)  # 23:30 -03:00
    assert parse_time("2019-02-16T23:30") == first
    assert parse_time("2019-02-16T23:30", ambiguous="latest") == second
    assert parse_time("2019-02-16T22:59", ambiguous="latest") == utc_ns(2019, 2, 17, 0, 59)


def test_unreadable_times_name_the_forms() -> None:
    for text in ("tomorrowish", "2025-13-01", "25:00", "2025-08-08T09:00+25:00", "", "-15 parsecs"):
        with pytest.raises(TimeParseError, match=r"time '.*'"):
            parse_time(text)
    with pytest.raises(TimeParseError, match="ISO 8601"):
        parse_time("next tuesday")


def test_format_shows_the_zone() -> None:
    ts = utc_ns(2025, 8, 8, 12) + 250_000_000
    assert format_ns(ts) == "2025-08-08T09:00:00.250-03:00"
    assert format_ns(ts, "UTC") == "2025-08-08T12:00:00.250+00:00"
    assert format_ns(utc_ns(2018, 1, 15, 12), get_tz()) == "2018-01-15T10:00:00.000-02:00"
