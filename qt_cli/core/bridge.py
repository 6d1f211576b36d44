"""`qt bridge`: events from ZeroMQ (or stdin, or files) into Valkey streams, exactly once.

Threads: one receiver per input (`SubSource` for ZeroMQ: seq tracking, gap recovery from the
feed's replay endpoint, rejects), one writer, one for derived data, and the caller's thread that
supervises (`run`). Receivers put what they get on a `SpillQueue` (bounded memory, spills to a
file under the data dir); the writer takes batches (N entries or T ms, whichever first) and
writes each stream's part of a batch in ONE `qt_append` function call, all streams in one round
trip; the deriver turns the stored ticks into candles (closed, and the forming one now and then)
and columnar history chunks.

Exactly once: each per-event stream keeps `hwm:<stream>` (session -> highest seq) and the
function skips what is at or below it. The bridge also keeps a watermark per input session
(`hwm:bridge:<name>`, written after each batch) so a restarted bridge asks the replay endpoint
for exactly what it missed.

After any reconnect the bridge reconciles with the server (`Bridge._reconcile`): a server that
came back with less than it acknowledged (its append-only file's tail lost) gets the lost ranges
again from the replay endpoint, through a `Refill` marker written in its place of the queue's
order. A spill file that cannot be written (full disk) makes the queue drop into recorded seq
ranges, refilled the same way, instead of stopping the bridge.

Derived data is a pure function of the stored ticks in stream order: on start, and after any
Valkey failure, the bridge rebuilds candle and chunk state from what is stored (the last chunk's
`src`, the stored forming candle, the ticks after them), so a kill or an outage never makes
candles or chunks disagree with the ticks.

See docs/bridge.md.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice, repeat
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import valkey

from qt_cli.core import keys
from qt_cli.core.candles import (
    DEFAULT_TIMEFRAMES,
    CandleBuilder,
    id_key,
    timeframe_ns,
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
from qt_cli.core.endpoints import Endpoint, parse_endpoint
from qt_cli.core.errors import DecodeError, StoreUnavailable, UsageError
from qt_cli.core.events import (
    NS_PER_MS,
    Candle,
    Event,
    Trade,
    decode_dict,
    decode_fields,
    iso_local,
    now_ns,
)
from qt_cli.core.store.writer import (
    DEADLETTER_MAXLEN,
    DEFAULT_MAXLEN,
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
    FCALL,
    GAPS_MAXLEN,
    RAW_MAX_BYTES,
    TRADE_NAMES,
    TRADE_NAMES_HISTORY,
    TRADE_NAMES_WITH_NAMES,
    TRADE_NAMES_WITH_NAMES_HISTORY,
    AppendResult,
    StreamBatch,
    StreamWriter,
    append_result,
    entry_history,
    entry_names,
    entry_trade,
    event_values,
    is_out_of_order,
    trade_entry,
)

log = logging.getLogger(__name__)

STAGE = "bridge"
STATS_TTL_S = 300
PARTIAL_MAXLEN = 10
DEFAULT_BATCH_SIZE = 2_000
DEFAULT_BATCH_MS = 1.0
DEFAULT_BUFFER_EVENTS = 200_000
RESUME_PAGE = 5_000
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0
OUTAGE_REPORT_EVERY_S = 5.0
DERIVE_QUEUE_MAX = 1_000_000  # ticks waiting for candles/chunks before the backlog is re-read
DERIVE_BATCH = 2_000  # ticks the deriver gathers (or waits DERIVE_LINGER_S for) per pass
DERIVE_LINGER_S = 0.05
TAIL_IDLE_S = 1.0
TAIL_CHECK_EVERY_S = 2.0
SWITCH_INTERVAL_S = 0.0005  # interpreter-lock slice while the bridge runs (default 5 ms)
GC_EVERY_S = 30.0  # reference cycles are collected this often instead of automatically
LATENCY_WINDOW = 4_096  # samples kept for p50/p99 (sorted once a second)
LATENCY_STRIDE = 8  # latency of every 8th written event
WRITE_TIMEOUT_S = 10.0

Say = Callable[[str], None]


def _log_say(message: str) -> None:
    log.warning("%s", message)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def watermark_key(name: str) -> str:
    """Hash of input session -> highest seq the bridge `name` has fully written."""
    return keys.hwm_key(f"bridge:{name}")


def partial_key(timeframe: str, symbol: str) -> str:
    """The stream holding snapshots of the candle still forming (closed=0), newest last."""
    return keys.partial_candle_key(keys.candle_kind(timeframe), symbol)


# --- the queue between receivers and the writer ------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """Input that cannot be stored as an event: the fields of one `stream:deadletter` entry."""

    reason: str
    raw: bytes
    source: str
    topic: str = ""
    field: str = ""
    ts_init: int = 0

    def to_fields(self) -> dict[str, str | bytes]:
        return {
            "reason": self.reason,
            "field": self.field,
            "raw": self.raw[:RAW_MAX_BYTES],
            "source": self.source,
            "topic": self.topic,
            "ts_init": str(self.ts_init),
        }


@dataclass(frozen=True)
class GapRecord:
    """One `stream:gaps` entry (see zmq_io.Gap)."""

    session: str
    from_seq: int
    to_seq: int
    recovered: bool
    reason: str
    endpoint: str
    ts_init: int

    def to_fields(self) -> dict[str, str]:
        return {
            "session": self.session,
            "from_seq": str(self.from_seq),
            "to_seq": str(self.to_seq),
            "recovered": "1" if self.recovered else "0",
            "reason": self.reason,
            "endpoint": self.endpoint,
            "ts_init": str(self.ts_init),
        }


@dataclass
class Refill:
    """A marker in the write queue: seq ranges to fetch again from the feed's replay endpoint and
    write at this point of the order, before anything queued behind it.

    Made when Valkey comes back with less than it acknowledged (`Bridge._reconcile`) and when the
    spill file could not take what arrived (`SpillQueue`: the disk is full). The writer fetches a
    page at a time and puts it back in front of the queue, followed by this marker with the rest
    (so memory stays bounded and a stop while Valkey is down keeps the marker in the spill file);
    when a session's range is done, its recovered and lost parts go to `stream:gaps`. It must be
    written before anything later of the same session: the marks skip what is at or below them.
    """

    ranges: dict[str, list[int]]  # session -> [next seq to fetch, last seq]
    reason: str
    recovered: dict[str, list[list[int]]] = field(default_factory=dict)  # session -> runs [a, b]
    lost: dict[str, list[list[Any]]] = field(default_factory=dict)  # session -> [a, b, why]

    def describe(self) -> str:
        return ", ".join(f"{s} {a}..{b}" for s, (a, b) in sorted(self.ranges.items()))


def _add_range(ranges: dict[str, list[int]], session: str, first: int, last: int) -> None:
    """Widen `ranges[session]` to cover first..last."""
    span = ranges.get(session)
    if span is None:
        ranges[session] = [first, last]
    else:
        span[0] = min(span[0], first)
        span[1] = max(span[1], last)


def _session_seq(item: Item) -> tuple[str, int]:
    """(session, seq) of an event or Row; ('', 0) for anything else."""
    if type(item) is tuple:
        entry = item[2]  # type: ignore[misc]
        return entry[E_SESSION], entry[E_SEQ]
    if isinstance(item, Event):
        return getattr(item, "session", "") or "", getattr(item, "seq", 0) or 0
    return "", 0


# A trade as the bridge carries it from the receiver to the writer and the deriver: a plain
# tuple (stream key, schema, entry) with the entry's values in the order the stream stores them
# (`writer.trade_entry`). No Trade object per tick: decoding builds this straight from the wire
# dict (`tick_row`), the writer appends the entry, candles and chunks read its fields.
Row = tuple[str, tuple[str, ...], tuple[Any, ...]]
Item = Event | DeadLetter | GapRecord | Refill | Row


@dataclass
class _Batch:
    """A batch of the writer, grouped per stream and packed into one pipeline of commands."""

    items: list[Item]
    batches: list[StreamBatch]
    placed: dict[str, list[Any]]  # stream key -> its events (Rows for trades), in batch order
    deadletters: list[DeadLetter]
    gaps: list[GapRecord]
    marks: dict[str, int]  # input session -> highest seq in the batch
    stream_marks: dict[str, dict[str, int]]  # stream key -> session -> highest seq
    per_session: dict[str, int]
    packed: list[bytes]
    ncommands: int
    sent: bool = False
    watermark: dict[str, int] | None = None  # an earlier batch's marks, sent before this one


def _xadd_command(key: str, fields: dict[str, Any], maxlen: int) -> tuple[Any, ...]:
    flat: list[Any] = []
    for name, value in fields.items():
        flat += (name, value)
    return (b"XADD", key, b"MAXLEN", b"~", maxlen, b"*", *flat)


def _item_to_line(item: Item) -> bytes:
    if type(item) is tuple:
        _, names, entry = item  # type: ignore[misc]
        if entry[E_PRICE] != "" and entry[E_VOLUME] != "":
            # The wire dict the Row was made of (what Trade.to_dict gives), without a Trade.
            wire = dict(zip(names, entry[1:], strict=True))
            wire["is_edit"] = wire["is_edit"] == "1"
            if "history" in wire:
                wire["history"] = True
            return orjson.dumps({"e": wire})
        item = entry_trade(entry)
    if isinstance(item, Event):
        return orjson.dumps({"e": item.to_dict()}, option=orjson.OPT_SERIALIZE_NUMPY)
    if isinstance(item, DeadLetter):
        data = {**item.__dict__, "raw": item.raw.decode("latin-1")}
        return orjson.dumps({"d": data})
    if isinstance(item, Refill):
        return orjson.dumps({"r": item.__dict__})
    return orjson.dumps({"g": item.__dict__})


def _item_from_line(line: bytes) -> Item:
    data = orjson.loads(line)
    if "e" in data:
        wire = data["e"]
        return tick_row(wire) or decode_dict(wire)  # a trade straight to its Row, as received
    if "d" in data:
        d = data["d"]
        return DeadLetter(**{**d, "raw": d["raw"].encode("latin-1")})
    if "r" in data:
        return Refill(**data["r"])
    return GapRecord(**data["g"])


SPILL_WRITE_LINES = 4_096  # lines per write to the spill file (a failed write drops these on)


class SpillQueue:
    """FIFO between receivers and the writer: up to `max_memory` items in memory, then a file.

    Once spilling starts, every new item goes to the file until the file is drained, so order is
    kept: memory holds the oldest items, the file the newer ones. A spill file left by an earlier
    run is drained first (its events are written once: the high-water marks skip any repeat).

    When the file cannot be written (its disk is full, …) nothing raises: the queue says once
    which path failed, cuts what the failed write left, and from then on drops the events that
    arrive, recording per session the seq range it dropped (gap records and dead letters are still
    kept, in memory). When the writer has taken everything queued before the drop, `take` hands it
    a `Refill` of those ranges (fetched again from the replay endpoint, written in that place of
    the order) and the queue accepts again. `Refill` markers put back with `push_front` are
    always taken alone.
    """

    def __init__(
        self, path: Path, *, max_memory: int = DEFAULT_BUFFER_EVENTS, warn: Say | None = None
    ) -> None:
        self.path = path
        self.max_memory = max(1, max_memory)
        self._warn = warn or _log_say
        self._mem: deque[Item] = deque()
        self._cond = threading.Condition()
        self._file: Any = None
        self._read_offset = 0
        self._markers = 0  # Refill markers in memory
        self._dropping: dict[str, list[int]] | None = None  # session -> [first, last] dropped
        self._drop_reason = ""
        self._full_said = False
        self.spilled_unread = 0
        self.spilled_total = 0
        self.dropped_total = 0  # events dropped because the spill file could not take them
        self.dropped_unnumbered = 0  # of those, events without (session, seq): not refillable
        self.recovered_from_disk = 0
        self.persisted_refill: Refill | None = None  # what `persist` recorded as seq ranges
        if path.exists() and path.stat().st_size > 0:
            self.spilled_unread = self._count_lines()
            self.recovered_from_disk = self.spilled_unread
            if self.spilled_unread == 0:
                path.unlink()

    def _count_lines(self) -> int:
        """Lines of a spill file left by an earlier run; a torn last line (a write cut short) is
        cut off, so what is appended now starts on a line of its own."""
        count = 0
        good = 0
        with self.path.open("rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break
                good += len(line)
                if line.strip():
                    count += 1
            size = handle.seek(0, os.SEEK_END)
        if size != good:
            try:
                os.truncate(self.path, good)
            except OSError as exc:
                log.warning("cannot cut the torn last line of %s: %s", self.path, exc)
        return count

    def __len__(self) -> int:
        with self._cond:
            return len(self._mem) + self.spilled_unread + (self._dropping is not None)

    @property
    def spilling(self) -> bool:
        return self.spilled_unread > 0

    @property
    def dropping(self) -> bool:
        """True while arriving events are dropped (the spill file could not take them)."""
        return self._dropping is not None

    def put(self, items: Sequence[Item]) -> None:
        if not items:
            return
        with self._cond:
            if (
                self.spilled_unread == 0
                and self._dropping is None
                and len(self._mem) + len(items) <= self.max_memory
            ):
                self._mem.extend(items)
            elif self._dropping is not None:
                self._drop(items)
            else:
                room = 0 if self.spilled_unread else max(0, self.max_memory - len(self._mem))
                self._mem.extend(items[:room])
                self._spill(items[room:])
            self._cond.notify_all()

    def _spill(self, items: Sequence[Item]) -> None:
        """Append items to the spill file; what it cannot take (disk full) is dropped."""
        if not items:
            return
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("ab", buffering=0)
        except OSError as exc:
            self._start_dropping(exc)
            self._drop(items)
            return
        for start in range(0, len(items), SPILL_WRITE_LINES):
            part = items[start : start + SPILL_WRITE_LINES]
            data = memoryview(b"\n".join(_item_to_line(i) for i in part) + b"\n")
            fd = self._file.fileno()
            size = os.fstat(fd).st_size
            try:
                while data:
                    data = data[self._file.write(data) :]
            except OSError as exc:
                try:
                    os.ftruncate(fd, size)  # no torn line: the next write starts a line
                except OSError:
                    log.debug("cutting %s back to %d bytes failed", self.path, size)
                self._start_dropping(exc)
                self._drop(items[start:])
                return
            self.spilled_unread += len(part)
            self.spilled_total += len(part)

    def _start_dropping(self, exc: OSError) -> None:
        if self._dropping is None:
            self._dropping = {}
        why = exc.strerror or str(exc)
        self._drop_reason = f"dropped: the spill file {self.path} could not take them ({why})"
        if not self._full_said:
            self._full_said = True
            self._warn(
                f"bridge: cannot write the spill file {self.path}: {exc}; dropping what arrives "
                "until the writer catches up (the dropped seq ranges are recorded and fetched "
                "again from the replay endpoint once Valkey is back)"
            )

    def _drop(self, items: Sequence[Item]) -> None:
        """Record items the spill file cannot take: (session, seq) ranges, to fetch again."""
        ranges = self._dropping
        assert ranges is not None
        for item in items:
            session, seq = _session_seq(item)
            if session and seq:
                _add_range(ranges, session, seq, seq)
                self.dropped_total += 1
            elif isinstance(item, Refill):
                for marked, (first, last) in item.ranges.items():
                    _add_range(ranges, marked, first, last)
            elif isinstance(item, GapRecord | DeadLetter):
                self._mem.append(item)  # small and rare; their order does not matter
            else:
                self.dropped_total += 1
                self.dropped_unnumbered += 1

    def _end_dropping(self) -> list[Item]:
        """The Refill of what was dropped (the writer reached the place of the drop)."""
        ranges, self._dropping = self._dropping or {}, None
        self._full_said = False
        if self.spilled_unread == 0:
            self._truncate()  # nothing in it (the failed writes were cut): start afresh
        if self.dropped_unnumbered:
            self._warn(
                f"bridge: LOST {self.dropped_unnumbered:,} events without session/seq that the "
                f"spill file {self.path} could not take (they cannot be fetched again)"
            )
            self.dropped_unnumbered = 0
        return [Refill(ranges, self._drop_reason)] if ranges else []

    def take(self, max_items: int, *, wait_s: float, linger_s: float = 0.0) -> list[Item]:
        """Up to `max_items`, waiting up to `wait_s` for the first and `linger_s` for more."""
        with self._cond:
            if not self._mem and not self.spilled_unread and self._dropping is None:
                self._cond.wait(wait_s)
            if linger_s > 0 and 0 < len(self._mem) < max_items and not self.spilled_unread:
                deadline = time.monotonic() + linger_s
                while len(self._mem) < max_items:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            mem = self._mem
            if mem:
                n = min(max_items, len(mem))
                if self._markers:  # a Refill goes alone: what is behind it waits for it
                    if type(mem[0]) is Refill:
                        self._markers -= 1
                        return [mem.popleft()]
                    for i, item in enumerate(islice(mem, n)):
                        if type(item) is Refill:
                            n = i
                            break
                return [mem.popleft() for _ in range(n)]
            if self.spilled_unread:
                return self._read_spill(max_items)
            if self._dropping is not None:
                return self._end_dropping()
            return []

    def _read_spill(self, max_items: int) -> list[Item]:
        out: list[Item] = []
        with self.path.open("rb") as handle:
            handle.seek(self._read_offset)
            while len(out) < max_items and self.spilled_unread:
                line = handle.readline()
                if not line:
                    self.spilled_unread = 0  # the file ended early (a torn last line)
                    break
                if not line.strip():
                    self._read_offset += len(line)
                    continue
                try:
                    item = _item_from_line(line)
                except (orjson.JSONDecodeError, DecodeError, KeyError, TypeError) as exc:
                    item = DeadLetter(f"unreadable spill line: {exc}", line, str(self.path))
                if type(item) is Refill and out:
                    break  # a marker goes alone: the next take
                self._read_offset += len(line)
                self.spilled_unread -= 1
                out.append(item)
                if type(item) is Refill:
                    break
        if self.spilled_unread == 0:
            self._truncate()
        return out

    def _truncate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)
        self._read_offset = 0

    def push_front(self, items: Sequence[Item]) -> None:
        """Put items back at the head (a batch the writer could not store, a Refill's page)."""
        with self._cond:
            self._mem.extendleft(reversed(items))
            self._markers += sum(1 for i in items if type(i) is Refill)
            self._cond.notify_all()

    def persist(self) -> int:
        """Move everything to the spill file, oldest first (on shutdown while Valkey is down).

        What the file cannot take (disk full) is dropped from the newest end and recorded as a
        Refill line at the end of the file when that still fits (else its ranges are said
        loudly); a restarted bridge also fetches everything after its watermark. Returns how
        many items the file holds."""
        with self._cond:
            unread: list[Item] = []
            while self.spilled_unread:
                unread += self._read_spill(self.spilled_unread)
            everything = [*self._mem, *unread]
            self._mem.clear()
            self._markers = 0
            self._truncate()
            dropped, self._dropping = self._dropping, None  # dropped earlier: the newest of all
            self._spill(everything)
            if dropped is not None:
                if self._dropping is None:
                    self._dropping = dropped
                else:
                    for session, (first, last) in dropped.items():
                        _add_range(self._dropping, session, first, last)
            kept = self.spilled_unread
            self.persisted_refill = None
            if self._dropping:
                marker = Refill(self._dropping, self._drop_reason)
                self._dropping = None
                self._spill([marker])
                if self._dropping is None:
                    self.persisted_refill = marker
                else:
                    self._warn(
                        f"bridge: LOST from {self.path} (disk full): {marker.describe()}; a "
                        "restarted bridge fetches only what follows its watermark again"
                    )
            self._dropping = None
            if self._mem:
                self._warn(
                    f"bridge: LOST {len(self._mem):,} gap records and dead letters the spill "
                    f"file {self.path} could not take"
                )
                self._mem.clear()
            if self._file is not None:
                self._file.close()
                self._file = None
            return kept

    def close(self) -> None:
        with self._cond:
            if self._file is not None:
                self._file.close()
                self._file = None


# --- configuration and counters ------------------------------------------------------------------


@dataclass(frozen=True)
class BridgeConfig:
    """Everything `qt bridge` needs; units in the names."""

    inputs: tuple[str, ...]
    output: str
    symbols: tuple[str, ...] = ()
    replay: str | None = None  # the feed's replay endpoint; None: gaps are recorded as lost
    timeframes: tuple[str, ...] = DEFAULT_TIMEFRAMES
    maxlen: int = DEFAULT_MAXLEN
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_ms: float = DEFAULT_BATCH_MS
    buffer_events: int = DEFAULT_BUFFER_EVENTS
    spill_dir: Path = Path()
    name: str = "default"
    candles: bool = True
    chunks: bool = True
    catch_up: bool = True
    replay_timeout_s: float = 2.0
    rcvhwm: int = 200_000  # ZeroMQ receive high-water mark per input, in messages
    duration_s: float | None = None
    stop_after: int | None = None
    stats_interval_s: float = 1.0
    password: str | None = field(default=None, repr=False)
    time_unit: str | None = None  # files and stdin: unit of their ts_* columns (s, ms, us, ns)

    def __post_init__(self) -> None:
        for symbol in self.symbols:
            if not keys.valid_symbol(symbol):  # the one rule: a filter that could never match
                raise UsageError(
                    f"symbol {symbol!r}: use letters, digits, '.', '_' or '-' (e.g. WDOQ25)"
                )

    @property
    def spill_path(self) -> Path:
        return self.spill_dir / f"{self.name}.spill"


@dataclass
class BridgeStats:
    """Counters of a bridge run (also published to `qt:stats:bridge:<name>`)."""

    received: int = 0
    written: int = 0
    duplicates: int = 0
    batches: int = 0
    late: int = 0
    filtered: int = 0
    deadletters: int = 0
    gaps_detected: int = 0
    gaps_recovered: int = 0
    gaps_lost: int = 0
    messages_recovered: int = 0
    messages_lost: int = 0
    candles: int = 0
    candle_skipped: int = 0
    chunks: int = 0
    spilled: int = 0
    outages: int = 0
    outage_s: float = 0.0
    lag_ms: float = float("nan")
    latency_p50_ms: float = float("nan")
    latency_p99_ms: float = float("nan")
    rate: float = 0.0
    elapsed_s: float = 0.0
    stopped_by: str = ""


@dataclass
class _FeedRun:
    received: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)
    rate_base: int = 0
    rate: float = 0.0
    gaps_recovered: int = 0
    gaps_lost: int = 0


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

    @property
    def pending(self) -> int:
        return self._n

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
        self._pieces = []
        self._n = 0
        self._src = ""
        return chunk


def _first_after(ids: Sequence[str], mark: tuple[int, int]) -> int:
    """Index of the first id (ids ascend) beyond `mark`; len(ids) when none is."""
    for i, entry_id in enumerate(ids):
        if id_key(entry_id) > mark:
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


# --- inputs ------------------------------------------------------------------------------------


class _Input:
    """One input endpoint and its receiver thread."""

    def __init__(self, endpoint: Endpoint, source: Any) -> None:
        self.endpoint = endpoint
        self.source = source
        self.thread: threading.Thread | None = None
        self.finished = False
        self.error: BaseException | None = None


_TICK_KEYS: dict[str, str] = {}  # symbol -> stream:ticks:{SYM}, for valid tickers
_INF = float("inf")
_AGGRESSORS = frozenset(("buy", "sell", "none"))


def tick_row(data: dict[str, Any]) -> Row | None:
    """The bridge's decoding of a wire dict: a trade becomes a Row, anything else None.

    Takes the canonical form `Trade.to_dict()` writes (every field of exactly the type the
    publisher writes) and builds the stream entry directly, without a Trade object; None leaves
    a message to the generic decoding (other event types, unusual forms, a symbol that is not a
    valid ticker: the writer dead-letters those). Invalid values raise DecodeError with the
    generic decoder's message. `timestamp`, `timestamp_ms` and `recv_ns` are derived from
    `ts_event` and `ts_init` as `Trade.to_fields` does, whatever the wire says.
    """
    g = data.get
    if g("type") != "tick":
        return None
    ts = g("ts_event")
    ts_init = g("ts_init")
    symbol = g("symbol")
    aggressor = g("aggressor")
    price = g("price")
    volume = g("volume", 0.0)
    quantity = g("quantity", 0)
    trade_id = g("trade_id", 0)
    buyer = g("buyer", 0)
    seller = g("seller", 0)
    trade_type = g("trade_type", 0)
    session = g("session", "")
    seq = g("seq", 0)
    if "origin" in data:  # a replayed record: stored under its own identity (docs/feed.md)
        session = g("origin")
        seq = g("origin_seq")
        if not (type(session) is str and session and type(seq) is int and seq > 0):
            return None  # the generic decoder names the bad field
    is_edit = g("is_edit", False)
    if type(price) is not float:
        if type(price) is not int:
            return None
        price = float(price)
    if type(volume) is not float:
        if type(volume) is not int:
            return None
        volume = float(volume)
    if not (
        type(ts) is int
        and type(ts_init) is int
        and type(symbol) is str
        and type(aggressor) is str
        and type(quantity) is int
        and type(trade_id) is int
        and type(buyer) is int
        and type(seller) is int
        and type(trade_type) is int
        and type(session) is str
        and type(seq) is int
        and type(is_edit) is bool
    ):
        return None
    if not (
        symbol and ts > 0 and 0.0 < price < _INF and quantity >= 0 and aggressor in _AGGRESSORS
    ):
        decode_dict(data)  # raises the generic decoder's DecodeError
        return None
    key = _TICK_KEYS.get(symbol)
    if key is None:
        if not keys.valid_symbol(symbol):
            return None
        key = _TICK_KEYS[symbol] = keys.stream_key("ticks", symbol)
    ms = ts // NS_PER_MS
    entry = (
        ms,
        "tick",
        symbol,
        iso_local(ts),
        ms,
        trade_id,
        price,
        volume,
        quantity,
        buyer,
        seller,
        trade_type,
        "1" if is_edit else "0",
        aggressor,
        ts,
        ts_init,
        ts_init,
        session,
        seq,
    )
    if "buyer_name" not in data and "seller_name" not in data and "history" not in data:
        return key, TRADE_NAMES, entry
    buyer_name = g("buyer_name", "")
    seller_name = g("seller_name", "")
    history = g("history", False)
    if type(buyer_name) is not str or type(seller_name) is not str or type(history) is not bool:
        return None
    if buyer_name or seller_name:
        entry += (buyer_name, seller_name)
        if history:
            return key, TRADE_NAMES_WITH_NAMES_HISTORY, (*entry, "1")
        return key, TRADE_NAMES_WITH_NAMES, entry
    if history:
        return key, TRADE_NAMES_HISTORY, (*entry, "1")
    return key, TRADE_NAMES, entry


def trade_row(trade: Trade, key: str) -> Row:
    """A decoded Trade (files, stdin, the spill file) as a Row."""
    names, entry = trade_entry(trade)
    return key, names, entry


def _open_input(config: BridgeConfig, endpoint: Endpoint, known: dict[str, int]) -> Any:
    if endpoint.kind == "zmq":
        from qt_cli.core.zmq_io import SubSource

        return SubSource(
            endpoint,
            decode=tick_row,
            symbols=config.symbols,
            replay=config.replay if config.replay else None,
            catch_up=config.catch_up,
            known=known,
            replay_timeout_s=config.replay_timeout_s,
            rcvhwm=config.rcvhwm,
        )
    if endpoint.kind == "valkey":
        raise UsageError(
            f"--in {endpoint.uri}: the bridge reads ZeroMQ endpoints, '-' or files; "
            "Valkey is where it writes (--out)"
        )
    from qt_cli.core.endpoints import open_source

    return open_source(endpoint, time_unit=config.time_unit)


class _TailCheck:
    """Finds messages lost at the end of a burst, which no later message reveals as a gap.

    When an input has been quiet for TAIL_IDLE_S, asks its SubSource (every TAIL_CHECK_EVERY_S
    at most) to compare what it received with what the feed journaled (`check_tail`); the
    missing seqs then arrive through the source's normal gap recovery. Runs on the input's own
    thread (it owns the SubSource).
    """

    def __init__(self, source: Any) -> None:
        self.source = source
        self.quiet_since = time.monotonic()
        self.last_check = 0.0

    def after_read(self, got_events: bool) -> None:
        now = time.monotonic()
        if got_events:
            self.quiet_since = now
            return
        if now - self.quiet_since < TAIL_IDLE_S or now - self.last_check < TAIL_CHECK_EVERY_S:
            return
        self.last_check = now
        from qt_cli.core.errors import UnavailableError

        try:
            self.source.check_tail()
        except UnavailableError as exc:
            log.debug("tail check of %s: %s", self.source.uri, exc)


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
        self._reset = False
        self._done = False
        self._pending_candles: list[tuple[Candle, str]] = []
        self._partial_dirty: set[str] = set()
        self._last_partials = 0.0
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
                    while (
                        self._queued < DERIVE_BATCH
                        and not (self._done or self._reset)
                        and (wait_s := deadline - time.monotonic()) > 0
                    ):
                        self._cond.wait(wait_s)
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
                    if isinstance(exc, valkey.ResponseError) and not _is_transient(exc):
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
            if isinstance(exc, valkey.ResponseError) and not _is_transient(exc):
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
        state = _SymbolState(builders, ColumnChunker() if config.chunks else None, None)
        if config.chunks:
            chunk_src = self.writer.last_chunk_src(symbol)
            state.chunk_after = id_key(chunk_src) if chunk_src else None
            starts.append(chunk_src)
        self.states[symbol] = state
        start = min(starts, key=id_key)
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
            state.skip_until = id_key(last)
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


class Bridge:
    """The bridge runner: `run()` blocks until stopped; `stop()` from any thread or a signal."""

    def __init__(
        self,
        config: BridgeConfig,
        *,
        say: Say = _log_say,
        warn: Say | None = None,
        client: valkey.Valkey | None = None,
    ) -> None:
        if not config.inputs:
            raise UsageError("no input: give --in tcp://…, '-' or a file")
        for tf in config.timeframes:
            timeframe_ns(tf)
        if config.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        self.config = config
        self.say = say
        self.warn = warn or say
        self.stats = BridgeStats()
        self._endpoints = [parse_endpoint(uri) for uri in config.inputs]
        out = parse_endpoint(config.output)
        if out.kind != "valkey":
            raise UsageError(
                f"--out {out.uri}: the bridge writes to Valkey (valkey://host:port/db)"
            )
        self._out = out
        from qt_cli.core import store

        self.client = client or store.connect(
            out, password=config.password, timeout_s=WRITE_TIMEOUT_S
        )
        self.writer = StreamWriter(self.client, maxlen=config.maxlen)
        self.writer.ensure_library()
        self.queue = SpillQueue(config.spill_path, max_memory=config.buffer_events, warn=self.warn)
        if self.queue.recovered_from_disk:
            self.say(
                f"bridge: {self.queue.recovered_from_disk:,} events left in {config.spill_path} "
                "by an earlier run; writing them first"
            )
        self._symbols = frozenset(config.symbols)
        self._stop = threading.Event()
        self._inputs_done = threading.Event()
        self._writer_done = threading.Event()
        self._writer_error: BaseException | None = None
        self._inputs: list[_Input] = []
        self._count_lock = threading.Lock()
        self._started_ns = now_ns()
        self._started_mono = time.monotonic()
        self._host = socket.gethostname()
        self._stats_key = keys.stats_key(STAGE, config.name)
        self._watermark_key = watermark_key(config.name)
        self._watermark: dict[str, int] = {}
        self._watermark_due: dict[str, int] = {}  # confirmed marks not sent to Valkey yet
        # stream key -> session -> highest seq the server confirmed it holds (written or skipped
        # as a duplicate): compared with its marks after a reconnect (`_reconcile`).
        self._confirmed: dict[str, dict[str, int]] = {}
        self._run_id = self._server_run_id()
        self._last_server_check = 0.0
        self._replay_client: Any = None  # the writer thread's, for Refills
        self._feeds: dict[str, _FeedRun] = {}
        self._rate_base = 0
        self._rate_mono = time.monotonic()
        self._latencies: deque[int] = deque(maxlen=LATENCY_WINDOW)
        self._last_stats_mono = 0.0
        self._key_cache: dict[tuple[str, str], str] = {}
        self.deriver = _Deriver(self)
        self._outage_since: float | None = None
        self._conn: Any = None  # the writer's connection (see _connection)
        pool = self.client.connection_pool
        # Packs the writer's commands; never connected (packing needs no socket).
        self._packer: Any = pool.connection_class(**pool.connection_kwargs)
        self._closed = False
        self._watermark = self._load_watermark()
        # Subscribe now rather than in run(): a SUB socket misses what is published before its
        # subscription reaches the publisher, and a burst that ends before then has no later
        # message to reveal the gap. ZeroMQ inputs come first; the others open in run().
        try:
            for endpoint in self._endpoints:
                if endpoint.kind != "zmq":
                    break
                source = _open_input(config, endpoint, dict(self._watermark))
                self._inputs.append(_Input(endpoint, source))
        except BaseException:
            self.close()
            raise

    # -- lifecycle --

    def stop(self, reason: str = "stopped") -> None:
        """Ask the bridge to finish: stop receiving, write what was received, return from run()."""
        if not self._stop.is_set():
            self.stats.stopped_by = self.stats.stopped_by or reason
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, on_progress: Callable[[BridgeStats], None] | None = None) -> BridgeStats:
        """Receive and write until stopped, `duration_s`, `stop_after` or the end of every input.

        `on_progress(stats)` is called about four times a second from this thread.
        """
        switch_interval = sys.getswitchinterval()
        # The receiver, the writer and the deriver share one interpreter lock; the default 5 ms
        # slices let the receiver keep the writer from handing Valkey its next batch. Shorter
        # slices keep the server busy (measured: ~80k -> ~90k ticks/s sustained).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        # Per-event objects die by reference counting; the automatic cycle collector only
        # walked the rows in flight, again and again (~2 us per tick, pauses of tens of ms).
        # What exists now is frozen out of its sight and `_run` collects every GC_EVERY_S.
        gc_enabled, gc_frozen = gc.isenabled(), gc.get_freeze_count()
        gc.freeze()
        gc.disable()
        try:
            return self._run(on_progress)
        finally:
            sys.setswitchinterval(switch_interval)
            if not gc_frozen:  # a caller's own freeze stays as it was
                gc.unfreeze()
            if gc_enabled:
                gc.enable()

    def _run(self, on_progress: Callable[[BridgeStats], None] | None) -> BridgeStats:
        for endpoint in self._endpoints[len(self._inputs) :]:
            source = _open_input(self.config, endpoint, dict(self._watermark))
            self._inputs.append(_Input(endpoint, source))
        self._catch_up_on_start()
        for inp in self._inputs:
            inp.thread = threading.Thread(
                target=self._receive, args=(inp,), name=f"qt-bridge-in:{inp.endpoint.uri}"
            )
            inp.thread.daemon = True
            inp.thread.start()
        self.deriver.start()
        writer = threading.Thread(target=self._write_loop, name="qt-bridge-writer", daemon=True)
        writer.start()
        deadline = self._started_mono + self.config.duration_s if self.config.duration_s else None
        last_progress = 0.0
        last_gc = time.monotonic()
        try:
            while not self._writer_done.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self.stop("duration")
                if now - last_gc >= GC_EVERY_S:
                    last_gc = now
                    gc.collect()
                if all(i.finished for i in self._inputs):
                    self._inputs_done.set()  # the writer drains the queue and returns
                if on_progress is not None and now - last_progress >= 0.25:
                    last_progress = now
                    on_progress(self.stats)
                self._writer_done.wait(0.05)
        finally:
            self._stop.set()
            for inp in self._inputs:
                if inp.thread is not None:
                    inp.thread.join(timeout=10)
            self._inputs_done.set()
            writer.join()
        self.stats.elapsed_s = time.monotonic() - self._started_mono
        if self._writer_error is not None:
            raise self._writer_error
        for inp in self._inputs:
            if inp.error is not None:
                raise inp.error
        if not self.stats.stopped_by:
            self.stats.stopped_by = "end of input"
        return self.stats

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for inp in self._inputs:
            try:
                inp.source.close()
            except Exception:  # closing must not hide the run's own outcome
                log.debug("closing %s failed", inp.endpoint.uri, exc_info=True)
        self.queue.close()
        try:
            self.client.close()
        except Exception:
            log.debug("closing the Valkey client failed", exc_info=True)

    # -- receiving --

    def _catch_up_on_start(self) -> None:
        """Fetch what the sessions this bridge wrote before published while it was away.

        The subscribers would also notice on their first live message, but a feed may be quiet
        (or done) by now. Only sessions in the watermark are asked for: a fresh bridge takes the
        sessions it hears (and their start, with catch-up) from the subscribers.
        """
        zmq_sources = [i.source for i in self._inputs if i.endpoint.kind == "zmq"]
        if not (self.config.replay and self.config.catch_up and zmq_sources and self._watermark):
            return
        from qt_cli.core import zmq_io
        from qt_cli.core.errors import UnavailableError

        client = zmq_io.ReplayClient(self.config.replay, timeout_s=self.config.replay_timeout_s)
        try:
            try:
                held = client.info()
            except UnavailableError as exc:
                log.info("no catch-up on start: %s", exc)
                return
            for session, info in held.items():
                done = self._watermark.get(session)
                last = int(info.get("last_seq") or 0)
                if done is None or last <= done:
                    continue
                try:
                    self.fetch_into_queue(client, session, done + 1, last, reason="bridge restart")
                except UnavailableError as exc:
                    self.warn(f"bridge: catch-up of {session} after seq {done} failed: {exc}")
                    continue
                for source in zmq_sources:
                    source.set_known(session, last)
        finally:
            client.close()

    def fetch_into_queue(
        self, client: Any, session: str, from_seq: int, to_seq: int, *, reason: str
    ) -> None:
        """Fetch a range from the replay endpoint a page at a time into the write queue (memory
        stays bounded: the queue spills), then record it in stream:gaps (recovered and lost
        parts)."""
        from qt_cli.core.zmq_io import missing_ranges, not_journaled

        endpoint = client.endpoint.uri
        runs: list[list[int]] = []
        missing: list[tuple[int, int]] = []
        first: int | None = None  # the lowest seq the journal holds (retention trims the rest)
        start = from_seq
        while start <= to_seq:
            page = client.page(session, start, to_seq)
            first = page.first if page.first is not None else first
            seqs = [m[0] for m in page.messages if start <= m[0] <= to_seq]
            end = to_seq if page.next is None else page.next - 1
            missing += missing_ranges(start, end, seqs)
            for seq in seqs:
                if runs and seq == runs[-1][1] + 1:
                    runs[-1][1] = seq
                else:
                    runs.append([seq, seq])
            self._queue_messages(page.messages, endpoint)
            if page.next is None:
                break
            start = page.next
        now = now_ns()
        gaps: list[Item] = [GapRecord(session, a, b, True, reason, endpoint, now) for a, b in runs]
        gaps += [
            GapRecord(
                session,
                a,
                b,
                False,
                f"{reason}; {not_journaled(first, b, endpoint)}",
                endpoint,
                now,
            )
            for a, b in missing
        ]
        self.queue.put(gaps)

    def _queue_messages(self, messages: list[tuple[int, bytes, bytes]], endpoint: str) -> None:
        self.queue.put(self._decode_messages(messages, endpoint))

    def _decode_messages(
        self, messages: list[tuple[int, bytes, bytes]], endpoint: str
    ) -> list[Item]:
        """Replayed messages as queue items (events, Rows, dead letters), counted as received."""
        items: list[Item] = []
        now = now_ns()
        filtered = 0
        for _seq, topic, payload in messages:
            try:
                data = orjson.loads(payload)
                event = (tick_row(data) if isinstance(data, dict) else None) or decode_dict(data)
            except (orjson.JSONDecodeError, DecodeError) as exc:
                field_ = exc.field if isinstance(exc, DecodeError) else None
                items.append(
                    DeadLetter(
                        str(exc),
                        payload,
                        endpoint,
                        topic.decode(errors="replace"),
                        field_ or "",
                        now,
                    )
                )
                continue
            symbol = _symbol_of(event)
            if self._symbols and symbol not in self._symbols and symbol != "*":
                filtered += 1
                continue
            items.append(event)
        with self._count_lock:
            self.stats.received += sum(1 for i in items if not isinstance(i, DeadLetter))
            self.stats.filtered += filtered
        return items

    def _receive(self, inp: _Input) -> None:
        source = inp.source
        take_rejects = getattr(source, "take_rejects", None)
        take_gaps = getattr(source, "take_gaps", None)
        stop_after = self.config.stop_after
        tail = _TailCheck(source) if inp.endpoint.kind == "zmq" and self.config.replay else None
        try:
            while not self._stop.is_set():
                events = source.read(0.1)
                if tail is not None:
                    tail.after_read(bool(events))
                items: list[Item] = []
                if take_gaps is not None:
                    for gap in take_gaps():
                        items.append(
                            GapRecord(
                                gap.session,
                                gap.from_seq,
                                gap.to_seq,
                                gap.recovered,
                                gap.reason,
                                gap.endpoint,
                                gap.ts_init,
                            )
                        )
                if take_rejects is not None:
                    for reject in take_rejects():
                        items.append(
                            DeadLetter(
                                reject.reason,
                                reject.raw,
                                reject.source,
                                reject.topic,
                                reject.field or "",
                                reject.ts_init,
                            )
                        )
                if events:
                    if self._symbols:
                        wanted = self._symbols
                        kept = [
                            e for e in events if _symbol_of(e) in wanted or _symbol_of(e) == "*"
                        ]
                        with self._count_lock:
                            self.stats.filtered += len(events) - len(kept)
                        events = kept
                    if stop_after is not None:
                        with self._count_lock:
                            room = stop_after - self.stats.received
                            if room <= 0:
                                events = []
                            elif len(events) >= room:
                                events = events[:room]
                                self.stop("stop-after")
                            self.stats.received += len(events)
                    else:
                        with self._count_lock:
                            self.stats.received += len(events)
                    items.extend(events)
                if items:
                    self.queue.put(items)
                if source.finished:
                    if inp.endpoint.kind == "file" and not self._stop.is_set():
                        from qt_cli.core.sources.replay import check_read

                        check_read(source, inp.endpoint.path)  # nothing valid: not a success
                    break
        except BaseException as exc:  # a receiver failing must stop the bridge, loudly
            inp.error = exc
            self.stop("input error")
        finally:
            inp.finished = True

    # -- writing --

    def _write_loop(self) -> None:
        config = self.config
        linger_s = config.batch_ms / 1000.0
        ahead: _Batch | None = None  # taken and packed while the previous batch was running
        try:
            while True:
                if ahead is None:
                    receiving = not (self._stop.is_set() or self._inputs_done.is_set())
                    if (
                        not receiving
                        and all(i.finished for i in self._inputs)
                        and not len(self.queue)
                    ):
                        break
                    items = self.queue.take(config.batch_size, wait_s=0.1, linger_s=linger_s)
                    if items and type(items[0]) is Refill:
                        self._refill_step(items[0])
                        continue
                    ahead = self._prepare(items) if items else None
                    if ahead is None and self._outage_since is None:
                        self._guarded(self._check_server)  # idle: no failed send shows a restart
                        self._guarded(self._flush_watermark)  # idle: no send carries it
                if ahead is not None:
                    batch, ahead = ahead, None
                    written, ahead = self._write_with_retry(batch)
                    if not written:
                        break  # stopping while Valkey is down: everything was spilled
                if self._due_stats():
                    self._guarded(self._publish_stats)
            self._guarded(self._flush_watermark)
            # Not stopped: every input ended (files, stdin), so no forming candle can grow.
            self.deriver.finish(ended=not self._stop.is_set())
            self._guarded(self._publish_stats)
        except BaseException as exc:
            self._writer_error = exc
            self._stop.set()
        finally:
            if ahead is not None:
                if ahead.sent and self._conn is not None:
                    self._conn.disconnect()  # its replies are not read: don't pool them
                self.queue.push_front(ahead.items)
            self._release_connection()
            if self._replay_client is not None:
                self._replay_client.close()
                self._replay_client = None
            self.deriver.finish()
            if self.deriver.error is not None and self._writer_error is None:
                self._writer_error = self.deriver.error
            self._writer_done.set()

    def _guarded(self, fn: Callable[[], None]) -> None:
        """Run a Valkey step whose failure can wait for the next one (stats, partial candles)."""
        try:
            fn()
        except (valkey.ConnectionError, valkey.TimeoutError, OSError) as exc:
            log.debug("deferred Valkey step failed: %s", exc)
        except valkey.ResponseError as exc:
            if not _is_transient(exc):
                raise
            log.debug("deferred Valkey step refused: %s", exc)

    def _write_with_retry(self, batch: _Batch) -> tuple[bool, _Batch | None]:
        """Write a batch, riding out Valkey outages: (written, the next batch if one was taken).

        (False, None) when stopping while Valkey is down (everything went to the spill file).
        """
        backoff = BACKOFF_START_S
        last_report = 0.0
        items = batch.items
        while True:
            try:
                if self._outage_since is not None:
                    self.client.ping()
                    refill = self._recovered_from_outage()
                    if refill is not None:
                        # What the server lost goes first: the marks would skip it behind
                        # anything later of its sessions.
                        self.queue.push_front([refill, *items])
                        return True, None
                    return True, self._write_batch(batch, look_ahead=False)
                return True, self._write_batch(batch, look_ahead=True)
            except (valkey.ConnectionError, valkey.TimeoutError, OSError) as exc:
                now = time.monotonic()
                if self._outage_since is None:
                    self._outage_since = now
                    self.stats.outages += 1
                    self.warn(
                        f"bridge: Valkey at {self._out.uri} is unreachable or refuses writes ({_reason(exc)}); "
                        "buffering what arrives and retrying with backoff"
                    )
                    last_report = now
                elif now - last_report >= OUTAGE_REPORT_EVERY_S:
                    last_report = now
                    self.warn(
                        f"bridge: Valkey still unreachable after {now - self._outage_since:.0f}s; "
                        f"{len(self.queue) + len(items):,} events buffered "
                        f"({self.queue.spilled_unread:,} spilled to {self.queue.path})"
                    )
                self.stats.spilled = self.queue.spilled_total
                if self._stop.is_set():
                    self.queue.push_front(items)
                    kept = self.queue.persist()
                    self.stats.spilled = self.queue.spilled_total
                    dropped = self.queue.persisted_refill
                    also = (
                        f" (and the seq ranges it could not take, {dropped.describe()}, to fetch "
                        "again from the replay endpoint)"
                        if dropped is not None
                        else ""
                    )
                    self.warn(
                        f"bridge: stopping while Valkey is unreachable: {kept:,} events kept in "
                        f"{self.queue.path}{also}; the next 'qt bridge --name {self.config.name}' "
                        "writes them"
                    )
                    return False, None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _recovered_from_outage(self) -> Refill | None:
        """Valkey answers again: reload the library, reconcile, rebuild derived data. Returns
        the Refill of what the server lost (to write before anything else), if anything."""
        assert self._outage_since is not None
        down_s = time.monotonic() - self._outage_since
        self.stats.outage_s += down_s
        self._outage_since = None
        self.writer.ensure_library()
        refill = self._reconcile()
        # What we wrote just before the failure may or may not be stored: rebuild derived state
        # from what the server holds (the retried batch's repeats are skipped by the marks).
        self.deriver.reset()
        self.say(
            f"bridge: Valkey is back after {down_s:.1f}s; writing {len(self.queue):,} buffered events"
        )
        return refill

    def _check_server(self) -> None:
        """While idle (about once a second): a server that restarted meanwhile made no send
        fail, so compare its `run_id` and reconcile when it changed."""
        now = time.monotonic()
        if now - self._last_server_check < self.config.stats_interval_s:
            return
        self._last_server_check = now
        if self._server_run_id() == self._run_id:
            return
        if self._conn is not None:
            self._conn.disconnect()  # it was cut by the restart: reconnect on the next send
        self.writer.ensure_library()
        refill = self._reconcile()
        self.deriver.reset()
        if refill is not None:
            self.queue.push_front([refill])

    def _server_run_id(self) -> str:
        """The server's `run_id` (new at each start); '' where INFO is not allowed."""
        try:
            return _text(self.client.info("server").get("run_id", ""))
        except valkey.ResponseError:
            return ""

    def _reconcile(self) -> Refill | None:
        """After a reconnect: does the server still hold what it acknowledged?

        A server can come back with less (killed with the last second of its append-only file
        not on disk, which `appendfsync everysec` allows; a failover to a replica that lagged).
        Each stream's marks (`hwm:<stream>`, stored with the entries in one atomic call) are
        read back and compared with what this bridge saw confirmed; for every session, what a
        stream lost (its mark on the server, confirmed by the server before] becomes a Refill:
        fetched again from the replay endpoint and written before anything later. A changed
        server `run_id` (a restart) is said. At start the server's own marks are the reference
        (the watermark is written after the entries it covers, so it is lost with them).
        """
        previous, run_id = self._run_id, self._server_run_id()
        restarted = bool(previous) and run_id != previous
        if restarted:
            self.say(
                f"bridge: Valkey restarted (run_id {previous[:8]}… is now {run_id[:8]}…); "
                "checking that it still holds what it acknowledged"
            )
        streams = list(self._confirmed)
        # The server's watermark is written after the entries it covers: what it names is held
        # (a stream whose marks are gone entirely need not be fetched again from seq 1).
        stored = self._load_watermark()
        lost: dict[str, list[int]] = {}
        for key, held in zip(streams, self.writer.high_waters(streams), strict=True):
            mine = self._confirmed[key]
            for session, seq in mine.items():
                have = held.get(session, 0)
                if have < seq:
                    low = max(have, stored.get(session, 0))
                    _add_range(lost, session, (low if low < seq else have) + 1, seq)
                    mine[session] = have  # the refill raises it again
        self._run_id = run_id  # checked: a failure before here checks again
        if not lost:
            return None
        for session in lost:
            # Not sent yet, it would claim what is gone; the refill's batches move it again.
            self._watermark_due.pop(session, None)
        reason = "Valkey lost seqs it had acknowledged" + (" (it restarted)" if restarted else "")
        refill = Refill(lost, reason)
        size = sum(last - first + 1 for first, last in lost.values())
        where = (
            f"fetching them again from {self.config.replay}"
            if self.config.replay
            else "no replay endpoint (--replay none): recorded as lost in stream:gaps"
        )
        self.warn(
            f"bridge: Valkey no longer holds what it acknowledged: seq {refill.describe()} "
            f"(up to {size:,} messages); {where}"
        )
        return refill

    def _refill_step(self, refill: Refill) -> None:
        """Fetch one page of a Refill's first range and put it in front of the queue, followed
        by the Refill with the rest (so it is written in its place of the order, a page at a
        time); a session's range done, its recovered and lost parts go with it to stream:gaps."""
        from qt_cli.core.errors import UnavailableError
        from qt_cli.core.zmq_io import ReplayClient, missing_ranges

        session = min(refill.ranges)
        first, last = refill.ranges[session]
        replay = self.config.replay
        items: list[Item] = []
        page = None
        if not replay:
            refill.lost.setdefault(session, []).append([first, last, "no replay endpoint"])
        else:
            if self._replay_client is None:
                self._replay_client = ReplayClient(replay, timeout_s=self.config.replay_timeout_s)
            try:
                page = self._replay_client.page(session, first, last)
            except UnavailableError as exc:
                refill.lost.setdefault(session, []).append([first, last, str(exc)])
        done = True
        if page is not None:
            messages = [m for m in page.messages if first <= m[0] <= last]
            seqs = [m[0] for m in messages]
            end = last if page.next is None else page.next - 1
            runs = refill.recovered.setdefault(session, [])
            for seq in seqs:
                if runs and seq == runs[-1][1] + 1:
                    runs[-1][1] = seq
                else:
                    runs.append([seq, seq])
            why = (
                f"the journal behind {replay} does not hold this session"
                if page.last is None and page.next is None and not seqs
                else f"not in the journal behind {replay}"
            )
            for a, b in missing_ranges(first, end, seqs):
                refill.lost.setdefault(session, []).append([a, b, why])
            items = self._decode_messages(messages, replay)
            if page.next is not None and first < page.next <= last:
                refill.ranges[session][0] = page.next
                done = False
        if done:
            del refill.ranges[session]
            now = now_ns()
            endpoint = replay or "none"
            items += [
                GapRecord(session, a, b, True, f"{refill.reason}; fetched again", endpoint, now)
                for a, b in refill.recovered.pop(session, [])
            ]
            items += [
                GapRecord(session, a, b, False, f"{refill.reason}; lost: {why}", endpoint, now)
                for a, b, why in refill.lost.pop(session, [])
            ]
        if refill.ranges:
            items.append(refill)
        self.queue.push_front(items)

    # -- one batch --
    #
    # A batch is prepared (grouped per stream and packed into one pipeline of commands) and sent;
    # while Valkey runs it, the next batch is taken from the queue, prepared and sent too, so the
    # server finds the next batch waiting when it finishes one (two in flight: measured ~87k ->
    # ~99k ticks/s sustained, the server idled between batches before). A batch that fails is
    # retried before anything after it is stored: each call of the second batch requires the
    # marks the first one sets (`StreamBatch.require`); when they are not reached the server
    # refuses it and it is written again after the first.
    #
    # The bridge's watermark (session -> seq, where a restart asks the feed to replay from)
    # moves only after a batch's replies confirmed it stored; it rides with the next send.

    def _prepare(self, items: list[Item], *, after: _Batch | None = None) -> _Batch:
        """Group and pack `items`; `after`: the batch still in flight ahead of this one (each
        stream's call then requires the marks that batch sets, see `StreamBatch.require`)."""
        batches: dict[str, StreamBatch] = {}
        placed: dict[str, list[Any]] = {}
        deadletters: list[DeadLetter] = []
        gaps: list[GapRecord] = []
        stream_marks: dict[str, dict[str, int]] = {}
        per_session: dict[str, int] = {}
        before = after.stream_marks if after is not None else {}
        key_of = self._key_cache
        new_batch = self.writer.batch
        for item in items:
            if type(item) is tuple:  # a trade (Row): the hot path
                key, names, entry = item  # type: ignore[misc]
                session, seq = entry[E_SESSION], entry[E_SEQ]
            else:
                if not isinstance(item, Event):
                    if isinstance(item, DeadLetter):
                        deadletters.append(item)
                    else:
                        gaps.append(item)  # type: ignore[arg-type]
                    continue
                symbol = item.symbol
                kind = item.stream_kind
                key = key_of.get((kind, symbol))
                if key is None:
                    if not keys.valid_symbol(symbol) and symbol != "*":
                        deadletters.append(
                            DeadLetter(
                                f"field 'symbol': {symbol!r} is not a valid ticker",
                                item.to_wire()[:RAW_MAX_BYTES],
                                "bridge",
                                field="symbol",
                                ts_init=now_ns(),
                            )
                        )
                        continue
                    key = key_of[(kind, symbol)] = keys.stream_key(kind, symbol)
                if type(item) is Trade:
                    item = trade_row(item, key)
                    _, names, entry = item
                    session, seq = entry[E_SESSION], entry[E_SEQ]
                else:
                    names, values = event_values(item)
                    entry = (item.ts_event // NS_PER_MS, *values)
                    session = getattr(item, "session", "")
                    seq = getattr(item, "seq", 0)
            batch = batches.get(key)
            if batch is None:
                batch = batches[key] = new_batch(key)
                batch.require = before.get(key)
                placed[key] = []
                stream_marks[key] = {}
            batch.add_entry(names, entry)
            placed[key].append(item)
            if session:
                per_session[session] = per_session.get(session, 0) + 1
                marks = stream_marks[key]
                if seq > marks.get(session, 0):
                    marks[session] = seq

        commands: list[tuple[Any, ...]] = [
            (FCALL, "qt_append", 2, b.key, keys.hwm_key(b.key), *b.call_args())
            for b in batches.values()
        ]
        for letter in deadletters:
            commands.append(
                _xadd_command(keys.stream_key("deadletter"), letter.to_fields(), DEADLETTER_MAXLEN)
            )
        for gap in gaps:
            commands.append(_xadd_command(keys.stream_key("gaps"), gap.to_fields(), GAPS_MAXLEN))
        marks: dict[str, int] = {}
        for per_stream in stream_marks.values():
            _raise_marks(marks, per_stream)
        for session in [s for s in marks if ":" in s]:
            # A replayed record's identity (`nelogica:…`, `file:…`; docs/feed.md), not a
            # publisher session: no journal to catch up from, no feed run to report.
            del marks[session]
        return _Batch(
            items,
            list(batches.values()),
            placed,
            deadletters,
            gaps,
            marks,
            stream_marks,
            per_session,
            self._packer.pack_commands(commands),
            len(commands),
        )

    def _connection(self) -> Any:
        """The writer's own connection (taken from the client's pool once)."""
        if self._conn is None:
            self._conn = self.client.connection_pool.get_connection("FCALL")
        return self._conn

    def _release_connection(self) -> None:
        if self._conn is not None:
            try:
                self.client.connection_pool.release(self._conn)
            except Exception:  # releasing must not hide the run's own outcome
                log.debug("releasing the writer's connection failed", exc_info=True)
            self._conn = None

    def _write_batch(self, batch: _Batch, *, look_ahead: bool) -> _Batch | None:
        """Send a batch (unless it went out as the previous call's look-ahead) and read its
        replies; with `look_ahead`, take, prepare and send the next one first (returned)."""
        conn = self._connection()
        ahead: _Batch | None = None
        try:
            if not batch.sent:
                self._send(conn, batch)
            if look_ahead:
                items = self.queue.take(self.config.batch_size, wait_s=0)
                if items and type(items[0]) is Refill:
                    self.queue.push_front(items)  # the write loop handles it in its turn
                    items = []
                if items:
                    try:
                        ahead = self._prepare(items, after=batch)
                    except BaseException:
                        self.queue.push_front(items)
                        raise
                    self._send(conn, ahead)
            if batch.watermark is not None:
                try:
                    conn.read_response()
                except valkey.ResponseError as exc:  # the marks wait for the next send
                    log.debug("watermark update refused: %s", exc)
                    self._due_watermark(batch.watermark)
                batch.watermark = None
            replies: list[Any] = []
            for _ in range(batch.ncommands):
                try:
                    replies.append(conn.read_response())
                except valkey.ResponseError as exc:
                    replies.append(exc)
            self._complete(batch, replies)
        except BaseException:
            # Whatever is still in flight is unsure: drop the connection (and the replies it
            # would still deliver); the caller sends `batch` again, the look-ahead's items go
            # back to the queue, and the marks skip whatever of them was stored.
            conn.disconnect()
            for unsure in (batch, ahead):
                if unsure is not None and unsure.watermark is not None:
                    self._due_watermark(unsure.watermark)
                    unsure.watermark = None
            batch.sent = False
            if ahead is not None:
                self.queue.push_front(ahead.items)
            raise
        return ahead

    def _send(self, conn: Any, batch: _Batch) -> None:
        """Put a batch on the wire, led by the watermark of the batches confirmed since."""
        packed = batch.packed
        if self._watermark_due:
            batch.watermark, self._watermark_due = self._watermark_due, {}
            flat: list[Any] = []
            for session, seq in batch.watermark.items():
                flat += (session, seq)
            packed = [*self._packer.pack_commands([(b"HSET", self._watermark_key, *flat)]), *packed]
        conn.send_packed_command(packed, check_health=False)
        batch.sent = True

    def _due_watermark(self, marks: dict[str, int]) -> None:
        _raise_marks(self._watermark_due, marks)

    def _flush_watermark(self) -> None:
        """Store the confirmed marks now (idle or done: no send to carry them)."""
        if self._watermark_due and self._server_run_id() != self._run_id:
            # A server that restarted since the last batch may have lost some of what these
            # marks cover: reconcile first (it drops the marks of what is gone).
            self._last_server_check = 0.0
            self._check_server()
        if self._watermark_due:
            marks, self._watermark_due = self._watermark_due, {}
            try:
                self.client.hset(self._watermark_key, mapping=marks)
            except BaseException:
                self._due_watermark(marks)
                raise

    def _complete(self, batch: _Batch, replies: list[Any]) -> None:
        results, failures = self._check_replies(batch, replies)
        placed = batch.placed
        self.stats.batches += 1
        now = now_ns()
        confirmed = self._confirmed
        stream_marks = batch.stream_marks
        for result in results:
            events = placed[result.key]
            marks = stream_marks.get(result.key)
            if marks:
                held = confirmed.get(result.key)
                if held is None:
                    confirmed[result.key] = dict(marks)
                else:
                    _raise_marks(held, marks)
            self.stats.written += result.written
            self.stats.duplicates += result.duplicates
            self.stats.late += result.late
            if result.written:
                self._after_write(result, events, now)
        for key, error in failures.items():
            self._dead_letter_batch(placed[key], f"Valkey refused the write to {key}: {error}")
        for gap in batch.gaps:
            self._report_gap(gap)
        self.stats.deadletters += len(batch.deadletters)
        self._due_watermark(batch.marks)
        _raise_marks(self._watermark, batch.marks)
        for session, seq in batch.marks.items():
            feed = self._feed(session)
            feed.received += batch.per_session[session]
            channel = session.split(".", 1)[1] if "." in session else session
            feed.last_seq[channel] = max(seq, feed.last_seq.get(channel, 0))

    def _check_replies(
        self, batch: _Batch, replies: list[Any]
    ) -> tuple[list[AppendResult], dict[str, str]]:
        """Results of the appends; transient refusals raise (retried like an outage)."""
        writer = self.writer
        batches = batch.batches
        results: list[AppendResult] = []
        failures: dict[str, str] = {}
        retry: list[StreamBatch] = []
        lost = False  # the library is gone or another qt version's: reload before the retry
        for stream_batch, reply in zip(batches, replies[: len(batches)], strict=True):
            if isinstance(reply, Exception):
                if isinstance(reply, valkey.ConnectionError | valkey.TimeoutError):
                    raise reply
                if _is_transient(reply):
                    # Out of memory, a replica, loading: wait and retry like an outage.
                    raise valkey.ConnectionError(f"{type(reply).__name__}: {reply}")
                if is_out_of_order(reply):
                    retry.append(stream_batch)
                    continue
                if lost or writer.library_lost(reply):
                    lost = True
                    retry.append(stream_batch)
                    continue
                failures[stream_batch.key] = str(reply)
                continue
            results.append(append_result(stream_batch.key, reply))
        for reply in replies[len(batches) :]:
            if isinstance(reply, valkey.ConnectionError | valkey.TimeoutError):
                raise reply
            if isinstance(reply, Exception) and _is_transient(reply):
                raise valkey.ConnectionError(f"{type(reply).__name__}: {reply}")
        if retry:
            # The library was lost, or an earlier batch failed (it was handled first: dead
            # letters, or its own retry): write these now, in order, without conditions.
            if lost:
                writer.ensure_library(force=True)
            for stream_batch in retry:
                stream_batch.require = None
            results += writer.append_many(retry)
        return results, failures

    def _dead_letter_batch(self, events: list[Any], reason: str) -> None:
        self.warn(f"bridge: {reason}; {len(events)} events go to the dead-letter stream")
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            pipe.xadd(
                keys.stream_key("deadletter"),
                DeadLetter(reason, _wire_of(event), "bridge", ts_init=now_ns()).to_fields(),
                maxlen=DEADLETTER_MAXLEN,
                approximate=True,
            )
        pipe.execute()
        self.stats.deadletters += len(events)

    def _after_write(self, result: AppendResult, events: list[Any], now: int) -> None:
        ids = result.ids
        sample = self._latencies.append
        for i in range(len(events) - 1, -1, -LATENCY_STRIDE):  # a sample is enough for p50/p99
            if ids[i]:
                ts_init = _ts_init_of(events[i])
                if ts_init:
                    sample(now - ts_init)
        if ids[-1]:
            ts_init = _ts_init_of(events[-1])
            if ts_init:
                self.stats.lag_ms = (now - ts_init) / NS_PER_MS
        if self.deriver.enabled and result.key.startswith("stream:ticks:"):
            self.deriver.push(events, ids, result.late)

    # -- gaps, feeds, stats --

    def _report_gap(self, gap: GapRecord) -> None:
        size = gap.to_seq - gap.from_seq + 1
        self.stats.gaps_detected += 1
        feed = self._feed(gap.session)
        if gap.recovered:
            self.stats.gaps_recovered += 1
            self.stats.messages_recovered += size
            feed.gaps_recovered += 1
            self.say(
                f"bridge: recovered seq {gap.from_seq}..{gap.to_seq} of {gap.session} "
                f"({size:,} messages) from {gap.endpoint}"
            )
        else:
            self.stats.gaps_lost += 1
            self.stats.messages_lost += size
            feed.gaps_lost += 1
            self.warn(
                f"bridge: LOST seq {gap.from_seq}..{gap.to_seq} of {gap.session} "
                f"({size:,} messages): {gap.reason}; recorded in stream:gaps"
            )

    def _feed(self, session: str) -> _FeedRun:
        run_id = session.split(".", 1)[0] or "unknown"
        feed = self._feeds.get(run_id)
        if feed is None:
            feed = self._feeds[run_id] = _FeedRun()
        return feed

    def _load_watermark(self) -> dict[str, int]:
        raw = self.client.hgetall(self._watermark_key)
        return {_text(k): int(v) for k, v in raw.items()}

    def _due_stats(self) -> bool:
        return time.monotonic() - self._last_stats_mono >= self.config.stats_interval_s

    def _update_rates(self) -> None:
        now = time.monotonic()
        interval = now - self._rate_mono
        if interval >= 0.5:
            self.stats.rate = (self.stats.written - self._rate_base) / interval
            self._rate_base = self.stats.written
            for feed in self._feeds.values():
                feed.rate = (feed.received - feed.rate_base) / interval
                feed.rate_base = feed.received
            self._rate_mono = now
        if self._latencies:
            ordered = sorted(self._latencies)
            self.stats.latency_p50_ms = ordered[len(ordered) // 2] / NS_PER_MS
            self.stats.latency_p99_ms = ordered[int(len(ordered) * 0.99)] / NS_PER_MS
        self.stats.spilled = self.queue.spilled_total

    def stats_fields(self) -> dict[str, str]:
        """The fields of `qt:stats:bridge:<name>` (docs/contracts.md)."""
        s = self.stats
        return {
            "stage": STAGE,
            "name": self.config.name,
            "pid": str(os.getpid()),
            "host": self._host,
            "started_ns": str(self._started_ns),
            "updated_ns": str(now_ns()),
            "received": str(s.received),
            "written": str(s.written),
            "rate": f"{s.rate:.1f}",
            "lag_ms": _fmt(s.lag_ms),
            "duplicates": str(s.duplicates),
            "batches": str(s.batches),
            "gaps_detected": str(s.gaps_detected),
            "gaps_recovered": str(s.gaps_recovered),
            "gaps_lost": str(s.gaps_lost),
            "deadletters": str(s.deadletters),
            "late": str(s.late),
            "buffered": str(len(self.queue)),
            "spilled": str(s.spilled),
            "filtered": str(s.filtered),
            "candles": str(s.candles),
            "chunks": str(s.chunks),
            "latency_p50_ms": _fmt(s.latency_p50_ms),
            "latency_p99_ms": _fmt(s.latency_p99_ms),
            "valkey": "down" if self._outage_since is not None else "up",
            "inputs": ",".join(self.config.inputs),
            "output": self._out.uri,
        }

    def _publish_stats(self) -> None:
        self._last_stats_mono = time.monotonic()
        self._update_rates()
        if self._outage_since is not None:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self._stats_key, mapping=self.stats_fields())
        pipe.expire(self._stats_key, STATS_TTL_S)
        pipe.sadd(keys.STAGES_SET, self._stats_key)
        now = str(now_ns())
        for run_id, feed in self._feeds.items():
            key = keys.stats_key("feed", run_id)
            fields = {
                "stage": "feed",
                "name": run_id,
                "received": str(feed.received),
                "last_seq": str(max(feed.last_seq.values(), default=0)),
                "rate": f"{feed.rate:.1f}",
                "updated_ns": now,
                "gaps_recovered": str(feed.gaps_recovered),
                "gaps_lost": str(feed.gaps_lost),
                "reported_by": self._stats_key,
            }
            for channel, seq in feed.last_seq.items():
                fields[f"last_seq:{channel}"] = str(seq)
            pipe.hset(key, mapping=fields)
            pipe.expire(key, STATS_TTL_S)
            pipe.sadd(keys.STAGES_SET, key)
        pipe.execute()

    def totals(self) -> dict[str, Any]:
        """What `qt bridge` prints on exit (and with --json)."""
        self._update_rates()
        s = self.stats
        out: dict[str, Any] = {
            "name": self.config.name,
            "output": self._out.uri,
            "inputs": list(self.config.inputs),
            "received": s.received,
            "written": s.written,
            "duplicates": s.duplicates,
            "late": s.late,
            "filtered": s.filtered,
            "batches": s.batches,
            "deadletters": s.deadletters,
            "gaps_detected": s.gaps_detected,
            "gaps_recovered": s.gaps_recovered,
            "gaps_lost": s.gaps_lost,
            "messages_recovered": s.messages_recovered,
            "messages_lost": s.messages_lost,
            "candles": s.candles,
            "candle_skipped": s.candle_skipped,
            "chunks": s.chunks,
            "spilled": s.spilled,
            "spill_dropped": self.queue.dropped_total,
            "buffered": len(self.queue),
            "outages": s.outages,
            "outage_s": round(s.outage_s, 3),
            "elapsed_s": round(s.elapsed_s, 3),
            "rate": round(s.written / s.elapsed_s, 1) if s.elapsed_s > 0 else 0.0,
            "latency_p50_ms": _round(s.latency_p50_ms),
            "latency_p99_ms": _round(s.latency_p99_ms),
            "stopped_by": s.stopped_by,
        }
        return out


def _ts_init_of(item: Event | Row) -> int:
    if type(item) is tuple:
        return item[2][E_TS_INIT]  # type: ignore[no-any-return]
    return getattr(item, "ts_init", 0)


def _symbol_of(item: Event | Row) -> str:
    return item[2][E_SYMBOL] if type(item) is tuple else item.symbol  # type: ignore[union-attr]


def _wire_of(item: Event | Row) -> bytes:
    return (entry_trade(item[2]) if type(item) is tuple else item).to_wire()  # type: ignore[union-attr]


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


_TRANSIENT_TYPES = (
    valkey.exceptions.OutOfMemoryError,
    valkey.exceptions.ReadOnlyError,
    valkey.exceptions.ClusterDownError,
    valkey.exceptions.TryAgainError,
)
_TRANSIENT_TEXT = ("OOM", "READONLY", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY")


def _raise_marks(into: dict[str, int], marks: dict[str, int]) -> None:
    """Raise each session's mark in `into` to the one in `marks` where that is higher."""
    for session, seq in marks.items():
        if seq > into.get(session, 0):
            into[session] = seq


def _is_transient(exc: BaseException) -> bool:
    """A refusal that passes (memory freed, failover done, dataset loaded): retry, don't drop."""
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    return isinstance(exc, valkey.ResponseError) and str(exc).startswith(_TRANSIENT_TEXT)


def _fmt(value: float) -> str:
    return "" if value != value else f"{value:.3f}"


def _round(value: float) -> float | None:
    return None if value != value else round(value, 3)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].rstrip(".")


def check_time_unit(time_unit: str | None, inputs: Sequence[str]) -> None:
    """UsageError for an unknown `--time-unit`, or one given without a file or stdin input."""
    if time_unit is None:
        return
    from qt_cli.core.files import time_unit_factor

    time_unit_factor(time_unit)
    if not any(parse_endpoint(uri).kind in ("file", "stdio") for uri in inputs):
        raise UsageError("--time-unit applies to file and stdin inputs (--in FILE, --in -)")


def run_bridge(config: BridgeConfig, *, say: Say = _log_say, warn: Say | None = None) -> Bridge:
    """Build a bridge (connects to Valkey; StoreUnavailable if it cannot)."""
    try:
        return Bridge(config, say=say, warn=warn)
    except (valkey.ConnectionError, valkey.TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"cannot reach Valkey at {config.output}: {_reason(exc)}") from None
