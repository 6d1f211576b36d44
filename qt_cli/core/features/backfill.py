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

import contextlib
import gc
import heapq
import multiprocessing
import operator
import pickle
import re
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import time_ns
from typing import Any

import orjson

from qt_cli.core import events, keys, query
from qt_cli.core.chunks import AGGRESSOR_NAMES
from qt_cli.core.errors import DataError, UsageError
from qt_cli.core.events import NS_PER_MS, NS_PER_S, BookUpdate, Trade
from qt_cli.core.features.engine import FeatureEngine, FeatureVector
from qt_cli.core.store import reader
from qt_cli.core.store.writer import event_values

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


_TRADE_DEFAULTS = {name: default for name, _, default in Trade._spec}


def _trade_rows(frame: Any) -> Iterator[tuple[int, int, int, tuple]]:
    """(time, TRADE, order, values) of a query ticks frame's trades (`Trade(*values)`)."""
    cols: dict[str, list] = {name: frame[name].to_numpy().tolist() for name in _TRADE_COLUMNS}
    cols["symbol"] = frame["symbol"].astype(str).tolist()
    cols["session"] = frame["session"].astype(str).tolist()
    codes = (frame["aggressor"].cat.codes.to_numpy() - 1).tolist()
    cols["aggressor"] = [AGGRESSOR_NAMES[code] for code in codes]
    n = len(cols["ts_event"])
    columns = [
        cols[name] if name in cols else [_TRADE_DEFAULTS[name]] * n for name, _, _ in Trade._spec
    ]
    for i, row in enumerate(zip(*columns, strict=True)):
        yield row[1], TRADE, i, row


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
    columns = []
    for name, typ, default in BookUpdate._spec:
        if name not in frame.columns:
            value = default() if callable(default) else default
            columns.append([value] * n)
            continue
        series = frame[name]
        if typ is float:
            columns.append(series.to_numpy(dtype=float).tolist())
        elif typ is str:
            columns.append(series.astype(str).tolist())
        elif typ is int:
            columns.append(series.fillna(default).astype("int64").to_numpy().tolist())
        else:  # levels: a list, or None where the entry had none
            columns.append([v if isinstance(v, list) else [] for v in series.tolist()])
    for i, row in enumerate(zip(*columns, strict=True)):
        event = BookUpdate(*row)
        yield event.ts_event, BOOK, i, event


_BOOK_TYPE = BookUpdate.TYPE.encode()
_ORDER = operator.itemgetter(0, 1)  # (event time, trade before book)
_NAN = float("nan")


_BOOK_FIELDS = tuple(name for name, _, _ in BookUpdate._spec)


def _book_row(fields: dict[bytes, bytes]) -> tuple | None:
    """A stored price-book entry as the values (`BookUpdate(*row)`) of the event `_books` makes
    of its query frame row, without the frame; None when a field is missing or unreadable
    (`_book_rows` then takes the frame way)."""
    get = fields.get
    try:
        price = get(b"price")
        raw_levels = get(b"levels")
        levels = orjson.loads(raw_levels) if raw_levels else []
        if not isinstance(levels, list):
            levels = []
        return (
            fields[b"symbol"].decode(errors="replace"),
            int(fields[b"ts_event"]),
            fields[b"side"].decode(errors="replace"),
            fields[b"action"].decode(errors="replace"),
            int(fields[b"position"]),
            float(price) if price else _NAN,
            int(fields[b"quantity"]),
            int(fields[b"count"]),
            int(fields[b"agent"]),
            int(fields[b"order_id"]),
            fields[b"book"].decode(errors="replace"),
            levels,
            int(fields[b"ts_init"]),
            fields[b"session"].decode(errors="replace"),
            int(fields[b"seq"]),
        )
    except (KeyError, ValueError, orjson.JSONDecodeError):
        return None


def _book_rows(client: Any, symbol: str, from_ns: int, to_ns: int) -> Iterator[tuple]:
    """The price-book events of the query API's book read (`query.pages`: its entries, order
    and per-field conversion, then `_books`) as `BookUpdate` values, read from the stream's
    entries directly: no DataFrame per page, no dict parsed by the client (the book has no
    columnar history, so this per-event read is what a backfill of a set using the book
    spends most on)."""
    key = keys.stream_key("book", symbol)
    if not client.exists(key):
        return
    for page in reader.iter_entries(
        client, key, from_ns, to_ns, time_field=query.time_field("book"), raw=True
    ):
        for entry in page.entries:
            fields = entry[1]
            if fields.get(b"type") != _BOOK_TYPE:  # top of book, another program's entry
                continue
            stamp = fields.get(b"ts_event")
            if not (stamp and stamp.lstrip(b"-").isdigit()):
                continue  # not a book entry to the query either
            row = _book_row(fields)
            if row is None:  # what the frame makes of a field missing or unreadable
                event = next(_books(query.entries_frame("book", [entry])))[3]
                row = tuple(getattr(event, name) for name in _BOOK_FIELDS)
            yield row


def _merged_book_rows(
    client: Any, symbols: Sequence[str], from_ns: int, to_ns: int
) -> Iterator[tuple]:
    """The book rows of several symbols in event-time order (at equal times, in `symbols`
    order: as `stored_events` merges them)."""
    sources = [_book_rows(client, symbol, from_ns, to_ns) for symbol in symbols]
    if len(sources) == 1:
        return sources[0]
    return heapq.merge(*sources, key=lambda row: row[1])


def _tick_rows(
    client: Any, symbol: str, from_ns: int, to_ns: int
) -> Iterator[tuple[int, int, int, tuple]]:
    """(time, TRADE, order, values) of a symbol's stored trades, through the query API."""
    if not client.exists(keys.stream_key("ticks", symbol)) and not client.exists(
        keys.history_key("ticks", symbol)
    ):
        return
    request = query.make_request("ticks", symbols=[symbol], start=from_ns, end=to_ns)
    offset = 0
    for frame, _ in query.pages(client, request):
        for ts, rank, i, row in _trade_rows(frame):
            yield ts, rank, offset + i, row
        offset += len(frame)


def _merged_rows(
    client: Any, symbols: Sequence[str], from_ns: int, to_ns: int, kinds: Sequence[str]
) -> Iterator[tuple[int, int, int, tuple]]:
    """(time, kind, order, values) of the symbols' trades and book events in engine order."""
    sources: list[Iterator[tuple[int, int, int, tuple]]] = []
    if "ticks" in kinds:
        sources += [_tick_rows(client, symbol, from_ns, to_ns) for symbol in symbols]
    if "book" in kinds:
        rows = _merged_book_rows(client, symbols, from_ns, to_ns)
        sources.append((row[1], BOOK, i, row) for i, row in enumerate(rows))
    return heapq.merge(*sources, key=_ORDER)


_EVENT_OF = {TRADE: Trade, BOOK: BookUpdate}


def _events_here(
    client: Any, symbols: Sequence[str], from_ns: int, to_ns: int, kinds: Sequence[str]
) -> Iterator[Trade | BookUpdate]:
    for _, kind, _, row in _merged_rows(client, symbols, from_ns, to_ns, kinds):
        yield _EVENT_OF[kind](*row)


# A read of more book entries than this is done by a helper process (`_events_aside`).
ASIDE_ENTRIES = 100_000
_ASIDE_BATCH = 2048


def _read_aside(
    client: Any,
    symbols: Sequence[str],
    from_ns: int,
    to_ns: int,
    kinds: Sequence[str],
    conn: Any,
    theirs: Any,
) -> None:
    """The helper process: the merged (kind, values) rows, pickled in batches down `conn`, then
    "end" (or the error that stopped it). Ctrl+C is the reading process's to handle: it stops
    this one. No cyclic garbage collection: this loop makes none, and a collection would walk
    (and copy, page by page) every object inherited from the reading process (a third of the
    helper's time). `theirs`, the reading process's end of the pipe, is closed first: held open
    here, a pipe to a reader killed with SIGKILL would fill up and block this one for ever."""
    theirs.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.disable()
    try:
        batch: list[tuple[int, tuple]] = []
        for _, kind, _, row in _merged_rows(client, symbols, from_ns, to_ns, kinds):
            batch.append((kind, row))
            if len(batch) >= _ASIDE_BATCH:
                conn.send_bytes(pickle.dumps(("rows", batch), protocol=pickle.HIGHEST_PROTOCOL))
                batch = []
        conn.send_bytes(pickle.dumps(("rows", batch), protocol=pickle.HIGHEST_PROTOCOL))
        conn.send_bytes(pickle.dumps(("end", None)))
    except Exception as exc:  # handed to the reading process, which raises it
        conn.send_bytes(pickled_error(exc, "reading the stored events"))
    finally:
        conn.close()


def pickled_error(exc: Exception, doing: str) -> bytes:
    """("error", exc) pickled down a helper process's pipe, for the reading side to raise; a
    DataError saying what the helper was `doing` when `exc` itself does not pickle."""
    try:
        return pickle.dumps(("error", exc))
    except Exception:
        return pickle.dumps(("error", DataError(f"{doing}: {exc}")))


def _events_aside(
    client: Any, symbols: Sequence[str], from_ns: int, to_ns: int, kinds: Sequence[str]
) -> Iterator[Trade | BookUpdate]:
    """`_events_here`, the reads, their decoding and merge done by a forked helper process (with
    its own connection: the client's pool reconnects in a forked child) on another core, while
    this one computes; the same events in the same order. The helper stops when this does."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    helper = context.Process(
        target=_read_aside,
        args=(client, symbols, from_ns, to_ns, kinds, sender, receiver),
        daemon=True,
    )
    helper.start()
    sender.close()
    make = _EVENT_OF
    try:
        while True:
            try:
                # Trusted: our own forked helper wrote it down a private pipe (never a file
                # or a socket), so unpickling it runs nothing the user did not already run.
                what, payload = pickle.loads(receiver.recv_bytes())  # trusted (see above)
            except EOFError:
                raise DataError(
                    "the process reading the stored events stopped before the end "
                    f"(exit code {helper.exitcode}); run the backfill again"
                ) from None
            if what == "end":
                return
            if what == "error":
                raise payload
            for kind, row in payload:
                yield make[kind](*row)
    finally:
        receiver.close()
        if helper.is_alive():
            helper.terminate()
        helper.join()


def _book_entries(client: Any, symbols: Sequence[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for symbol in symbols:
        pipe.xlen(keys.stream_key("book", symbol))
    return sum(int(n) for n in pipe.execute())


def stored_events(
    client: Any,
    symbols: Sequence[str],
    from_ns: int,
    to_ns: int,
    *,
    kinds: Sequence[str] = ("ticks", "book"),
    aside: bool | None = None,
) -> Iterator[Trade | BookUpdate]:
    """Stored trades and price-book events of `symbols` in [from_ns, to_ns], in engine order
    (`kinds`: leave out "book" for a set that uses no book feature). They are read, decoded and
    merged by a helper process on another core (`aside`) when the book is read and its streams
    hold more than `ASIDE_ENTRIES` entries (None), always (True) or never (False): the same
    events either way."""
    if aside is None:  # a helper process needs fork (not on Windows)
        aside = (
            "book" in kinds
            and "fork" in multiprocessing.get_all_start_methods()
            and _book_entries(client, symbols) > ASIDE_ENTRIES
        )
    read = _events_aside if aside else _events_here
    yield from read(client, symbols, from_ns, to_ns, tuple(kinds))


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


class Sampler:
    """The `--every` trigger, shared by the backfill and the live stage: `add` each event's time
    and the vector it produced (None for a book event or a rejected trade) with a `tag` (the live
    stage's input entry); it returns the (vector, tag) pairs kept. Every vector with period 0
    (`trade`); otherwise the last vector of each symbol's period, returned when an event of a
    later period arrives (`flush`: at the end of a range)."""

    def __init__(self, period_ns: int) -> None:
        self.period = period_ns
        self.held: dict[str, tuple[FeatureVector, Any]] = {}  # per symbol: the open period's last

    def add(
        self, ts: int, vector: FeatureVector | None, tag: Any = None
    ) -> list[tuple[FeatureVector, Any]]:
        period = self.period
        if not period:
            return [] if vector is None else [(vector, tag)]
        out: list[tuple[FeatureVector, Any]] = []
        if self.held:
            bucket = ts // period
            for symbol in [s for s, (v, _) in self.held.items() if v.ts_event // period < bucket]:
                out.append(self.held.pop(symbol))
        if vector is not None:
            self.held[vector.symbol] = (vector, tag)
        return out

    def flush(self) -> list[tuple[FeatureVector, Any]]:
        out = sorted(self.held.values(), key=lambda item: item[0].ts_event)
        self.held.clear()
        return out


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
    flush: bool = True,
) -> Iterator[FeatureVector]:
    """Vectors of `engine`'s set over the stored range, sampled by `every` (see the module doc).
    `flush=False` leaves out the last period's vector when no event of a later period closed it
    (a live stage writes that one only once its period closes)."""
    period = every_ns(every)
    stats = stats if stats is not None else BackfillStats()
    kinds = ("ticks", "book") if engine.uses_book else ("ticks",)
    source = (
        events
        if events is not None
        else stored_events(client, symbols, from_ns, to_ns, kinds=kinds)
    )
    sampler = Sampler(period)
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
        if not period:  # every trade's vector (what the sampler keeps for period 0)
            if vector is not None:
                yield _count(stats, vector)
        else:
            for kept, _ in sampler.add(ts, vector):
                yield _count(stats, kept)
        if stats.first_ns is None:
            stats.first_ns = ts
        stats.last_ns = ts
        if progress is not None and n % 4096 == 0:
            progress(ts, n)
    for kept, _ in sampler.flush() if flush else ():
        yield _count(stats, kept)
    stats.counters = dict(engine.counters)
    if progress is not None:
        progress(stats.last_ns or to_ns, n)


def _count(stats: BackfillStats, vector: FeatureVector) -> FeatureVector:
    stats.vectors += 1
    stats.warm_vectors += vector.warm
    return vector


# --- vectors out: the wire event and files ---------------------------------------------------------

OUTPUT_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
WRITE_BATCH = 20_000


def store_events(writer: Any, out: Sequence[events.FeatureVector]) -> tuple[int, int]:
    """Store vectors in their `stream:features:{SYM}` through the one writer path (`qt_append`,
    deduplicated on each vector's session/seq); also `timestamp_ms`, which the seed guide's
    readers take. Returns (written, duplicates); raises unless all were stored."""
    batches: dict[str, Any] = {}
    for event in out:
        key = keys.stream_key("features", event.symbol)
        batch = batches.get(key)
        if batch is None:
            batch = batches[key] = writer.batch(key)
        names, values = event_values(event)
        ms = event.ts_event // NS_PER_MS
        batch.add((*names, "timestamp_ms"), (*values, str(ms)), ms)
    written = duplicates = 0
    for result in writer.append_many(batches.values()):
        written += result.written
        duplicates += result.duplicates
    return written, duplicates


def write_stream(
    vectors: Iterator[FeatureVector], writer: Any, batch: int = 2_000
) -> tuple[int, int]:
    """Store backfilled vectors as the live stage does (`store_events`, `stream_identity`)."""
    written = duplicates = 0
    pending: list[events.FeatureVector] = []
    for vector in vectors:
        session, seq = stream_identity(vector)
        pending.append(to_event(vector, ts_init=time_ns(), session=session, seq=seq))
        if len(pending) >= batch:
            w, d = store_events(writer, pending)
            written, duplicates, pending = written + w, duplicates + d, []
    if pending:
        w, d = store_events(writer, pending)
        written, duplicates = written + w, duplicates + d
    return written, duplicates


def stream_identity(vector: FeatureVector) -> tuple[str, int]:
    """The (session, seq) the live stage stores `vector` under: derived from the trade it was
    computed at (`stage.derived.derived_identity` of that trade's entry)."""
    from qt_cli.core.stage.derived import derived_session

    trade = vector.lineage.get("trade") or {}
    session, seq = trade.get("session") or "", int(trade.get("seq") or 0)
    if not session or seq <= 0:
        raise UsageError(
            "the stored trades carry no session/seq (written by a seed-era tool): their vectors "
            "cannot take the live stage's identities; write them to a file with --output"
        )
    return derived_session("features", session), seq


def to_event(
    vector: FeatureVector, *, ts_init: int = 0, session: str = "", seq: int = 0
) -> events.FeatureVector:
    """The vector as the wire/stream event (`events.FeatureVector`), as the live stage stores it
    (with the identity it derives from the trade: `session`, `seq`)."""
    return events.FeatureVector(
        symbol=vector.symbol,
        ts_event=vector.ts_event,
        feature_set=vector.feature_set,
        catalog_hash=vector.catalog_version,
        features=dict(zip(vector.names, vector.values, strict=True)),
        reasons=vector.reasons,
        warm=vector.warm,
        ts_init=ts_init,
        session=session,
        seq=seq,
    )


def output_format(path: Path) -> str:
    found = OUTPUT_FORMATS.get(path.suffix.lower())
    if found is None:
        raise UsageError(
            f"--output {path}: use a .parquet, .csv or .jsonl file (the suffix picks the format)"
        )
    return found


@dataclass
class Written:
    """What `write_vectors` wrote."""

    rows: int = 0
    bytes: int = 0
    wire_bytes: int = 0  # sum of the orjson wire payloads (`events.FeatureVector.to_wire()`)


def write_vectors(
    vectors: Iterator[FeatureVector], path: Path, names: Sequence[str], *, fmt: str | None = None
) -> Written:
    """Write vectors to a file: parquet/csv rows (symbol, ts_event, time, feature_set,
    catalog_version, warm, then one float column per feature in the set's order), or jsonl
    lines of the wire event. Written in batches; the file is complete only when this returns."""
    fmt = fmt or output_format(path)
    written = Written()
    try:
        out = path.open("wb")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    writer: Any = None
    batch: list[FeatureVector] = []

    def flush() -> None:
        nonlocal writer
        if not batch:
            return
        if fmt == "jsonl":
            lines = [e.to_wire() for e in (to_event(v) for v in batch)]
            written.wire_bytes += sum(len(line) for line in lines)
            out.write(b"\n".join(lines) + b"\n")
        else:
            table = _arrow_batch(batch, names)
            if writer is None:
                import pyarrow.csv as pa_csv
                import pyarrow.parquet as pq

                if fmt == "parquet":
                    writer = pq.ParquetWriter(out, table.schema, compression="zstd")
                else:
                    writer = pa_csv.CSVWriter(out, table.schema)
            writer.write_table(table)
        written.rows += len(batch)
        batch.clear()

    try:
        for vector in vectors:
            batch.append(vector)
            if len(batch) >= WRITE_BATCH:
                flush()
        flush()
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:  # before its file: its finaliser would write to a closed one
            with contextlib.suppress(Exception):
                writer.close()
        raise
    finally:
        out.close()
    written.bytes = path.stat().st_size
    return written


def _arrow_batch(batch: list[FeatureVector], names: Sequence[str]) -> Any:
    import numpy as np
    import pyarrow as pa

    values = np.array([v.values for v in batch], dtype=np.float64).reshape(len(batch), len(names))
    ts = np.fromiter((v.ts_event for v in batch), dtype=np.int64, count=len(batch))
    columns: dict[str, Any] = {
        "symbol": pa.array([v.symbol for v in batch]).dictionary_encode(),
        "ts_event": pa.array(ts),
        "time": pa.array(ts.astype("datetime64[ns]"), type=pa.timestamp("ns", tz="UTC")),
        "feature_set": pa.array([v.feature_set for v in batch]).dictionary_encode(),
        "catalog_version": pa.array([v.catalog_version for v in batch]).dictionary_encode(),
        "warm": pa.array([v.warm for v in batch], type=pa.bool_()),
    }
    for i, name in enumerate(names):
        columns[name] = pa.array(values[:, i], type=pa.float64())
    return pa.table(columns)


def run(
    client: Any,
    *,
    symbols: Sequence[str],
    start: query.TimeInput,
    end: query.TimeInput,
    output: Path | None = None,
    writer: Any = None,
    set_name: str = "qt",
    every: str = DEFAULT_EVERY,
    tz: str | None = None,
    progress: Callable[[float, int], None] | None = None,
) -> dict[str, Any]:
    """`qt features --from … --to …`: vectors over stored history into a file (`output`) or into
    the features streams (`writer`, a StreamWriter: exactly once, under the live stage's
    identities; the last period's vector only once a later trade in the range closed it, as
    live); the summary."""
    import time

    request = query.make_request("ticks", symbols=symbols, start=start, end=end, tz=tz)
    if (output is None) == (writer is None):
        raise UsageError("a backfill writes to --output FILE or to --out valkey://…")
    fmt = output_format(output) if output is not None else "stream"
    every_ns(every)
    chosen = tuple(query.resolve_symbols(client, request))  # UsageError naming what is stored
    if not chosen:
        raise UsageError("no ticks stored yet: nothing to compute (qt bridge stores them)")
    from qt_cli.core.features.history import StoredHistory

    engine = FeatureEngine(set_name, history=StoredHistory(client), symbols=chosen)
    stats = BackfillStats()
    span = max(1, request.to_ns - request.from_ns)

    def on_progress(ts: int, n: int) -> None:
        if progress is not None:
            progress(min(1.0, max(0.0, (ts - request.from_ns) / span)), stats.vectors)

    started = time.perf_counter()
    vectors = backfill(
        client,
        chosen,
        request.from_ns,
        request.to_ns,
        engine=engine,
        every=every,
        stats=stats,
        progress=on_progress,
        flush=writer is None,
    )
    stored = (0, 0)
    if output is not None:
        written = write_vectors(vectors, output, engine.names, fmt=fmt)
    else:
        written = Written()
        stored = write_stream(vectors, writer)
    seconds = time.perf_counter() - started
    return {
        "symbols": list(chosen),
        "from": request.from_ns,
        "to": request.to_ns,
        "range": request.describe(),
        "feature_set": set_name,
        "catalog_version": engine.version,
        "every": every,
        "trades": stats.trades,
        "book_events": stats.book_events,
        "vectors": stats.vectors,
        "warm_vectors": stats.warm_vectors,
        "first_ns": stats.first_ns,
        "last_ns": stats.last_ns,
        "output": str(output) if output is not None else keys.stream_key("features", "SYMBOL"),
        "format": fmt,
        "bytes": written.bytes,
        "written": stored[0] if writer is not None else written.rows,
        "duplicates": stored[1],
        "seconds": round(seconds, 3),
        "events_per_s": round((stats.trades + stats.book_events) / seconds, 1) if seconds else None,
        "counters": stats.counters,
    }
