"""What a query asks for: kinds, time fields, `Request` (`make_request` parses and checks the
command's options), and the symbols it resolves to."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from qt_cli.core import keys
from qt_cli.core.endpoints import OUTPUT_FORMATS
from qt_cli.core.errors import UsageError
from qt_cli.core.events import NS_PER_S, STREAM_EVENTS, STREAM_KINDS, Event
from qt_cli.core.store import reader
from qt_cli.core.timeparse import Ambiguous, format_ns, get_tz, parse_time, tz_name

FORMATS = ("table", *OUTPUT_FORMATS)
GLOBAL_KINDS = tuple(keys.GLOBAL_STREAMS)
KINDS = (
    tuple(keys.candle_kind("1m") if kind == "candles" else kind for kind in STREAM_KINDS)
    + GLOBAL_KINDS
)
EVENT_KINDS: dict[str, tuple[type[Event], ...]] = {
    kind: classes for kind, classes in STREAM_EVENTS.items() if kind != "ticks"
}
GLOBAL_SCHEMAS: dict[str, tuple[tuple[str, str], ...]] = {
    "gaps": (
        ("session", "str"),
        ("from_seq", "int"),
        ("to_seq", "int"),
        ("recovered", "bool"),
        ("reason", "str"),
        ("endpoint", "str"),
        ("ts_init", "int"),
    ),
    "deadletter": (
        ("reason", "text"),
        ("field", "str"),
        ("raw", "text"),
        ("source", "str"),
        ("topic", "str"),
        ("ts_init", "int"),
    ),
}
_TIMEFRAME_RE = re.compile(r"^\d+[smhdw]$")
AGGRESSOR_CATEGORIES = ["sell", "none", "buy"]  # codes -1, 0, 1 shifted by one
AS_OF_FIRST_WINDOW_NS = 60 * NS_PER_S
AS_OF_GROWTH = 16

TimeInput: TypeAlias = str | int | datetime | pd.Timestamp | None


# --- the request -----------------------------------------------------------------------------


def check_kind(kind: str) -> str:
    """The canonical kind name (`candles` means `candles:1m`); UsageError lists the kinds."""
    text = kind.strip()
    if text == "candles":
        return "candles:1m"
    if text.startswith("candles:") and _TIMEFRAME_RE.match(text.split(":", 1)[1]):
        return text
    if text in KINDS:
        return text
    raise UsageError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)} (or candles:<tf>)")


def _base_kind(kind: str) -> str:
    return kind.split(":", 1)[0]


def time_field(kind: str) -> str:
    return "ts_init" if kind in GLOBAL_KINDS else "ts_event"


@dataclass(frozen=True)
class Request:
    """What to read: kind, symbols (empty: every symbol stored), a time range or an as-of instant."""

    kind: str
    symbols: tuple[str, ...]
    from_ns: int
    to_ns: int
    as_of_ns: int | None
    tz: tzinfo
    partial: bool = False  # candles: add each symbol's candle still forming (closed false)
    feature_set: str | None = None  # features: only vectors of this set, one column per feature

    @property
    def tz_name(self) -> str:
        return tz_name(self.tz)

    def describe(self) -> str:
        where = ", ".join(self.symbols) if self.symbols else "all symbols"
        if self.as_of_ns is not None:
            return (
                f"{self.kind} of {where} as of {format_ns(self.as_of_ns, self.tz)} ({self.tz_name})"
            )
        return (
            f"{self.kind} of {where} from {format_ns(self.from_ns, self.tz)} "
            f"to {format_ns(self.to_ns, self.tz)} ({self.tz_name})"
        )


def _to_ns(
    value: TimeInput, *, tz: tzinfo, now_ns: int, ambiguous: Ambiguous, option: str
) -> int | None:
    if value is None:
        return None
    if isinstance(value, pd.Timestamp | datetime):
        if value.tzinfo is None:
            raise UsageError(f"{option}: a datetime needs a time zone (got a naive {value!s})")
        return int(pd.Timestamp(value).value)
    if isinstance(value, int | np.integer):
        return int(value)
    return parse_time(str(value), tz=tz, now_ns=now_ns, ambiguous=ambiguous)


def make_request(
    kind: str = "ticks",
    *,
    symbols: Sequence[str] = (),
    start: TimeInput = None,
    end: TimeInput = None,
    as_of: TimeInput = None,
    tz: str | tzinfo | None = None,
    now_ns: int | None = None,
    partial: bool = False,
    feature_set: str | None = None,
) -> Request:
    """Validate and resolve a query. Times: ns ints, aware datetimes, or text for parse_time.

    Default range: from the start of today (in `tz`) to now. `partial` (candles only) adds
    each symbol's candle still forming. `feature_set` (features only): only vectors of that
    set, their values in the set's order (one column per feature in a DataFrame).
    """
    zone = tz if isinstance(tz, tzinfo) else get_tz(tz)
    now = time.time_ns() if now_ns is None else now_ns
    name = check_kind(kind)
    if partial and _base_kind(name) != "candles":
        raise UsageError(
            f"--partial adds the candle still forming: use it with --kind candles:<tf>, not {name}"
        )
    if partial and as_of is not None:
        raise UsageError("--partial reads a range: leave out --as-of")
    if feature_set is not None:
        if name != "features":
            raise UsageError(f"--set picks a feature set: use it with --kind features, not {name}")
        from qt_cli.core.features.catalog import feature_set as check_set

        check_set(feature_set)  # UsageError naming the sets
    for symbol in symbols:
        if not keys.valid_symbol(symbol):
            raise UsageError(f"symbol {symbol!r} is not a ticker (letters, digits, '.', '_', '-')")
    if name in GLOBAL_KINDS and symbols:
        raise UsageError(f"{name} are not per symbol: leave out --symbol")
    as_of_ns = _to_ns(as_of, tz=zone, now_ns=now, ambiguous="latest", option="--as-of")
    if as_of_ns is not None:
        if start is not None or end is not None:
            raise UsageError("--as-of reads one instant: leave out --from and --to")
        return Request(
            name, tuple(symbols), as_of_ns, as_of_ns, as_of_ns, zone, feature_set=feature_set
        )
    from_ns = _to_ns(start, tz=zone, now_ns=now, ambiguous="earliest", option="--from")
    to_ns = _to_ns(end, tz=zone, now_ns=now, ambiguous="latest", option="--to")
    if to_ns is None:
        to_ns = now
    if from_ns is None:
        from_ns = parse_time("today", tz=zone, now_ns=now)
        from_ns = min(from_ns, to_ns)
    if from_ns > to_ns:
        raise UsageError(
            f"--from ({format_ns(from_ns, zone)}) is after --to ({format_ns(to_ns, zone)}): "
            "swap them or widen the range"
        )
    return Request(name, tuple(symbols), from_ns, to_ns, None, zone, partial, feature_set)


def _stream_keys(kind: str, symbol: str) -> list[str]:
    out = [keys.stream_key(kind, symbol)]
    if kind == "ticks":
        out.append(keys.history_key("ticks", symbol))
    return out


def resolve_symbols(client: Any, request: Request) -> list[str]:
    """The symbols to read; UsageError for a symbol with nothing stored of this kind."""
    if request.kind in GLOBAL_KINDS:
        return [""]
    if not request.symbols:
        return reader.symbols_of(client, request.kind)
    missing = [s for s in request.symbols if not client.exists(*_stream_keys(request.kind, s))]
    if missing:
        stored = reader.symbols_of(client, request.kind)
        known = f"stored: {', '.join(stored)}" if stored else "nothing of this kind is stored yet"
        raise UsageError(
            f"no {request.kind} stored for {', '.join(missing)} ({known}); check --symbol and --kind"
        )
    return list(dict.fromkeys(request.symbols))
