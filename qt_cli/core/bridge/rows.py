"""What travels from the receivers to the writer: Rows (a trade as a plain tuple, built
straight from the wire dict by `tick_row`), events, dead letters, gap records, refills."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from qt_cli.core import keys
from qt_cli.core.events import (
    INT_MAX,
    MAX_TS_NS,
    NS_PER_MS,
    Event,
    Trade,
    decode_dict,
    iso_local,
)
from qt_cli.core.records import DeadLetter, Gap
from qt_cli.core.store.writer import (
    E_SEQ,
    E_SESSION,
    E_SYMBOL,
    E_TS_INIT,
    TRADE_NAMES,
    TRADE_NAMES_HISTORY,
    TRADE_NAMES_WITH_NAMES,
    TRADE_NAMES_WITH_NAMES_HISTORY,
    entry_trade,
    trade_entry,
)

log = logging.getLogger(__name__)

# --- the queue between receivers and the writer ------------------------------------------------


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
        entry = item[2]
        return entry[E_SESSION], entry[E_SEQ]
    if isinstance(item, Event):
        return getattr(item, "session", "") or "", getattr(item, "seq", 0) or 0
    return "", 0


# A trade as the bridge carries it from the receiver to the writer and the deriver: a plain
# tuple (stream key, schema, entry) with the entry's values in the order the stream stores them
# (`writer.trade_entry`). No Trade object per tick: decoding builds this straight from the wire
# dict (`tick_row`), the writer appends the entry, candles and chunks read its fields.
Row = tuple[str, tuple[str, ...], tuple[Any, ...]]
Item = Event | DeadLetter | Gap | Refill | Row


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
        symbol
        and 0 < ts < MAX_TS_NS
        and 0.0 < price < _INF
        and quantity >= 0
        and aggressor in _AGGRESSORS
        # orjson reads integers up to 2^64 - 1 (below -2^63 a float): one past 64 bits
        and max(ts_init, trade_id, buyer, seller, trade_type, quantity, seq) <= INT_MAX
    ):
        decode_dict(data)  # raises the generic decoder's DecodeError
        return None
    key = _TICK_KEYS.get(symbol)
    if key is None:
        if not keys.valid_symbol(symbol):
            return None
        key = _TICK_KEYS[symbol] = keys.stream_key("ticks", symbol)
    ms = ts // NS_PER_MS
    # The event ms, then `events.TRADE_LAYOUT`'s fields in its order, written out here (the hot
    # path: no generated call per tick); tests/core/test_bridge_rows.py checks it equals
    # `writer.trade_entry`, which is generated from the layout.
    entry: tuple[Any, ...] = (
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


def _ts_init_of(item: Event | Row) -> int:
    if type(item) is tuple:
        return item[2][E_TS_INIT]
    return getattr(item, "ts_init", 0)


def _symbol_of(item: Event | Row) -> str:
    return item[2][E_SYMBOL] if type(item) is tuple else item.symbol  # type: ignore[union-attr]


def _wire_of(item: Event | Row) -> bytes:
    return (entry_trade(item[2]) if type(item) is tuple else item).to_wire()  # type: ignore[union-attr]
