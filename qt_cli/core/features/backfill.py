"""Feature vectors over stored history: `qt features --from … --to … --symbol …`.

`stored_events` reads a symbol's trades and price-book events through the query API
(`qt_cli.core.query.pages`, which merges chunks, the per-event tail and late entries into
event-time order) and merges the two kinds into the one order the engine is fed in, the order the
live stage receives them in:

    (ts_event, kind, stored order)   with kind 0 = trade, 1 = book event

i.e. by event time; at equal event times trades come before book events (the book event a trade
caused carries the trade's time, and the trade is what happened first at the venue); within one
kind, the order the query returns (its stored order, which is the feed's order). Several symbols
are merged by the same rule (the engine keeps one state per symbol, so their interleaving does
not change any value).

`backfill` feeds those events to a `FeatureEngine` and yields the vectors the trigger keeps
(`--every`): every trade's vector (`trade`), or the last vector of each period of event time
(`1m` candle periods, `250ms`, `1s`, …), emitted when an event of a later period arrives (or the
range ends), as a live stage emitting on a timer would.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from qt_cli.core import keys, query
from qt_cli.core.chunks import AGGRESSOR_NAMES
from qt_cli.core.errors import UsageError
from qt_cli.core.events import NS_PER_MS, NS_PER_S, BookUpdate, Trade
from qt_cli.core.features.engine import FeatureEngine, FeatureVector

TRADE, BOOK = 0, 1
DEFAULT_EVERY = "1s"
EVERY_HELP = "trade, candle (1m), or a period: 250ms, 1s, 5s, 1m"
_PERIOD_RE = re.compile(r"^(\d+)(ms|s|m)$")
_UNIT_NS = {"ms": NS_PER_MS, "s": NS_PER_S, "m": 60 * NS_PER_S}

Progress = Callable[[int, int], None]  # (ts_event of the last event, events so far)


def every_ns(every: str) -> int:
    """The trigger's period in ns; 0 for `trade`. UsageError for anything else."""
    text = every.strip().lower()
    if text == "trade":
        return 0
    if text == "candle":
        return 60 * NS_PER_S
    m = _PERIOD_RE.match(text)
    if m and int(m.group(1)) > 0:
        return int(m.group(1)) * _UNIT_NS[m.group(2)]
    raise UsageError(f"--every {every!r}: use {EVERY_HELP}")


def _trades(frame: Any) -> Iterator[tuple[int, int, int, Trade]]:
    cols = {name: frame[name].to_numpy().tolist() for name in _TRADE_COLUMNS}
    cols["symbol"] = frame["symbol"].astype(str).tolist()
    cols["session"] = frame["session"].astype(str).tolist()
    aggressor = (frame["aggressor"].cat.codes.to_numpy() - 1).tolist()
    for i, ts in enumerate(cols["ts_event"]):
        yield (
            ts,
            TRADE,
            i,
            Trade(
                symbol=cols["symbol"][i],
                ts_event=ts,
                price=cols["price"][i],
                quantity=cols["quantity"][i],
                volume=cols["volume"][i],
                trade_id=cols["trade_id"][i],
                buyer=cols["buyer"][i],
                seller=cols["seller"][i],
                trade_type=cols["trade_type"][i],
                aggressor=AGGRESSOR_NAMES[aggressor[i]],
                is_edit=cols["is_edit"][i],
                history=cols["history"][i],
                ts_init=cols["ts_init"][i],
                session=cols["session"][i],
                seq=cols["seq"][i],
            ),
        )


_TRADE_COLUMNS = (
    "ts_event",
    "price",
    "quantity",
    "volume",
    "trade_id",
    "buyer",
    "seller",
    "trade_type",
    "is_edit",
    "history",
    "ts_init",
    "seq",
)


def _books(frame: Any) -> Iterator[tuple[int, int, int, BookUpdate]]:
    if "type" in frame.columns:
        frame = frame[frame["type"].astype(str) == BookUpdate.TYPE]
    n = len(frame)
    if not n:
        return
    cols = {}
    for name, _, _default in BookUpdate._spec:
        if name in frame.columns:
            cols[name] = frame[name].astype(object).where(frame[name].notna(), None).tolist()
        else:
            cols[name] = [None] * n
    for i in range(n):
        args = {}
        for name, _, default in BookUpdate._spec:
            value = cols[name][i]
            if value is None:
                value = default() if callable(default) else default
            args[name] = value
        args["symbol"] = str(args["symbol"])
        if args["price"] is None:
            args["price"] = float("nan")
        event = BookUpdate(**args)
        yield event.ts_event, BOOK, i, event


def _kind_events(
    client: Any, kind: str, symbol: str, from_ns: int, to_ns: int
) -> Iterator[tuple[int, int, int, Any]]:
    if not client.exists(keys.stream_key(kind, symbol)) and not (
        kind == "ticks" and client.exists(keys.history_key("ticks", symbol))
    ):
        return
    request = query.make_request(kind, symbols=[symbol], start=from_ns, end=to_ns)
    offset = 0
    convert = _trades if kind == "ticks" else _books
    for frame, _ in query.pages(client, request):
        for ts, rank, i, event in convert(frame):
            yield ts, rank, offset + i, event
        offset += len(frame)


def stored_events(
    client: Any, symbols: Sequence[str], from_ns: int, to_ns: int
) -> Iterator[Trade | BookUpdate]:
    """Stored trades and price-book events of `symbols` in [from_ns, to_ns], in engine order."""
    sources = [
        _kind_events(client, kind, symbol, from_ns, to_ns)
        for symbol in symbols
        for kind in ("ticks", "book")
    ]
    for _, _, _, event in heapq.merge(*sources, key=lambda item: (item[0], item[1])):
        yield event


@dataclass
class BackfillStats:
    """What a backfill read and produced."""

    trades: int = 0
    book_events: int = 0
    vectors: int = 0
    warm_vectors: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    counters: dict[str, int] = field(default_factory=dict)


def backfill(
    client: Any,
    symbols: Sequence[str],
    from_ns: int,
    to_ns: int,
    *,
    engine: FeatureEngine,
    every: str = DEFAULT_EVERY,
    stats: BackfillStats | None = None,
    progress: Progress | None = None,
    events: Iterator[Trade | BookUpdate] | None = None,
) -> Iterator[FeatureVector]:
    """Vectors of `engine`'s set over the stored range, sampled by `every` (see the module doc)."""
    period = every_ns(every)
    stats = stats if stats is not None else BackfillStats()
    source = events if events is not None else stored_events(client, symbols, from_ns, to_ns)
    held: dict[str, FeatureVector] = {}  # per symbol: the latest vector of the open period
    n = 0
    for event in source:
        n += 1
        ts = event.ts_event
        if isinstance(event, Trade):
            stats.trades += 1
            vector = engine.on_trade(event)
        else:
            stats.book_events += 1
            engine.on_book(event)
            vector = None
        if period:
            bucket = ts // period
            for symbol in [s for s, v in held.items() if v.ts_event // period < bucket]:
                yield _count(stats, held.pop(symbol))
            if vector is not None:
                held[vector.symbol] = vector
        elif vector is not None:
            yield _count(stats, vector)
        if stats.first_ns is None:
            stats.first_ns = ts
        stats.last_ns = ts
        if progress is not None and n % 4096 == 0:
            progress(ts, n)
    for vector in sorted(held.values(), key=lambda v: v.ts_event):
        yield _count(stats, vector)
    stats.counters = dict(engine.counters)
    if progress is not None:
        progress(stats.last_ns or to_ns, n)


def _count(stats: BackfillStats, vector: FeatureVector) -> FeatureVector:
    stats.vectors += 1
    stats.warm_vectors += vector.warm
    return vector
