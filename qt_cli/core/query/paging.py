"""Ordered pages of a request (per symbol, merged in event-time order; `--as-of`), and the
DataFrame API on top of them (`query`, `frame_of`)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

import numpy as np
import pandas as pd

from qt_cli.core import keys
from qt_cli.core.chunks import STRING_COLUMNS, TickColumns
from qt_cli.core.events import (
    NS_PER_MS,
)
from qt_cli.core.gcpause import paused_gc
from qt_cli.core.query.frames import (
    _expand_features,
    _schema,
    _type_fields,
    entries_frame,
    ticks_frame,
    with_time_index,
)
from qt_cli.core.query.request import (
    AS_OF_FIRST_WINDOW_NS,
    AS_OF_GROWTH,
    GLOBAL_KINDS,
    Request,
    TimeInput,
    _base_kind,
    _stream_keys,
    make_request,
    resolve_symbols,
    time_field,
)
from qt_cli.core.store import reader

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
    if request.feature_set is not None:
        for frame, mark in _pages(client, request, stats=stats):
            yield _only_set(frame, request.feature_set), mark
        return
    yield from _pages(client, request, stats=stats)


def _only_set(frame: pd.DataFrame, set_name: str) -> pd.DataFrame:
    """The vectors of one feature set, each `features` object in the set's order (NaN where a
    vector lacks a name), so expanded columns come out in that order."""
    from qt_cli.core.features.catalog import feature_set

    names = feature_set(set_name)
    if "feature_set" in frame.columns:
        frame = frame[frame["feature_set"].astype(str) == set_name].reset_index(drop=True)
    if "features" in frame.columns:
        nan = float("nan")
        frame = frame.copy()
        frame["features"] = [
            {n: (f.get(n, nan) if isinstance(f, dict) else nan) for n in names}
            for f in frame["features"]
        ]
    return frame


def _pages(
    client: Any, request: Request, *, stats: Stats | None = None
) -> Iterator[tuple[pd.DataFrame, int]]:
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
    client: Any,
    stats: Stats | None = None,
    partial: bool = False,
    feature_set: str | None = None,
) -> pd.DataFrame:
    """A kind's stored rows as a DataFrame indexed by event time (tz-aware), in event-time order.

    `query("ticks", symbols="WDOQ25", start="2025-08-08T09:00", end="2025-08-08T10:00",
    client=store.connect_settings(config.load_settings()))`. Times are text (see timeparse), ns
    ints or aware datetimes; `client` is a Valkey client (`store.connect`). `partial` (candles)
    adds each symbol's candle still forming (`closed` false). `feature_set` (features): only that
    set's vectors, one float column per feature in the set's order after the other columns.
    """
    if isinstance(symbols, str):
        symbols = [symbols]
    request = make_request(
        kind,
        symbols=symbols,
        start=start,
        end=end,
        as_of=as_of,
        tz=tz,
        partial=partial,
        feature_set=feature_set,
    )
    return frame_of(client, request, stats=stats)


def frame_of(client: Any, request: Request, *, stats: Stats | None = None) -> pd.DataFrame:
    """query() for a resolved Request."""
    stats = stats if stats is not None else Stats()
    started = time.perf_counter()
    if request.kind == "ticks" and request.as_of_ns is None:
        with paused_gc():  # bulk columns: no cycles to find, and collections cost (gcpause.py)
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
            if request.feature_set is not None:
                frame = _set_columns(frame, request.feature_set)
    frame = with_time_index(frame, time_field(request.kind), request.tz)
    stats.rows = len(frame)
    stats.seconds = time.perf_counter() - started
    return frame


def _set_columns(frame: pd.DataFrame, set_name: str) -> pd.DataFrame:
    """Every feature of the set as a float column, in the set's order, after the others."""
    from qt_cli.core.features.catalog import feature_set

    names = list(feature_set(set_name))
    for name in names:
        if name not in frame.columns:
            frame[name] = np.full(len(frame), np.nan)
    others = [c for c in frame.columns if c not in set(names)]
    return frame[others + names]


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
