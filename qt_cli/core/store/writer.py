"""Writing events to Valkey streams exactly once, a whole batch per server call.

The write path is the `qt` function library (`functions.lua`, loaded with FUNCTION LOAD REPLACE).
`qt_append` takes every entry of one stream's batch in ONE call: it skips entries whose
`(session, seq)` is at or below the stream's high-water mark (`hwm:<stream>`), XADDs the rest with
ids from event time (`<ms>-*`, clamped to the stream's top with `late=1` for older events), trims
with MAXLEN ~, and moves the marks, atomically. One call per stream instead of one command per
entry is what lifts the client past the ~90-100k entries/s of a per-entry XADD pipeline; all values
of a call go in one separator-joined argument (`pack_values`), not ~20 arguments per entry.

`qt_chunk` appends a columnar history chunk (`qt_cli/core/chunks.py`) idempotently on its `src`.

Writers reload the library when the server lost it (restart without persistence, FUNCTION FLUSH)
and retry the call; the marks make the retry harmless.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import orjson
import valkey

from qt_cli.core import keys
from qt_cli.core.chunks import SealedChunk
from qt_cli.core.errors import StoreUnavailable
from qt_cli.core.events import (
    NS_PER_MS,
    TRADE_WIRE_FIELDS,
    Event,
    Trade,
    compile_layout_function,
    iso_local,
    trade_layout_source,
)
from qt_cli.core.store import cluster

if TYPE_CHECKING:
    from qt_cli.core.store import Client

LIBRARY_NAME = "qt"
LIBRARY_VERSION = "4"  # must equal VERSION in functions.lua
DEFAULT_MAXLEN = 100_000
DEADLETTER_MAXLEN = 10_000
GAPS_MAXLEN = 10_000

# The command name as bytes: the client then sends the arguments as they are (with a str name it
# re-splits the name and copies the whole argument tuple, which costs for a 40,000-argument batch).
FCALL = b"FCALL"

_MISSING_FUNCTION = ("function not found", "noscript", "no such library")
_OUT_OF_ORDER = "an earlier batch of this stream is not stored"


def library_code() -> str:
    """The Lua source of the `qt` function library."""
    return resources.files("qt_cli.core.store").joinpath("functions.lua").read_text()


_TRANSIENT_TYPES = (
    valkey.exceptions.OutOfMemoryError,
    valkey.exceptions.ReadOnlyError,
    valkey.exceptions.ClusterDownError,
    valkey.exceptions.TryAgainError,
    valkey.exceptions.AskError,  # and MovedError: the slot is elsewhere now (cluster resharding)
)
_TRANSIENT_TEXT = (
    "OOM",
    "READONLY",
    "LOADING",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "BUSY",
    "MOVED",
    "ASK",
)


def is_transient(exc: BaseException) -> bool:
    """A refusal that passes (memory freed, failover done, dataset loaded): retry, don't drop."""
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    return isinstance(exc, valkey.ResponseError) and str(exc).startswith(_TRANSIENT_TEXT)


def is_missing_function(exc: BaseException) -> bool:
    """True for the error of a call to a function the server does not have (lost library)."""
    text = str(exc).lower()
    return isinstance(exc, valkey.ResponseError) and any(m in text for m in _MISSING_FUNCTION)


def is_out_of_order(exc: BaseException) -> bool:
    """True when `qt_append` refused a call whose `require` marks were not reached (an earlier
    call in flight failed): write it again once the earlier one is retried."""
    return isinstance(exc, valkey.ResponseError) and _OUT_OF_ORDER in str(exc)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- events -> stream fields ----------------------------------------------------------------
#
# An entry is a schema (its field names, sent once per call) and its values. Ints and floats are
# left to the client's packer, which writes them with str / repr exactly as `Event.to_fields`
# does (NaN is ""); tests check the two agree.

TRADE_NAMES = TRADE_WIRE_FIELDS
TRADE_NAMES_WITH_NAMES = (*TRADE_NAMES, "buyer_name", "seller_name")
TRADE_NAMES_HISTORY = (*TRADE_NAMES, "history")
TRADE_NAMES_WITH_NAMES_HISTORY = (*TRADE_NAMES_WITH_NAMES, "history")


def _num(value: float) -> Any:
    """A float as `pack_values` takes it: NaN is stored empty, infinities as repr writes them."""
    if value - value:  # NaN or ±inf (inf - inf is NaN, which is true)
        return "" if value != value else repr(value)
    return value


def _value(name: str, attr: str, kind: str) -> str:
    if kind == "type":
        return repr(Trade.TYPE)
    if kind in ("iso", "ms") or attr == "ts_event":
        return {"iso": "iso_local(ts)", "ms": "ts // NS_PER_MS"}.get(kind, "ts")
    return {"float": f"_num(t.{attr})", "bool": f'"1" if t.{attr} else "0"'}.get(kind, f"t.{attr}")


# trade_values(t) -> (field names, values) of `Trade.to_fields()`, without the intermediate
# dicts; its values in `TRADE_LAYOUT`'s order, generated once from it.
trade_values: Callable[[Trade], tuple[tuple[str, ...], tuple[Any, ...]]] = compile_layout_function(
    f"""def trade_values(t):
    ts = t.ts_event
    values = ({trade_layout_source(_value)},)
    if t.buyer_name or t.seller_name:
        values += (t.buyer_name, t.seller_name)
        if t.history:
            return TRADE_NAMES_WITH_NAMES_HISTORY, (*values, "1")
        return TRADE_NAMES_WITH_NAMES, values
    if t.history:
        return TRADE_NAMES_HISTORY, (*values, "1")
    return TRADE_NAMES, values
""",
    "trade_values",
    {
        "iso_local": iso_local,
        "NS_PER_MS": NS_PER_MS,
        "_num": _num,
        "TRADE_NAMES": TRADE_NAMES,
        "TRADE_NAMES_WITH_NAMES": TRADE_NAMES_WITH_NAMES,
        "TRADE_NAMES_HISTORY": TRADE_NAMES_HISTORY,
        "TRADE_NAMES_WITH_NAMES_HISTORY": TRADE_NAMES_WITH_NAMES_HISTORY,
    },
)


# A trade's *entry*: (event ms, value…) with the values in the order of its schema (one of the
# four TRADE_NAMES* tuples). The bridge builds entries straight from the wire dict and hands them
# to `StreamBatch.add_entry`, to its candles and to its chunks, without a Trade object per tick.
# Positions in an entry (0 is the event ms, field k of TRADE_NAMES is at k + 1):
_AT = {name: k + 1 for k, name in enumerate(TRADE_NAMES)}
E_MS = 0
E_SYMBOL = _AT["symbol"]
E_TRADE_ID = _AT["trade_id"]
E_PRICE = _AT["price"]
E_VOLUME = _AT["volume"]
E_QUANTITY = _AT["quantity"]
E_BUYER = _AT["buyer"]
E_SELLER = _AT["seller"]
E_TRADE_TYPE = _AT["trade_type"]
E_IS_EDIT = _AT["is_edit"]  # "1" or "0"
E_AGGRESSOR = _AT["aggressor"]
E_TS_EVENT = _AT["ts_event"]
E_TS_INIT = _AT["ts_init"]
E_SESSION = _AT["session"]
E_SEQ = _AT["seq"]
E_NAMES = len(TRADE_NAMES) + 1  # buyer_name, seller_name: present when the schema has them
_PLAIN_LEN = E_NAMES


def trade_entry(t: Trade) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """(schema, entry) of a trade: what `trade_values` gives, with the event ms in front."""
    names, values = trade_values(t)
    return names, (t.ts_event // NS_PER_MS, *values)


def entry_history(entry: Sequence[Any]) -> bool:
    """True for a history trade: its schema ends with `history` (one field more than even)."""
    return len(entry) % 2 == 0


def entry_names(entry: Sequence[Any]) -> tuple[str, str]:
    """(buyer_name, seller_name) of an entry ('' when its schema has none)."""
    if len(entry) >= _PLAIN_LEN + 2:
        return entry[E_NAMES], entry[E_NAMES + 1]
    return "", ""


def entry_trade(entry: Sequence[Any]) -> Trade:
    """The Trade an entry was made of (for the rare paths: spill file, dead letters)."""
    buyer_name, seller_name = entry_names(entry)
    price, volume = entry[E_PRICE], entry[E_VOLUME]
    return Trade(
        symbol=entry[E_SYMBOL],
        ts_event=entry[E_TS_EVENT],
        price=float("nan") if price == "" else price,
        quantity=entry[E_QUANTITY],
        volume=float("nan") if volume == "" else volume,
        trade_id=entry[E_TRADE_ID],
        buyer=entry[E_BUYER],
        seller=entry[E_SELLER],
        trade_type=entry[E_TRADE_TYPE],
        aggressor=entry[E_AGGRESSOR],
        is_edit=entry[E_IS_EDIT] == "1",
        buyer_name=buyer_name,
        seller_name=seller_name,
        history=entry_history(entry),
        ts_init=entry[E_TS_INIT],
        session=entry[E_SESSION],
        seq=entry[E_SEQ],
    )


def event_values(event: Event) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """(field names, values) of an event's stream fields."""
    if type(event) is Trade:
        return trade_values(event)
    fields = event.to_fields()
    return tuple(fields), tuple(fields.values())


def event_key(event: Event) -> str:
    return keys.stream_key(event.stream_kind, event.symbol)


# --- schemas -------------------------------------------------------------------------------
#
# How `qt_append` fills each field of a schema (see functions.lua): sent with every entry, the
# same text in every entry of one stream (sent once per call, taken from the batch's first entry
# of the schema), the entry's event ms, or a copy of another field of the entry.
SENT = ""
PER_STREAM = "="
EVENT_MS = "#"


def copy_of(name: str) -> str:
    return ">" + name


@dataclass(frozen=True)
class Schema:
    """The field names of entries and, per field, where `qt_append` takes its value from."""

    names: tuple[str, ...]
    sources: tuple[str, ...]
    # entry (event ms, value per name…) -> what is sent: the event ms and the SENT values
    pick: Callable[[Sequence[Any]], tuple[Any, ...]] | None = None

    @classmethod
    def of(cls, names: tuple[str, ...]) -> Schema:
        sources = TRADE_SOURCES.get(names)
        if sources is None:
            return cls(names, (SENT,) * len(names))
        sent = [k + 1 for k, source in enumerate(sources) if source == SENT]
        return cls(names, sources, itemgetter(0, *sent))

    def call_args(self, first: Sequence[Any]) -> list[Any]:
        """The schema as `qt_append` takes it; `first` is the batch's first entry of it."""
        head: list[Any] = [len(self.names)]
        for k, (name, source) in enumerate(zip(self.names, self.sources, strict=True)):
            head += (name, PER_STREAM + first[k + 1] if source == PER_STREAM else source)
        return head


# A trade's type and symbol are the same in every entry of its stream (a stream holds one
# symbol), timestamp_ms is the event ms and recv_ns the receive time ts_init: 4 of 18 values are
# not sent per entry (nor split by the server: ~0.3-0.5 µs per entry of its time). history is "1"
# whenever a schema has it.
_TRADE_DERIVED = {
    "type": PER_STREAM,
    "symbol": PER_STREAM,
    "timestamp_ms": EVENT_MS,
    "recv_ns": copy_of("ts_init"),
    "history": PER_STREAM,
}
TRADE_SOURCES = {
    names: tuple(_TRADE_DERIVED.get(name, SENT) for name in names)
    for names in (
        TRADE_NAMES,
        TRADE_NAMES_WITH_NAMES,
        TRADE_NAMES_HISTORY,
        TRADE_NAMES_WITH_NAMES_HISTORY,
    )
}


# --- batches ---------------------------------------------------------------------------------


@dataclass
class StreamBatch:
    """The entries of one `qt_append` call for one stream, already flattened into arguments."""

    key: str
    maxlen: int = DEFAULT_MAXLEN
    approx: bool = True
    count: int = 0
    args: list[Any] = field(default_factory=list)
    schemas: dict[tuple[str, ...], int] = field(default_factory=dict)
    # session -> seq the stream's marks must have reached for the call to be stored (the marks
    # an earlier call still in flight sets); None or empty: no condition
    require: dict[str, int] | None = None
    _used: list[tuple[Schema, Sequence[Any]]] = field(default_factory=list, repr=False)
    _indexed: bool = field(default=False, repr=False)  # entries carry their schema's index
    _last_names: tuple[str, ...] | None = field(default=None, repr=False, compare=False)
    _last: tuple[int, Any] = field(default=(0, None), repr=False, compare=False)

    def add(self, names: tuple[str, ...], values: Sequence[Any], event_ms: int) -> None:
        """One entry: field `names` (a tuple, shared between entries) and their `values`."""
        self.add_entry(names, (event_ms, *values))

    def add_entry(self, names: tuple[str, ...], entry: Sequence[Any]) -> None:
        """One entry given as (event ms, value…) (see `trade_entry`)."""
        if names is self._last_names:
            index, pick = self._last
        else:
            index, pick = self._schema(names, entry)
        args = self.args
        if self._indexed:
            args.append(index)
        args += entry if pick is None else pick(entry)
        self.count += 1

    def _schema(self, names: tuple[str, ...], entry: Sequence[Any]) -> tuple[int, Any]:
        index = self.schemas.get(names)
        if index is None:
            schema = Schema.of(names)
            index = self.schemas[names] = len(self.schemas) + 1
            self._used.append((schema, entry))
            if index == 2:
                self._index_entries_so_far()
        pick = self._used[index - 1][0].pick
        self._last_names, self._last = names, (index, pick)
        return index, pick

    def _index_entries_so_far(self) -> None:
        """A second schema: put the first one's index before each entry already added."""
        args, self.args = self.args, []
        if self.count:
            width = len(args) // self.count  # every entry so far has the first schema
            for k in range(0, len(args), width):
                self.args.append(1)
                self.args += args[k : k + width]
        self._indexed = True

    def add_event(self, event: Event) -> None:
        names, values = event_values(event)
        self.add(names, values, event.ts_event // NS_PER_MS)

    def call_args(self) -> list[Any]:
        head: list[Any] = [self.maxlen, "1" if self.approx else "0"]
        require = self.require or {}
        head.append(len(require))
        for session, seq in require.items():
            head += (session, seq)
        head.append(len(self._used))
        for schema, first in self._used:
            head += schema.call_args(first)
        head.append(self.count)
        head += pack_values(self.args)
        return head


# The values of a batch travel as ONE argument: each value followed by a separator byte that
# occurs in none of them (`functions.lua` splits it). Packing 20 arguments per entry was the
# client's largest cost (~3 µs per entry); formatting the whole batch in C is a fraction of that.
# Values are str, int or finite float (what `trade_values` / `Event.to_fields` give: NaN is
# already "", never a bool). Each is stored as str() writes it, except that a float below 1e-4 in
# magnitude is spelled the way orjson writes it ("0.000099" for repr's "9.9e-05": the same
# number).
SEP = b"\x00"


def pack_values(values: Sequence[Any]) -> tuple[bytes, bytes]:
    """(separator, data) for `qt_append`: every value followed by the separator."""
    data = pack_json(values)
    if data is not None:
        return SEP, data
    text = "\x00".join(map(str, values))
    if text.count("\x00") == len(values) - 1:
        return SEP, text.encode() + SEP
    return _pack_values_rare(values)


def pack_json(values: Sequence[Any]) -> bytes | None:
    """The values each followed by NUL, formatted by one orjson call; None when that is not
    exact: a string needed an escape (a quote, backslash or control byte: the text shows a
    backslash, found at memchr speed) or holds a comma or "]" (the count of separators tells)."""
    try:
        blob = orjson.dumps(values)
    except (orjson.JSONEncodeError, TypeError):  # an int beyond 64 bits, or not a str/number
        return None
    if b"\\" in blob:
        return None
    # One pass: quotes go, every comma and the closing bracket become the separator (a comma or
    # bracket inside a value adds a separator too, and the count tells).
    data = blob.translate(_JSON_TO_SEP, b'"')[1:]
    return data if data.count(SEP) == len(values) else None


_JSON_TO_SEP = bytes.maketrans(b",]", SEP * 2)


def _pack_values_rare(values: Sequence[Any]) -> tuple[bytes, bytes]:
    """A value holds NUL: use a byte no value holds (0xFF never occurs in UTF-8 text)."""
    encoded = [v if type(v) is bytes else str(v).encode() for v in values]
    used = set(b"".join(encoded))
    for code in (0xFF, *range(256)):
        if code not in used:
            sep = bytes((code,))
            return sep, sep.join(encoded) + sep
    raise ValueError("qt_append: the values use every byte, no separator is left")


@dataclass(frozen=True)
class AppendResult:
    """What one `qt_append` call did: `ids` has one entry id per input entry ('' = duplicate)."""

    key: str
    written: int
    duplicates: int
    late: int
    ids: list[str]


@dataclass(frozen=True)
class ChunkResult:
    appended: bool
    id: str  # the new chunk's id, or the src already covered when skipped
    late: bool = False


def append_command(batch: StreamBatch) -> tuple[Any, ...]:
    """The `qt_append` call of one stream's batch (its high-water marks in `hwm:<stream>`)."""
    return (FCALL, "qt_append", 2, batch.key, keys.hwm_key(batch.key), *batch.call_args())


def append_result(key: str, reply: Sequence[Any]) -> AppendResult:
    """Parse a `qt_append` reply."""
    return AppendResult(
        key=key,
        written=int(reply[0]),
        duplicates=int(reply[1]),
        late=int(reply[2]),
        ids=_texts(reply[3:]),
    )


def _texts(values: Sequence[Any]) -> list[str]:
    if all(type(v) is bytes for v in values):
        return [v.decode() for v in values]
    return [_text(v) for v in values]


class StreamWriter:
    """Exactly-once batched appends through the `qt` function library on one client."""

    def __init__(
        self, client: Client, *, maxlen: int = DEFAULT_MAXLEN, approx: bool = True
    ) -> None:
        self.client = client
        self.maxlen = maxlen
        self.approx = approx
        self._loaded = False
        self._packer: Any = None

    # -- library --

    def has_current_library(self) -> bool:
        """True when the server holds this version of the library (not none, not another qt's);
        a cluster: every primary."""
        try:
            versions = cluster.on_primaries(self.client, "FCALL_RO", "qt_version", 0)
            return all(_text(v) == LIBRARY_VERSION for v in versions)
        except valkey.ResponseError as exc:
            if is_missing_function(exc):
                return False
            raise

    def library_lost(self, exc: BaseException) -> bool:
        """True when a call failed because the library is gone or another qt version replaced
        it (FUNCTION FLUSH, a restart without persistence, an older qt on the same server):
        reload and call again rather than give the events up."""
        if is_missing_function(exc):
            return True
        return isinstance(exc, valkey.ResponseError) and not self.has_current_library()

    def ensure_library(self, *, force: bool = False) -> None:
        """Load the function library unless the server already has this version."""
        if not force and self.has_current_library():
            self._loaded = True
            return
        try:
            self.client.function_load(library_code(), replace=True)
        except valkey.ResponseError as exc:
            raise StoreUnavailable(
                f"Valkey refused qt's function library ({exc}); qt needs Valkey >= 7 "
                "(or Redis >= 7) with functions enabled"
            ) from None
        self._loaded = True

    def _fcall(self, name: str, keys_: Sequence[str], args: Sequence[Any]) -> Any:
        if not self._loaded:
            self.ensure_library()
        try:
            return self.client.execute_command(FCALL, name, len(keys_), *keys_, *args)
        except valkey.ResponseError as exc:
            if not self.library_lost(exc):
                raise
        self.ensure_library(force=True)
        return self.client.execute_command(FCALL, name, len(keys_), *keys_, *args)

    # -- appends --

    def batch(
        self, key: str, *, maxlen: int | None = None, approx: bool | None = None
    ) -> StreamBatch:
        return StreamBatch(
            key=key,
            maxlen=self.maxlen if maxlen is None else maxlen,
            approx=self.approx if approx is None else approx,
        )

    def append(self, batch: StreamBatch) -> AppendResult:
        """Append one stream's batch in one call."""
        if batch.count == 0:
            return AppendResult(batch.key, 0, 0, 0, [])
        return self.append_many([batch])[0]

    # The one call path of `qt_append` (`qt bridge`, derived stages, `--out valkey://`): batches
    # packed into one buffer of commands (`pack`), sent on one connection, their replies read in
    # order (`read_replies`) and settled (`settle`). The bridge keeps two packed batches in flight
    # on its connection (send the next before reading the first); `append_many` sends one and
    # waits.

    def packer(self) -> Any:
        """What packs commands for `send_packed_command` on the client's connections (a
        connection object never connected; for a cluster, one that notes each command's slot)."""
        return cluster.packer(self.client)

    def read_replies(self, conn: Any, count: int) -> list[Any]:
        """`count` replies from `conn`, a refused command's error in its place."""
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(conn.read_response())
            except valkey.ResponseError as exc:
                replies.append(exc)
        return replies

    def settle(
        self,
        batches: Sequence[StreamBatch],
        replies: Sequence[Any],
        *,
        rewrite_out_of_order: bool = False,
    ) -> tuple[list[AppendResult], dict[str, Exception]]:
        """The results of `qt_append` calls from their replies, and the refusals that stay
        (stream key -> error). Connection errors and transient refusals (out of memory, a
        replica, loading) raise as `valkey.ConnectionError`: the caller retries like an outage.
        A call refused because the library is gone is written again here; one refused because
        an earlier call's marks were not reached (`require`) too, in order and without
        conditions, with `rewrite_out_of_order` (the caller has handled that earlier call),
        else it is a refusal."""
        results: list[AppendResult] = []
        failures: dict[str, Exception] = {}
        retry: list[StreamBatch] = []
        lost = False  # the library is gone or another qt version's: reload before the retry
        for batch, reply in zip(batches, replies, strict=True):
            if isinstance(reply, Exception):
                if isinstance(reply, valkey.ConnectionError | valkey.TimeoutError):
                    raise reply
                if is_transient(reply):
                    raise valkey.ConnectionError(f"{type(reply).__name__}: {reply}")
                if is_out_of_order(reply):
                    if rewrite_out_of_order:
                        retry.append(batch)
                    else:
                        failures[batch.key] = reply
                    continue
                if lost or self.library_lost(reply):
                    lost = True
                    retry.append(batch)
                    continue
                failures[batch.key] = reply
                continue
            results.append(append_result(batch.key, reply))
        if retry:
            if lost:
                self.ensure_library(force=True)
            for batch in retry:
                batch.require = None
            results += self._append_once(retry)
        return results, failures

    def append_many(self, batches: Iterable[StreamBatch]) -> list[AppendResult]:
        """Append several streams' batches in one round trip (each stream's call is atomic).
        Raises when a call is refused (`settle`)."""
        todo = [b for b in batches if b.count]
        if not todo:
            return []
        if not self._loaded:
            self.ensure_library()
        results, failures = self.settle(todo, self._call(todo))
        if failures:
            raise next(iter(failures.values()))
        return results

    def _append_once(self, batches: Sequence[StreamBatch]) -> list[AppendResult]:
        """Write again what `settle` retries: any refusal now raises."""
        results: list[AppendResult] = []
        for batch, reply in zip(batches, self._call(batches), strict=True):
            if isinstance(reply, Exception):
                if is_transient(reply):
                    raise valkey.ConnectionError(f"{type(reply).__name__}: {reply}")
                raise reply
            results.append(append_result(batch.key, reply))
        return results

    def _call(self, batches: Sequence[StreamBatch]) -> list[Any]:
        """Send the batches' calls packed on one connection and read their replies."""
        if self._packer is None:
            self._packer = self.packer()
        packed = self._packer.pack_commands([append_command(b) for b in batches])
        conn = cluster.connection(self.client)
        try:
            conn.send_packed_command(packed)
            replies = self.read_replies(conn, len(batches))
        except BaseException:
            conn.disconnect()  # replies still on their way: never pool them
            cluster.release(self.client, conn)
            raise
        cluster.release(self.client, conn)
        return replies

    def append_events(self, events: Iterable[Event]) -> list[AppendResult]:
        """Group events by stream and append each group in one call."""
        batches: dict[str, StreamBatch] = {}
        for event in events:
            key = event_key(event)
            batch = batches.get(key)
            if batch is None:
                batch = batches[key] = self.batch(key)
            batch.add_event(event)
        return self.append_many(batches.values())

    def append_chunk(self, symbol: str, chunk: SealedChunk) -> ChunkResult:
        """Append a sealed history chunk of ticks once (skipped when its src is already covered)."""
        hist = keys.history_key("ticks", symbol)
        flat: list[Any] = []
        for name, value in chunk.fields.items():
            if name != "src":
                flat += (name, value)
        reply = self._fcall(
            "qt_chunk",
            (hist, keys.late_index_key("ticks", symbol), keys.hwm_key(hist)),
            [chunk.t_min_ms, chunk.src, len(flat) // 2, *flat],
        )
        if int(reply[0]) == 0:
            return ChunkResult(False, _text(reply[1]))
        return ChunkResult(True, _text(reply[1]), bool(int(reply[2])))

    # -- reads the bridge needs on start --

    def last_chunk_src(self, symbol: str) -> str:
        """The src of the last history chunk of a symbol ('' when none was written)."""
        hist = keys.history_key("ticks", symbol)
        value = self.client.hget(keys.hwm_key(hist), "src")
        if value:
            return _text(value)
        last = self.client.xrevrange(hist, count=1)
        if last:
            src = last[0][1].get(b"src")
            return _text(src) if src else ""
        return ""

    def high_water(self, key: str) -> dict[str, int]:
        """session -> highest seq stored in a stream."""
        return self.high_waters([key])[0]

    def high_waters(self, stream_keys: Sequence[str]) -> list[dict[str, int]]:
        """`high_water` of each stream, in one round trip."""
        if not stream_keys:
            return []
        pipe = self.client.pipeline(transaction=False)
        for key in stream_keys:
            pipe.hgetall(keys.hwm_key(key))
        return [
            {_text(k): int(v) for k, v in raw.items() if _text(k) != "src"}
            for raw in pipe.execute()
        ]


class StreamSink:
    """The `--out valkey://…` sink: every `send` is appended exactly once, a call per stream.

    Stores events as given (no candles or history chunks: `qt bridge` derives those).
    """

    def __init__(self, client: Client, *, maxlen: int = DEFAULT_MAXLEN) -> None:
        self.client = client
        self.writer = StreamWriter(client, maxlen=maxlen)
        self.written = 0
        self.duplicates = 0
        self.late = 0

    def send(self, events: Sequence[Event]) -> None:
        for result in self.writer.append_events(events):
            self.written += result.written
            self.duplicates += result.duplicates
            self.late += result.late

    def flush(self) -> None:
        """Nothing is held back: `send` has stored its events when it returns."""

    def close(self) -> None:
        self.client.close()
