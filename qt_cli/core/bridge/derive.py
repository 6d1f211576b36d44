"""The deriver thread: candles and columnar history chunks from the stored ticks."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np
import valkey

from qt_cli.core import keys
from qt_cli.core.bridge.config import (
    BACKOFF_MAX_S,
    BACKOFF_START_S,
    DERIVE_BATCH,
    DERIVE_LINGER_S,
    DERIVE_QUEUE_MAX,
    PARTIAL_MAXLEN,
    RESUME_PAGE,
    _text,
)
from qt_cli.core.bridge.rows import Row
from qt_cli.core.candles import (
    CandleBuilder,
)
from qt_cli.core.chunks import (
    AGGRESSOR_CODES,
    CHUNK_MAX_EVENTS,
    CHUNK_MAX_SPAN_NS,
    NUMERIC_COLUMNS,
    SealedChunk,
    TickColumns,
    encode_columns,
)
from qt_cli.core.errors import DecodeError
from qt_cli.core.events import (
    NS_PER_MS,
    Candle,
    Trade,
    decode_dict,
    decode_fields,
)
from qt_cli.core.store.writer import (
    E_AGGRESSOR,
    E_BUYER,
    E_IS_EDIT,
    E_PRICE,
    E_QUANTITY,
    E_SELLER,
    E_SEQ,
    E_SESSION,
    E_SYMBOL,
    E_TRADE_ID,
    E_TRADE_TYPE,
    E_TS_EVENT,
    E_TS_INIT,
    E_VOLUME,
    StreamBatch,
    entry_history,
    entry_names,
    event_values,
    is_transient,
    trade_entry,
)

if TYPE_CHECKING:
    from qt_cli.core.bridge.runner import Bridge

log = logging.getLogger(__name__)

# How often the chunk still forming is stored (per symbol, only when it changed), so a query
# decodes it instead of reading its trades one per-event entry at a time (docs/query.md).
FORMING_INTERVAL_S = 1.0


def partial_key(timeframe: str, symbol: str) -> str:
    """The stream holding snapshots of the candle still forming (closed=0), newest last."""
    return keys.partial_candle_key(keys.candle_kind(timeframe), symbol)


class ColumnChunker:
    """`chunks.ChunkBuilder`'s rules (docs/contracts.md), fed a stored batch at a time.

    A chunk is sealed at CHUNK_MAX_EVENTS trades or when a trade would stretch its event-time
    span beyond CHUNK_MAX_SPAN_NS (that trade starts the next chunk), exactly as ChunkBuilder
    does; but the trades arrive as columns (`entry_columns` of a written batch, shared with the
    candles), so sealing only joins the pieces and compresses. Produces the same chunks as
    ChunkBuilder (tests/core/test_bridge.py).
    """

    MAX_PIECES = 32  # pieces kept before they are joined (sealing joins few, so it is short)

    def __init__(
        self, *, max_events: int = CHUNK_MAX_EVENTS, max_span_ns: int = CHUNK_MAX_SPAN_NS
    ) -> None:
        self.max_events = max_events
        self.max_span_ns = max_span_ns
        self._pieces: list[TickColumns] = []
        self._n = 0
        self._src = ""
        self._t_min = 0
        self._t_max = 0
        self.after = ""  # src of the sealed chunk this one follows ("" = unknown)
        self.changed = False  # trades added since the last `forming()`

    @property
    def pending(self) -> int:
        return self._n

    def forming(self) -> dict[str, bytes] | None:
        """The pending trades packed as a chunk (fields of a sealed one, plus `after`), or None
        when there are none or the sealed chunk it follows is unknown."""
        self.changed = False
        if not self._n or not self.after:
            return None
        if len(self._pieces) > 1:  # joined once here, so sealing does not join them again
            self._pieces = [TickColumns.concat(self._pieces)]
        fields = encode_columns(self._pieces[0], fast=True)
        fields["src"] = self._src.encode()
        fields["after"] = self.after.encode()
        return fields

    def add(self, trade: Trade, entry_id: str, *, late: bool) -> SealedChunk | None:
        sealed = self.add_columns(entry_columns([trade_entry(trade)[1]], [late]), [entry_id])
        return sealed[0] if sealed else None

    def add_columns(self, cols: TickColumns, ids: Sequence[str]) -> list[SealedChunk]:
        """Add stored ticks given as columns with their ids; returns the chunks they sealed."""
        sealed: list[SealedChunk] = []
        ts = cols.arrays["ts_event"]
        pos, n = 0, len(ids)
        while pos < n:
            part = ts[pos : pos + self.max_events - self._n]
            low = np.minimum.accumulate(part)
            high = np.maximum.accumulate(part)
            if self._n:
                np.minimum(low, self._t_min, out=low)
                np.maximum(high, self._t_max, out=high)
            over = np.flatnonzero(high - low > self.max_span_ns)
            take = int(over[0]) if len(over) else len(part)
            if take:
                self._pieces.append(cols if take == n else _rows(cols, pos, pos + take))
                if len(self._pieces) >= self.MAX_PIECES:  # many small batches: join them now
                    self._pieces = [TickColumns.concat(self._pieces)]
                self._t_min, self._t_max = int(low[take - 1]), int(high[take - 1])
                self._n += take
                self._src = ids[pos + take - 1]
                self.changed = True
                pos += take
            if len(over) or self._n >= self.max_events:
                chunk = self.seal()
                if chunk is not None:
                    sealed.append(chunk)
        return sealed

    def seal(self) -> SealedChunk | None:
        if not self._n:
            return None
        fields = encode_columns(TickColumns.concat(self._pieces))
        fields["src"] = self._src.encode()
        chunk = SealedChunk(fields, self._n, self._t_min, self._t_max, self._src)
        self.after = self._src
        self._pieces = []
        self._n = 0
        self._src = ""
        return chunk


def _first_after(ids: Sequence[str], mark: tuple[int, int]) -> int:
    """Index of the first id (ids ascend) beyond `mark`; len(ids) when none is."""
    for i, entry_id in enumerate(ids):
        if keys.parse_id(entry_id) > mark:
            return i
    return len(ids)


def _rows(cols: TickColumns, start: int, end: int) -> TickColumns:
    """Rows [start, end) with string dictionaries of just those rows, in order of appearance
    (as `entry_columns` of those rows would make them, so the chunks stay byte-identical)."""
    part = cols.take(slice(start, end))
    for name, table in part.dictionaries.items():
        if len(table) < 2:
            continue
        codes = part.codes[name]
        used, first = np.unique(codes, return_index=True)
        order = used[np.argsort(first)]
        if len(order) == len(table) and (order == np.arange(len(table))).all():
            continue
        remap = np.empty(len(table), dtype=codes.dtype)
        remap[order] = np.arange(len(order), dtype=codes.dtype)
        part.codes[name] = remap[codes]
        part.dictionaries[name] = tuple(table[i] for i in order.tolist())
    return part


def entry_columns(entries: Sequence[tuple[Any, ...]], late: Sequence[bool]) -> TickColumns:
    """Entries as chunk columns: what `chunks.tick_columns_of` makes of the same trades."""
    n = len(entries)
    cols = list(zip(*entries, strict=False))  # as many fields as the shortest entry has
    plain = len(cols) == E_SEQ + 1 and all(len(e) == E_SEQ + 1 for e in entries)
    price = cols[E_PRICE]
    volume = cols[E_VOLUME]
    if "" in price:
        price = tuple(np.nan if v == "" else v for v in price)
    if "" in volume:
        volume = tuple(np.nan if v == "" else v for v in volume)
    aggressor = AGGRESSOR_CODES
    arrays = {
        "ts_event": np.array(cols[E_TS_EVENT], dtype=np.int64),
        "ts_init": np.array(cols[E_TS_INIT], dtype=np.int64),
        "price": np.array(price, dtype=np.float64),
        "quantity": np.array(cols[E_QUANTITY], dtype=np.int64),
        "volume": np.array(volume, dtype=np.float64),
        "trade_id": np.array(cols[E_TRADE_ID], dtype=np.int64),
        "buyer": np.array(cols[E_BUYER], dtype=NUMERIC_COLUMNS["buyer"]),
        "seller": np.array(cols[E_SELLER], dtype=NUMERIC_COLUMNS["seller"]),
        "trade_type": np.array(cols[E_TRADE_TYPE], dtype=NUMERIC_COLUMNS["trade_type"]),
        "aggressor": np.array(
            list(map(aggressor.get, cols[E_AGGRESSOR], repeat(0))),
            dtype=NUMERIC_COLUMNS["aggressor"],
        ),
        "is_edit": np.array(list(map("1".__eq__, cols[E_IS_EDIT])), dtype=np.bool_),
        "history": (
            np.zeros(n, dtype=np.bool_)
            if plain
            else np.array([entry_history(e) for e in entries], dtype=np.bool_)
        ),
        "late": np.array(late, dtype=np.bool_),
        "seq": np.array(cols[E_SEQ], dtype=np.int64),
    }
    strings: dict[str, Sequence[str]] = {"session": cols[E_SESSION]}
    if plain:
        strings["buyer_name"] = strings["seller_name"] = ("",) * n
    elif len(cols) >= E_SEQ + 3:  # every entry has names
        strings["buyer_name"], strings["seller_name"] = cols[E_SEQ + 1], cols[E_SEQ + 2]
    else:
        names = [entry_names(e) for e in entries]
        strings["buyer_name"] = [b for b, _ in names]
        strings["seller_name"] = [s for _, s in names]
    codes: dict[str, np.ndarray] = {}
    dictionaries: dict[str, tuple[str, ...]] = {}
    for name, values in strings.items():
        if n and values.count(values[0]) == n:  # one session, no names: no table to build
            codes[name] = np.zeros(n, dtype=np.int32)
            dictionaries[name] = (values[0],)
            continue
        table: dict[str, int] = {}
        setdefault = table.setdefault
        codes[name] = np.array([setdefault(v, len(table)) for v in values], dtype=np.int32)
        dictionaries[name] = tuple(table)
    return TickColumns(n, {k: arrays[k] for k in NUMERIC_COLUMNS}, codes, dictionaries)


@dataclass
class _SymbolState:
    """Derived-data builders of one symbol."""

    builders: list[CandleBuilder]
    chunker: ColumnChunker | None
    chunk_after: tuple[int, int] | None  # after a resume: ids up to here are already chunked
    skip_until: tuple[int, int] | None = None  # ticks up to here were applied by the rebuild


class _Deriver:
    """Candles and history chunks from the ticks the writer stored, on a thread of their own.

    Sealing a chunk packs thousands of ticks; doing it here keeps that off the write path (and
    its latency). The writer hands over (events, ids) of each stored batch; this thread applies
    them in order. Its state is a pure function of the stored ticks: on any Valkey failure (its
    own, or the writer's) it drops the state and rebuilds it per symbol from what is stored, and
    skips queued ticks that the rebuild already covered.
    """

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.config = bridge.config
        self.writer = bridge.writer
        self.client = bridge.client
        self.stats = bridge.stats
        self.enabled = self.config.candles or self.config.chunks
        self.states: dict[str, _SymbolState] = {}
        self._queue: deque[tuple[list[Row], list[str], int]] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        # `push` wakes the thread only once this many ticks are queued: 1 while it waits for
        # work, DERIVE_BATCH while it gathers (a wake-up per stored batch, ~1,000 a second at a
        # paced rate, cost a context switch and an interpreter-lock turn each, for nothing).
        self._wake_at = 1
        self.pushes = 0
        self.wakeups = 0  # notifications `push` sent (tests)
        self._reset = False
        self._done = False
        self._pending_candles: list[tuple[Candle, str]] = []
        self._partial_dirty: set[str] = set()
        self._last_partials = 0.0
        self._last_forming = 0.0
        self._newest_ns = 0  # event time of the newest tick applied (any symbol)
        self._ended = False  # finishing at the end of the input (not a stop)
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- called by the writer --

    def start(self) -> None:
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="qt-bridge-derive", daemon=True)
            self._thread.start()

    def push(self, events: list[Row], ids: list[str], late: int) -> None:
        """The Rows of one tick stream's written batch, their ids ('' = duplicate, not
        written) and how many of them were stored late (clamped ids)."""
        with self._cond:
            if self._queued > DERIVE_QUEUE_MAX:
                # Far behind: drop the backlog; the rebuild re-reads those ticks from Valkey.
                self._queue.clear()
                self._queued = 0
                self._reset = True
            self._queue.append((events, ids, late))
            self._queued += len(events)
            self.pushes += 1
            if self._queued >= self._wake_at or self._reset:
                self.wakeups += 1
                self._cond.notify()

    def reset(self) -> None:
        """Forget the state (and the queue): rebuild from what Valkey holds."""
        with self._cond:
            self._queue.clear()
            self._queued = 0
            self._reset = True
            self._cond.notify()

    def finish(self, *, ended: bool = False) -> None:
        """Apply what is queued, close the candles that are complete (`_close_complete`; every
        forming one when `ended`: the input ended), write the rest as forming, seal the chunk
        still open, and stop."""
        with self._cond:
            if not self._done:
                self._ended = ended
            self._done = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # -- the thread --

    def _loop(self) -> None:
        backoff = BACKOFF_START_S
        try:
            while True:
                with self._cond:
                    if not self._queue and not self._done and not self._reset:
                        self._cond.wait(0.2)
                    # Let a few stored batches gather: columns and NumPy pay off on hundreds of
                    # ticks, not on the one or two a lightly loaded writer stores per batch.
                    deadline = time.monotonic() + DERIVE_LINGER_S
                    self._wake_at = DERIVE_BATCH  # finish() and reset() wake it whatever this
                    try:
                        while (
                            self._queued < DERIVE_BATCH
                            and not (self._done or self._reset)
                            and (wait_s := deadline - time.monotonic()) > 0
                        ):
                            self._cond.wait(wait_s)
                    finally:
                        self._wake_at = 1
                    if self._reset:
                        self._reset = False
                        self._forget()
                    work = list(self._queue)
                    self._queue.clear()
                    self._queued = 0
                    done = self._done
                try:
                    self._apply_work(work)
                    self._flush()
                    backoff = BACKOFF_START_S
                except (
                    valkey.ConnectionError,
                    valkey.TimeoutError,
                    OSError,
                    valkey.ResponseError,
                ) as exc:
                    if isinstance(exc, valkey.ResponseError) and not is_transient(exc):
                        raise
                    log.info("derived data paused (%s); rebuilding from Valkey later", exc)
                    self._forget()
                    if done:
                        return
                    time.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                if done:
                    with self._cond:
                        if self._queue or self._reset:
                            continue
                    break
            self._finish()
        except BaseException as exc:
            self.error = exc
            self.bridge.stop("derived data error")

    def _apply_work(self, work: list[tuple[list[Row], list[str], int]]) -> None:
        """Each symbol's stored ticks of the work, in stream order, as one batch."""
        entries: dict[str, list[tuple[Any, ...]]] = {}
        kept: dict[str, list[str]] = {}
        late: dict[str, int] = {}
        for rows, ids, nlate in work:
            if not rows:
                continue
            symbol = rows[0][2][E_SYMBOL]  # one push holds one tick stream's batch
            if symbol not in entries:
                entries[symbol], kept[symbol], late[symbol] = [], [], 0
            # '' = a duplicate the function skipped: not stored, not derived.
            entries[symbol] += [row[2] for row, i in zip(rows, ids, strict=True) if i]
            kept[symbol] += [i for i in ids if i]
            late[symbol] += nlate
        for symbol, symbol_entries in entries.items():
            if symbol_entries:
                self._derive_batch(symbol_entries, kept[symbol], late[symbol])

    def _forget(self) -> None:
        self.states.clear()
        self._pending_candles.clear()
        self._partial_dirty.clear()

    def _finish(self) -> None:
        try:
            self._flush()
            if self._partial_dirty:
                self._write_partials(sorted(self._partial_dirty))
            self._close_complete()
            self._flush()
            for symbol, state in self.states.items():
                sealed = state.chunker.seal() if state.chunker is not None else None
                if sealed is not None:
                    self._append_chunk(symbol, sealed)
        except (valkey.ConnectionError, valkey.TimeoutError, OSError, valkey.ResponseError) as exc:
            if isinstance(exc, valkey.ResponseError) and not is_transient(exc):
                raise
            log.info("derived data not finished (%s); the next start rebuilds it", exc)
        self.stats.candle_skipped = self._skipped()

    def _close_complete(self) -> None:
        """Close the forming candles nothing more can come for: at the end of the input all of
        them; on a stop, those whose period ended by the newest tick's event time (any symbol).
        A later trade of a closed period is late (docs/bridge.md, "Candles")."""
        for state in self.states.values():
            for builder in state.builders:
                end = builder.forming_end_ns
                if end is None or not (self._ended or end <= self._newest_ns):
                    continue
                closed = builder.close_forming()
                if closed is not None:
                    self._pending_candles.append(closed)

    def _skipped(self) -> int:
        return sum(b.late + b.edits + b.history for st in self.states.values() for b in st.builders)

    # -- applying ticks --

    def _derive_batch(self, entries: list[tuple[Any, ...]], ids: list[str], late: int) -> None:
        """Candles and chunks of one symbol's stored ticks (in stream order) at once."""
        symbol = entries[0][E_SYMBOL]
        state = self.states.get(symbol)
        if state is None:
            state = self._resume(symbol, ids[0])
        if state.skip_until is not None:
            start = _first_after(ids, state.skip_until)  # the rebuild from Valkey covered these
            if start == len(ids):
                return
            entries, ids = entries[start:], ids[start:]
            state.skip_until = None
        self._apply(state, symbol, entries, ids, late)

    def _apply(
        self,
        state: _SymbolState,
        symbol: str,
        entries: list[tuple[Any, ...]],
        ids: list[str],
        late: int,
    ) -> None:
        """Apply stored ticks of a symbol; `late`: how many have clamped ids (0: none)."""
        flags = (
            [not i.startswith(f"{e[0]}-") for e, i in zip(entries, ids, strict=True)]
            if late
            else [False] * len(entries)
        )
        cols = entry_columns(entries, flags)
        newest = int(cols.arrays["ts_event"].max())
        if newest > self._newest_ns:
            self._newest_ns = newest
        if state.builders:
            pending = self._pending_candles
            for builder in state.builders:
                pending += builder.add_columns(cols.arrays, ids)
            self._partial_dirty.add(symbol)
        chunker = state.chunker
        if chunker is not None:
            if state.chunk_after is not None:
                start = _first_after(ids, state.chunk_after)  # already in a stored chunk
                if start == len(ids):
                    return
                if start:
                    cols, ids = _rows(cols, start, len(ids)), ids[start:]
                state.chunk_after = None
            for sealed in chunker.add_columns(cols, ids):
                self._append_chunk(symbol, sealed)

    def _append_chunk(self, symbol: str, chunk: SealedChunk) -> None:
        if self.writer.append_chunk(symbol, chunk).appended:
            self.stats.chunks += 1
        time.sleep(0)  # packing a chunk held the GIL for a while: let the write path run

    def _flush(self) -> None:
        """Write closed candles now, and the forming candles about once a second."""
        pending, self._pending_candles = self._pending_candles, []
        if pending:
            batches: dict[str, StreamBatch] = {}
            for candle, src in pending:
                key = keys.stream_key(candle.stream_kind, candle.symbol)
                batch = batches.get(key)
                if batch is None:
                    batch = batches[key] = self.writer.batch(key, maxlen=0)
                names, values = event_values(candle)
                batch.add((*names, "src"), (*values, src), candle.ts_event // NS_PER_MS)
            for result in self.writer.append_many(batches.values()):
                self.stats.candles += result.written
        now = time.monotonic()
        if self._partial_dirty and now - self._last_partials >= self.config.stats_interval_s:
            self._last_partials = now
            self._write_partials(sorted(self._partial_dirty))
            self.stats.candle_skipped = self._skipped()
        if now - self._last_forming >= FORMING_INTERVAL_S:
            self._last_forming = now
            self._write_forming()

    def _write_forming(self) -> None:
        """Store each changed chunk still forming as one hash (`keys.forming_chunk_key`)."""
        pipe = None
        for symbol, state in self.states.items():
            chunker = state.chunker
            if chunker is None or not chunker.changed or state.chunk_after is not None:
                continue
            fields = chunker.forming()
            if fields is None:
                continue
            if pipe is None:
                pipe = self.client.pipeline(transaction=False)
            pipe.hset(keys.forming_chunk_key("ticks", symbol), mapping=fields)
        if pipe is not None:
            pipe.execute()

    def _write_partials(self, symbols: Sequence[str]) -> None:
        batches: list[StreamBatch] = []
        for symbol in symbols:
            state = self.states.get(symbol)
            for builder in state.builders if state is not None else ():
                partial = builder.partial()
                if partial is None:
                    continue
                # No session: every snapshot is stored (the marks would skip a repeated period).
                snapshot = replace(partial, session="", seq=0)
                names, values = event_values(snapshot)
                batch = self.writer.batch(
                    partial_key(builder.timeframe, symbol), maxlen=PARTIAL_MAXLEN, approx=False
                )
                batch.add(
                    (*names, "pv", "src"),
                    (*values, repr(builder.partial_pv), builder.partial_src),
                    partial.ts_event // NS_PER_MS,
                )
                batches.append(batch)
        self.writer.append_many(batches)
        self._partial_dirty.difference_update(symbols)

    # -- rebuilding from Valkey --

    def _resume(self, symbol: str, before: str) -> _SymbolState:
        """Rebuild a symbol's candle and chunk state from what Valkey holds before `before`.

        `before` is the id of the first queued tick of the symbol: the queue holds the ticks
        from there on, in stream order, so only the older ones are read back.
        """
        config = self.config
        builders = [CandleBuilder(symbol, tf) for tf in config.timeframes] if config.candles else []
        starts: list[str] = []
        for builder in builders:
            self._restore_candle(builder)
            starts.append(builder.src)
        chunker = ColumnChunker() if config.chunks else None
        state = _SymbolState(builders, chunker, None)
        if chunker is not None:
            chunk_src = self.writer.last_chunk_src(symbol)
            state.chunk_after = keys.parse_id(chunk_src) if chunk_src else None
            chunker.after = chunk_src
            starts.append(chunk_src)
        self.states[symbol] = state
        start = min(starts, key=keys.parse_id)
        ticks_key = keys.stream_key("ticks", symbol)
        cursor = f"({start}" if start else "-"
        last = ""
        while True:
            page = self.client.xrange(ticks_key, min=cursor, max=f"({before}", count=RESUME_PAGE)
            if not page:
                break
            entries: list[tuple[Any, ...]] = []
            ids: list[str] = []
            for raw_id, stored in page:
                last = _text(raw_id)
                try:
                    trade = decode_fields(stored)
                except DecodeError:
                    continue
                if type(trade) is Trade:
                    entries.append(trade_entry(trade)[1])
                    ids.append(last)
            if entries:
                self._apply(state, symbol, entries, ids, len(ids))
            cursor = f"({last}"
            if len(page) < RESUME_PAGE:
                break
        if last:
            state.skip_until = keys.parse_id(last)
            log.info("rebuilt candles and chunks of %s from stored ticks up to %s", symbol, last)
        return state

    def _restore_candle(self, builder: CandleBuilder) -> None:
        symbol, tf = builder.symbol, builder.timeframe
        closed_entry = self.client.xrevrange(keys.stream_key(keys.candle_kind(tf), symbol), count=1)
        partial_entry = self.client.xrevrange(partial_key(tf, symbol), count=1)
        closed = _stored_candle(closed_entry)
        partial = _stored_candle(partial_entry)
        if partial is not None and (closed is None or partial[0].ts_event > closed[0].ts_event):
            candle, fields = partial
            try:
                pv = float(fields.get("pv", "nan"))
            except ValueError:
                pv = float("nan")
            if pv == pv and fields.get("src"):
                builder.resume_forming(candle, pv=pv, src=fields["src"])
                return
        if closed is not None and closed[1].get("src"):
            builder.resume_after_closed(closed[0], closed[1]["src"])


# --- the bridge ----------------------------------------------------------------------------------


def _stored_candle(entries: list[Any]) -> tuple[Candle, dict[str, str]] | None:
    if not entries:
        return None
    fields = {_text(k): _text(v) for k, v in entries[0][1].items()}
    try:
        candle = decode_dict(fields)
    except DecodeError:
        return None
    if not isinstance(candle, Candle):
        return None
    return candle, fields
