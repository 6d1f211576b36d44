"""Every range read from Valkey streams: paging, history chunks plus tail, late-entry merge, tailing.

Layout (docs/contracts.md): per-event streams `stream:<kind>:{SYM}` whose ids are `<event ms>-<n>`
(a late event gets an id clamped to the stream's top, the field `late=1`, and keeps its true time in
`ts_event`), and for ticks the columnar history `stream:hist:ticks:{SYM}` (chunks of up to 4,096
trades and 10 min, id `<t_min ms>-<n>`, clamped chunks also listed in `idx:late:ticks:{SYM}`).

Reading ticks for [from, to]:
1. snapshot the last chunked per-event id (`src`);
2. the late chunks whose t_min lies in [from - 10 min, to] (from the late index);
3. the per-event entries after `src` (the tail, not chunked yet);
4. the chunks with ids in [from - 10 min, to], in pages (XRANGE … COUNT), skipping chunks sealed
   after the snapshot (their trades are in the tail already).
Everything is filtered to [from, to] and merged into event-time order. Pages are released as soon
as nothing later can sort before them (the "watermark": no chunk still to come has a t_min below
the last chunk id read), so an export streams in bounded memory.

Per-event kinds (book, candles, features, …) are read by id in [from, to + margin] and sorted by
`ts_event`; an entry may arrive at most `LATE_MARGIN_MS` after later events and still sort into
place (a tick arriving later than that is still found, through the chunks).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import valkey

from qt_cli.core import keys
from qt_cli.core.chunks import (
    AGGRESSOR_CODES,
    CHUNK_MAX_SPAN_NS,
    STRING_COLUMNS,
    TickColumns,
    decode_chunks,
    decode_tick_columns,
    tick_columns_of,
)
from qt_cli.core.errors import DecodeError, UsageError
from qt_cli.core.events import EVENT_TYPES, NS_PER_MS, Event, Passed, Trade, decode_fields
from qt_cli.core.gcpause import paused_gc
from qt_cli.core.keys import parse_id
from qt_cli.core.store import cluster

log = logging.getLogger(__name__)

PAGE_ENTRIES = 5_000  # per-event entries per XRANGE
PAGE_CHUNKS = 32  # history chunks per XRANGE when streaming (up to ~130,000 ticks)
READ_PAGE_CHUNKS = 2048  # … when reading a whole range into memory (read_ticks)
LATE_MARGIN_MS = 60_000
CHUNK_SPAN_MS = CHUNK_MAX_SPAN_NS // NS_PER_MS
_EXTRA_POS = 1 << 62  # late chunks and the tail sort after chunk rows with the same time

Entry = tuple[bytes, dict[bytes, bytes]]


# --- ids and paging --------------------------------------------------------------------------


def format_id(entry_id: tuple[int, int]) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def xrange_pages(
    client: Any,
    key: str,
    start: str = "-",
    end: str = "+",
    *,
    count: int = PAGE_ENTRIES,
    raw: bool = False,
) -> Iterator[list[Any]]:
    """XRANGE in pages of `count` entries, each page starting after the last id of the previous.

    `raw`: entries as the server sends them, `[id, [field, value, …]]`, without a dict per entry
    (about half the client's cost for per-event entries; see `tick_columns_from_raw`)."""
    fetch = client.xrange
    if raw:
        fetch = _raw_xrange(client)
    while True:
        page = fetch(key, start, end, count=count)
        if not page:
            return
        yield page
        if len(page) < count:
            return
        start = "(" + page[-1][0].decode()


def _pairs(flat: Any) -> dict[bytes, bytes]:
    """An entry's fields from a raw XRANGE reply ([field, value, …]; a dict already parsed)."""
    if isinstance(flat, dict):
        return flat
    it = iter(flat)
    return dict(zip(it, it, strict=False))


def _unparsed(response: Any, **_: Any) -> Any:
    return response


def _raw_xrange(client: Any) -> Callable[..., Any]:
    """`client.xrange` returning the reply unparsed: a client sharing the connection pool, with
    no reply callback for XRANGE (the client itself is left as it is). Clients without a pool of
    their own (cluster) parse as usual, and `tick_columns_from_raw` takes both forms."""
    pool = getattr(client, "connection_pool", None)
    if pool is None or not isinstance(client, valkey.Valkey):
        return client.xrange
    raw = valkey.Valkey(connection_pool=pool)
    raw.set_response_callback("XRANGE", _unparsed)
    return raw.xrange


def first_id(client: Any, key: str) -> tuple[int, int] | None:
    entries = client.xrange(key, "-", "+", count=1)
    return parse_id(entries[0][0]) if entries else None


def last_id(client: Any, key: str) -> tuple[int, int] | None:
    entries = client.xrevrange(key, "+", "-", count=1)
    return parse_id(entries[0][0]) if entries else None


def stored_until_ms(client: Any, stream_keys: Sequence[str]) -> int | None:
    """The latest event time (ms) the streams have taken: the largest last generated id, which
    an emptied or trimmed stream keeps (writers clamp anything older to it). None: no stream."""
    pipe = client.pipeline(transaction=False)
    for key in stream_keys:
        pipe.xinfo_stream(key)
    latest = None
    for info in pipe.execute(raise_on_error=False):
        if isinstance(info, dict) and info.get("last-generated-id"):
            ms = parse_id(info["last-generated-id"])[0]
            latest = ms if latest is None else max(latest, ms)
    return latest


def last_prices(client: Any, symbols: Sequence[str]) -> dict[str, float]:
    """The price of each symbol's newest stored trade (symbols without one are left out)."""
    pipe = client.pipeline(transaction=False)
    for symbol in symbols:
        pipe.xrevrange(keys.stream_key("ticks", symbol), "+", "-", count=1)
    prices = {}
    for symbol, entries in zip(symbols, pipe.execute(), strict=True):
        if entries and b"price" in entries[0][1]:
            try:
                price = float(entries[0][1][b"price"])
            except ValueError:
                continue
            if price > 0 and price == price and price != float("inf"):
                prices[symbol] = price
    return prices


def symbols_of(client: Any, kind: str) -> list[str]:
    """Symbols with a per-event stream or a history stream of `kind` (SCAN, never KEYS)."""
    found: set[str] = set()
    for pattern in (keys.stream_key(kind, "*"), keys.history_key(kind, "*")):
        for key in client.scan_iter(match=pattern, count=1000, _type="stream"):
            text = key.decode() if isinstance(key, bytes) else key
            symbol = text[text.rfind("{") + 1 : -1]
            if symbol and keys.valid_symbol(symbol):
                found.add(symbol)
    return sorted(found)


# --- per-event tick entries -> columns -------------------------------------------------------


def _ints(values: list[bytes]) -> np.ndarray:
    return np.fromiter(map(int, values), dtype=np.int64, count=len(values))


def _floats(values: list[bytes]) -> np.ndarray:
    try:
        return np.fromiter(map(float, values), dtype=np.float64, count=len(values))
    except ValueError:  # an empty value: NaN
        return np.fromiter(
            (float(v) if v else np.nan for v in values), dtype=np.float64, count=len(values)
        )


_TRUE = frozenset((b"1", b"true", b"True"))


def _flags(values: list[bytes]) -> np.ndarray:
    return np.fromiter(map(_TRUE.__contains__, values), np.bool_, len(values))


_AGGRESSOR = {k.encode(): v for k, v in AGGRESSOR_CODES.items()}


def tick_columns_from_entries(
    entries: Sequence[Entry], *, problems: list[str] | None = None
) -> TickColumns:
    """Per-event tick entries (as XRANGE returns them) as columns, one list pass per field.

    Entries written by seed-era tools (no ts_event, say) take the slow path through
    events.decode_fields; an entry that does not decode is left out and described in `problems`.
    """
    rows = [f for _, f in entries]
    if not rows:
        return TickColumns.empty()
    try:
        return _tick_columns_fast(rows)
    except (KeyError, ValueError, TypeError):
        pass
    trades: list[Trade] = []
    late: list[bool] = []
    for entry_id, fields in entries:
        try:
            event = decode_fields(fields)
        except DecodeError as exc:
            if problems is not None:
                problems.append(f"{entry_id.decode()}: {exc}")
            continue
        if isinstance(event, Trade):
            trades.append(event)
            late.append(fields.get(b"late") == b"1")
    return tick_columns_of(trades, late=late)


def tick_columns_from_raw(page: Sequence[Any], *, problems: list[str] | None = None) -> TickColumns:
    """Per-event tick entries as `xrange_pages(raw=True)` gives them, as columns.

    Entries with the same fields in the same order (what one writer produces) are read by
    position, with no dict per entry; entries of a few layouts (say, some with `late`) are read
    per layout and put back in stream order; anything else goes through the dict path."""
    if not page:
        return TickColumns.empty()
    if isinstance(page[0][1], dict):  # a client that parsed the reply anyway
        return tick_columns_from_entries(page, problems=problems)
    flat = [entry[1] for entry in page]
    layouts: dict[tuple[bytes, ...], list[int]] = {}
    for i, values in enumerate(flat):
        layouts.setdefault(tuple(values[0::2]), []).append(i)
    if len(layouts) <= 4:
        try:
            if len(layouts) == 1:
                return _tick_columns_by_position(next(iter(layouts)), flat)
            parts = [
                _tick_columns_by_position(names, [flat[i] for i in rows])
                for names, rows in layouts.items()
            ]
            order = np.argsort(np.concatenate([np.array(r) for r in layouts.values()]))
            return TickColumns.concat(parts).take(order)
        except (KeyError, ValueError, TypeError):
            pass
    entries = [
        (entry[0], dict(zip(entry[1][0::2], entry[1][1::2], strict=False))) for entry in page
    ]
    return tick_columns_from_entries(entries, problems=problems)


def _tick_columns_by_position(names: tuple[bytes, ...], flat: list[list[bytes]]) -> TickColumns:
    index = {name: 2 * j + 1 for j, name in enumerate(names)}
    n = len(flat)

    def col(name: bytes, default: bytes | None = None) -> list[bytes]:
        j = index.get(name)
        if j is None:
            if default is None:
                raise KeyError(name)
            return [default] * n
        return [values[j] for values in flat]

    return _tick_columns(col, n)


def _tick_columns_fast(rows: list[dict[bytes, bytes]]) -> TickColumns:
    def col(name: bytes, default: bytes | None = None) -> list[bytes]:
        if default is None:
            return [f[name] for f in rows]
        return [f.get(name, default) for f in rows]

    return _tick_columns(col, len(rows))


def _tick_columns(col: Callable[..., list[bytes]], n: int) -> TickColumns:
    arrays = {
        "ts_event": _ints(col(b"ts_event")),
        "ts_init": _ints(col(b"ts_init", b"0")),
        "price": _floats(col(b"price")),
        "quantity": _ints(col(b"quantity", b"0")),
        "volume": _floats(col(b"volume", b"0")),
        "trade_id": _ints(col(b"trade_id", b"0")),
        "buyer": _ints(col(b"buyer", b"0")).astype(np.int32),
        "seller": _ints(col(b"seller", b"0")).astype(np.int32),
        "trade_type": _ints(col(b"trade_type", b"0")).astype(np.uint8),
        "aggressor": np.fromiter(
            map(_AGGRESSOR.__getitem__, col(b"aggressor", b"none")), dtype=np.int8, count=n
        ),
        "is_edit": _flags(col(b"is_edit", b"0")),
        "history": _flags(col(b"history", b"0")),
        "late": _flags(col(b"late", b"0")),
        "seq": _ints(col(b"seq", b"0")),
    }
    codes: dict[str, np.ndarray] = {}
    dictionaries: dict[str, tuple[str, ...]] = {}
    for name in STRING_COLUMNS:
        values = col(name.encode(), b"")
        table = {v: i for i, v in enumerate(dict.fromkeys(values))}  # first-seen order
        codes[name] = np.fromiter(map(table.__getitem__, values), dtype=np.int32, count=n)
        dictionaries[name] = tuple(v.decode() for v in table)
    return TickColumns(n, arrays, codes, dictionaries)


# --- ordered merge with a watermark ----------------------------------------------------------


class _TickMerge:
    """Pending rows, released in (ts_event, stream position) order once below a watermark.

    A part's positions are kept as the start of a range (an int) until rows are actually
    reordered or cut, so a range read into memory in one go never builds them."""

    def __init__(self, from_ns: int, to_ns: int) -> None:
        self.from_ns = from_ns
        self.to_ns = to_ns
        self.parts: list[TickColumns] = []
        self.positions: list[int | np.ndarray] = []
        self.main_pos = 0
        self.extra_pos = _EXTRA_POS

    def clip(self, columns: TickColumns) -> TickColumns | None:
        """The rows inside [from, to] (None if none)."""
        if columns.n == 0:
            return None
        ts = columns.arrays["ts_event"]
        if ts.min() < self.from_ns or ts.max() > self.to_ns:
            rows = np.flatnonzero((ts >= self.from_ns) & (ts <= self.to_ns))
            if len(rows) == 0:
                return None
            first, last = int(rows[0]), int(rows[-1])
            # Sorted rows cut at the range's edges: a slice (views, no copy).
            contiguous = last - first + 1 == len(rows)
            columns = columns.take(slice(first, last + 1) if contiguous else rows)
        return columns

    def add(self, columns: TickColumns, *, extra: bool = False) -> None:
        clipped = self.clip(columns)
        if clipped is None:
            return
        columns = clipped
        start = self.extra_pos if extra else self.main_pos
        self.positions.append(start)
        if extra:
            self.extra_pos += columns.n
        else:
            self.main_pos += columns.n
        self.parts.append(columns)

    def _position_array(self, i: int) -> np.ndarray:
        pos = self.positions[i]
        if isinstance(pos, np.ndarray):
            return pos
        return np.arange(pos, pos + self.parts[i].n, dtype=np.int64)

    def _ends(self, i: int) -> tuple[int, int]:
        pos = self.positions[i]
        if isinstance(pos, np.ndarray):
            return int(pos[0]), int(pos[-1])
        return pos, pos + self.parts[i].n - 1

    def _in_order(self) -> list[int] | None:
        """The parts' indexes in an order where their rows run in (ts_event, position) order,
        or None when rows of different parts interleave (then they need sorting row by row).

        A part on its own is in order when its times are: its positions are a range, or the
        rest of rows already sorted by (time, position)."""
        spans = []
        for i, part in enumerate(self.parts):
            ts = part.arrays["ts_event"]
            if len(ts) > 1 and np.any(ts[1:] < ts[:-1]):
                return None
            first_pos, last_pos = self._ends(i)
            spans.append(((int(ts[0]), first_pos), (int(ts[-1]), last_pos), i))
        spans.sort()
        for (_, last, _), (first, _, _) in zip(spans, spans[1:], strict=False):
            if not last < first:
                return None
        return [i for _, _, i in spans]

    def release(self, below_ns: int | None = None) -> TickColumns | None:
        """The pending rows with ts_event < below_ns (all when None), in order; None if none."""
        if not self.parts:
            return None
        order_of_parts = self._in_order()
        pos: np.ndarray | None = None
        if order_of_parts is not None:
            merged = TickColumns.concat([self.parts[i] for i in order_of_parts])
            indexes = order_of_parts
        else:
            merged = TickColumns.concat(self.parts)
            pos = np.concatenate([self._position_array(i) for i in range(len(self.parts))])
            order = np.lexsort((pos, merged.arrays["ts_event"]))
            merged = merged.take(order)
            pos = pos[order]
        ts = merged.arrays["ts_event"]
        cut = merged.n if below_ns is None else int(np.searchsorted(ts, below_ns, side="left"))
        if cut == merged.n:
            self.parts, self.positions = [], []
            return merged
        if pos is None:
            pos = np.concatenate([self._position_array(i) for i in indexes])
        self.parts = [merged.take(slice(cut, None))]
        self.positions = [pos[cut:]]
        return merged.take(slice(0, cut)) if cut else None


@dataclass
class ReadStats:
    """What a range read touched; `problems` lists entries that could not be read."""

    chunks: int = 0
    late_chunks: int = 0
    skipped_chunks: int = 0
    tail_entries: int = 0
    forming_rows: int = 0
    entries: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TickPage:
    """Rows in event-time order; every later page sorts at or after `watermark_ns`."""

    columns: TickColumns
    watermark_ns: int


def chunked_src(client: Any, symbol: str) -> tuple[int, int] | None:
    """Id of the last per-event entry included in a history chunk (None: nothing chunked)."""
    return _chunk_snapshot(client, symbol)[0]


def _chunk_snapshot(
    client: Any, symbol: str, late_ms: tuple[int, int] | None = None
) -> tuple[tuple[int, int] | None, dict[bytes, bytes] | None, list[bytes]]:
    """(chunked src, the chunk still forming, late chunk ids with t_min in `late_ms`) in one
    round trip. The forming chunk is returned only when it follows that src (`after`);
    otherwise it is stale (a chunk was sealed since) or from before a rebuild, and the
    per-event entries are read instead."""
    hist = keys.history_key("ticks", symbol)
    pipe = client.pipeline(transaction=False)
    pipe.hget(keys.hwm_key(hist), "src")
    pipe.xrevrange(hist, "+", "-", count=1)
    pipe.hgetall(keys.forming_chunk_key("ticks", symbol))
    if late_ms is not None:
        pipe.zrangebyscore(keys.late_index_key("ticks", symbol), *late_ms)
    mark, last, forming, *late = pipe.execute()
    late_ids: list[bytes] = late[0] if late else []
    best: tuple[int, int] | None = None
    if mark:
        best = parse_id(mark)
    if last and b"src" in last[0][1]:
        src = parse_id(last[0][1][b"src"])
        best = src if best is None else max(best, src)
    if best is None or not forming:
        return best, None, late_ids
    try:
        follows = parse_id(forming[b"after"]) == best and parse_id(forming[b"src"]) > best
    except (KeyError, ValueError):
        follows = False
    return best, forming if follows else None, late_ids


def _chunk_overlaps(fields: dict[bytes, bytes], from_ns: int, to_ns: int) -> bool:
    try:
        return int(fields[b"t_max"]) >= from_ns and int(fields[b"t_min"]) <= to_ns
    except (KeyError, ValueError):
        return True  # let the decoder say what is wrong


def iter_ticks(
    client: Any,
    symbol: str,
    from_ns: int,
    to_ns: int,
    *,
    page_chunks: int = PAGE_CHUNKS,
    page_entries: int = PAGE_ENTRIES,
    margin_ms: int = LATE_MARGIN_MS,
    stats: ReadStats | None = None,
    whole: bool = False,
) -> Iterator[TickPage]:
    """The trades of `symbol` with from_ns <= ts_event <= to_ns, in event-time order, in pages.

    `whole`: one page at the end (everything in memory, no partial pages to join later)."""
    stats = stats if stats is not None else ReadStats()
    hist = keys.history_key("ticks", symbol)
    events_key = keys.stream_key("ticks", symbol)
    from_ms, to_ms = from_ns // NS_PER_MS, to_ns // NS_PER_MS
    merge = _TickMerge(from_ns, to_ns)
    src, forming_fields, late_index = _chunk_snapshot(
        client, symbol, (from_ms - CHUNK_SPAN_MS, to_ms)
    )

    def decode(entry_id: bytes, fields: dict[bytes, bytes]) -> TickColumns | None:
        try:
            return decode_tick_columns(fields)
        except DecodeError as exc:
            stats.problems.append(f"{hist} {entry_id.decode()}: {exc}")
            return None

    def add_forming(fields: dict[bytes, bytes]) -> None:
        try:
            columns = decode_tick_columns(fields)
        except DecodeError as exc:
            forming_unreadable(exc)
            return
        stats.forming_rows += columns.n
        merge.add(columns, extra=True)

    def forming_unreadable(exc: DecodeError) -> None:
        """The forming chunk does not decode: its trades are read from the per-event entries."""
        stats.problems.append(f"{keys.forming_chunk_key('ticks', symbol)}: {exc}")
        assert src is not None and forming_fields is not None
        end = format_id(parse_id(forming_fields[b"src"]))
        start = f"({format_id(src)}"
        for page in xrange_pages(client, events_key, start, end, count=page_entries, raw=True):
            stats.tail_entries += len(page)
            merge.add(tick_columns_from_raw(page, problems=stats.problems), extra=True)

    def sealed_after_snapshot(fields: dict[bytes, bytes]) -> bool:
        chunk_src = fields.get(b"src")
        return src is None or (chunk_src is not None and parse_id(chunk_src) > src)

    def emit(below_ns: int | None, watermark_ns: int) -> Iterator[TickPage]:
        if whole and below_ns is not None:
            return
        released = merge.release(below_ns)
        if released is not None and released.n:
            stats.rows += released.n
            yield TickPage(released, watermark_ns)

    if src is None:
        # Nothing chunked: the per-event stream is all there is.
        for page in xrange_pages(
            client, events_key, str(from_ms), str(to_ms + margin_ms), count=page_entries, raw=True
        ):
            stats.entries += len(page)
            merge.add(tick_columns_from_raw(page, problems=stats.problems))
            watermark = (parse_id(page[-1][0])[0] - margin_ms) * NS_PER_MS
            yield from emit(watermark, watermark)
        yield from emit(None, to_ns)
        return

    late_ids: set[bytes] = set()
    late_added = False
    for chunk_id in late_index:
        for entry_id, fields in client.xrange(hist, chunk_id, chunk_id):
            late_ids.add(entry_id)
            if sealed_after_snapshot(fields) or not _chunk_overlaps(fields, from_ns, to_ns):
                continue
            if (columns := decode(entry_id, fields)) is not None:
                stats.late_chunks += 1
                late_added = True
                merge.add(columns, extra=True)
    # The chunk still forming (the bridge's pending trades, packed): its trades are read from
    # it, and the per-event entries only after it.
    # Reading a whole range with no late chunks, the tail is held back: when all of it comes
    # after every chunk (the usual case) it is decoded into the last page's arrays, no join.
    hold_tail = whole and not late_added
    # The chunk still forming (the bridge's pending trades, packed like a sealed chunk): its
    # trades are read from it, the per-event entries only after it. Held back like the tail, it
    # is decoded with the last page of chunks when it comes after them.
    tail_after = src
    forming: dict[bytes, bytes] | None = None
    if forming_fields is not None:
        tail_after = parse_id(forming_fields[b"src"])
        if _chunk_overlaps(forming_fields, from_ns, to_ns):
            forming = forming_fields
    tail: list[TickColumns] = []
    if forming is not None and not hold_tail:
        add_forming(forming)
        forming = None
    tail_start = max(tail_after, (from_ms, 0))
    start = f"({format_id(tail_after)}" if tail_start == tail_after else format_id(tail_start)
    for page in xrange_pages(client, events_key, start, "+", count=page_entries, raw=True):
        stats.tail_entries += len(page)
        columns = tick_columns_from_raw(page, problems=stats.problems)
        if not hold_tail:
            merge.add(columns, extra=True)
        elif (clipped := merge.clip(columns)) is not None:
            tail.append(clipped)
    tail_min = min((int(t.arrays["ts_event"].min()) for t in tail), default=None)
    chunks_max = -(2**63)  # latest event time of the chunks read so far
    clamped_seen = False

    for page in xrange_pages(
        client, hist, str(max(0, from_ms - CHUNK_SPAN_MS)), str(to_ms), count=page_chunks
    ):
        ids: list[bytes] = []
        wanted: list[dict[bytes, bytes]] = []
        for entry_id, fields in page:
            if entry_id in late_ids:
                continue
            if sealed_after_snapshot(fields) or not _chunk_overlaps(fields, from_ns, to_ns):
                stats.skipped_chunks += 1
                continue
            # A clamped chunk missing from the late index still belongs to the result.
            if parse_id(entry_id)[0] != _t_min_ms(fields):
                clamped_seen = True
                if (columns := decode(entry_id, fields)) is not None:
                    stats.chunks += 1
                    merge.add(columns, extra=True)
                continue
            chunks_max = max(chunks_max, _t_max(fields))
            ids.append(entry_id)
            wanted.append(fields)
        last_page = len(page) < page_chunks
        folded = None
        if forming is not None and last_page and not clamped_seen:
            t_min = _t_min_ns(forming)
            if t_min is not None and t_min >= chunks_max:
                ids.append(b"forming")
                wanted.append(forming)
                chunks_max = max(chunks_max, _t_max(forming))
                folded, forming = len(wanted) - 1, None
        append = None
        if (
            tail_min is not None
            and last_page
            and forming is None
            and not clamped_seen
            and tail_min >= chunks_max
        ):
            append = TickColumns.concat(tail)
            tail = []
        if wanted or append is not None:
            # The whole page at once, into one set of column arrays (chunks.decode_chunks).
            columns, problems = decode_chunks(wanted, append=append)
            for index, exc in problems:
                if index == folded:
                    forming_unreadable(exc)
                    folded = None
                else:
                    stats.problems.append(f"{hist} {ids[index].decode()}: {exc}")
            stats.chunks += len(wanted) - len(problems) - (folded is not None)
            if folded is not None:
                stats.forming_rows += int(wanted[folded][b"n"])
            merge.add(columns)
        watermark = parse_id(page[-1][0])[0] * NS_PER_MS
        yield from emit(watermark, watermark)
    if forming is not None:  # not folded into a page: before the rest of the tail
        add_forming(forming)
    for columns in tail:  # not folded into a page
        merge.add(columns, extra=True)
    yield from emit(None, to_ns)


def _t_max(fields: dict[bytes, bytes]) -> int:
    try:
        return int(fields[b"t_max"])
    except (KeyError, ValueError):
        return 2**63 - 1  # unknown: never fold the tail after it


def _t_min_ns(fields: dict[bytes, bytes]) -> int | None:
    try:
        return int(fields[b"t_min"])
    except (KeyError, ValueError):
        return None


def _t_min_ms(fields: dict[bytes, bytes]) -> int | None:
    try:
        return int(fields[b"t_min"]) // NS_PER_MS
    except (KeyError, ValueError):
        return None  # let the decoder say what is wrong


def read_ticks(client: Any, symbol: str, from_ns: int, to_ns: int, **kwargs: Any) -> TickColumns:
    """All trades of `symbol` in [from_ns, to_ns] as one TickColumns, in event-time order.

    Everything is kept anyway, so chunks are read and decoded in large pages (`READ_PAGE_CHUNKS`):
    one set of arrays for the range, no concatenation of small pages.
    """
    kwargs.setdefault("page_chunks", READ_PAGE_CHUNKS)
    kwargs.setdefault("whole", True)
    with paused_gc():  # bulk columns: no cycles to find, and collections cost (gcpause.py)
        pages = [p.columns for p in iter_ticks(client, symbol, from_ns, to_ns, **kwargs)]
        return TickColumns.concat(pages)


# --- per-event kinds -------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryPage:
    """Entries in event-time order (`times` ns parallel to `entries`)."""

    entries: list[Entry]
    times: list[int]
    watermark_ns: int


def entry_time(entry_id: bytes, fields: dict[bytes, bytes], time_field: bytes) -> int:
    """An entry's time in ns: its `time_field`, else a seed-era `timestamp_ms`, else its id."""
    value = fields.get(time_field)
    if value:
        try:
            return int(value)
        except ValueError:
            pass
    stamp = fields.get(b"timestamp_ms")
    if stamp:
        try:
            return int(stamp) * NS_PER_MS
        except ValueError:
            pass
    return parse_id(entry_id)[0] * NS_PER_MS


def iter_entries(
    client: Any,
    key: str,
    from_ns: int,
    to_ns: int,
    *,
    time_field: str = "ts_event",
    margin_ms: int = LATE_MARGIN_MS,
    page_entries: int = PAGE_ENTRIES,
    stats: ReadStats | None = None,
    raw: bool = False,
) -> Iterator[EntryPage]:
    """Entries of a per-event stream with from_ns <= time <= to_ns, in time order, in pages.

    `raw`: the same entries, read with `xrange_pages(raw=True)` and each made (id, fields dict)
    here (about a third of the client's parsing cost)."""
    stats = stats if stats is not None else ReadStats()
    field_name = time_field.encode()
    from_ms, to_ms = from_ns // NS_PER_MS, to_ns // NS_PER_MS
    pending: list[tuple[int, int, Entry]] = []
    position = 0

    def release(below_ns: int | None, watermark_ns: int) -> Iterator[EntryPage]:
        nonlocal pending
        pending.sort()  # by (time, position): positions are unique, entries never compared
        if below_ns is None:
            ready, pending = pending, []
        else:
            cut = bisect.bisect_left(pending, (below_ns,))  # the first at or after below_ns
            ready, pending = pending[:cut], pending[cut:]
        if ready:
            stats.rows += len(ready)
            yield EntryPage([e for _, _, e in ready], [t for t, _, _ in ready], watermark_ns)

    start = str(max(0, from_ms - margin_ms)) if time_field != "ts_event" else str(from_ms)
    for page in xrange_pages(
        client, key, start, str(to_ms + margin_ms), count=page_entries, raw=raw
    ):
        stats.entries += len(page)
        if raw:
            page = [(entry_id, _pairs(flat)) for entry_id, flat in page]
        for entry in page:
            t = entry_time(entry[0], entry[1], field_name)
            if from_ns <= t <= to_ns:
                pending.append((t, position, entry))
            position += 1
        watermark = (parse_id(page[-1][0])[0] - margin_ms) * NS_PER_MS
        yield from release(watermark, watermark)
    yield from release(None, to_ns)


# --- live tailing ----------------------------------------------------------------------------


class SourceEntry(NamedTuple):
    """One entry a `StreamSource` handed out: its stream, id, decoded event and `late` flag (a
    named tuple: made for every entry read, at a third of a frozen dataclass's cost)."""

    key: str
    id: str
    event: Event | Passed  # Passed: a type the reader was told to skip
    late: bool = False


def start_id(start: str) -> str:
    """A start position as XREAD/XGROUP take it: "$" (new entries only), "0" (everything), an
    entry id `<ms>-<n>` or `<ms>`, or a time as `qt query --from` reads it."""
    text = start.strip()
    if text in ("$", "0", "0-0"):
        return text
    try:
        ms, n = parse_id(text) if "-" in text.lstrip("-") else (int(text), 0)
        return f"{ms}-{n}"
    except ValueError:
        pass
    from qt_cli.core.timeparse import parse_time

    return f"{parse_time(text) // NS_PER_MS}-0"  # TimeParseError lists the accepted forms


class StreamSource:
    """`--in valkey://…`: follows per-event streams and decodes their entries.

    Reads `kinds` (default ticks and book) of `symbols`; with no symbols it follows every symbol
    that has a stream of those kinds (SCAN), looking for new ones every few seconds. `start` is
    where to begin (`start_id`). Entries that do not decode are counted in `rejected` and described
    in `problems`.

    Without `group` it tails with XREAD. With `group` (and `consumer`, this reader's name) it reads
    with XREADGROUP, the group created (MKSTREAM) at `start` when missing: `read_entries` hands out
    `SourceEntry`s and the caller calls `ack` once everything derived from them is stored. A
    restarted consumer first gets its own unacknowledged entries again; entries pending longer
    than `claim_idle_s` on another consumer (a dead one) are taken over with XAUTOCLAIM.
    Undecodable entries are acknowledged at once (they stay in the stream, counted in `rejected`).
    Entries of a type in `skip` are not decoded: they come as `events.Passed` (their symbol,
    stream and event time).
    """

    RESCAN_S = 5.0

    def __init__(
        self,
        client: Any,
        *,
        symbols: Sequence[str] = (),
        kinds: Sequence[str] = ("ticks", "book"),
        start: str = "$",
        count: int = 1000,
        group: str | None = None,
        consumer: str | None = None,
        claim_idle_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        if group and not consumer:
            raise UsageError("a consumer group needs a consumer name (--consumer)")
        self.client = client
        self.symbols = list(symbols)
        self.kinds = list(kinds)
        self.start = start_id(start)
        self.count = count
        self.group = group or None
        self.consumer = consumer or ""
        self.claim_idle_s = claim_idle_s
        self._skip = {kind.encode(): EVENT_TYPES[kind].STREAM for kind in skip}
        self.rejected = 0
        self.claimed = 0
        self.problems: list[str] = []
        self._clock = clock
        self._positions: dict[str, str] = {}
        # Streams not read for now (without a group): a reader holding more of their entries
        # than it can use yet (waiting for another stream) pauses them; they resume where they
        # were.
        self.paused: set[str] = set()
        self._closed = False
        self._next_scan = 0.0
        self._next_claim = 0.0
        self._follow()

    def _follow(self) -> None:
        symbols = self.symbols
        if not symbols:
            found: set[str] = set()
            for kind in self.kinds:
                found.update(symbols_of(self.client, kind))
            symbols = sorted(found)
            self._next_scan = self._clock() + self.RESCAN_S
        for symbol in symbols:
            for kind in self.kinds:
                key = keys.stream_key(kind, symbol)
                if key not in self._positions:
                    self._positions[key] = self._start_id(key)

    def _start_id(self, key: str) -> str:
        if self.group is not None:
            try:
                self.client.xgroup_create(key, self.group, id=self.start, mkstream=True)
            except valkey.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            return "0"  # this consumer's own pending entries first (a restart), then ">"
        if self.start != "$":
            return self.start
        # "$" resolved once, so entries added between two reads are not skipped.
        top = last_id(self.client, key)
        return format_id(top) if top else "0-0"

    def read(self, timeout_s: float) -> list[Event]:
        """The next events (empty on timeout; the skipped types left out). With a group, `ack`
        what you handled."""
        entries = self.read_entries(timeout_s)
        return [e.event for e in entries if not isinstance(e.event, Passed)]

    def read_entries(self, timeout_s: float) -> list[SourceEntry]:
        """The next entries with their stream, id and late flag (empty on timeout)."""
        if self._closed:
            return []
        if not self.symbols and self._clock() >= self._next_scan:
            self._follow()
        if not self._positions:
            time.sleep(min(timeout_s, 0.1))
            return []
        if self.group is None:
            positions = self._positions
            if self.paused:
                positions = {k: v for k, v in positions.items() if k not in self.paused}
                if not positions:
                    time.sleep(min(timeout_s, 0.1))
                    return []
            reply = self._read(positions, block_ms=max(1, int(timeout_s * 1000)))
            return self._decode(reply, advance=True)
        entries = self.claim()
        pending = {k: v for k, v in self._positions.items() if v != ">"}
        if pending:  # own entries delivered before a restart: no blocking, no new ones yet
            reply = self._read(pending, block_ms=None)
            for key, got in reply or ():
                if not got:
                    self._positions[_name(key)] = ">"
            entries += self._decode(reply, advance=True)  # the next call reads after them
        if entries or any(v != ">" for v in self._positions.values()):
            return entries
        reply = self._read(self._positions, block_ms=max(1, int(timeout_s * 1000)))
        return self._decode(reply, advance=False)

    def _read(self, positions: dict[str, str], *, block_ms: int | None) -> list[Any]:
        """XREAD (XREADGROUP with a group) of `positions`. On a cluster, streams of several slots
        take one command per slot, sent together without blocking; when none has anything new,
        it waits `cluster.POLL_S` (a blocking read per slot would hold the others back)."""
        parts = cluster.by_slot(self.client, positions)
        if len(parts) == 1:
            return self._read_command(self.client, parts[0], block_ms) or []
        pipe = self.client.pipeline(transaction=False)
        for part in parts:
            self._read_command(pipe, part, None)
        reply = [stream for got in pipe.execute() for stream in got or ()]
        if not reply and block_ms:
            time.sleep(min(block_ms / 1000, cluster.POLL_S))
        return reply

    def _read_command(self, client: Any, positions: dict[str, str], block_ms: int | None) -> Any:
        if self.group is None:
            return client.xread(positions, count=self.count, block=block_ms)
        return client.xreadgroup(
            self.group, self.consumer, positions, count=self.count, block=block_ms
        )

    def claim(self) -> list[SourceEntry]:
        """Take over entries idle longer than `claim_idle_s` on other (dead) consumers (at most
        every `claim_idle_s / 2`; `read_entries` does it too)."""
        now = self._clock()
        if self.group is None or now < self._next_claim:
            return []
        self._next_claim = now + max(self.claim_idle_s / 2, 0.05)
        idle_ms = max(int(self.claim_idle_s * 1000), 1)
        out: list[SourceEntry] = []
        for key in self._positions:
            cursor = "0-0"
            while True:
                reply = self.client.xautoclaim(
                    key, self.group, self.consumer, idle_ms, start_id=cursor, count=self.count
                )
                cursor = _name(reply[0])
                got = [e for e in reply[1] if e and e[1] is not None]
                self.claimed += len(got)
                out += self._decode([(key, got)], advance=False)
                if cursor == "0-0" or len(out) >= self.count:
                    break
        return out

    def _decode(self, reply: Any, *, advance: bool) -> list[SourceEntry]:
        out: list[SourceEntry] = []
        bad: dict[str, list[str]] = {}
        skip = self._skip
        new = tuple.__new__  # SourceEntry without its __new__ (every field given)
        for key, entries in reply or ():
            name = _name(key)
            for raw_id, fields in entries:
                entry_id = _name(raw_id)
                if skip:
                    passed = _passed(fields, skip)
                    if passed is not None:
                        out.append(new(SourceEntry, (name, entry_id, passed, False)))
                        continue
                try:
                    event = decode_fields(fields)
                except DecodeError as exc:
                    self.rejected += 1
                    bad.setdefault(name, []).append(entry_id)
                    if len(self.problems) < 20:
                        self.problems.append(f"{name} {entry_id}: {exc}")
                    continue
                out.append(new(SourceEntry, (name, entry_id, event, fields.get(b"late") == b"1")))
            if entries and advance:
                self._positions[name] = _name(entries[-1][0])
        if bad and self.group is not None:
            for name, ids in bad.items():
                self.client.xack(name, self.group, *ids)
        return out

    def ack(self, entries: Sequence[SourceEntry]) -> int:
        """Acknowledge handled entries (a group only; call once their results are stored)."""
        if self.group is None or not entries:
            return 0
        by_key: dict[str, list[str]] = {}
        for entry in entries:
            by_key.setdefault(entry.key, []).append(entry.id)
        pipe = self.client.pipeline(transaction=False)
        for key, ids in by_key.items():
            pipe.xack(key, self.group, *ids)
        return sum(int(n) for n in pipe.execute())

    def pending_ids(self, key: str, *, until: str, count: int) -> list[str]:
        """Ids of `key` delivered to the group and not acknowledged yet (by any consumer), in id
        order, up to `until` and at most `count`."""
        if self.group is None:
            return []
        reply = self.client.xpending_range(key, self.group, "-", until, count)
        return [_name(item["message_id"]) for item in reply]

    @property
    def finished(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()


def _passed(fields: Mapping[bytes, bytes], skip: dict[bytes, str]) -> Passed | None:
    """A `Passed` for an entry of a skipped type (None: decode it; an entry whose event time does
    not read is decoded, so a bad one is still rejected and counted)."""
    stream = skip.get(fields.get(b"type"))  # type: ignore[arg-type]
    if stream is None:
        return None
    stamp = fields.get(b"ts_event")
    if not stamp or not stamp.isdigit():
        return None
    symbol = fields.get(b"symbol") or b""
    return Passed(symbol.decode(errors="replace"), stream, int(stamp))


def _name(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
