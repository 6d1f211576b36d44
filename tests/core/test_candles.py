"""Tick -> OHLCV candles: the rules, the resume points, and recomputation."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from qt_cli.core.candles import (
    CandleAggregator,
    CandleBuilder,
    candles_from_ticks,
    parse_timeframes,
    timeframe_ns,
)
from qt_cli.core.chunks import tick_columns_of
from qt_cli.core.errors import UsageError
from qt_cli.core.events import NS_PER_S, Trade
from qt_cli.core.keys import parse_id

MINUTE = 60 * NS_PER_S
T0 = 1_754_654_400 * NS_PER_S  # 2025-08-08 12:00:00 UTC, a minute boundary


def tick(
    at_s: float,
    price: float,
    qty: int = 1,
    aggressor: str = "buy",
    *,
    seq: int = 0,
    **extra,
) -> Trade:
    ts = T0 + int(at_s * NS_PER_S)
    return Trade(
        symbol=extra.pop("symbol", "WDOQ25"),
        ts_event=ts,
        price=price,
        quantity=qty,
        volume=price * qty * 10,
        aggressor=aggressor,
        trade_type={"buy": 2, "sell": 3}.get(aggressor, 1),
        ts_init=ts + 1_000,
        session="run.ticks",
        seq=seq,
        **extra,
    )


def test_one_minute_of_trades_makes_one_ohlcv_candle() -> None:
    builder = CandleBuilder("WDOQ25", "1m")
    trades = [
        tick(1, 5000.0, 2, "buy"),
        tick(10, 5003.5, 1, "sell"),
        tick(20, 4998.0, 3, "buy"),
        tick(59.999, 5001.0, 4, "sell"),
    ]
    for t in trades:
        assert builder.add(t) is None
    partial = builder.partial()
    assert partial is not None and partial.closed is False
    closed = builder.add(tick(60, 5002.0))
    assert closed is not None
    assert (closed.open, closed.high, closed.low, closed.close) == (5000.0, 5003.5, 4998.0, 5001.0)
    assert closed.ts_event == T0 and closed.timeframe == "1m" and closed.closed
    assert closed.quantity == 10 and closed.trades == 4
    assert closed.volume == pytest.approx(sum(t.volume for t in trades))
    assert closed.buy_volume == pytest.approx(trades[0].volume + trades[2].volume)
    assert closed.sell_volume == pytest.approx(trades[1].volume + trades[3].volume)
    expected_vwap = sum(t.price * t.quantity for t in trades) / 10
    assert closed.vwap == pytest.approx(expected_vwap)
    assert closed.ts_init == trades[-1].ts_init
    assert (closed.session, closed.seq) == ("candles.1m", T0 // MINUTE)
    assert closed.to_fields()["closed"] == "1"
    # the new minute is forming
    forming = builder.partial()
    assert forming is not None
    assert (forming.ts_event, forming.open, forming.trades) == (T0 + MINUTE, 5002.0, 1)


def test_a_quiet_minute_produces_no_candle() -> None:
    builder = CandleBuilder("WDOQ25", "1m")
    builder.add(tick(5, 5000.0))
    closed = builder.add(tick(185, 5001.0))  # minutes 1 and 2 had no trades
    assert closed is not None and closed.ts_event == T0
    assert builder.partial().ts_event == T0 + 3 * MINUTE


def test_late_edited_and_history_trades_do_not_change_candles() -> None:
    builder = CandleBuilder("WDOQ25", "1m")
    builder.add(tick(5, 5000.0))
    builder.add(tick(65, 5001.0))  # closes minute 0
    assert builder.add(tick(30, 9999.0)) is None  # minute 0 is closed: late
    assert builder.add(tick(70, 1.0, is_edit=True)) is None
    assert builder.add(tick(71, 2.0, history=True)) is None
    builder.add(tick(64, 5000.5))  # out of order but inside the forming minute: applied
    forming = builder.partial()
    assert forming is not None
    assert (forming.low, forming.high, forming.trades) == (5000.5, 5001.0, 2)
    assert (builder.late, builder.edits, builder.history) == (1, 1, 1)


def test_vwap_is_nan_without_quantity() -> None:
    builder = CandleBuilder("WDOQ25", "1m")
    builder.add(tick(1, 5000.0, qty=0))
    partial = builder.partial()
    assert partial is not None and math.isnan(partial.vwap)


def test_timeframes_close_independently() -> None:
    trades = [tick(s, 5000.0 + s) for s in range(0, 16 * 60, 30)]
    candles = candles_from_ticks(trades, ("1m", "5m", "15m"))
    by_tf = {tf: [c for c in candles if c.timeframe == tf] for tf in ("1m", "5m", "15m")}
    assert len(by_tf["1m"]) == 15 and len(by_tf["5m"]) == 3 and len(by_tf["15m"]) == 1
    fifteen = by_tf["15m"][0]
    assert fifteen.trades == 30 and fifteen.open == 5000.0 and fifteen.close == 5000.0 + 870
    assert [c.ts_event for c in by_tf["5m"]] == [T0, T0 + 5 * MINUTE, T0 + 10 * MINUTE]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, ("1m",)),
        ("1m,5m,15m", ("1m", "5m", "15m")),
        (["1m", "5m,1m", "1h"], ("1m", "5m", "1h")),
        ("30s", ("30s",)),
    ],
)
def test_parse_timeframes(text, expected) -> None:
    assert parse_timeframes(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("7m", "must divide a day evenly"),
        ("1d", "expected a number and s, m or h"),
        ("0m", "expected a number and s, m or h"),
        ("five", "expected a number and s, m or h"),
    ],
)
def test_bad_timeframes_say_what_is_accepted(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        timeframe_ns(text)


def _random_ticks(n: int, seed: int) -> list[tuple[str, Trade]]:
    rng = random.Random(seed)
    out = []
    at = 0.0
    for i in range(n):
        at += rng.expovariate(2.0)
        when = at - (rng.uniform(0, 90) if rng.random() < 0.05 else 0.0)  # some late ones
        trade = tick(
            when,
            round(5000 + rng.gauss(0, 5) * 2) / 2,
            rng.randint(1, 10),
            rng.choice(["buy", "sell", "none"]),
            seq=i + 1,
            is_edit=rng.random() < 0.01,
            history=rng.random() < 0.01,
        )
        out.append((f"{1_754_654_400_000 + i}-0", trade))
    return out


def test_resuming_from_a_stored_state_gives_the_same_candles() -> None:
    """Wherever the bridge restarts, the candles equal those of one uninterrupted pass."""
    ticks = _random_ticks(3000, seed=7)
    timeframes = ("1m", "5m")
    whole = candles_from_ticks(ticks, timeframes, include_partial=True)
    for cut in (1, 250, 1234, 2999):
        first = CandleAggregator(timeframes)
        stored = [c for entry_id, t in ticks[:cut] for c in first.add(t, entry_id)]
        # A restarted bridge finds the forming candle (with pv and src) or the last closed one.
        resumed: list[CandleBuilder] = []
        for builder in first.builders_for("WDOQ25"):
            fresh = CandleBuilder("WDOQ25", builder.timeframe)
            partial = builder.partial()
            closed = [c for c in stored if c.candle.timeframe == builder.timeframe]
            if partial is not None and cut % 2 == 0:
                fresh.resume_forming(partial, pv=builder.partial_pv, src=builder.partial_src)
            elif closed:
                fresh.resume_after_closed(closed[-1].candle, closed[-1].src)
            resumed.append(fresh)
        # It re-reads the ticks after the earliest resume point; each builder skips what it saw.
        earliest = min((b.src for b in resumed), key=parse_id)
        out = [c.candle for c in stored]
        for entry_id, trade in ticks:
            if parse_id(entry_id) <= parse_id(earliest):
                continue
            for builder in resumed:
                closed_candle = builder.add(trade, entry_id)
                if closed_candle is not None and closed_candle not in out:
                    out.append(closed_candle)
        out += [p for b in resumed if (p := b.partial()) is not None]
        order = lambda c: (c.timeframe, c.ts_event, c.closed)  # noqa: E731
        assert sorted(out, key=order) == sorted(whole, key=order), f"cut at {cut}"


def test_ticks_at_or_before_the_resume_point_are_ignored() -> None:
    builder = CandleBuilder("WDOQ25", "1m")
    builder.add(tick(1, 5000.0), "100-0")
    resumed = CandleBuilder("WDOQ25", "1m")
    partial = builder.partial()
    assert partial is not None
    resumed.resume_forming(partial, pv=builder.partial_pv, src="100-0")
    resumed.add(tick(1, 5000.0), "100-0")  # the same entry, re-read after the restart
    resumed.add(tick(0.5, 7000.0), "99-5")  # an older entry
    resumed.add(tick(2, 6000.0), "100-1")  # new
    again = resumed.partial()
    assert again is not None and again.trades == 2 and again.high == 6000.0


def test_candles_from_ticks_per_symbol() -> None:
    trades = [tick(1, 10.0, symbol="A"), tick(2, 20.0, symbol="B"), tick(61, 11.0, symbol="A")]
    candles = candles_from_ticks(trades, include_partial=True)
    closed = [c for c in candles if c.closed]
    assert [(c.symbol, c.close) for c in closed] == [("A", 10.0)]
    assert sorted((c.symbol, c.close) for c in candles if not c.closed) == [
        ("A", 11.0),
        ("B", 20.0),
    ]


def _mixed_ticks(rng: random.Random, n: int) -> list[Trade]:
    """Bursts, far-late trades, edits, backfill, NaN volumes and prices whose sums round."""
    out, at = [], 0.0
    for i in range(n):
        at += rng.choice((0.0, 0.3, 2.5, 17.0, 75.0))
        when = at - rng.choice((0.0, 0.0, 0.0, 61.0, 400.0))  # some from closed periods: late
        extra = {}
        if rng.random() < 0.05:
            extra["is_edit"] = True
        if rng.random() < 0.05:
            extra["history"] = True
        t = tick(
            max(when, 0.0),
            rng.choice((5000.0, 5000.5, 4999.5, 5012.25, 0.1 + 0.2)),
            rng.randrange(1, 9),
            rng.choice(("buy", "sell", "none")),
            seq=i + 1,
            **extra,
        )
        if rng.random() < 0.02:
            t = replace(t, volume=math.nan)
        out.append(t)
    return out


def _state(builder: CandleBuilder) -> tuple:
    partial = builder.partial()
    return (
        partial.to_fields() if partial else None,
        builder.partial_pv if partial else None,
        builder.src,
        builder.closed_src,
        builder.late,
        builder.edits,
        builder.history,
    )


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("timeframe", ["1m", "5m"])
def test_columns_at_once_make_exactly_the_candles_of_one_tick_at_a_time(
    seed: int, timeframe: str
) -> None:
    rng = random.Random(seed)
    trades = _mixed_ticks(rng, 600)
    ids = [f"{T0 // 1_000_000 + i}-0" for i in range(len(trades))]
    one, many = CandleBuilder("WDOQ25", timeframe), CandleBuilder("WDOQ25", timeframe)
    expected, got = [], []
    for trade, entry_id in zip(trades, ids, strict=True):
        closed = one.add(trade, entry_id)
        if closed is not None:
            expected.append((closed.to_fields(), one.closed_src))
    start = 0
    while start < len(trades):
        end = start + rng.choice((1, 2, 7, 50, 300))
        cols = tick_columns_of(trades[start:end]).arrays
        got += [(c.to_fields(), src) for c, src in many.add_columns(cols, ids[start:end])]
        start = end
    assert got == expected
    assert len(expected) >= 3
    assert _state(many) == _state(one)


def test_columns_after_a_resume_skip_what_was_applied_before() -> None:
    trades = _mixed_ticks(random.Random(7), 300)
    ids = [f"{T0 // 1_000_000 + i}-0" for i in range(len(trades))]
    first = CandleBuilder("WDOQ25", "1m")
    for trade, entry_id in zip(trades[:150], ids[:150], strict=True):
        first.add(trade, entry_id)
    one, many = CandleBuilder("WDOQ25", "1m"), CandleBuilder("WDOQ25", "1m")
    partial = first.partial()
    assert partial is not None
    for builder in (one, many):
        builder.resume_forming(partial, pv=first.partial_pv, src=first.partial_src)
    # The resumed builders see the whole stream again: the first 150 ticks must be skipped.
    expected = [
        (c.to_fields(), one.closed_src)
        for t, i in zip(trades, ids, strict=True)
        if (c := one.add(t, i)) is not None
    ]
    cols = tick_columns_of(trades).arrays
    got = [(c.to_fields(), src) for c, src in many.add_columns(cols, ids)]
    assert got == expected and expected
    assert _state(many) == _state(one)
