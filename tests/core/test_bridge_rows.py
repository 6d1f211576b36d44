"""The bridge's fast path: wire dicts straight to stream entries (Rows), and the pieces that use
them (chunk columns, the SubSource decode hook, framing), against the generic code."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest
import zmq

from qt_cli.core import keys
from qt_cli.core.bridge import entry_columns, tick_row
from qt_cli.core.chunks import encode_columns, tick_columns_of
from qt_cli.core.errors import DecodeError
from qt_cli.core.events import _DICT_DECODERS, EVENT_TYPES, NS_PER_S, Trade, decode_dict
from qt_cli.core.store.writer import entry_trade, trade_entry
from qt_cli.core.zmq_io import SubSource
from tests.helpers import eventually, tcp_endpoint

T0 = 1_754_654_400 * NS_PER_S
BASE = Trade(
    "WDOQ25",
    T0 + 123_456_789,
    price=5000.5,
    quantity=3,
    volume=150015.0,
    trade_id=9,
    buyer=3,
    seller=72,
    trade_type=2,
    aggressor="buy",
    ts_init=T0 + 200_000_000,
    session="r.ticks",
    seq=5,
)
VARIANTS = [
    BASE,
    replace(BASE, buyer_name="XP", seller_name="BTG"),
    replace(BASE, history=True),
    replace(BASE, buyer_name="XP", seller_name="", history=True),
    replace(BASE, is_edit=True, aggressor="none", session="", seq=0),
    replace(BASE, volume=0.0, quantity=0),
]


@pytest.mark.parametrize("trade", VARIANTS)
def test_a_row_holds_what_the_generic_path_would_store(trade: Trade) -> None:
    wire = orjson.loads(trade.to_wire())
    row = tick_row(wire)
    assert row is not None
    key, names, entry = row
    assert key == keys.stream_key("ticks", trade.symbol)
    assert (names, entry) == trade_entry(decode_dict(wire))
    assert entry_trade(entry) == trade


@pytest.mark.parametrize(
    "change",
    [
        {"type": "book"},
        {"price": "5000.5"},
        {"quantity": 2.0},
        {"is_edit": 1},
        {"ts_event": None},
        {"buyer_name": 3},
        {"history": "yes"},
        {"symbol": "not a ticker!"},
    ],
)
def test_anything_unusual_goes_the_generic_way(change: dict) -> None:
    assert tick_row({**orjson.loads(BASE.to_wire()), **change}) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"price": -1.0}, "price must be positive"),
        ({"price": 0}, "price must be positive"),
        ({"quantity": -2}, "negative"),
        ({"aggressor": "up"}, "is not buy|sell|none"),
        ({"symbol": ""}, "'symbol' is empty"),
        ({"ts_event": 0}, "not a time"),
    ],
)
def test_invalid_values_raise_the_generic_error(change: dict, message: str) -> None:
    wire = {**orjson.loads(BASE.to_wire()), **change}
    with pytest.raises(DecodeError, match=message):
        tick_row(wire)
    with pytest.raises(DecodeError, match=message):
        decode_dict(wire)


def test_chunk_columns_from_entries_equal_those_from_trades() -> None:
    trades = [replace(BASE, ts_event=T0 + i * 1_000_000, seq=i + 1, trade_id=i) for i in range(600)]
    trades[10] = replace(trades[10], buyer_name="XP")
    trades[20] = replace(trades[20], history=True, session="h.history")
    trades[30] = replace(trades[30], is_edit=True, aggressor="sell")
    late = [i % 7 == 0 for i in range(len(trades))]
    for part in (trades[:5], trades[:300], trades[40:], trades):  # plain, mixed
        flags = late[: len(part)]
        expected = encode_columns(tick_columns_of(part, late=flags))
        got = encode_columns(entry_columns([trade_entry(t)[1] for t in part], flags))
        assert got == expected


def test_sub_source_decode_hook_and_framing(ctx: zmq.Context[Any]) -> None:
    uri = tcp_endpoint()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(uri)
    source = SubSource(uri, replay=None, catch_up=False, decode=tick_row, context=ctx)
    try:
        seq = 0

        def wire(trade: Trade) -> bytes:
            nonlocal seq
            seq += 1
            return orjson.dumps(trade.to_dict() | {"session": "hook.ticks", "seq": seq})

        got: list[Any] = []
        probe = replace(BASE, price=4999.0)  # sent until the subscription is up

        def ready() -> bool:
            pub.send_multipart([b"tick_WDOQ25", wire(probe)])
            got.extend(source.read(0.05))
            return bool(got)

        eventually(ready, message="subscriber never connected")
        pub.send_multipart([b"tick_WDOQ25", wire(BASE)])  # a Row
        bad = orjson.loads(wire(BASE)) | {"price": -1.0}
        pub.send_multipart([b"tick_WDOQ25", orjson.dumps(bad)])  # rejected
        pub.send(wire(replace(BASE, price=5001.0)))  # one frame: topic ''
        head = wire(replace(BASE, price=5002.0))
        pub.send_multipart([b"tick_WDOQ25", head[:40], head[40:]])  # three frames
        eventually(lambda: got.extend(source.read(0.05)) or got[-1][2][6] == 5002.0)
        # probes sent before the subscription was up are lost (the first one seen starts the
        # session); those still in flight when it came up arrive before the rest
        probes = [row for row in got if row[2][6] == 4999.0]
        rows = [row for row in got if row[2][6] != 4999.0]
        assert [type(item) for item in rows] == [tuple, tuple, tuple]
        assert [row[2][6] for row in rows] == [5000.5, 5001.0, 5002.0]
        [reject] = source.take_rejects()
        assert reject.topic == "tick_WDOQ25" and "price must be positive" in reject.reason
        session = source.stats.sessions["hook.ticks"]
        # every message of the session from the first one seen counts, the rejected one too
        assert (session.received, session.last_seq) == (len(probes) + 4, seq)
        assert source.take_gaps() == []
    finally:
        source.close()
        pub.close(linger=0)


# --- book updates and tops of book: the same events as the generic decoder -------------------


def _book_wires() -> list[dict[str, Any]]:
    """Every book and tob message of a simulated stretch, as the feed writes them (orjson)."""
    from qt_cli.core.journal import Sequencer
    from qt_cli.core.sources.sim import SimConfig, SimulatedMarket

    sim = SimulatedMarket(
        SimConfig(seed=11, rate=0, max_events=6000, start_ns=1754658000 * NS_PER_S)
    )
    events: list = []
    while not sim.finished:
        events += sim.read(0.0)
    payloads = [p for _, p in Sequencer("run.book").encode(events)]
    wires = [orjson.loads(p) for p in payloads]
    return [w for w in wires if w["type"] in ("book", "tob")]


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and repr(a) == repr(b)  # repr: NaN prices compare equal


def _fast(wire: dict[str, Any]) -> Any:
    """The generated wire decoder `decode_dict` takes first (`events._DICT_DECODERS`)."""
    return _DICT_DECODERS[wire["type"]](dict(wire))


def _general(wire: dict[str, Any]) -> Any:
    return EVENT_TYPES[wire["type"]].from_dict(dict(wire))


def test_book_events_decode_to_what_the_generic_decoder_gives() -> None:
    """Every simulated book and top-of-book message (most of a feed's messages, the bridge's
    hottest decoding) takes the generated decoder and gives what `from_dict` gives."""
    wires = _book_wires()
    kinds = {(w["type"], w.get("action")) for w in wires}
    assert {("book", "add"), ("book", "edit"), ("book", "delete"), ("tob", None)} <= kinds
    assert any(w["type"] == "tob" and w["bid_price"] is None for w in wires) or any(
        w["type"] == "book" and w["price"] is None for w in wires
    )
    for wire in wires:
        fast = _fast(wire)
        assert fast is not None, wire  # the canonical form takes the fast path
        assert _same(fast, _general(wire)), wire


BOOK = {
    "type": "book", "symbol": "WDOQ25", "ts_event": 1754658000 * NS_PER_S, "side": "bid",
    "action": "add", "position": 0, "price": 5000.5, "quantity": 3, "count": 1, "agent": 0,
    "order_id": 0, "book": "price", "levels": [], "ts_init": 1, "session": "r.book", "seq": 7,
}  # fmt: skip
TOB = {
    "type": "tob", "symbol": "WDOQ25", "ts_event": 1754658000 * NS_PER_S, "bid_price": 5000.0,
    "bid_qty": 4, "ask_price": 5000.5, "ask_qty": 2, "ts_init": 1, "session": "r.book", "seq": 8,
}  # fmt: skip


@pytest.mark.parametrize(
    ("base", "change"),
    [
        (BOOK, {"price": 5000}),  # an int price: the generic way makes it a float
        (BOOK, {"quantity": True}),  # a bool for an int
        (BOOK, {"position": 2.0}),
        (BOOK, {"symbol": "*"}),
        (BOOK, {"symbol": "bad symbol"}),
        (BOOK, {"symbol": ""}),
        (BOOK, {"side": "middle"}),
        (BOOK, {"action": "replace"}),
        (BOOK, {"action": "add", "price": None}),
        (BOOK, {"action": "add", "price": -1.0}),
        (BOOK, {"action": "delete", "price": None}),
        (BOOK, {"levels": "[[5000.0, 1, 1]]"}),  # JSON text: the generic way parses it
        (BOOK, {"levels": [[5000.0, 1, 1]], "action": "full"}),
        (BOOK, {"ts_event": 0}),
        (BOOK, {"ts_event": 2**63}),
        (BOOK, {"seq": 2**63}),
        (BOOK, {"book": 1}),
        (BOOK, {"origin": "old.book", "origin_seq": 3}),
        (BOOK, {"quantity": None}),
        (TOB, {"bid_price": None}),
        (TOB, {"ask_price": None, "ask_qty": 0}),
        (TOB, {"bid_price": 0.0}),
        (TOB, {"ask_price": float("inf")}),
        (TOB, {"bid_qty": "4"}),
        (TOB, {"origin": "old.book", "origin_seq": 3}),
        (TOB, {"symbol": "*"}),
    ],
)
def test_unusual_book_messages_decode_as_the_generic_decoder_does(base: dict, change: dict) -> None:
    wire = {**base, **change}
    wire = {k: v for k, v in wire.items() if v is not None or k.endswith("price")}
    try:
        expected: Any = _general(wire)
    except DecodeError as exc:
        expected = exc
    fast = _fast(wire)
    if fast is None:  # left to from_dict: what decode_dict does next
        return
    assert not isinstance(expected, DecodeError), (wire, fast)
    assert _same(fast, expected)
