from __future__ import annotations

import math
import random
from datetime import datetime, timedelta

import orjson
import pytest

from qt_cli.core.errors import DecodeError
from qt_cli.core.events import (
    EXCHANGE_TZ,
    TRADE_OPTIONAL_FIELDS,
    TRADE_WIRE_FIELDS,
    BookUpdate,
    Candle,
    Daily,
    Event,
    FeatureVector,
    Prediction,
    Signal,
    State,
    TopOfBook,
    Trade,
    aggressor_of,
    decode,
    decode_dict,
    decode_fields,
    iso_local,
)

T0 = 1_754_654_400_123_000_000  # 2025-08-08 09:00:00.123 -03:00

SAMPLES: list[Event] = [
    Trade(
        symbol="WDOQ25",
        ts_event=T0,
        price=5432.5,
        quantity=3,
        volume=814875.0,
        trade_id=17,
        buyer=3,
        seller=72,
        trade_type=2,
        aggressor="buy",
        ts_init=T0 + 5_000,
        session="ab.ticks",
        seq=9,
    ),
    Trade(
        symbol="WDOQ25",
        ts_event=T0,
        price=5432.0,
        quantity=1,
        volume=1.0,
        trade_id=18,
        buyer_name="XP",
        seller_name="BTG",
        trade_type=3,
        aggressor="sell",
        is_edit=True,
        history=True,
    ),
    BookUpdate(
        symbol="WDOQ25",
        ts_event=T0,
        side="ask",
        action="add",
        position=3,
        price=5433.0,
        quantity=10,
        count=2,
        session="ab.book",
        seq=1,
    ),
    BookUpdate(
        symbol="WDOQ25",
        ts_event=T0,
        side="bid",
        action="full",
        levels=[[5432.0, 5, 1], [5431.5, 12, 3]],
    ),
    BookUpdate(symbol="WDOQ25", ts_event=T0, side="bid", action="delete_from", position=2),
    TopOfBook(
        symbol="WDOQ25", ts_event=T0, bid_price=5432.0, bid_qty=5, ask_price=5432.5, ask_qty=7
    ),
    TopOfBook(symbol="WDOQ25", ts_event=T0, bid_price=5432.0, bid_qty=5),
    Candle(
        symbol="WDOQ25",
        ts_event=T0,
        timeframe="5m",
        open=1.5,
        high=2.0,
        low=1.0,
        close=1.25,
        volume=10.0,
        quantity=4,
        trades=3,
        buy_volume=6.0,
        sell_volume=4.0,
        vwap=1.4,
        closed=False,
    ),
    Daily(
        symbol="WDOQ25",
        ts_event=T0,
        open=5400.0,
        high=5450.0,
        low=5390.0,
        close=5432.5,
        volume=1e9,
        trades=120_000,
        open_interest=400_000,
    ),
    State(symbol="*", ts_event=T0, source="market_data", code=4, text="MARKET_CONNECTED"),
    FeatureVector(
        symbol="WDOQ25",
        ts_event=T0,
        feature_set="seed65",
        catalog_hash="abc",
        features={"returns_1": 0.001, "volatility_20": math.nan},
        reasons={"volatility_20": "warm-up: 3 of 20 prices"},
    ),
    Prediction(
        symbol="WDOQ25",
        ts_event=T0,
        model="m",
        model_hash="h",
        value=0.61,
        label="up",
        probabilities={"down": 0.39, "up": 0.61},
        ts_features=T0,
    ),
    Signal(symbol="WDOQ25", ts_event=T0, action="buy", confidence=0.61, price=5432.5, model="m"),
]


def _same(a: Event, b: Event) -> bool:
    """Equality where NaN equals NaN (a feature that could not be computed stays NaN)."""
    return orjson.dumps(a.to_dict()) == orjson.dumps(b.to_dict()) and type(a) is type(b)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_wire_round_trip(event: Event) -> None:
    back = decode(event.to_wire())
    assert _same(back, event)
    if not any(
        isinstance(v, float) and math.isnan(v) for v in event.to_dict().values()
    ) and not isinstance(event, FeatureVector):
        assert back == event


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_flat_fields_round_trip(event: Event) -> None:
    fields = event.to_fields()
    assert all(isinstance(v, str) for v in fields.values())
    as_bytes = {k.encode(): v.encode() for k, v in fields.items()}  # as XRANGE returns them
    assert _same(decode_fields(as_bytes), event)


def test_float_round_trip_is_exact() -> None:
    tricky = [0.1 + 0.2, 5432.499999999999, 1e-300, 123456789.123456789]
    for value in tricky:
        trade = Trade(symbol="X", ts_event=T0, price=value, quantity=1)
        assert decode_fields(trade.to_fields()).price == value
        assert decode(trade.to_wire()).price == value


def test_nan_feature_travels_as_null_and_empty() -> None:
    vector = SAMPLES[10]
    assert b'"volatility_20":null' in vector.to_wire()
    assert math.isnan(decode(vector.to_wire()).features["volatility_20"])
    assert vector.reasons["volatility_20"].startswith("warm-up")


def test_tick_is_superset_of_seed_guide_message() -> None:
    """A consumer written against the seed guide (section 2.1) reads our tick unchanged."""
    wire = orjson.loads(SAMPLES[0].to_wire())
    seed_fields = {
        "type",
        "symbol",
        "timestamp",
        "timestamp_ms",
        "trade_id",
        "price",
        "volume",
        "quantity",
        "buyer",
        "seller",
        "trade_type",
        "is_edit",
    }
    assert seed_fields <= wire.keys()
    assert {"seq", "session", "recv_ns"} <= wire.keys()
    # What the seed's consumer does with a tick:
    assert wire["type"] == "tick"
    tick = {
        "symbol": wire["symbol"],
        "timestamp": wire["timestamp"],
        "price": float(wire["price"]),
        "volume": float(wire["volume"]),
        "quantity": int(wire["quantity"]),
    }
    assert tick == {
        "symbol": "WDOQ25",
        "timestamp": "2025-08-08T09:00:00.123-03:00",
        "price": 5432.5,
        "volume": 814875.0,
        "quantity": 3,
    }
    assert wire["timestamp_ms"] == T0 // 1_000_000
    assert wire["recv_ns"] == T0 + 5_000


def test_trade_field_lists_match_the_encoder() -> None:
    plain = Trade(symbol="X", ts_event=T0, price=1.0)
    assert tuple(plain.to_dict()) == TRADE_WIRE_FIELDS
    full = Trade(
        symbol="X", ts_event=T0, price=1.0, buyer_name="XP", seller_name="BTG", history=True
    )
    assert tuple(full.to_dict()) == TRADE_WIRE_FIELDS + TRADE_OPTIONAL_FIELDS


def test_seed_format_tick_decodes() -> None:
    seed = {
        "type": "tick",
        "symbol": "WDOQ25",
        "timestamp": "08/08/2025 09:00:00.123",
        "timestamp_ms": 1754654400123,
        "trade_id": 5,
        "price": 5000.5,
        "volume": 10.0,
        "quantity": 1,
        "buyer": 1,
        "seller": 2,
        "trade_type": 3,
        "is_edit": 0,
    }
    trade = decode_dict(seed)
    assert isinstance(trade, Trade)
    assert trade.ts_event == 1754654400123 * 1_000_000
    assert trade.aggressor == "sell"
    assert (trade.session, trade.seq) == ("", 0)


def test_iso_local_uses_exchange_zone_history() -> None:
    assert iso_local(T0) == "2025-08-08T09:00:00.123-03:00"
    # 2018-01-15 was in Brazilian summer time (UTC-2).
    assert iso_local(1_516_021_200_000_000_000) == "2018-01-15T11:00:00.000-02:00"


def test_iso_local_cache_equals_direct_formatting() -> None:
    rng = random.Random(7)
    stamps = [
        0,
        1,
        999_999_999,
        T0,
        T0 + 999_999_999,
        *(rng.randrange(4 * 10**18) for _ in range(5000)),
    ]
    for ts in stamps:
        seconds, rem = divmod(ts, 1_000_000_000)
        direct = datetime.fromtimestamp(seconds, tz=EXCHANGE_TZ) + timedelta(
            microseconds=rem // 1000
        )
        assert iso_local(ts) == direct.isoformat(timespec="milliseconds")


def test_aggressor_mapping() -> None:
    assert [aggressor_of(t) for t in (2, 3, 4, 32, 99)] == ["buy", "sell", "none", "none", "none"]


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        (b"not json", None, "not JSON"),
        (b"[1, 2]", None, "expected a JSON object"),
        (b'{"symbol": "X"}', "type", "unknown event type None"),
        (b'{"type": "bogus", "symbol": "X"}', "type", "unknown event type 'bogus'"),
        (b'{"type": "tick", "ts_event": 1, "price": 1.0}', "symbol", "field 'symbol' is missing"),
        (
            b'{"type": "tick", "symbol": "X", "price": 1.0}',
            "ts_event",
            "field 'ts_event' is missing",
        ),
        (
            b'{"type": "tick", "symbol": "X", "ts_event": 1, "price": "abc"}',
            "price",
            "expected a number",
        ),
        (b'{"type": "tick", "symbol": "X", "ts_event": 1, "price": null}', "price", "price is NaN"),
        (
            b'{"type": "tick", "symbol": "X", "ts_event": 1, "price": -5}',
            "price",
            "must be positive",
        ),
        (
            b'{"type": "tick", "symbol": "X", "ts_event": 1, "price": 1, "quantity": 1.5}',
            "quantity",
            "expected an integer",
        ),
        (
            b'{"type": "tick", "symbol": "X", "ts_event": 1, "price": 1, "quantity": -1}',
            "quantity",
            "negative",
        ),
        (
            b'{"type": "tick", "symbol": "X", "ts_event": 1, "price": 1, "is_edit": "maybe"}',
            "is_edit",
            "expected a boolean",
        ),
        (b'{"type": "book", "symbol": "X", "ts_event": 1, "side": "up"}', "side", "not bid|ask"),
        (
            b'{"type": "book", "symbol": "X", "ts_event": 1, "action": "move"}',
            "action",
            "is not one of",
        ),
        (
            b'{"type": "signal", "symbol": "X", "ts_event": 1, "action": "short"}',
            "action",
            "not buy|sell|hold",
        ),
        (
            b'{"type": "features", "symbol": "X", "ts_event": 1, "features": "{bad"}',
            "features",
            "invalid JSON",
        ),
        (  # keys.valid_symbol is the one rule: no stream key or topic could hold it
            b'{"type": "tick", "symbol": "a:b{c}", "ts_event": 1, "price": 1}',
            "symbol",
            r"'a:b\{c\}' is not a ticker",
        ),
        (b'{"type": "state", "symbol": "WDO Q25", "ts_event": 1}', "symbol", "is not a ticker"),
    ],
)
def test_decode_rejects_malformed_input_naming_the_field(
    payload: bytes, field: str | None, message: str
) -> None:
    with pytest.raises(DecodeError, match=message) as info:
        decode(payload)
    assert info.value.field == field


def test_the_whole_connection_symbol_decodes() -> None:
    assert decode(b'{"type": "state", "symbol": "*", "ts_event": 1}').symbol == "*"
    assert decode(b'{"type": "tick", "symbol": "WDO-Q_25.X", "ts_event": 1, "price": 1}')


def test_events_are_immutable() -> None:
    with pytest.raises(AttributeError):
        SAMPLES[0].price = 1.0  # type: ignore[misc]


def test_stream_kinds() -> None:
    assert [e.stream_kind for e in SAMPLES[:10]] == [
        "ticks",
        "ticks",
        "book",
        "book",
        "book",
        "book",
        "book",
        "candles:5m",
        "daily",
        "state",
    ]


def _general_path(fields: dict) -> Event:
    """decode_fields' general path: every name and value decoded, then decode_dict."""
    return decode_dict({k.decode(): v.decode() for k, v in fields.items()})


def _outcome(fn, fields: dict) -> str:
    try:
        return repr(fn(fields))
    except (DecodeError, UnicodeDecodeError) as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_bytes_fields_decode_as_the_general_path(event: Event) -> None:
    """decode_fields reads bytes entries without decoding them first; every entry, and every
    altered one (a field missing, emptied, unreadable; a seed-era tick; a replayed record;
    str names), decodes to the same event or fails with the same error as the general path.
    One difference: bytes that are not UTF-8 in a field the event does not read (`timestamp`,
    say) made the general path raise UnicodeDecodeError (not a DecodeError: a reader stopped
    there); the event is decoded as if that field were absent."""
    base = {k.encode(): v.encode() for k, v in event.to_fields().items()}
    variants = [(base, None)]
    for name in base:
        variants.append(({k: v for k, v in base.items() if k != name}, None))
        for odd in (b"", b"x", b"1.5", b"-3", b"\xff", b"\xd9\xa3", b"nan", b" 7 "):
            variants.append(({**base, name: odd}, name))
    variants.append(({**base, b"origin": b"other.ticks", b"origin_seq": b"4"}, None))
    variants.append(({**base, b"extra": b"ignored", b"late": b"\xff"}, b"late"))
    for fields, name in variants:
        want = _outcome(_general_path, fields)
        got = _outcome(decode_fields, fields)
        if got != want and want.startswith("UnicodeDecodeError") and name is not None:
            want = _outcome(_general_path, {k: v for k, v in fields.items() if k != name})
            assert name.decode() not in {n for n, _, _ in type(event)._spec}
        assert got == want, fields
    as_text = {k.decode(): v.decode() for k, v in base.items()}
    assert repr(decode_fields(as_text)) == repr(_general_path(base))
