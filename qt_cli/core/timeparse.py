"""Parsing of time expressions: durations (`5s`, `1.5m`, `30d`) and points in time (--from/--to).

Points in time (`parse_time`), all returned as integer nanoseconds since the epoch (UTC):

| form                          | example                                  | meaning                        |
|-------------------------------|------------------------------------------|--------------------------------|
| `now`                         | `now`                                    | the current instant            |
| relative                      | `-15m`, `-2h`, `-1d`, `now-90s`, `+5m`   | from now                       |
| ISO 8601                      | `2025-08-08T09:00`, `2025-08-08 09:00:01.250`, `…T12:00Z`, `…-03:00` | local time in `tz` unless it names an offset |
| date                          | `2025-08-08`, `08/08/2025`, `today`, `yesterday` | midnight at the start of that day in `tz` |
| Brazilian date and time       | `08/08/2025 09:00:00.250` (as ProfitDLL writes it) | local time in `tz`   |
| time of day                   | `09:00`, `09:00:30`, `17:45:00.5`        | today in `tz`                  |
| epoch milliseconds            | `1754654400000`                          | UTC                            |

Local times go through the tz database, so the São Paulo DST years (until 2019) are right. A local
time that does not exist (the spring-forward gap, e.g. 2018-11-04 00:30 in São Paulo) moves
forward to the first instant after the gap; one that happens twice (the autumn overlap, e.g.
2019-02-16 23:30) is read as its first occurrence unless `ambiguous="latest"` asks for the second
(query reads --from as the earliest and --to as the latest, so a range covers both).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from qt_cli.core.errors import TimeParseError, UsageError

_DURATION_RE = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>ns|us|ms|s|m|h|d|w)?\s*$")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
    "w": 604_800_000_000_000,
}
NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000

# The one São Paulo zone: B3 local time (events re-exports it). A fixed offset would be wrong
# before 2019 (Brazil had DST), so use the tz database when it is available.
EXCHANGE_TZ_NAME = "America/Sao_Paulo"
DEFAULT_TZ = EXCHANGE_TZ_NAME
try:
    EXCHANGE_TZ: tzinfo = ZoneInfo(EXCHANGE_TZ_NAME)
except Exception:  # pragma: no cover - a system without tz data
    EXCHANGE_TZ = timezone(timedelta(hours=-3))

Ambiguous = Literal["earliest", "latest"]


def parse_duration_ns(text: str, *, default_unit: str = "s") -> int:
    """`250ms` -> 250_000_000; a bare number is in `default_unit`."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise TimeParseError(
            f"duration {text!r}: expected a number with a unit (ns, us, ms, s, m, h, d, w), e.g. 30s or 5m"
        )
    unit = match["unit"] or default_unit
    return int(float(match["num"]) * _UNIT_NS[unit])


def parse_duration_s(text: str, *, default_unit: str = "s") -> float:
    return parse_duration_ns(text, default_unit=default_unit) / 1e9


# --- time zones ------------------------------------------------------------------------------


def get_tz(name: str | None = None) -> tzinfo:
    """A tz database zone by name (`America/Sao_Paulo`, `UTC`, `Europe/London`)."""
    name = name or DEFAULT_TZ
    if name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(
            f"time zone {name!r} is unknown: use a tz database name such as America/Sao_Paulo or UTC"
        ) from None


def tz_name(tz: tzinfo) -> str:
    return getattr(tz, "key", None) or str(tz)


# --- points in time --------------------------------------------------------------------------

_FRACTION = r"(?:[.,](?P<frac>\d{1,9}))?"
_ISO_RE = re.compile(
    r"^(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[T ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})" + _FRACTION + r")?)?"
    r"\s*(?P<off>Z|[+-]\d{2}(?::?\d{2})?)?$",
    re.IGNORECASE,
)
_BR_RE = re.compile(
    r"^(?P<d>\d{1,2})/(?P<mo>\d{1,2})/(?P<y>\d{4})"
    r"(?:[ T](?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})" + _FRACTION + r")?)?$"
)
_CLOCK_RE = re.compile(r"^(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})" + _FRACTION + r")?$")
_RELATIVE_RE = re.compile(r"^(?:now)?\s*(?P<sign>[+-])\s*(?P<dur>\d+(?:\.\d+)?\s*[a-z]+)$", re.I)
_EPOCH_MS_MIN = 10**11  # 1973-03-03 in ms; smaller integers look like epoch seconds

FORMS_HELP = (
    "use ISO 8601 (2025-08-08T09:00), a date (2025-08-08), a time of day (09:00), "
    "a relative time (-15m, -2h, now) or epoch milliseconds (1754654400000)"
)


def _fraction_ns(frac: str | None) -> int:
    return int(frac.ljust(9, "0")) if frac else 0


def _offset(text: str) -> timezone:
    if text.upper() == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    if hours > 23 or minutes > 59:
        raise ValueError(f"offset {text} is out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _epoch_ns(dt: datetime) -> int:
    """Exact ns of an aware datetime (no float rounding)."""
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1_000


def local_to_ns(naive: datetime, tz: tzinfo, *, ambiguous: Ambiguous = "earliest") -> int:
    """ns of a wall-clock time in `tz`, resolving DST gaps (forward) and overlaps (`ambiguous`)."""
    first = naive.replace(tzinfo=tz, fold=0)
    second = naive.replace(tzinfo=tz, fold=1)
    off_first, off_second = first.utcoffset(), second.utcoffset()
    if off_first == off_second:
        return _epoch_ns(first)
    assert off_first is not None and off_second is not None
    if off_first > off_second:  # the clock went back: this wall time happened twice
        return _epoch_ns(first if ambiguous == "earliest" else second)
    # The clock jumped forward over this wall time: take the instant of the jump.
    lo, hi = _epoch_ns(second) // NS_PER_S, _epoch_ns(first) // NS_PER_S
    while hi - lo > 1:  # offset before the jump at lo, after it at hi
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == off_first:
            lo = mid
        else:
            hi = mid
    return hi * NS_PER_S


def _wall(
    y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, frac: str | None = None
) -> tuple[datetime, int]:
    return datetime(y, mo, d, h, mi, s), _fraction_ns(frac)  # noqa: DTZ001 - resolved in a tz below


# The latest time qt reads or stores: 2200-01-01 UTC (events.MAX_TS_NS; int64 ns end in 2262).
LATEST_NS = 7_258_118_400 * NS_PER_S


def parse_time(
    text: str,
    *,
    tz: tzinfo | str | None = None,
    now_ns: int | None = None,
    ambiguous: Ambiguous = "earliest",
) -> int:
    """A point in time as ns since the epoch; TimeParseError lists the accepted forms, or says
    the time is before 1970 or after 2200 (no event time qt stores is)."""
    ns = _parse_time(text, tz=tz, now_ns=now_ns, ambiguous=ambiguous)
    if not 0 <= ns < LATEST_NS:
        raise TimeParseError(
            f"time {text!r} is {'before 1970' if ns < 0 else 'after 2200'}: give one from "
            "1970 to 2200 (the event times qt stores)"
        )
    return ns


def _parse_time(
    text: str,
    *,
    tz: tzinfo | str | None,
    now_ns: int | None,
    ambiguous: Ambiguous,
) -> int:
    zone = get_tz(tz) if tz is None or isinstance(tz, str) else tz
    now = time.time_ns() if now_ns is None else now_ns
    raw = text.strip()
    lowered = raw.lower()
    try:
        if lowered == "now":
            return now
        if lowered in ("today", "yesterday"):
            day = datetime.fromtimestamp(now / NS_PER_S, zone).date()
            if lowered == "yesterday":
                day -= timedelta(days=1)
            return local_to_ns(datetime(day.year, day.month, day.day), zone, ambiguous=ambiguous)  # noqa: DTZ001
        if match := _RELATIVE_RE.match(raw):
            try:
                delta = parse_duration_ns(match["dur"].replace(" ", ""))
            except TimeParseError:
                raise TimeParseError(
                    f"time {text!r}: a relative time is a sign and a duration "
                    "(-15m, -2h, -1d, +30s)"
                ) from None
            return now - delta if match["sign"] == "-" else now + delta
        if raw.isdigit():
            value = int(raw)
            if value < _EPOCH_MS_MIN:
                raise TimeParseError(
                    f"time {text!r}: an integer is read as epoch milliseconds and this one is too "
                    "small (epoch seconds? multiply by 1000)"
                )
            return value * 1_000_000
        if match := _ISO_RE.match(raw):
            naive, frac = _wall(
                int(match["y"]),
                int(match["mo"]),
                int(match["d"]),
                int(match["h"] or 0),
                int(match["mi"] or 0),
                int(match["s"] or 0),
                match["frac"],
            )
            if match["off"]:
                return _epoch_ns(naive.replace(tzinfo=_offset(match["off"]))) + frac
            return local_to_ns(naive, zone, ambiguous=ambiguous) + frac
        if match := _BR_RE.match(raw):
            naive, frac = _wall(
                int(match["y"]),
                int(match["mo"]),
                int(match["d"]),
                int(match["h"] or 0),
                int(match["mi"] or 0),
                int(match["s"] or 0),
                match["frac"],
            )
            return local_to_ns(naive, zone, ambiguous=ambiguous) + frac
        if match := _CLOCK_RE.match(raw):
            day = datetime.fromtimestamp(now / NS_PER_S, zone).date()
            naive, frac = _wall(
                day.year,
                day.month,
                day.day,
                int(match["h"]),
                int(match["mi"]),
                int(match["s"] or 0),
                match["frac"],
            )
            return local_to_ns(naive, zone, ambiguous=ambiguous) + frac
    except ValueError as exc:  # a field out of range (month 13, 25:00, …)
        raise TimeParseError(f"time {text!r}: {exc}") from None
    raise TimeParseError(f"time {text!r} is not a time I can read: {FORMS_HELP}")


_iso_cache: dict[tuple[int, tzinfo], tuple[str, str]] = {}
_MILLIS = tuple(f".{ms:03d}" for ms in range(1000))


def format_ns(ts_ns: int, tz: tzinfo | str | None = None) -> str:
    """ISO 8601 with milliseconds and the zone's offset (default exchange time), e.g.
    `2025-08-08T09:00:00.000-03:00`. The one ISO formatter (events.iso_local is this one).

    On the bridge's hot path: the date and offset are cached per second and zone.
    """
    zone = EXCHANGE_TZ if tz is None else get_tz(tz) if isinstance(tz, str) else tz
    seconds, rem = divmod(ts_ns, NS_PER_S)
    parts = _iso_cache.get((seconds, zone))
    if parts is None:
        if len(_iso_cache) > 4096:
            _iso_cache.clear()
        stamp = datetime.fromtimestamp(seconds, tz=zone).isoformat()
        parts = _iso_cache[(seconds, zone)] = (stamp[:19], stamp[19:])  # date-time, '+HH:MM'
    return parts[0] + _MILLIS[rem // NS_PER_MS] + parts[1]
