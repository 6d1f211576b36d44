"""Event types and their two encodings: the ZeroMQ wire (orjson) and flat Valkey stream fields.

Every event is an immutable dataclass whose times are integer nanoseconds since the epoch (UTC):
`ts_event` is venue time, `ts_init` is our receive time on a monotonic-anchored clock. `session`
and `seq` are set by the publisher (one random session id per run, seq gap-free per session and
endpoint); an event that was never published has session "" and seq 0.

Wire: `{"type": ..., field: value, ...}`. A Trade is a superset of the seed guide's tick
(`type, symbol, timestamp, timestamp_ms, trade_id, price, volume, quantity, buyer, seller,
trade_type, is_edit`) plus `seq`, `session`, `recv_ns`, so a seed-era consumer still works.
Flat fields: every value a decimal string (bool "1"/"0", missing number "", lists and dicts JSON).
Both round-trip exactly (floats use the shortest repr that reads back to the same double).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING as _dataclass_missing
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar, get_type_hints

import orjson

from qt_cli.core import keys
from qt_cli.core.errors import DecodeError
from qt_cli.core.timeparse import EXCHANGE_TZ as EXCHANGE_TZ  # re-exported: the one zone
from qt_cli.core.timeparse import LATEST_NS, format_ns
from qt_cli.core.timeparse import NS_PER_MS as NS_PER_MS
from qt_cli.core.timeparse import NS_PER_S as NS_PER_S

TRADE_TYPE_NAMES = {
    0: "none",
    1: "cross",
    2: "aggressor_buy",
    3: "aggressor_sell",
    4: "auction",
    5: "surveillance",
    6: "expit",
    7: "options_exercise",
    8: "over_the_counter",
    9: "derivative_term",
    10: "index",
    11: "btc",
    12: "on_behalf",
    13: "rlp",
    14: "block_book",
    15: "rfq",
    16: "midpoint",
    17: "trade_at_close",
    18: "trade_at_average",
    32: "unknown",
    33: "update",
    34: "mid",
    35: "off_exchange",
}
TRADE_TYPE_UNKNOWN = 32


def aggressor_of(trade_type: int) -> str:
    """'buy' for an aggressor buy (2), 'sell' for an aggressor sell (3), else 'none'."""
    return "buy" if trade_type == 2 else "sell" if trade_type == 3 else "none"


def now_ns() -> int:
    return time.time_ns()


class ReceiveClock:
    """One clock for every callback: wall time anchored once, advanced by the monotonic clock.

    `time.time_ns()` can step (NTP); receive stamps must not, so events from different callbacks
    order correctly and latencies are never negative.
    """

    def __init__(self) -> None:
        self._wall0 = time.time_ns()
        self._mono0 = time.monotonic_ns()

    def __call__(self) -> int:
        return self._wall0 + (time.monotonic_ns() - self._mono0)


# ISO 8601 in exchange time with milliseconds, e.g. `2025-08-08T09:00:01.250-03:00` (the
# seed-compatible `timestamp` string): timeparse.format_ns with its default zone.
iso_local = format_ns


# --- field conversion -------------------------------------------------------------------------

_MISSING = object()

# Every integer field is a 64-bit signed integer: Valkey's integers, the history chunks' and the
# candles' int64 columns. A wider one (JSON allows any) is refused here, not by an overflow deep
# inside a stage.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
# The latest event time any stage accepts: 2200-01-01 UTC. Nanoseconds since 1970 end in 2262 as
# int64, and candle and chunk arithmetic adds to the time; no source produces later times.
MAX_TS_NS = LATEST_NS


def _out_of_range(name: str, value: int) -> DecodeError:
    return DecodeError(f"field '{name}': {value} is outside the 64-bit integer range", field=name)


def _to_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str | bytes):
        try:
            number = int(value)
        except ValueError:
            raise DecodeError(
                f"field '{name}': expected an integer, got {value!r}", field=name
            ) from None
    else:
        raise DecodeError(f"field '{name}': expected an integer, got {value!r}", field=name)
    if not INT_MIN <= number <= INT_MAX:
        raise _out_of_range(name, number)
    return number


def _to_float(name: str, value: Any) -> float:
    if value is None or value == "" or value == b"":
        return math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str | bytes):
        try:
            return float(value)
        except ValueError:
            pass
    raise DecodeError(f"field '{name}': expected a number, got {value!r}", field=name)


def _to_str(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise DecodeError(f"field '{name}': expected text, got {value!r}", field=name)


_TRUE = {True, "1", "true", "True", b"1", b"true", b"True"}
_FALSE = {False, "0", "false", "False", "", b"0", b"false", b"False", b""}


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool | int | str | bytes):  # a list or dict is not hashable
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
    raise DecodeError(f"field '{name}': expected a boolean, got {value!r}", field=name)


def _to_json(name: str, value: Any) -> Any:
    if isinstance(value, str | bytes):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"field '{name}': invalid JSON ({exc})", field=name) from None
    return value


def _nan_to_float(values: dict[str, Any]) -> dict[str, float]:
    return {k: math.nan if v is None else float(v) for k, v in values.items()}


_CONVERT = {int: _to_int, float: _to_float, str: _to_str, bool: _to_bool}


def _flat_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return "" if math.isnan(value) else float.__repr__(value)
    if isinstance(value, int | str):
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


# --- the base --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event: symbol, venue time, receive time, publisher session and seq."""

    TYPE: ClassVar[str] = ""
    STREAM: ClassVar[str] = ""
    _spec: ClassVar[tuple[tuple[str, Any, Any], ...]] = ()
    # to_fields compiled for the class's fields (`_fields_function`); None for a class with its
    # own to_dict (Trade)
    _flat: ClassVar[Callable[[Any], dict[str, str]] | None] = None

    symbol: str
    ts_event: int

    @property
    def ts_event_ms(self) -> int:
        return self.ts_event // NS_PER_MS

    @property
    def stream_kind(self) -> str:
        """The per-symbol stream this event is stored in (`ticks`, `book`, `candles:1m`, …)."""
        return self.STREAM

    def to_dict(self) -> dict[str, Any]:
        """The wire message as a dict (before orjson)."""
        out: dict[str, Any] = {"type": self.TYPE}
        for name, _, _ in self._spec:
            out[name] = getattr(self, name)
        return out

    def to_wire(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)

    def to_fields(self) -> dict[str, str]:
        """Flat Valkey stream fields: every value a string (`_flat_value`)."""
        flat = type(self)._flat  # from the class: a plain function, not a bound method
        if flat is None:  # a class with its own to_dict (Trade)
            return {k: _flat_value(v) for k, v in self.to_dict().items()}
        return flat(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        kwargs: dict[str, Any] = {}
        for name, typ, default in cls._spec:
            value = data.get(name, _MISSING)
            if value is _MISSING or (value is None and typ is not float):
                if default is _MISSING:
                    raise DecodeError(f"field '{name}' is missing", field=name)
                kwargs[name] = default() if callable(default) else default
                continue
            convert = _CONVERT.get(typ)
            kwargs[name] = convert(name, value) if convert else _to_json(name, value)
        event = cls(**kwargs)
        event._validate()
        return event

    def _validate(self) -> None:
        if not self.symbol:
            raise DecodeError("field 'symbol' is empty", field="symbol")
        if self.symbol != "*" and not keys.valid_symbol(self.symbol):
            raise DecodeError(
                f"field 'symbol': {self.symbol!r} is not a ticker (letters, digits, '.', '_', '-')",
                field="symbol",
            )
        if self.ts_event <= 0:
            raise DecodeError(f"field 'ts_event': not a time ({self.ts_event})", field="ts_event")
        if self.ts_event >= MAX_TS_NS:
            raise DecodeError(
                f"field 'ts_event': {self.ts_event} is after 2200-01-01 (nanoseconds expected)",
                field="ts_event",
            )


def _finish(cls: type[Event]) -> type[Event]:
    """Build the (name, type, default) spec a class decodes with, in field order."""
    hints = get_type_hints(cls)
    spec = []
    for f in fields(cls):
        typ = hints[f.name]
        if f.default is not _dataclass_missing:
            default: Any = f.default
        elif f.default_factory is not _dataclass_missing:
            default = f.default_factory
        else:
            default = _MISSING
        base = typ if typ in _CONVERT else object
        spec.append((f.name, base, default))
    cls._spec = tuple(spec)
    if cls.to_dict is Event.to_dict:
        cls._flat = _fields_function(cls)
    return cls


def _fields_function(cls: type[Event]) -> Callable[[Any], dict[str, str]]:
    """`to_fields` for `cls`, one expression per field by its declared type (what `_flat_value`
    gives; any other type of value goes through `_flat_value`), compiled once at import."""
    items = [f'"type": {cls.TYPE!r}']
    for i, (name, base, _) in enumerate(cls._spec):
        v = f"v{i}"
        get = f"({v} := e.{name})"
        if base is float:
            expr = f"(('' if {v} != {v} else frepr({v})) if type({get}) is float else flat({v}))"
        elif base is int:
            expr = f"(irepr({v}) if type({get}) is int else flat({v}))"
        elif base is str:
            expr = f"({v} if type({get}) is str else flat({v}))"
        elif base is bool:
            expr = f"('1' if {get} is True else '0' if {v} is False else flat({v}))"
        else:
            expr = f"flat(e.{name})"
        items.append(f"{name!r}: {expr}")
    source = "def to_fields(e):\n    return {" + ", ".join(items) + "}\n"
    env: dict[str, Any] = {"flat": _flat_value, "frepr": float.__repr__, "irepr": int.__repr__}
    exec(compile(source, f"<fields of {cls.__name__}>", "exec"), env)  # noqa: S102
    return env["to_fields"]


def _check_price(name: str, value: float, *, allow_nan: bool = False) -> None:
    if math.isnan(value):
        if not allow_nan:
            raise DecodeError(f"field '{name}': price is NaN", field=name)
    elif not math.isfinite(value) or value <= 0:
        raise DecodeError(f"field '{name}': price must be positive, got {value!r}", field=name)


# --- market data -----------------------------------------------------------------------------


# The layout of a trade: every field it carries on the wire and in its stream, in the order both
# keep them (seed fields first), each with the Trade attribute it is made of ("" for the type).
# `timestamp` (local ISO text) and `timestamp_ms` come from ts_event, `recv_ns` repeats ts_init
# (seed-era names). The one declaration: Trade.to_dict, the writer's values and entry positions
# (store/writer.py) are generated from it once, at import (`trade_layout_source`), and the
# bridge's Rows (bridge/rows.py) are tested against it. The optional fields follow only when set.
TRADE_LAYOUT: tuple[tuple[str, str], ...] = (
    ("type", ""),
    ("symbol", "symbol"),
    ("timestamp", "ts_event"),
    ("timestamp_ms", "ts_event"),
    ("trade_id", "trade_id"),
    ("price", "price"),
    ("volume", "volume"),
    ("quantity", "quantity"),
    ("buyer", "buyer"),
    ("seller", "seller"),
    ("trade_type", "trade_type"),
    ("is_edit", "is_edit"),
    ("aggressor", "aggressor"),
    ("ts_event", "ts_event"),
    ("ts_init", "ts_init"),
    ("recv_ns", "ts_init"),
    ("session", "session"),
    ("seq", "seq"),
)
TRADE_WIRE_FIELDS = tuple(name for name, _ in TRADE_LAYOUT)
TRADE_OPTIONAL_FIELDS = ("buyer_name", "seller_name", "history")


@_finish
@dataclass(frozen=True, slots=True)
class Trade(Event):
    """One trade (tick). `volume` is financial volume (price × qty × multiplier), `quantity` contracts."""

    TYPE: ClassVar[str] = "tick"
    STREAM: ClassVar[str] = "ticks"

    price: float = math.nan
    quantity: int = 0
    volume: float = 0.0
    trade_id: int = 0
    buyer: int = 0
    seller: int = 0
    trade_type: int = 0
    aggressor: str = "none"
    is_edit: bool = False
    buyer_name: str = ""
    seller_name: str = ""
    history: bool = False
    ts_init: int = 0
    session: str = ""
    seq: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        # A seed-era tick has no ts_event: take timestamp_ms (its only numeric time).
        if "ts_event" not in data and "timestamp_ms" in data:
            data = {**data, "ts_event": _to_int("timestamp_ms", data["timestamp_ms"]) * NS_PER_MS}
        if "ts_init" not in data and "recv_ns" in data:
            data = {**data, "ts_init": data["recv_ns"]}
        if "aggressor" not in data and "trade_type" in data:
            data = {**data, "aggressor": aggressor_of(_to_int("trade_type", data["trade_type"]))}
        return super(Trade, cls).from_dict(data)

    def _validate(self) -> None:
        Event._validate(self)
        _check_price("price", self.price)
        if self.quantity < 0:
            raise DecodeError(f"field 'quantity': negative ({self.quantity})", field="quantity")
        if self.aggressor not in ("buy", "sell", "none"):
            raise DecodeError(
                f"field 'aggressor': {self.aggressor!r} is not buy|sell|none", field="aggressor"
            )


def trade_layout_source(value: Any) -> str:
    """`TRADE_LAYOUT` as Python source: `value(wire name, attribute, kind)` gives each field's
    expression (kind: "type", "iso" or "ms" of ts_event, "float", "bool" or "" for the rest, from
    Trade's field types); joined with commas, for code compiled once at import."""
    kinds = {f.name: f.type for f in fields(Trade)}
    out = []
    for name, attr in TRADE_LAYOUT:
        if not attr:
            kind = "type"
        elif name == "timestamp":
            kind = "iso"
        elif name == "timestamp_ms":
            kind = "ms"
        else:
            kind = str(kinds[attr]) if kinds[attr] in ("float", "bool") else ""
        out.append(value(name, attr, kind))
    return ", ".join(out)


def compile_layout_function(source: str, name: str, namespace: dict[str, Any]) -> Any:
    """Compile one function generated from `TRADE_LAYOUT` (once, at import) in `namespace`."""
    code = compile(source, f"<trade layout: {name}>", "exec")
    exec(code, namespace)  # source made from the constant tables above, never from input
    return namespace.pop(name)


def _dict_value(name: str, attr: str, kind: str) -> str:
    expr = {"type": "self.TYPE", "iso": "iso_local(self.ts_event)"}.get(kind, f"self.{attr}")
    return f"{name!r}: self.ts_event // NS_PER_MS" if kind == "ms" else f"{name!r}: {expr}"


# Trade.to_dict, in the layout's order (seed fields first), then the optional fields when set.
Trade.to_dict = compile_layout_function(  # type: ignore[method-assign]
    f"""def to_dict(self):
    out = {{{trade_layout_source(_dict_value)}}}
    if self.buyer_name or self.seller_name:
        out["buyer_name"] = self.buyer_name
        out["seller_name"] = self.seller_name
    if self.history:
        out["history"] = True
    return out
""",
    "to_dict",
    {"iso_local": iso_local, "NS_PER_MS": NS_PER_MS},
)
Trade.to_dict.__qualname__ = "Trade.to_dict"
Trade._flat = None  # its to_dict is the layout, not the spec


BOOK_SIDES = ("bid", "ask")
BOOK_ACTIONS = ("add", "edit", "delete", "delete_from", "full")


@_finish
@dataclass(frozen=True, slots=True)
class BookUpdate(Event):
    """One change of a limit order book side, in the DLL's terms.

    `position` counts from the end of the side's list as the DLL does (profitdll.md §8), the
    list running worst → best, so position 0 is the best level; `edit` carries the new absolute
    quantity, `delete` the level it removes, `delete_from` removes positions `position`…0;
    `levels` is set only for `full`, best first: [price, quantity, count] per level for the
    price book, [price, quantity, agent, order_id] per order for the offer book.
    `book` is "price" (aggregated per price) or "offer" (per order: agent and order_id are set).
    """

    TYPE: ClassVar[str] = "book"
    STREAM: ClassVar[str] = "book"

    side: str = "bid"
    action: str = "add"
    position: int = 0
    price: float = math.nan
    quantity: int = 0
    count: int = 0
    agent: int = 0
    order_id: int = 0
    book: str = "price"
    levels: list[list[float]] = field(default_factory=list)
    ts_init: int = 0
    session: str = ""
    seq: int = 0

    def _validate(self) -> None:
        Event._validate(self)
        if self.side not in BOOK_SIDES:
            raise DecodeError(f"field 'side': {self.side!r} is not bid|ask", field="side")
        if self.action not in BOOK_ACTIONS:
            raise DecodeError(
                f"field 'action': {self.action!r} is not one of {', '.join(BOOK_ACTIONS)}",
                field="action",
            )
        if self.action == "add":
            _check_price("price", self.price)
        if not isinstance(self.levels, list):
            raise DecodeError("field 'levels': expected a list", field="levels")


@_finish
@dataclass(frozen=True, slots=True)
class TopOfBook(Event):
    """Best bid and ask (the DLL's tiny book). A side not yet seen is NaN."""

    TYPE: ClassVar[str] = "tob"
    STREAM: ClassVar[str] = "book"

    bid_price: float = math.nan
    bid_qty: int = 0
    ask_price: float = math.nan
    ask_qty: int = 0
    ts_init: int = 0
    session: str = ""
    seq: int = 0

    def _validate(self) -> None:
        Event._validate(self)
        _check_price("bid_price", self.bid_price, allow_nan=True)
        _check_price("ask_price", self.ask_price, allow_nan=True)


_TIMEFRAME_RE = re.compile(r"^[1-9][0-9]{0,5}[a-z]{1,2}$")  # 1m, 15m, 1h, 1d (candles.py parses)


@_finish
@dataclass(frozen=True, slots=True)
class Candle(Event):
    """OHLCV bar; `ts_event` is the bar's open time, `closed` false while it is still forming."""

    TYPE: ClassVar[str] = "candle"
    STREAM: ClassVar[str] = "candles"

    timeframe: str = "1m"
    open: float = math.nan
    high: float = math.nan
    low: float = math.nan
    close: float = math.nan
    volume: float = 0.0
    quantity: int = 0
    trades: int = 0
    buy_volume: float = 0.0
    sell_volume: float = 0.0
    vwap: float = math.nan
    closed: bool = True
    ts_init: int = 0
    session: str = ""
    seq: int = 0

    @property
    def stream_kind(self) -> str:
        return keys.candle_kind(self.timeframe)

    def _validate(self) -> None:
        Event._validate(self)
        if not _TIMEFRAME_RE.fullmatch(self.timeframe):  # part of the stream key: never `:` or `{`
            raise DecodeError(
                f"field 'timeframe': {self.timeframe!r} is not a timeframe (e.g. 1m, 5m, 1h)",
                field="timeframe",
            )


@_finish
@dataclass(frozen=True, slots=True)
class Daily(Event):
    """The DLL's daily bar for the current session (open/high/low/close so far, limits, counts)."""

    TYPE: ClassVar[str] = "daily"
    STREAM: ClassVar[str] = "daily"

    open: float = math.nan
    high: float = math.nan
    low: float = math.nan
    close: float = math.nan
    volume: float = 0.0
    adjust: float = math.nan
    max_limit: float = math.nan
    min_limit: float = math.nan
    buy_volume: float = 0.0
    sell_volume: float = 0.0
    quantity: int = 0
    trades: int = 0
    open_interest: int = 0
    buy_quantity: int = 0
    sell_quantity: int = 0
    buy_trades: int = 0
    sell_trades: int = 0
    ts_init: int = 0
    session: str = ""
    seq: int = 0


@_finish
@dataclass(frozen=True, slots=True)
class State(Event):
    """A connection, ticker or feed state change, in words (`text`) as well as the DLL's codes.

    `symbol` is "*" for states that concern the whole connection.
    """

    TYPE: ClassVar[str] = "state"
    STREAM: ClassVar[str] = "state"

    source: str = "feed"
    code: int = 0
    text: str = ""
    ts_init: int = 0
    session: str = ""
    seq: int = 0


# --- model side ------------------------------------------------------------------------------


# A feature value as JSON gives it: a number, or null for NaN (booleans are not values).
_FEATURE_VALUE_TYPES = frozenset((float, int, type(None)))


@_finish
@dataclass(frozen=True, slots=True)
class FeatureVector(Event):
    """Named feature values at `ts_event`; NaN where a value cannot be computed (see `reasons`)."""

    TYPE: ClassVar[str] = "features"
    STREAM: ClassVar[str] = "features"

    feature_set: str = ""
    catalog_hash: str = ""
    features: dict[str, float] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    warm: bool = False
    ts_init: int = 0
    session: str = ""
    seq: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        event = super(FeatureVector, cls).from_dict(data)
        assert isinstance(event, FeatureVector)
        event._check_features()
        return event

    def _check_features(self) -> None:
        """`features` must be an object; JSON nulls (NaN on the wire) become NaN. The values
        are kept as JSON gives them otherwise (floats as qt writes them; one C-level scan)."""
        if not isinstance(self.features, dict):
            raise DecodeError("field 'features': expected an object", field="features")
        kinds = set(map(type, self.features.values()))  # one C-level pass over the values
        if not kinds <= _FEATURE_VALUE_TYPES:
            bad = next(
                (k, v) for k, v in self.features.items() if type(v) not in _FEATURE_VALUE_TYPES
            )
            raise DecodeError(
                f"field 'features': {bad[0]!r} is {bad[1]!r}, not a number", field="features"
            )
        if type(None) in kinds:
            object.__setattr__(self, "features", _nan_to_float(self.features))


@_finish
@dataclass(frozen=True, slots=True)
class Prediction(Event):
    """A model's output for one feature vector."""

    TYPE: ClassVar[str] = "prediction"
    STREAM: ClassVar[str] = "predictions"

    model: str = ""
    model_hash: str = ""
    feature_set: str = ""
    value: float = math.nan
    label: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)
    ts_features: int = 0
    latency_us: float = math.nan  # live: from the vector's ts_init (features stage) to ts_init
    ts_init: int = 0
    session: str = ""
    seq: int = 0


SIGNAL_ACTIONS = ("buy", "sell", "hold")


@_finish
@dataclass(frozen=True, slots=True)
class Signal(Event):
    """A trading signal derived from a prediction."""

    TYPE: ClassVar[str] = "signal"
    STREAM: ClassVar[str] = "signals"

    action: str = "hold"
    confidence: float = math.nan
    price: float = math.nan
    model: str = ""
    reason: str = ""
    ts_init: int = 0
    session: str = ""
    seq: int = 0

    def _validate(self) -> None:
        Event._validate(self)
        if self.action not in SIGNAL_ACTIONS:
            raise DecodeError(
                f"field 'action': {self.action!r} is not buy|sell|hold", field="action"
            )


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        Trade,
        BookUpdate,
        TopOfBook,
        Candle,
        Daily,
        State,
        FeatureVector,
        Prediction,
        Signal,
    )
}
EVENT_TYPES["history"] = Trade  # history trades travel on their own endpoint, same shape

# The one registry of stream kinds: each per-symbol stream and the event types stored in it, in
# EVENT_TYPES order. `candles` is a family (`candles:<tf>`, keys.candle_kind); the global streams
# (keys.GLOBAL_STREAMS) hold no events. query, cleanup and monitor derive their lists from it.
_CLASSES = tuple(dict.fromkeys(EVENT_TYPES.values()))
STREAM_EVENTS: dict[str, tuple[type[Event], ...]] = {
    stream: tuple(cls for cls in _CLASSES if cls.STREAM == stream)
    for stream in dict.fromkeys(cls.STREAM for cls in _CLASSES)
}
STREAM_KINDS: tuple[str, ...] = tuple(STREAM_EVENTS)


@dataclass(frozen=True, slots=True)
class Passed:
    """What a reader told to `skip` a type hands out for a message or entry of it instead of
    the decoded event: where it stands (symbol, stream, event time), for a stage that merges
    streams by event time but does not use that type (the features stage and top of book)."""

    symbol: str
    stream_kind: str
    ts_event: int


def skip_types(streams: Sequence[str], used: Sequence[type[Event]]) -> frozenset[str]:
    """The event types stored in `streams` other than `used` (what a reader can `skip`)."""
    return frozenset(
        cls.TYPE for stream in streams for cls in STREAM_EVENTS[stream] if cls not in used
    )


def decode_dict(data: Any) -> Event:
    """Decode a wire dict (or flat fields) into its event; DecodeError names the bad field."""
    if type(data) is dict:
        kind = data.get("type")
        fast = _DICT_DECODERS.get(kind) if type(kind) is str else None
        if fast is not None:
            event = fast(data)
            if event is not None:
                if data.get("origin"):
                    _set_origin(event, data)
                return event
    if not isinstance(data, dict):
        raise DecodeError(f"expected a JSON object, got {type(data).__name__}", field=None)
    kind = data.get("type")
    if isinstance(kind, bytes):
        kind = kind.decode()
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise DecodeError(f"field 'type': unknown event type {kind!r}", field="type")
    event = cls.from_dict(data)
    if data.get("origin"):
        _set_origin(event, data)
    return event


def _set_origin(event: Event, data: dict[str, Any]) -> None:
    """A replayed record (an `origin` field): stored under its own identity (docs/feed.md)."""
    origin = data["origin"]
    if isinstance(origin, bytes):
        origin = origin.decode()
    session = _to_str("origin", origin)
    seq = _to_int("origin_seq", data.get("origin_seq"))
    if seq <= 0:
        raise DecodeError(f"field 'origin_seq': must be positive ({seq})", field="origin_seq")
    object.__setattr__(event, "session", session)  # a fresh instance: nobody else holds it
    object.__setattr__(event, "seq", seq)


def decode(payload: bytes | str) -> Event:
    """Decode one orjson wire payload."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}", field=None) from None
    return decode_dict(data)


_INT, _FLOAT, _STR, _OTHER = range(4)


def _wide() -> int:
    raise ValueError("wider than 64 bits")


def _bytes_decoder(cls: type[Event]) -> Any:
    """For a class whose fields decode as `Event.from_dict` decodes them (None for a class with
    its own `from_dict`, Trade aside): a function making it from an entry's bytes fields in one
    call, one expression per field (compiled once, at import). Ints, floats and text are read
    from the bytes (`int(b"12")` is `int("12")`; what does not read so raises, and the general
    path decides); a missing field with a default takes it, one without raises KeyError."""
    if cls.from_dict.__func__ is not Event.from_dict.__func__ and cls not in (  # type: ignore[attr-defined]
        Trade,
        FeatureVector,  # its from_dict adds `_check_features`, which _decode_bytes_fields calls
    ):
        return None
    exprs = []
    env: dict[str, Any] = {"cls": cls, "nan": math.nan, "wide": _wide}
    for i, (name, typ, default) in enumerate(cls._spec):
        v = f"v{i}"
        if typ is int:  # a 64-bit integer, else the general path names the field
            convert = f"(n{i} if {INT_MIN} <= (n{i} := int({v})) <= {INT_MAX} else wide())"
        elif typ is float:
            convert = f"(float({v}) if {v} else nan)"
        elif typ is str:
            convert = f"{v}.decode()"
        elif typ is bool:
            env[f"c{i}"] = _to_bool
            convert = f"c{i}({name!r}, {v})"
        else:  # JSON text (an empty list, as most book entries hold, without parsing it)
            env[f"c{i}"] = _to_json
            convert = f"([] if {v} == b'[]' else c{i}({name!r}, {v}))"
        if default is _MISSING:
            exprs.append(f"{name}=({convert} if ({v} := f[{name.encode()!r}]) is not None else 0)")
            continue
        env[f"d{i}"] = default
        fallback = f"d{i}()" if callable(default) else f"d{i}"
        exprs.append(
            f"{name}=({convert} if ({v} := f.get({name.encode()!r})) is not None else {fallback})"
        )
    _slot_setters(cls, env)
    lines = ["e = new(cls)"]
    lines += [f"s{i}(e, {expr.split('=', 1)[1]})" for i, expr in enumerate(exprs)]
    body = "".join(f"    {line}\n" for line in [*lines, "return e"])
    return _compiled(f"def decode(f):\n{body}", f"<decode {cls.__name__} fields>", env)


def _slot_setters(cls: type[Event], env: dict[str, Any]) -> None:
    """Put `cls`, `new` and a setter per field (`s0`, `s1`, … in field order) in `env`: generated
    code makes an event with `e = new(cls)` and `sI(e, value)`, without the frozen dataclass's
    __init__ (an `object.__setattr__` per field: twice the cost)."""
    env.update(cls=cls, new=cls.__new__)
    for i, (name, _, _) in enumerate(cls._spec):
        env[f"s{i}"] = getattr(cls, name).__set__


def _compiled(source: str, label: str, env: dict[str, Any]) -> Any:
    """The function `source` defines (`def NAME(…`), compiled (once, at import) in `env`."""
    exec(compile(source, label, "exec"), env)  # noqa: S102
    return env[source[len("def ") : source.index("(")]]


def _fallback() -> Any:
    raise ValueError("the general path decides")


# What a fast decoder leaves to the general path (which raises the error it always raised).
_FALLBACK_ERRORS = (KeyError, DecodeError, ValueError, TypeError, AttributeError, OverflowError)


def _dict_decoder(cls: type[Event]) -> Any:
    """`cls.from_dict` for a wire dict as orjson gives it (values already ints, floats, text,
    booleans, lists and objects), one expression per field (compiled once, at import). It takes
    only values of the field's own JSON type and returns None for anything else (text for a
    number, a missing required field, a seed-era tick, a validation error): `from_dict` then
    decides, converting or raising as it always did. Its events equal `from_dict`'s (a test
    checks both on generated dicts)."""
    env: dict[str, Any] = {"nan": math.nan, "bad": _fallback, "M": _MISSING}
    env["errors"] = _FALLBACK_ERRORS
    _slot_setters(cls, env)
    lines = []
    for i, (name, typ, default) in enumerate(cls._spec):
        v = f"v{i}"
        if typ is int:  # bool is not int here: from_dict converts it
            convert = f"({v} if type({v}) is int and {INT_MIN} <= {v} <= {INT_MAX} else bad())"
        elif typ is float:
            convert = (
                f"({v} if type({v}) is float else float({v}) if type({v}) is int "
                f"else nan if {v} is None else bad())"
            )
        elif typ is str:
            convert = f"({v} if type({v}) is str else bad())"
        elif typ is bool:
            convert = f"({v} if type({v}) is bool else bad())"
        else:  # JSON held as is: a list or an object (text is parsed by from_dict)
            convert = f"({v} if type({v}) is list or type({v}) is dict else bad())"
        if default is _MISSING:
            lines.append(f"{v} = d[{name!r}]")
            lines.append(f"s{i}(e, {convert})")
            continue
        env[f"d{i}"] = default
        fallback = f"d{i}()" if callable(default) else f"d{i}"
        present = f"({v} := d.get({name!r}, M)) is not M"
        if typ is not float:  # null is "missing" for these (from_dict takes the default)
            present += f" and {v} is not None"
        lines.append(f"s{i}(e, {convert} if {present} else {fallback})")
    if cls is FeatureVector:
        lines.append("e._check_features()")
    body = "".join(f"        {line}\n" for line in ["e = new(cls)", *lines, "e._validate()"])
    source = (
        f"def decode(d):\n    try:\n{body}    except errors:\n        return None\n    return e\n"
    )
    plain = _compiled(source, f"<decode {cls.__name__} dict>", env)
    if cls is not Trade:
        return plain

    def decode_trade(d: dict[str, Any]) -> Any:  # a seed-era tick lacks these: from_dict
        if "ts_event" in d and "ts_init" in d and "aggressor" in d:
            return plain(d)
        return None

    return decode_trade


def values_maker(cls: type[Event]) -> Callable[[Sequence[Any]], Any]:
    """`cls(*values)` for every field's value in field order, setting the slots directly (a
    frozen dataclass's __init__ costs twice as much); for values an event of `cls` already
    had (no conversion, no validation). Compiled once per class."""
    made = _MAKERS.get(cls)
    if made is None:
        env: dict[str, Any] = {}
        _slot_setters(cls, env)
        lines = ["e = new(cls)", *(f"s{i}(e, r[{i}])" for i in range(len(cls._spec)))]
        body = "".join(f"    {line}\n" for line in [*lines, "return e"])
        made = _MAKERS[cls] = _compiled(f"def make(r):\n{body}", f"<make {cls.__name__}>", env)
    return made


_MAKERS: dict[type[Event], Any] = {}
_DICT_DECODERS: dict[str, Any] = {}
for _kind, _cls in EVENT_TYPES.items():
    if _cls.from_dict.__func__ is Event.from_dict.__func__ or _cls in (Trade, FeatureVector):  # type: ignore[attr-defined]
        _DICT_DECODERS[_kind] = _dict_decoder(_cls)

_BYTES_DECODERS = {cls: _bytes_decoder(cls) for cls in dict.fromkeys(EVENT_TYPES.values())}
_BYTES_TYPES: dict[bytes, tuple[type[Event], Any]] = {
    kind.encode(): (cls, _BYTES_DECODERS[cls])
    for kind, cls in EVENT_TYPES.items()
    if _BYTES_DECODERS[cls] is not None
}
# Trade.from_dict rewrites seed-era ticks that lack these; with them all it is Event.from_dict.
_TRADE_NEEDS = (b"ts_event", b"ts_init", b"aggressor")


def _decode_bytes_fields(fields_: Mapping[Any, Any]) -> Event | None:
    """`decode_fields` of an entry as XRANGE returns it (bytes names and values), without
    decoding every name and value first (`_bytes_decoder`). None when the general path must
    decide: an unknown or missing type, a missing field, a replayed record, a seed-era tick,
    any conversion or validation error (the general path raises it, as it always did)."""
    found = _BYTES_TYPES.get(fields_.get(b"type"))  # type: ignore[arg-type]
    if found is None or b"origin" in fields_:
        return None
    cls, decode = found
    if cls is Trade and not all(name in fields_ for name in _TRADE_NEEDS):
        return None
    try:
        event = decode(fields_)
        event._validate()
        if cls is FeatureVector:
            event._check_features()
    except (KeyError, DecodeError, ValueError, TypeError, AttributeError):
        return None
    return event


def decode_fields(fields_: Mapping[Any, bytes | str]) -> Event:
    """Decode flat Valkey stream fields (as XRANGE returns them)."""
    event = _decode_bytes_fields(fields_)
    if event is not None:
        return event
    data = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields_.items()
    }
    return decode_dict(data)


def utc_datetime(ts_ns: int) -> datetime:
    return datetime.fromtimestamp(ts_ns / NS_PER_S, tz=UTC)
