"""Time travel: what Valkey holds for a kind, symbols and time range, as a DataFrame or a file.

Two ways out, built on the same ordered pages (`qt_cli/core/store/reader.py`):

- `query(...)` -> a pandas DataFrame with a tz-aware DatetimeIndex (`time`, from `ts_event`; from
  `ts_init` for gaps and dead letters) in event-time order, with proper dtypes (int64, float64,
  bool, categories for repeated strings). For `features` each feature is its own float column.
- `run(...)` -> streams the rows to a file object as csv, jsonl, json or parquet, page by page
  (never the whole range in memory), or keeps the first rows for a table. Rows are the events'
  wire fields (`Trade.to_dict()` for ticks), so `qt feed --replay` reads them back.

`--as-of T` gives, per symbol, the latest entry at or before T (the feature vector a model saw at
T): the range [T - w, T] is read with w growing from one minute until an entry turns up or the
window reaches back past the stream's first entry.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, BinaryIO

import numpy as np
import orjson
import pandas as pd

from qt_cli.core import keys
from qt_cli.core.chunks import STRING_COLUMNS, TickColumns
from qt_cli.core.errors import UsageError
from qt_cli.core.events import (
    EXCHANGE_TZ,
    NS_PER_MS,
    NS_PER_S,
    TRADE_OPTIONAL_FIELDS,
    TRADE_WIRE_FIELDS,
    BookUpdate,
    Candle,
    Daily,
    Event,
    FeatureVector,
    Prediction,
    Signal,
    State,
    TopOfBook,
)
from qt_cli.core.store import reader
from qt_cli.core.timeparse import format_ns, get_tz, parse_time, tz_name

FORMATS = ("table", "csv", "jsonl", "json", "parquet")
KINDS = (
    "ticks",
    "book",
    "candles:1m",
    "features",
    "predictions",
    "signals",
    "daily",
    "state",
    "gaps",
    "deadletter",
)
GLOBAL_KINDS = ("gaps", "deadletter")
EVENT_KINDS: dict[str, tuple[type[Event], ...]] = {
    "book": (BookUpdate, TopOfBook),
    "candles": (Candle,),
    "features": (FeatureVector,),
    "predictions": (Prediction,),
    "signals": (Signal,),
    "daily": (Daily,),
    "state": (State,),
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

TimeInput = str | int | datetime | pd.Timestamp | None


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


def _to_ns(value: TimeInput, *, tz: tzinfo, now_ns: int, ambiguous: str, option: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, pd.Timestamp | datetime):
        if value.tzinfo is None:
            raise UsageError(f"{option}: a datetime needs a time zone (got a naive {value!s})")
        return int(pd.Timestamp(value).value)
    if isinstance(value, int | np.integer):
        return int(value)
    return parse_time(str(value), tz=tz, now_ns=now_ns, ambiguous=ambiguous)  # type: ignore[arg-type]


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
) -> Request:
    """Validate and resolve a query. Times: ns ints, aware datetimes, or text for parse_time.

    Default range: from the start of today (in `tz`) to now. `partial` (candles only) adds
    each symbol's candle still forming.
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
    for symbol in symbols:
        if not keys.valid_symbol(symbol):
            raise UsageError(f"symbol {symbol!r} is not a ticker (letters, digits, '.', '_', '-')")
    if name in GLOBAL_KINDS and symbols:
        raise UsageError(f"{name} are not per symbol: leave out --symbol")
    as_of_ns = _to_ns(as_of, tz=zone, now_ns=now, ambiguous="latest", option="--as-of")
    if as_of_ns is not None:
        if start is not None or end is not None:
            raise UsageError("--as-of reads one instant: leave out --from and --to")
        return Request(name, tuple(symbols), as_of_ns, as_of_ns, as_of_ns, zone)
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
    return Request(name, tuple(symbols), from_ns, to_ns, None, zone, partial)


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


# --- columns -> frames -----------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _category_dtype(categories: tuple[str, ...]) -> pd.CategoricalDtype:
    """One dtype per set of categories: pandas checks them once, not for every frame."""
    return pd.CategoricalDtype(list(categories))


def _categorical(codes: np.ndarray, dictionary: Sequence[str]) -> pd.Categorical:
    if not len(dictionary):
        return pd.Categorical.from_codes(
            np.zeros(len(codes), np.int8), dtype=_category_dtype(("",))
        )
    return pd.Categorical.from_codes(codes, dtype=_category_dtype(tuple(dictionary)))


def ticks_frame(
    columns: TickColumns, symbols: Sequence[str], symbol_codes: np.ndarray | None = None
) -> pd.DataFrame:
    """Ticks as a DataFrame (no index yet): one column per field, strings as categories."""
    a = columns.arrays
    n = columns.n
    codes = np.zeros(n, dtype=np.int32) if symbol_codes is None else symbol_codes
    data: dict[str, Any] = {
        "symbol": pd.Categorical.from_codes(codes, dtype=_category_dtype(tuple(symbols) or ("?",))),
        "price": a["price"],
        "quantity": a["quantity"],
        "volume": a["volume"],
        "aggressor": pd.Categorical.from_codes(
            a["aggressor"].astype(np.int8) + 1, dtype=_category_dtype(tuple(AGGRESSOR_CATEGORIES))
        ),
        "trade_type": a["trade_type"],
        "trade_id": a["trade_id"],
        "buyer": a["buyer"],
        "seller": a["seller"],
    }
    for name in ("buyer_name", "seller_name"):
        data[name] = _categorical(columns.codes[name], columns.dictionaries[name])
    data.update(
        is_edit=a["is_edit"],
        history=a["history"],
        late=a["late"],
        session=_categorical(columns.codes["session"], columns.dictionaries["session"]),
        seq=a["seq"],
        ts_event=a["ts_event"],
        ts_init=a["ts_init"],
    )
    return pd.DataFrame(data, copy=False)


def _schema(kind: str) -> tuple[tuple[str, str], ...]:
    """(field, type) of a per-event kind's wire fields: int, float, bool, str, text or json."""
    if kind in GLOBAL_SCHEMAS:
        return GLOBAL_SCHEMAS[kind]
    out: dict[str, str] = {"type": "str", "symbol": "str"}
    for cls in EVENT_KINDS[_base_kind(kind)]:
        for name, typ, _ in cls._spec:
            kind_name = {int: "int", float: "float", bool: "bool", str: "str"}.get(typ, "json")
            out.setdefault(name, kind_name)
    return tuple(out.items())


def _type_fields(kind: str) -> dict[str, frozenset[str]]:
    """Wire type -> its field names (to drop the other types' columns from a row)."""
    if kind in GLOBAL_SCHEMAS:
        return {}
    return {
        cls.TYPE: frozenset({"type", *(name for name, _, _ in cls._spec)})
        for cls in EVENT_KINDS[_base_kind(kind)]
    }


def _convert(values: list[bytes | None], typ: str) -> Any:
    present = all(v is not None and v != b"" for v in values)
    if typ == "int":
        if present:
            try:
                return np.fromiter(map(int, values), dtype=np.int64, count=len(values))  # type: ignore[arg-type]
            except ValueError:
                pass
        return pd.array([_int_or_none(v) for v in values], dtype="Int64")
    if typ == "float":
        return np.fromiter((_float_or_nan(v) for v in values), dtype=np.float64, count=len(values))
    if typ == "bool":
        if all(v is not None for v in values):
            return np.fromiter(
                (v in (b"1", b"true", b"True") for v in values), np.bool_, len(values)
            )
        return pd.array(
            [None if v is None else v in (b"1", b"true", b"True") for v in values],
            dtype="boolean",
        )
    if typ == "json":
        return [_json_or_none(v) for v in values]
    strings = [None if v is None else v.decode(errors="replace") for v in values]
    if typ == "text":
        return pd.array(strings, dtype="string")
    return pd.Categorical(strings)


def _int_or_none(value: bytes | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _float_or_nan(value: bytes | None) -> float:
    try:
        return float(value) if value else math.nan
    except ValueError:
        return math.nan


def _json_or_none(value: bytes | None) -> Any:
    if not value:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value.decode(errors="replace")


def entries_frame(kind: str, entries: Sequence[reader.Entry]) -> pd.DataFrame:
    """Per-event entries as a DataFrame of their wire fields (no index yet), plus `late`."""
    rows = [f for _, f in entries]
    data: dict[str, Any] = {}
    for name, typ in _schema(kind):
        data[name] = _convert([f.get(name.encode()) for f in rows], typ)
    data["late"] = np.fromiter((f.get(b"late") == b"1" for f in rows), np.bool_, len(rows))
    if kind in GLOBAL_KINDS:
        data["id"] = [entry_id.decode() for entry_id, _ in entries]
    return pd.DataFrame(data)


def _expand_features(frame: pd.DataFrame) -> pd.DataFrame:
    """One float column per feature (NaN where a vector lacks it), after the other columns."""
    if "features" not in frame.columns or frame.empty:
        return frame
    values = pd.DataFrame.from_records(
        [f if isinstance(f, dict) else {} for f in frame["features"]], index=frame.index
    )
    values = values.astype(np.float64)
    clash = set(values.columns) & set(frame.columns)
    values.columns = [f"feature:{c}" if c in clash else c for c in values.columns]
    return pd.concat([frame.drop(columns=["features"]), values], axis=1)


def with_time_index(frame: pd.DataFrame, column: str, tz: tzinfo) -> pd.DataFrame:
    ts = frame[column].to_numpy(dtype=np.int64)
    index = pd.DatetimeIndex(pd.to_datetime(ts, unit="ns", utc=True)).tz_convert(tz)
    index.name = "time"
    frame.index = index
    return frame


# --- ordered pages ---------------------------------------------------------------------------


@dataclass
class Stats:
    """What a query read and produced."""

    rows: int = 0
    seconds: float = 0.0
    read: reader.ReadStats = field(default_factory=reader.ReadStats)


def _symbol_pages(
    client: Any, kind: str, symbol: str, from_ns: int, to_ns: int, stats: reader.ReadStats
) -> Iterator[tuple[pd.DataFrame, int]]:
    if kind == "ticks":
        for page in reader.iter_ticks(client, symbol, from_ns, to_ns, stats=stats):
            yield ticks_frame(page.columns, [symbol]), page.watermark_ns
        return
    key = keys.stream_key(kind) if kind in GLOBAL_KINDS else keys.stream_key(kind, symbol)
    for entry_page in reader.iter_entries(
        client, key, from_ns, to_ns, time_field=time_field(kind), stats=stats
    ):
        entries = _own_entries(kind, key, entry_page.entries, stats)
        yield entries_frame(kind, entries), entry_page.watermark_ns


def _own_entries(
    kind: str, key: str, entries: Sequence[reader.Entry], stats: reader.ReadStats
) -> Sequence[reader.Entry]:
    """The entries of a per-event kind that are its events (an integer time; a `type`, when
    there is one, of the kind's); another program's entry (the seed guide's `init true` marker,
    say) is left out and described in `stats.problems`, as the ticks read does."""
    types = _type_fields(kind)
    if not types:
        return entries  # gaps and dead letters: every entry is one
    wanted = {None, *(name.encode() for name in types)}
    field_name = time_field(kind).encode()

    def mine(fields: dict[bytes, bytes]) -> bool:
        return fields.get(b"type") in wanted and _is_int(fields.get(field_name))

    own = [e for e in entries if mine(e[1])]
    if len(own) < len(entries):
        for entry_id, fields in entries:
            if mine(fields):
                continue
            names = ", ".join(sorted(f.decode(errors="replace") for f in fields)[:8])
            stats.problems.append(
                f"{key} {entry_id.decode()}: not a {kind} entry (fields: {names})"
            )
    return own


def _is_int(value: bytes | None) -> bool:
    return bool(value) and value.lstrip(b"-").isdigit()  # type: ignore[union-attr]


def _merge_pages(
    sources: list[Iterator[tuple[pd.DataFrame, int]]], column: str
) -> Iterator[tuple[pd.DataFrame, int]]:
    """Pages of several symbols merged into one event-time order (each source is ordered)."""
    if len(sources) == 1:
        yield from sources[0]
        return
    marks = [-(2**63)] * len(sources)
    active = set(range(len(sources)))
    pending: list[pd.DataFrame] = []
    while active:
        i = min(active, key=lambda k: marks[k])
        try:
            frame, mark = next(sources[i])
            pending.append(frame)
            marks[i] = mark
        except StopIteration:
            active.discard(i)
        bound = min((marks[k] for k in active), default=None)
        if not pending:
            continue
        merged = pd.concat(pending, ignore_index=True) if len(pending) > 1 else pending[0]
        merged = merged.sort_values(column, kind="stable", ignore_index=True)
        if bound is None:
            pending = []
            yield merged, marks[i]
            continue
        cut = int(np.searchsorted(merged[column].to_numpy(), bound, side="left"))
        pending = [merged.iloc[cut:]] if cut < len(merged) else []
        if cut:
            yield merged.iloc[:cut], bound


def _as_of_pages(
    client: Any, request: Request, symbols: Sequence[str], stats: reader.ReadStats
) -> Iterator[tuple[pd.DataFrame, int]]:
    """The last entry at or before the instant, per symbol, in time order."""
    at = request.as_of_ns
    assert at is not None
    column = time_field(request.kind)
    found: list[pd.DataFrame] = []
    for symbol in symbols:
        row = _last_at_or_before(client, request.kind, symbol, at, stats)
        if row is not None:
            found.append(row)
    if found:
        merged = pd.concat(found, ignore_index=True) if len(found) > 1 else found[0]
        yield merged.sort_values(column, kind="stable", ignore_index=True), at


def _last_row(
    client: Any, kind: str, symbol: str, start: int, end: int, stats: reader.ReadStats
) -> pd.DataFrame | None:
    last: pd.DataFrame | None = None
    for frame, _ in _symbol_pages(client, kind, symbol, start, end, stats):
        if len(frame):
            last = frame
    return None if last is None else last.iloc[[-1]]


def _last_at_or_before(
    client: Any, kind: str, symbol: str, at: int, stats: reader.ReadStats
) -> pd.DataFrame | None:
    """Read [floor, at] where floor is the time of an entry known to lie at or before `at` (so
    the range holds at least that entry and every late one after it); without such an entry,
    windows reaching further back, each [at - 16w, at - w), until the stream's start."""
    floor = _as_of_floor(client, kind, symbol, at)
    if floor is not None:
        row = _last_row(client, kind, symbol, floor, at, stats)
        if row is not None:
            return row
    earliest = _earliest_ns(client, kind, symbol)
    margin = reader.LATE_MARGIN_MS * NS_PER_MS  # a late entry's id lies up to this above it
    if earliest is None or earliest > at + margin:
        return None
    end, window = at, AS_OF_FIRST_WINDOW_NS
    while end >= earliest - margin:
        start = max(0, at - window)
        row = _last_row(client, kind, symbol, start, end, stats)
        if row is not None:
            return row
        end, window = start - 1, window * AS_OF_GROWTH
    return None


def _as_of_floor(client: Any, kind: str, symbol: str, at: int) -> int | None:
    """ns of some entry at or before `at` (ids are never below event time), or None."""
    at_ms = at // NS_PER_MS
    if kind in GLOBAL_KINDS:
        last = client.xrevrange(keys.stream_key(kind), at_ms, "-", count=1)
        if not last:
            return None
        t = reader.entry_time(last[0][0], last[0][1], b"ts_init")
        return min(t, at) - reader.LATE_MARGIN_MS * NS_PER_MS  # ids are wall clock there
    candidates = []
    last = client.xrevrange(keys.stream_key(kind, symbol), at_ms, "-", count=1)
    if last:
        candidates.append(reader.entry_time(last[0][0], last[0][1], b"ts_event"))
    if kind == "ticks":
        chunk = client.xrevrange(keys.history_key("ticks", symbol), at_ms, "-", count=1)
        if chunk and b"t_min" in chunk[0][1]:
            candidates.append(int(chunk[0][1][b"t_min"]))
        late = client.zrevrangebyscore(
            keys.late_index_key("ticks", symbol), at_ms, "-inf", start=0, num=1, withscores=True
        )
        candidates += [int(score) * NS_PER_MS for _, score in late]
    candidates = [c for c in candidates if c <= at]
    return max(candidates) if candidates else None


def _earliest_ns(client: Any, kind: str, symbol: str) -> int | None:
    """The smallest id time of the symbol's streams of this kind (an entry is never older)."""
    stream_keys = [keys.stream_key(kind)] if kind in GLOBAL_KINDS else _stream_keys(kind, symbol)
    firsts = [reader.first_id(client, key) for key in stream_keys]
    times = [f[0] for f in firsts if f is not None]
    if kind == "ticks":  # a late chunk's t_min lies below its id
        late = client.zrange(keys.late_index_key("ticks", symbol), 0, 0, withscores=True)
        times += [int(score) for _, score in late]
    if kind in GLOBAL_KINDS:  # ids are wall-clock there: allow the margin
        times = [t - reader.LATE_MARGIN_MS for t in times]
    return min(times) * NS_PER_MS if times else None


def pages(
    client: Any, request: Request, *, stats: Stats | None = None
) -> Iterator[tuple[pd.DataFrame, int]]:
    """(frame, watermark) pages of the request in event-time order; frames have no index."""
    stats = stats if stats is not None else Stats()
    symbols = resolve_symbols(client, request)
    if not symbols:
        return
    if request.as_of_ns is not None:
        yield from _as_of_pages(client, request, symbols, stats.read)
        return
    sources = [
        _symbol_pages(client, request.kind, s, request.from_ns, request.to_ns, stats.read)
        for s in symbols
    ]
    if request.partial:
        sources = [
            itertools.chain(pages_, _forming_candle(client, request, s))
            for pages_, s in zip(sources, symbols, strict=True)
        ]
    yield from _merge_pages(sources, time_field(request.kind))


def _forming_candle(
    client: Any, request: Request, symbol: str
) -> Iterator[tuple[pd.DataFrame, int]]:
    """The symbol's candle still forming (the newest snapshot of its partial stream, closed
    false) when it opens in the range and after the last closed candle (a snapshot of a period
    that closed since is stale)."""
    kind = request.kind
    newest = client.xrevrange(keys.partial_candle_key(kind, symbol), count=1)
    if not newest:
        return
    frame = entries_frame(kind, newest)
    opened = int(frame["ts_event"].iloc[0])
    closed = client.xrevrange(keys.stream_key(kind, symbol), count=1)
    if closed and opened <= int(closed[0][1].get(b"ts_event", b"0")):
        return
    if request.from_ns <= opened <= request.to_ns:
        yield frame, request.to_ns


# --- the DataFrame API -----------------------------------------------------------------------


def query(
    kind: str = "ticks",
    *,
    symbols: Sequence[str] | str = (),
    start: TimeInput = None,
    end: TimeInput = None,
    as_of: TimeInput = None,
    tz: str | tzinfo | None = None,
    client: Any = None,
    stats: Stats | None = None,
    partial: bool = False,
) -> pd.DataFrame:
    """A kind's stored rows as a DataFrame indexed by event time (tz-aware), in event-time order.

    `query("ticks", symbols="WDOQ25", start="2025-08-08T09:00", end="2025-08-08T10:00")`.
    Times are text (see timeparse), ns ints or aware datetimes; `client` defaults to the
    configured Valkey. `partial` (candles) adds each symbol's candle still forming (`closed`
    false).
    """
    if isinstance(symbols, str):
        symbols = [symbols]
    request = make_request(
        kind, symbols=symbols, start=start, end=end, as_of=as_of, tz=tz, partial=partial
    )
    if client is None:
        from qt_cli.core import config, store

        client = store.connect_settings(config.current())
    return frame_of(client, request, stats=stats)


def frame_of(client: Any, request: Request, *, stats: Stats | None = None) -> pd.DataFrame:
    """query() for a resolved Request."""
    stats = stats if stats is not None else Stats()
    started = time.perf_counter()
    if request.kind == "ticks" and request.as_of_ns is None:
        frame = _ticks_range(client, request, stats)
    else:
        frames = [f for f, _ in pages(client, request, stats=stats)]
        if frames:
            frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        elif request.kind == "ticks":
            frame = ticks_frame(TickColumns.empty(), [])
        else:
            frame = entries_frame(request.kind, [])
        for name in frame.columns:  # concatenated pages may have turned categories to objects
            if frame[name].dtype == object and _schema_type(request.kind, name) == "str":
                frame[name] = frame[name].astype("category")
        if _base_kind(request.kind) == "features":
            frame = _expand_features(frame)
    frame = with_time_index(frame, time_field(request.kind), request.tz)
    stats.rows = len(frame)
    stats.seconds = time.perf_counter() - started
    return frame


def _schema_type(kind: str, name: str) -> str | None:
    if kind == "ticks":
        return "str" if name in ("symbol", *STRING_COLUMNS) else None
    return dict(_schema(kind)).get(name)


def _ticks_range(client: Any, request: Request, stats: Stats) -> pd.DataFrame:
    """Ticks straight from columns: one concat and one frame, however many pages."""
    symbols = resolve_symbols(client, request)
    parts: list[TickColumns] = []
    codes: list[np.ndarray] = []
    for i, symbol in enumerate(symbols):
        cols = reader.read_ticks(client, symbol, request.from_ns, request.to_ns, stats=stats.read)
        if cols.n:
            parts.append(cols)
            codes.append(np.full(cols.n, i, dtype=np.int32))
    if not parts:
        return ticks_frame(TickColumns.empty(), symbols)
    merged = TickColumns.concat(parts)
    symbol_codes = np.concatenate(codes)
    if len(parts) > 1:
        order = np.argsort(merged.arrays["ts_event"], kind="stable")
        merged = merged.take(order)
        symbol_codes = symbol_codes[order]
    return ticks_frame(merged, symbols, symbol_codes)


# --- wire rows for files ---------------------------------------------------------------------

_MINUTE_MS = 60_000
_SECONDS_MS: Any = None  # "SS.mmm" for every ms of a minute, built on first use


def iso_array(ts_ns: np.ndarray, tz: tzinfo) -> Any:
    """ISO 8601 strings with ms and offset (as events.iso_local writes) for many times at once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    global _SECONDS_MS
    if _SECONDS_MS is None:
        _SECONDS_MS = pa.array([f"{i // 1000:02d}.{i % 1000:03d}" for i in range(_MINUTE_MS)])
    if len(ts_ns) == 0:
        return pa.array([], type=pa.string())
    ms = ts_ns // NS_PER_MS
    minute = ms // _MINUTE_MS
    within = ms - minute * _MINUTE_MS
    # Offsets change on whole minutes, so one datetime per distinct minute is enough.
    unique, inverse = np.unique(minute, return_inverse=True)
    heads, tails = [], []
    for m in unique.tolist():
        stamp = datetime.fromtimestamp(m * 60, tz).isoformat()  # YYYY-MM-DDTHH:MM:SS+HH:MM
        heads.append(stamp[:17])
        tails.append(stamp[19:])
    index = pa.array(inverse)
    return pc.binary_join_element_wise(
        pa.array(heads).take(index),
        _SECONDS_MS.take(pa.array(within)),
        pa.array(tails).take(index),
        "",
    )


def _strings(values: Any) -> list[Any]:
    return [None if isinstance(v, float) else v for v in values.tolist()]


TICK_WIRE_COLUMNS = (*TRADE_WIRE_FIELDS, *TRADE_OPTIONAL_FIELDS, "late")


def _tick_wire(frame: pd.DataFrame) -> dict[str, Any]:
    """The wire columns of ticks (Trade.to_dict order), as arrays."""
    ts = frame["ts_event"].to_numpy(dtype=np.int64)
    n = len(frame)
    return {
        "type": np.full(n, "tick", dtype=object),
        "symbol": frame["symbol"],
        "timestamp": iso_array(ts, EXCHANGE_TZ),
        "timestamp_ms": ts // NS_PER_MS,
        "trade_id": frame["trade_id"].to_numpy(),
        "price": frame["price"].to_numpy(),
        "volume": frame["volume"].to_numpy(),
        "quantity": frame["quantity"].to_numpy(),
        "buyer": frame["buyer"].to_numpy(dtype=np.int64),
        "seller": frame["seller"].to_numpy(dtype=np.int64),
        "trade_type": frame["trade_type"].to_numpy(dtype=np.int64),
        "is_edit": frame["is_edit"].to_numpy(),
        "aggressor": frame["aggressor"],
        "ts_event": ts,
        "ts_init": frame["ts_init"].to_numpy(),
        "recv_ns": frame["ts_init"].to_numpy(),
        "session": frame["session"],
        "seq": frame["seq"].to_numpy(),
        "buyer_name": frame["buyer_name"],
        "seller_name": frame["seller_name"],
        "history": frame["history"].to_numpy(),
        "late": frame["late"].to_numpy(),
    }


def _tick_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows exactly as Trade.to_dict() gives them (names and history only when set), + late."""
    wire = _tick_wire(frame)
    lists = {
        name: (value.to_pylist() if hasattr(value, "to_pylist") else list(value.tolist()))
        if not isinstance(value, pd.Series)
        else value.astype(object).tolist()
        for name, value in wire.items()
    }
    base = TICK_WIRE_COLUMNS[:18]
    rows = []
    for values in zip(*(lists[name] for name in base), strict=True):
        rows.append(dict(zip(base, values, strict=True)))
    for i, row in enumerate(rows):
        if lists["buyer_name"][i] or lists["seller_name"][i]:
            row["buyer_name"] = lists["buyer_name"][i]
            row["seller_name"] = lists["seller_name"][i]
        if lists["history"][i]:
            row["history"] = True
        if lists["late"][i]:
            row["late"] = True
    return rows


def _entry_records(kind: str, frame: pd.DataFrame, tz: tzinfo) -> list[dict[str, Any]]:
    """Rows of a per-event kind: `time` (ISO in tz) and the wire fields of each row's type."""
    column = time_field(kind)
    times = iso_array(frame[column].to_numpy(dtype=np.int64), tz).to_pylist()
    names = list(frame.columns)
    lists = [_plain(frame[c]) for c in names]
    allowed = _type_fields(kind)
    rows = []
    for i, values in enumerate(zip(*lists, strict=True)):
        row: dict[str, Any] = {"time": times[i]}
        fields_of = allowed.get(values[0]) if allowed else None
        for name, value in zip(names, values, strict=True):
            if name == "late":
                if value:
                    row["late"] = True
            elif fields_of is None or name in fields_of:
                row[name] = value
        rows.append(row)
    return rows


def _plain(series: pd.Series) -> list[Any]:
    """Python values with None for missing (NaN floats stay NaN: JSON null, CSV empty)."""
    if series.dtype.kind in "iubf":
        return series.tolist()
    values = series.astype(object).tolist()
    return [None if (v is pd.NA or (isinstance(v, float) and math.isnan(v))) else v for v in values]


def _arrow_table(kind: str, frame: pd.DataFrame, tz: tzinfo, *, for_csv: bool) -> Any:
    """Wire columns as a pyarrow Table (nested values as JSON text; for CSV bools as 1/0, NaN empty)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind == "ticks":
        columns = _tick_wire(frame)
    else:
        columns = {"time": iso_array(frame[time_field(kind)].to_numpy(dtype=np.int64), tz)}
        for name in frame.columns:
            columns[name] = frame[name]
    arrays = [_arrow_column(value, pa) for value in columns.values()]
    table = pa.table(arrays, names=list(columns))
    if for_csv:
        fixed = []
        for col in table.columns:
            if pa.types.is_boolean(col.type):
                col = col.cast(pa.int8())
            elif pa.types.is_floating(col.type):
                col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
            fixed.append(col)
        table = pa.table(fixed, names=table.column_names)
    return table


def _arrow_column(value: Any, pa: Any) -> Any:
    if isinstance(value, pa.Array | pa.ChunkedArray):
        return value
    if isinstance(value, pd.Series):
        dtype = value.dtype
        if isinstance(dtype, pd.CategoricalDtype) or dtype.kind in "OSUT":
            plain = _plain(value)
            if any(isinstance(v, dict | list) for v in plain):
                plain = [None if v is None else orjson.dumps(v).decode() for v in plain]
            return pa.array([None if v is None else str(v) for v in plain], type=pa.string())
        if str(dtype) in ("Int64", "boolean", "string"):
            return pa.array(value.astype(object).where(value.notna(), None).tolist())
        return pa.array(value.to_numpy())
    if isinstance(value, np.ndarray) and value.dtype == object:
        return pa.array(value.tolist(), type=pa.string())
    return pa.array(value)


# --- writers ---------------------------------------------------------------------------------


class _Writer:
    def __init__(self, out: BinaryIO, kind: str, tz: tzinfo) -> None:
        self.out = out
        self.kind = kind
        self.tz = tz

    def write(self, frame: pd.DataFrame) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.out.flush()


class _JsonLines(_Writer):
    def records(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        if self.kind == "ticks":
            return _tick_records(frame)
        return _entry_records(self.kind, frame, self.tz)

    def write(self, frame: pd.DataFrame) -> None:
        dumps = orjson.dumps
        option = orjson.OPT_SERIALIZE_NUMPY
        self.out.write(b"".join([dumps(r, option=option) + b"\n" for r in self.records(frame)]))


class _JsonArray(_JsonLines):
    def __init__(self, out: BinaryIO, kind: str, tz: tzinfo) -> None:
        super().__init__(out, kind, tz)
        self.first = True
        out.write(b"[")

    def write(self, frame: pd.DataFrame) -> None:
        records = self.records(frame)
        if not records:
            return
        option = orjson.OPT_SERIALIZE_NUMPY
        body = b",\n".join(orjson.dumps(r, option=option) for r in records)
        self.out.write((b"\n" if self.first else b",\n") + body)
        self.first = False

    def close(self) -> None:
        self.out.write(b"]\n" if self.first else b"\n]\n")
        super().close()


class _Csv(_Writer):
    def __init__(self, out: BinaryIO, kind: str, tz: tzinfo) -> None:
        super().__init__(out, kind, tz)
        self.writer: Any = None
        self.schema: Any = None

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow.csv as pcsv

        table = _arrow_table(self.kind, frame, self.tz, for_csv=True)
        if self.writer is None:
            self.schema = table.schema
            self.writer = pcsv.CSVWriter(self.out, self.schema)
        self.writer.write_table(_conform(table, self.schema))

    def close(self) -> None:
        if self.writer is None:
            self.write(_empty_frame(self.kind))
        self.writer.close()
        super().close()


class _Parquet(_Csv):
    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = _arrow_table(self.kind, frame, self.tz, for_csv=False)
        if self.writer is None:
            self.schema = table.schema
            self.writer = pq.ParquetWriter(self.out, self.schema, compression="zstd")
        self.writer.write_table(_conform(table, self.schema))


def _conform(table: Any, schema: Any) -> Any:
    """A later page's table in the first page's schema (a column all null there may differ)."""
    if table.schema.equals(schema):
        return table
    import pyarrow as pa

    columns = []
    for item in schema:
        if item.name in table.column_names:
            col = table.column(item.name)
            if col.type != item.type:
                if pa.types.is_null(item.type) or pa.types.is_null(col.type):
                    col = pa.nulls(len(table), item.type) if col.null_count == len(col) else col
                col = col.cast(item.type)
        else:
            col = pa.nulls(len(table), item.type)
        columns.append(col)
    return pa.table(columns, schema=schema)


def _empty_frame(kind: str) -> pd.DataFrame:
    return ticks_frame(TickColumns.empty(), []) if kind == "ticks" else entries_frame(kind, [])


WRITERS = {"jsonl": _JsonLines, "json": _JsonArray, "csv": _Csv, "parquet": _Parquet}


# --- run: the command's one call -------------------------------------------------------------


@dataclass
class Result:
    """What `run` did: rows written (or counted), the first rows for a table, read statistics."""

    request: Request
    symbols: list[str]
    rows: int
    seconds: float
    preview: pd.DataFrame | None
    stats: Stats

    def as_dict(self) -> dict[str, Any]:
        r = self.request
        return {
            "kind": r.kind,
            "symbols": self.symbols,
            "from": format_ns(r.from_ns, r.tz),
            "to": format_ns(r.to_ns, r.tz),
            "as_of": None if r.as_of_ns is None else format_ns(r.as_of_ns, r.tz),
            "tz": r.tz_name,
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "chunks": self.stats.read.chunks,
            "entries": self.stats.read.entries + self.stats.read.tail_entries,
            "problems": self.stats.read.problems[:20],
        }


Progress = Callable[[float, int], None]


def run(
    client: Any,
    request: Request,
    *,
    fmt: str,
    out: BinaryIO | None = None,
    limit: int = 50,
    progress: Progress | None = None,
) -> Result:
    """Read the request page by page: write each page in `fmt` to `out`, or (fmt "table") keep
    the first `limit` rows and count the rest. `progress(fraction, rows)` after each page."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    stats = Stats()
    started = time.perf_counter()
    symbols = resolve_symbols(client, request)
    writer = None if fmt == "table" else WRITERS[fmt](out, request.kind, request.tz)  # type: ignore[arg-type]
    kept: list[pd.DataFrame] = []
    kept_rows = 0
    rows = 0
    span = max(1, request.to_ns - request.from_ns)
    try:
        for frame, watermark in pages(client, request, stats=stats):
            rows += len(frame)
            if writer is not None:
                writer.write(frame)
            elif kept_rows < limit:
                kept.append(frame.iloc[: limit - kept_rows])
                kept_rows += len(kept[-1])
            if progress is not None:
                progress(min(1.0, max(0.0, (watermark - request.from_ns) / span)), rows)
    finally:
        if writer is not None:
            writer.close()
    preview = None
    if fmt == "table":
        preview = pd.concat(kept, ignore_index=True) if kept else None
        if preview is not None:
            if _base_kind(request.kind) == "features":
                preview = _expand_features(preview)
            preview = with_time_index(preview, time_field(request.kind), request.tz)
    stats.rows = rows
    stats.seconds = time.perf_counter() - started
    return Result(request, symbols, rows, stats.seconds, preview, stats)


# Columns a table leaves out (still in every file format).
TABLE_HIDDEN = frozenset(
    {"type", "timestamp", "timestamp_ms", "recv_ns", "ts_event", "ts_init", "session", "id", "seq"}
)
# Ticks have many columns; a table shows these (files have them all).
TICK_TABLE_COLUMNS = (
    "symbol",
    "price",
    "quantity",
    "aggressor",
    "buyer",
    "seller",
    "trade_id",
    "is_edit",
    "history",
    "late",
)

TABLE_LABELS = {
    "quantity": "qty",
    "aggressor": "side",
    "trade_id": "trade",
    "position": "pos",
    "bid_price": "bid",
    "ask_price": "ask",
    "bid_qty": "bid qty",
    "ask_qty": "ask qty",
    "buy_volume": "buy vol",
    "sell_volume": "sell vol",
}
# On a narrow terminal a table keeps these columns longest, in this order (time always stays);
# the others go first, the rightmost first. Kinds not listed keep their columns left to right.
TABLE_KEEP = {
    "ticks": ("symbol", "price", "quantity", "aggressor", "trade_id", "buyer", "seller"),
    "book": ("symbol", "side", "action", "price", "quantity", "bid_price", "ask_price")
    + ("bid_qty", "ask_qty", "position", "count"),
    "candles": ("symbol", "open", "high", "low", "close", "volume", "quantity", "trades"),
    "daily": ("symbol", "open", "high", "low", "close", "volume", "quantity", "trades"),
    "state": ("symbol", "text", "source", "code"),
}


def _table_names(result: Result) -> list[str]:
    frame = result.preview
    if frame is None or frame.empty:
        return []
    if result.request.kind == "ticks":
        names = list(TICK_TABLE_COLUMNS)
    else:
        names = [c for c in frame.columns if c not in TABLE_HIDDEN]
    if "symbol" in names and len(result.symbols) <= 1:
        names.remove("symbol")
    return [
        c
        for c in names
        if not (frame[c].dtype == bool and not frame[c].any()) and not frame[c].isna().all()
    ]


def table_priorities(result: Result) -> list[int]:
    """How long each column of `table_rows` stays on a narrow terminal: 0 (the time) always,
    then lower numbers longer (`TABLE_KEEP`)."""
    names = _table_names(result)
    if not names:
        return []
    keep = TABLE_KEEP.get(_base_kind(result.request.kind))
    if keep is None:
        return [0, *range(1, len(names) + 1)]
    return [0, *(keep.index(n) + 1 if n in keep else len(keep) + 1 for n in names)]


def table_rows(result: Result) -> tuple[list[str], list[list[str]]]:
    """Header and cell texts of the preview: local time first (the zone in the header), then
    the columns that say something (a symbol column only for several symbols, flags only when
    one is set, no column that is blank in every row)."""
    frame = result.preview
    names = _table_names(result)
    if frame is None or not names:
        return [], []
    header = [f"time ({result.request.tz_name})", *(TABLE_LABELS.get(n, n) for n in names)]
    times = [t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}" for t in frame.index]
    columns = [[_cell(v) for v in _plain(frame[c])] for c in names]
    body = [[times[i], *(col[i] for col in columns)] for i in range(len(frame))]
    return header, body


def _cell(value: Any) -> str:
    """A table cell: missing values (None, NA, NaN) blank, as in CSV."""
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value).removesuffix(".0")
    if isinstance(value, dict | list):
        text = orjson.dumps(value).decode()
        return text if len(text) <= 40 else text[:39] + "…"
    return str(value)
