"""The live features stage: `qt features --in valkey://… --symbol SYM --set qt --every 1s --out …`.

Reads trades and price-book events (`--in valkey://…`: the symbols' per-event streams, from their
start), merges them in the backfill's order (event time; trades before book events at equal
times; stored order: `Merge`), feeds the incremental engine and keeps the vectors the trigger
keeps (`backfill.Sampler`, the backfill's `--every`). So a live run and a backfill of the same
stored range give the same vectors.

Exactly once: each vector is stored in `stream:features:{SYM}` with an identity derived from the
trade that produced it (`stage.derived.derived_identity`: session `features.<input session>`, the
trade's seq), through the one writer path (`qt_append`, per-session high-water marks). The stage
reads its input from the start of the streams, so its state after a restart is the state it had:
it recomputes the same vectors, and those already stored are skipped (counted in `duplicates`),
none is skipped. A vector whose period is still open when the stage stops is not written (the
next run writes it once the period closes).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import operator
import os
import pickle
import signal
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qt_cli.core import keys
from qt_cli.core.errors import DataError
from qt_cli.core.events import BookUpdate, Trade, skip_types
from qt_cli.core.features.backfill import (
    Sampler,
    every_ns,
    pickled_error,
    store_events,
    to_event,
)
from qt_cli.core.features.engine import FeatureEngine, FeatureVector
from qt_cli.core.gcpause import streaming_gc
from qt_cli.core.records import DEFAULT_MAX_MESSAGE_BYTES
from qt_cli.core.stage.derived import derived_identity
from qt_cli.core.stage.inputs import ZmqInput
from qt_cli.core.stage.lifecycle import StopFlag
from qt_cli.core.stage.stats import RateMeter, StatsPublisher
from qt_cli.core.store import ConnectionFailure
from qt_cli.core.store.reader import SourceEntry
from qt_cli.core.store.writer import StreamWriter

STAGE = "features"
TRADE, BOOK = 0, 1
BACKOFF_MAX_S = 5.0
# The event types of the ticks and book streams the stage does not use (top of book): read as
# positions only (`events.Passed`), not decoded.
UNUSED = skip_types(("ticks", "book"), (Trade, BookUpdate))
# Entries one symbol's merge may hold before the streams read ahead of the others pause (a
# catch-up from the start of a day reads the ticks ~3.6 times faster than the book it waits for).
HOLD_MAX = 10_000


class Merge:
    """Trades and book events of one symbol, from their two streams, released in the backfill's
    order: (event time, trade before book, stored order). An entry is released once every other
    followed stream has reached a later position: a stream's entries come in event-time order, so
    nothing that sorts before it can arrive after. Held entries are kept as one list sorted at
    release (runs of each stream, merged by the sort in one pass), not a heap: a push and a pop
    per entry cost three times as much."""

    def __init__(self, kinds: Sequence[int]) -> None:
        self.last: dict[int, int] = dict.fromkeys(kinds, -1)  # per kind: last event time read
        self.held: list[tuple[int, int, int, SourceEntry]] = []
        self.n = 0
        self._kept = {TRADE: Trade, BOOK: BookUpdate}

    def add(self, kind: int, entry: SourceEntry) -> None:
        """An entry of stream `kind`: held when it is a trade (ticks) or a price-book event (book);
        any other event there (top of book, daily, state) only moves the stream's position."""
        event = entry.event
        ts = event.ts_event
        if ts > self.last[kind]:
            self.last[kind] = ts
        if isinstance(event, self._kept[kind]):
            self.n += 1
            self.held.append((ts, kind, self.n, entry))

    def ahead(self) -> list[int]:
        """The followed streams read further in event time than the one read least far."""
        low = min(self.last.values())
        return [kind for kind, last in self.last.items() if last > low]

    def release(self) -> list[tuple[int, SourceEntry]]:
        held = self.held
        if not held:
            return []
        held.sort()  # (time, kind, stored order): the order they are released in
        last = self.last
        if len(last) == 1:
            n = len(held)
        else:
            # An entry (time, kind) goes when it sorts before (position, other kind) of every
            # other stream: nothing that sorts before it can come from there any more.
            bound = {k: min((t, o) for o, t in last.items() if o != k) for k in last}
            n = 0
            for ts, kind, _, _ in held:
                b = bound[kind]
                if ts < b[0] or (ts == b[0] and kind < b[1]):
                    n += 1
                else:
                    break
        out = [(item[1], item[3]) for item in held[:n]]
        del held[:n]
        return out

    def __len__(self) -> int:
        return len(self.held)


class SharedInput:
    """`--group/--consumer`: the symbols this worker holds (`share.SymbolShare`), each read from
    the start of its streams when taken; `on_drop(symbol)` when one is given back or lost."""

    def __init__(
        self,
        share: Any,
        open_symbol: Callable[[str], Any],
        on_drop: Callable[[str], None],
        *,
        interval_s: float,
    ) -> None:
        self.share = share
        self.open_symbol = open_symbol
        self.on_drop = on_drop
        self.interval_s = interval_s
        self.sources: dict[str, Any] = {}
        self.rejected = 0
        self._next = 0.0

    def read_entries(self, timeout_s: float) -> list[SourceEntry]:
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + self.interval_s
            held = self.share.update()
            for symbol in [s for s in self.sources if s not in held]:
                self.drop(symbol)
            for symbol in held:
                if symbol not in self.sources:
                    self.sources[symbol] = self.open_symbol(symbol)
        if not self.sources:
            time.sleep(min(timeout_s, self.interval_s))
            return []
        out: list[SourceEntry] = []
        wait = timeout_s / len(self.sources)
        for source in self.sources.values():
            out += source.read_entries(wait)
        self.rejected = sum(getattr(x, "rejected", 0) for x in self.sources.values())
        return out

    def drop(self, symbol: str) -> None:
        source = self.sources.pop(symbol, None)
        if source is not None:
            source.close()
        self.on_drop(symbol)

    def close(self) -> None:
        for source in self.sources.values():
            source.close()
        self.sources.clear()
        try:
            self.share.leave()
        finally:
            self.share.client.close()


class MergedReader:
    """An input's trades and price-book events, merged per symbol (`Merge`) and released in the
    engine's order. A stream read far ahead of the one it waits for pauses (`HOLD_MAX`)."""

    def __init__(self, source: Any, symbols: Sequence[str], kinds: Sequence[int]) -> None:
        self.source = source
        self.kinds = tuple(kinds)
        self.received = 0
        self._merges = {symbol: Merge(self.kinds) for symbol in symbols}
        self._kind = {keys.stream_key("ticks", s): (s, TRADE) for s in symbols}
        self._kind.update({keys.stream_key("book", s): (s, BOOK) for s in symbols})
        self._key_of = {found: key for key, found in self._kind.items()}

    @property
    def rejected(self) -> int:
        return getattr(self.source, "rejected", 0)

    @property
    def share(self) -> Any:
        return getattr(self.source, "share", None)

    def read(self, timeout_s: float) -> list[tuple[int, SourceEntry]]:
        paused = getattr(self.source, "paused", None)
        if paused is not None:  # a stream far ahead waits in Valkey, not here (catching up)
            paused.clear()
            for symbol, merge in self._merges.items():
                if len(merge) >= HOLD_MAX:
                    paused.update(self._key_of[(symbol, kind)] for kind in merge.ahead())
        entries = self.source.read_entries(timeout_s)
        self.received += len(entries)
        kind_of = self._kind
        merges = self._merges
        for entry in entries:
            found = kind_of.get(entry.key)
            if found is not None:
                merges[found[0]].add(found[1], entry)
        released: list[tuple[int, SourceEntry]] = []
        for merge in merges.values():
            released += merge.release()
        return released

    def waiting(self) -> int:
        return sum(len(m) for m in self._merges.values())

    def forget(self, symbol: str) -> None:
        self._merges[symbol] = Merge(self.kinds)

    def close(self) -> None:
        self.source.close()


# What the stage makes of the helper's value tuples: tuples that read their fields by name as the
# engine reads an event's (one C call each, where making the event costs a slot setter call per
# field: ~1.4 us per book event). The helper sends an event's values in the same order.
_NAMES = {kind: [n for n, _, _ in cls._spec] for kind, cls in ((TRADE, Trade), (BOOK, BookUpdate))}
_VALUES = {kind: operator.attrgetter(*names) for kind, names in _NAMES.items()}
TradeRow = namedtuple("TradeRow", _NAMES[TRADE])  # type: ignore[misc]
BookRow = namedtuple("BookRow", _NAMES[BOOK])  # type: ignore[misc]


def _read_aside(reader: MergedReader, conn: Any, parent: int, theirs: Any) -> None:
    """The helper process of `AsideReader`: reads, decodes and merges (the client's pool opens
    its own connection in a forked process), and sends what it releases down `conn` as plain
    values (pickled tuples: a tenth of the cost of pickling events), with the counts the stage
    reports. It stops when the stage does (the pipe closes, or its parent is gone). `theirs`,
    the stage's end of the pipe, is closed here first: held open here, a pipe to a stage killed
    with SIGKILL would fill up and block this process for ever instead of breaking."""
    theirs.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    backoff = 0.1
    with streaming_gc():  # what the stage's process had built is frozen (copied page by page)
        try:
            values = _VALUES
            counts = (-1, -1, -1)
            while os.getppid() == parent:
                try:
                    released = reader.read(0.2)
                except ConnectionFailure as exc:
                    conn.send_bytes(pickle.dumps(("outage", str(exc))))
                    time.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                backoff = 0.1
                now = (reader.received, reader.rejected, reader.waiting())
                if not released and now == counts:
                    continue
                counts = now
                items = [
                    (kind, entry.key, entry.id, values[kind](entry.event))
                    if kind == TRADE
                    else (kind, values[kind](entry.event))
                    for kind, entry in released
                ]
                conn.send_bytes(
                    pickle.dumps(("rows", now, items), protocol=pickle.HIGHEST_PROTOCOL)
                )
        except (BrokenPipeError, EOFError, KeyboardInterrupt):
            pass  # the stage stopped
        except Exception as exc:  # handed to the stage, which raises it
            with contextlib.suppress(OSError):
                conn.send_bytes(pickled_error(exc, "reading the streams"))
        finally:
            with contextlib.suppress(Exception):
                reader.close()
            conn.close()


class AsideReader:
    """A `MergedReader` run by a forked helper process on the other core (`--in valkey://…`
    without a group): XREAD, decoding and the merge there, the engine here; the same entries in
    the same order. `reader` is opened here (a bad endpoint is an error here, at start) and used
    only by the helper from then on. A Valkey outage there is raised here as a connection
    failure (the stage's outage handling); the helper keeps retrying."""

    def __init__(self, reader: MergedReader) -> None:
        context = multiprocessing.get_context("fork")
        self._conn, sender = context.Pipe(duplex=False)
        self._helper = context.Process(
            target=_read_aside, args=(reader, sender, os.getpid(), self._conn), daemon=True
        )
        self._helper.start()
        sender.close()
        self._opened = reader  # the helper's now: closed here only to free this side's sockets
        self.received = 0
        self.rejected = 0
        self._waiting = 0
        self.share = None
        self._held: tuple[Any, ...] | None = None  # an outage or error after rows: said next

    def read(self, timeout_s: float) -> list[tuple[int, Any]]:
        """The released (kind, entry) pairs, the entries holding `TradeRow`s and `BookRow`s."""
        conn = self._conn
        out: list[tuple[int, Any]] = []
        if self._held is None and not conn.poll(timeout_s):
            return out
        new = tuple.__new__
        while True:
            message, self._held = self._held, None
            if message is None:
                try:
                    # Trusted: our own forked helper wrote it down a private pipe (never a file
                    # or a socket), so unpickling it runs nothing the user did not already run.
                    message = pickle.loads(conn.recv_bytes())  # trusted (see above)
                except EOFError:
                    if out:
                        return out  # the next read says it
                    raise DataError(
                        "the process reading the streams stopped "
                        f"(exit code {self._helper.exitcode}); start the stage again"
                    ) from None
            what = message[0]
            if what != "rows":
                if out:  # what came before goes first; the next read says it
                    self._held = message
                    return out
                if what == "outage":
                    raise ConnectionError(message[1])  # a ConnectionFailure: the stage retries
                raise message[1]
            self.received, self.rejected, self._waiting = message[1]
            for item in message[2]:
                if item[0] == TRADE:
                    trade = new(TradeRow, item[3])
                    out.append((TRADE, new(SourceEntry, (item[1], item[2], trade, False))))
                else:
                    out.append((BOOK, new(SourceEntry, ("", "", new(BookRow, item[1]), False))))
            if len(out) >= HOLD_MAX or not conn.poll(0):
                return out

    def waiting(self) -> int:
        return self._waiting

    def forget(self, symbol: str) -> None:  # no group here: symbols are never given back
        pass

    def close(self) -> None:
        self._conn.close()
        with contextlib.suppress(Exception):
            self._opened.close()
        helper = self._helper
        helper.join(2.0)
        if helper.is_alive():
            helper.terminate()
            helper.join()


def aside_possible() -> bool:
    """A helper process needs fork (not on Windows)."""
    return "fork" in multiprocessing.get_all_start_methods()


@dataclass
class LiveStats:
    trades: int = 0
    book_events: int = 0
    vectors: int = 0  # kept by the trigger
    written: int = 0
    duplicates: int = 0
    not_warm: int = 0
    received: int = 0
    rejected: int = 0
    outages: int = 0
    lag_ms: float | None = None
    last_event_ns: int = 0
    stopped_by: str = ""
    counters: dict[str, int] = field(default_factory=dict)


class LiveFeatures(StopFlag):
    """The stage: `open`/`run`/`stop`/`close` for `stage.run_stage`; `totals()` at the end."""

    def __init__(
        self,
        source: Any,
        writer: StreamWriter | None,
        *,
        engine: FeatureEngine,
        symbols: Sequence[str],
        every: str = "1s",
        name: str = "features",
        sinks: Sequence[Any] = (),
        stats_client: Any | None = None,
        duration_s: float | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.writer = writer
        self.engine = engine
        self.symbols = tuple(symbols)
        self.sampler = Sampler(every_ns(every))
        self.every = every
        self.name = name
        self.sinks = list(sinks)
        self.duration_s = duration_s
        self.warn = warn or (lambda _m: None)
        self.stats = LiveStats()
        client = stats_client if stats_client is not None else (writer.client if writer else None)
        self.publisher = StatsPublisher(client, STAGE, name) if client is not None else None
        self._rate = RateMeter()
        self._stop = threading.Event()
        self._closed = False
        kinds = (TRADE, BOOK) if engine.uses_book else (TRADE,)
        self.reader = (
            source
            if isinstance(source, MergedReader | AsideReader)
            else MergedReader(source, self.symbols, kinds)
        )

    def forget(self, symbol: str) -> None:
        """A symbol given back (`--group`): its state goes; taken again, it starts from the start."""
        self.reader.forget(symbol)
        self.engine.symbols.pop(symbol, None)
        self.sampler.held.pop(symbol, None)

    # -- lifecycle --

    def open(self) -> None:
        """Nothing to open: the source, writer and sinks come open."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sink in self.sinks:
            sink.close()
        self.reader.close()

    def run(self) -> LiveStats:
        started = time.monotonic()
        backoff = 0.1
        while not self._stop.is_set():
            if self.duration_s is not None and time.monotonic() - started >= self.duration_s:
                self.stop("duration")
                break
            try:
                self._step()
            except ConnectionFailure as exc:
                if self.stats.outages == 0:
                    self.warn(f"features {self.name}: Valkey unreachable ({exc}); retrying")
                self.stats.outages += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = 0.1
        if self.publisher is not None:
            try:
                self.publish_stats()
            except ConnectionFailure:
                pass
        return self.stats

    # -- one step: read, merge, compute, write --

    def _step(self) -> None:
        reader = self.reader
        released = reader.read(0.2)
        stats = self.stats
        stats.received = reader.received
        stats.rejected = reader.rejected
        kept: list[tuple[FeatureVector, SourceEntry]] = []
        engine, sampler = self.engine, self.sampler
        every_trade = not sampler.period
        trades = 0
        for kind, entry in released:  # held entries are trades or book updates
            event = entry.event
            if kind == TRADE:
                trades += 1
                vector = engine.on_trade(event)  # type: ignore[arg-type]
                if every_trade:  # Sampler.add without the call
                    if vector is not None:
                        kept.append((vector, entry))
                else:
                    kept += sampler.add(event.ts_event, vector, entry)
            else:
                engine.on_book(event)  # type: ignore[arg-type]
                if not every_trade:
                    kept += sampler.add(event.ts_event, None)
        stats.trades += trades
        stats.book_events += len(released) - trades
        if kept:
            self._emit(kept)
        if self.publisher is not None and self.publisher.due():
            self.publish_stats()

    def _emit(self, kept: list[tuple[FeatureVector, SourceEntry]]) -> None:
        share = self.reader.share
        if share is not None:  # a symbol whose lease was lost is another worker's now
            mine = {v.symbol for v, _ in kept if share.holds(v.symbol)}
            kept = [(v, e) for v, e in kept if v.symbol in mine]
            if not kept:
                return
        if self.writer is not None or self.sinks:  # computing only (neither): no event built
            self._send(kept)
        stats = self.stats
        stats.vectors += len(kept)
        stats.not_warm += sum(1 for v, _ in kept if not v.warm)
        stats.last_event_ns = max(stats.last_event_ns, kept[-1][0].ts_event)
        stats.lag_ms = max(time.time_ns() - stats.last_event_ns, 0) / 1e6

    def _send(self, kept: list[tuple[FeatureVector, SourceEntry]]) -> None:
        """The kept vectors as events, each with the identity derived from its trade, stored
        once (`--out valkey://…`) and sent to the other outputs."""
        now = time.time_ns()
        out = []
        for vector, entry in kept:
            session, seq = derived_identity(STAGE, entry)
            out.append(to_event(vector, ts_init=now, session=session, seq=seq))
        if self.writer is not None:
            written, duplicates = store_events(self.writer, out)  # raises unless all stored
            self.stats.written += written
            self.stats.duplicates += duplicates
        for sink in self.sinks:
            sink.send(out)

    def publish_stats(self) -> None:
        assert self.publisher is not None
        s = self.stats
        fields = self.publisher.common(
            received=s.received,
            written=s.written,
            rate=self._rate.update(s.vectors),
            lag_ms=s.lag_ms,
        )
        fields.update(
            vectors=str(s.vectors),
            duplicates=str(s.duplicates),
            rejected=str(s.rejected),
            not_warm=str(s.not_warm),
            feature_set=self.engine.set_name,
            every=self.every,
            symbols=",".join(self._held()),
        )
        self.publisher.publish(fields)

    def _held(self) -> list[str]:
        share = self.reader.share
        return list(share.held) if share is not None else list(self.symbols)

    def totals(self) -> dict[str, Any]:
        s = self.stats
        return {
            "stage": STAGE,
            "name": self.name,
            "symbols": list(self.symbols),
            "held": self._held(),
            "every": self.every,
            "received": s.received,
            "trades": s.trades,
            "book_events": s.book_events,
            "vectors": s.vectors,
            "written": s.written,
            "duplicates": s.duplicates,
            "not_warm": s.not_warm,
            "rejected": s.rejected,
            "waiting": self.reader.waiting() + len(self.sampler.held),
            "outages": s.outages,
            "counters": dict(self.engine.counters),
            "stopped_by": s.stopped_by or "end",
        }


def open_live(
    inputs: Sequence[str],
    outputs: Sequence[str],
    *,
    symbols: Sequence[str],
    set_name: str = "qt",
    every: str = "1s",
    name: str = "features",
    password: str = "",
    maxlen: int = 0,
    duration_s: float | None = None,
    replay: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    group: str | None = None,
    consumer: str | None = None,
    warn: Callable[[str], None] | None = None,
    aside: bool | None = None,
) -> LiveFeatures:
    """The stage for `qt features --in … --out …`: one Valkey input (the stored streams, from their
    start) or ZeroMQ inputs (the feed's channels, from now; gaps recovered from `replay`, the
    feed's replay endpoint); Valkey and ZeroMQ outputs. `aside`: a Valkey input without a group
    is read by a helper process (`AsideReader`; default: where fork exists)."""
    from qt_cli.core import store
    from qt_cli.core.endpoints import parse_endpoint
    from qt_cli.core.errors import UsageError
    from qt_cli.core.io import open_sink, open_source

    if not symbols:
        raise UsageError("the live stage needs --symbol, e.g. --symbol WDOQ25")
    every_ns(every)
    ins = [parse_endpoint(x) for x in inputs]
    zmq_in = all(x.kind == "zmq" for x in ins)
    if not ins or not (zmq_in or (len(ins) == 1 and ins[0].kind == "valkey")):
        raise UsageError(
            "the live features stage reads one --in valkey://… (the streams qt bridge writes) "
            "or the feed's --in tcp://… channels (ticks and book)"
        )
    outs = [parse_endpoint(x) for x in outputs] or ([] if zmq_in else [ins[0]])
    stores = [o for o in outs if o.kind == "valkey"]
    if len(stores) > 1:
        raise UsageError("give at most one --out valkey://…")
    if not outs:
        raise UsageError("with --in tcp://…, give --out valkey://… and/or --out tcp://…")
    engine = FeatureEngine(set_name, symbols=tuple(symbols))
    kinds = ("ticks", "book") if engine.uses_book else ("ticks",)
    source: Any
    if group and (zmq_in or not consumer):
        raise UsageError(
            "--group shares the symbols of a --in valkey://… between workers: give --consumer "
            "NAME too (each worker its own)"
        )
    if group:
        from qt_cli.core.features.share import SymbolShare

        share = SymbolShare(
            store.connect(ins[0], password=password), group, consumer or "", symbols
        )

        def open_symbol(symbol: str) -> Any:
            return open_source(
                ins[0],
                symbols=[symbol],
                kinds=kinds,
                start="0",
                password=password,
                skip=UNUSED,
            )

        dropped: list[LiveFeatures] = []
        source = SharedInput(
            share,
            open_symbol,
            lambda symbol: dropped[0].forget(symbol),
            interval_s=share.ttl_ms / 3000,
        )
    elif zmq_in:
        source = ZmqInput(
            [
                open_source(
                    x,
                    symbols=symbols,
                    replay=replay,
                    max_message_bytes=max_message_bytes,
                    skip=UNUSED,
                )
                for x in ins
            ],
            symbols,
        )
    else:
        source = valkey_input(ins[0], symbols, kinds, password=password, aside=aside)
    writer = (
        StreamWriter(store.connect(stores[0], password=password), maxlen=maxlen) if stores else None
    )
    stats_client = (
        None if writer is not None or zmq_in else store.connect(ins[0], password=password)
    )
    sinks = [open_sink(o, keep_identity=True) for o in outs if o.kind != "valkey"]
    stage = LiveFeatures(
        source,
        writer,
        engine=engine,
        symbols=symbols,
        every=every,
        name=consumer if group and consumer else name,
        sinks=sinks,
        stats_client=stats_client,
        duration_s=duration_s,
        warn=warn,
    )
    if group:
        dropped.append(stage)
    return stage


def valkey_input(
    endpoint: Any,
    symbols: Sequence[str],
    kinds: Sequence[str],
    *,
    password: str = "",
    aside: bool | None = None,
) -> MergedReader | AsideReader:
    """`--in valkey://…` without a group: the symbols' streams from their start, merged; read by a
    helper process (`AsideReader`) when `aside` (default: where fork exists), else here."""
    from qt_cli.core.io import open_source

    merge_kinds = tuple(TRADE if kind == "ticks" else BOOK for kind in kinds)

    source = open_source(
        endpoint,
        symbols=symbols,
        kinds=kinds,
        start="0",
        password=password,
        skip=UNUSED,
    )
    reader = MergedReader(source, symbols, merge_kinds)
    if aside is None:
        aside = aside_possible()
    return AsideReader(reader) if aside else reader


def summary_line(t: dict[str, Any]) -> str:
    """The one line printed when the stage stops."""
    return (
        f"features {t['name']} stopped ({t['stopped_by']}): {t['vectors']:,} vectors "
        f"({t['not_warm']:,} not warm), written {t['written']:,}, duplicates "
        f"{t['duplicates']:,}, from {t['trades']:,} trades and {t['book_events']:,} book events"
        + (f"; {t['rejected']:,} undecodable messages rejected" if t["rejected"] else "")
    )


__all__ = [
    "STAGE",
    "AsideReader",
    "MergedReader",
    "LiveFeatures",
    "LiveStats",
    "Merge",
    "SharedInput",
    "ZmqInput",
    "open_live",
    "summary_line",
    "valkey_input",
]
