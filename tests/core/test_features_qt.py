"""basic11 and the qt set against independent straightforward computations (pandas rolling or a
plain loop over the whole history) on known series, warm-up and a session boundary included."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from qt_cli.core.events import EXCHANGE_TZ, BookUpdate, Trade
from qt_cli.core.features.catalog import SETS
from qt_cli.core.features.engine import CROSSED_BOOK, NO_BOOK, FeatureEngine
from tests.core.features_data import SYMBOL, book_series, trade_series


def _ema(values: list[float], n: int) -> list[float]:
    out, value = [], math.nan
    for i, x in enumerate(values):
        if i + 1 < n:
            out.append(math.nan)
            continue
        value = sum(values[:n]) / n if i + 1 == n else value + 2 / (n + 1) * (x - value)
        out.append(value)
    return out


def _wilder(values: list[float], n: int) -> list[float]:
    out, value = [], math.nan
    for i, x in enumerate(values):
        if i + 1 < n:
            out.append(math.nan)
            continue
        value = sum(values[:n]) / n if i + 1 == n else (value * (n - 1) + x) / n
        out.append(value)
    return out


def rolling_std(x: pd.Series, n: int, ddof: int) -> pd.Series:
    """np.std over each full window (pandas' rolling std drifts, e.g. 4e-6 on a flat window)."""
    values = x.to_numpy(dtype=float)
    out = np.full(len(values), np.nan)
    if len(values) >= n:
        windows = np.lib.stride_tricks.sliding_window_view(values, n)
        out[n - 1 :] = np.std(windows, axis=1, ddof=ddof)
    return pd.Series(out, index=x.index)


def trade_reference(trades: list[Trade]) -> pd.DataFrame:
    """Every trade-based feature of basic11 and qt, computed from scratch."""
    n = len(trades)
    p = pd.Series([t.price for t in trades], dtype=float)
    q = pd.Series([float(t.quantity) for t in trades])
    local = [datetime.fromtimestamp(t.ts_event // 10**9, tz=EXCHANGE_TZ) for t in trades]
    r1 = p.pct_change()
    lr = np.log(p / p.shift())
    f = pd.DataFrame(index=p.index)
    f["price_current"] = p
    f["price_mean_5"] = p.rolling(5).mean()
    f["price_mean_20"] = m20 = p.rolling(20).mean()
    f["price_std_20"] = sd20 = rolling_std(p, 20, 0)
    f["return_1"] = r1
    f["return_mean_5"] = r1.rolling(5).mean()
    f["return_std_5"] = rolling_std(r1, 5, 0)
    f["volume_mean_5"] = vm5 = q.rolling(5).mean()
    f["volume_ratio"] = q / vm5
    changes = p.diff().tolist()[1:]
    gains = _wilder([max(c, 0.0) for c in changes], 14)
    losses = _wilder([max(-c, 0.0) for c in changes], 14)
    rsi = [math.nan]
    for g, lo in zip(gains, losses, strict=True):
        if math.isnan(g):
            rsi.append(math.nan)
        elif lo == 0:
            rsi.append(50.0 if g == 0 else 100.0)
        else:
            rsi.append(100 - 100 / (1 + g / lo))
    f["rsi_14"] = rsi
    f["momentum_10"] = p / p.shift(10) - 1
    for k in (5, 20, 50, 100):
        f[f"return_{k}"] = p / p.shift(k) - 1
    f["log_return_1"] = lr
    f["return_mean_20"] = r1.rolling(20).mean()
    sd50 = rolling_std(p, 50, 0)
    f["price_zscore_50"] = np.where(sd50 > 0, (p - p.rolling(50).mean()) / sd50, 0.0)
    f.loc[sd50.isna(), "price_zscore_50"] = np.nan
    f["up_tick_ratio_20"] = (r1 > 0).astype(float).where(r1.notna()).rolling(20).mean()
    rv = {k: np.sqrt((lr**2).rolling(k).mean()) for k in (10, 20, 50, 100)}
    for k, series in rv.items():
        f[f"realized_vol_{k}"] = series
    for a, b in ((10, 50), (20, 100)):
        f[f"vol_ratio_{a}_{b}"] = np.where(rv[b] == 0, 1.0, rv[a] / rv[b])
        f.loc[rv[b].isna(), f"vol_ratio_{a}_{b}"] = np.nan
    # 10-trade bars, counted from the first trade; a feature uses the bars complete so far
    prices = p.tolist()
    park, gk, atr_col = [], [], []
    trs: list[float] = []
    for i in range(n):
        bars = [prices[j : j + 10] for j in range(0, (i + 1) // 10 * 10, 10)]
        if len(bars) >= 10:
            last = bars[-10:]
            park.append(
                math.sqrt(
                    sum(math.log(max(b) / min(b)) ** 2 for b in last) / 10 / (4 * math.log(2))
                )
            )
            terms = [
                0.5 * math.log(max(b) / min(b)) ** 2
                - (2 * math.log(2) - 1) * math.log(b[-1] / b[0]) ** 2
                for b in last
            ]
            gk.append(math.sqrt(max(sum(terms) / 10, 0.0)))
        else:
            park.append(math.nan)
            gk.append(math.nan)
        trs = [
            max(b) - min(b)
            if k == 0
            else max(max(b) - min(b), abs(max(b) - bars[k - 1][-1]), abs(min(b) - bars[k - 1][-1]))
            for k, b in enumerate(bars)
        ]
        atr_col.append(_wilder(trs, 14)[-1] if len(trs) >= 14 else math.nan)
    f["parkinson_vol_10x10"] = park
    f["garman_klass_vol_10x10"] = gk
    f["atr_14x10"] = atr_col
    f["atr_relative"] = pd.Series(atr_col) / p
    f["volume_mean_20"] = vm20 = q.rolling(20).mean()
    vs20 = rolling_std(q, 20, 1)
    f["volume_zscore_20q"] = np.where(vs20 > 0, (q - vm20) / vs20, 0.0)
    f.loc[vs20.isna(), "volume_zscore_20q"] = np.nan
    f["volume_ratio_5_50"] = vm5 / q.rolling(50).mean()
    for k in (20, 100):
        f[f"vwap_dev_{k}"] = p / ((p * q).rolling(k).sum() / q.rolling(k).sum()) - 1
    day = pd.Series([d.date() for d in local])
    f["vwap_dev_session"] = p / ((p * q).groupby(day).cumsum() / q.groupby(day).cumsum()) - 1
    e12, e26 = _ema(prices, 12), _ema(prices, 26)
    macd = [a - b for a, b in zip(e12, e26, strict=True)]
    signal = [math.nan] * 25 + _ema(macd[25:], 9)
    f["macd_12_26"] = macd
    f["macd_signal_9"] = signal
    f["macd_hist"] = [a - b for a, b in zip(macd, signal, strict=True)]
    f["bb_position_20"] = np.where(sd20 > 0, (p - m20) / (2 * sd20), 0.0)
    f.loc[sd20.isna(), "bb_position_20"] = np.nan
    f["bb_width_20"] = 4 * sd20 / m20
    lo14, hi14 = p.rolling(14).min(), p.rolling(14).max()
    f["stoch_k_14"] = np.where(hi14 > lo14, 100 * (p - lo14) / (hi14 - lo14), 50.0)
    f.loc[lo14.isna(), "stoch_k_14"] = np.nan
    side = pd.Series([{"buy": 1, "sell": -1}.get(t.aggressor, 0) for t in trades])
    buy_q = q.where(side == 1, 0.0)
    sell_q = q.where(side == -1, 0.0)
    for k in (10, 50, 100):
        b, s = buy_q.rolling(k).sum(), sell_q.rolling(k).sum()
        f[f"trade_imbalance_{k}"] = np.where(b + s > 0, (b - s) / (b + s), 0.0)
        f.loc[b.isna(), f"trade_imbalance_{k}"] = np.nan
    f["signed_volume_100"] = (q * side).rolling(100).sum()
    f["cumulative_delta_session"] = (q * side).groupby(day).cumsum()
    conc, uniq, runs = [], [], []
    for i in range(n):
        if i >= 99:
            window = trades[i - 99 : i + 1]
            counts = Counter([t.buyer for t in window] + [t.seller for t in window])
            conc.append(sum(c * c for c in counts.values()) / 200**2)
            uniq.append(len(counts))
        else:
            conc.append(math.nan)
            uniq.append(math.nan)
        run = 1
        while i - run >= 0 and trades[i - run].aggressor == trades[i].aggressor:
            run += 1
        runs.append(run)
    f["agent_concentration_100"] = conc
    f["unique_agents_100"] = uniq
    f["self_trade_ratio_100"] = (
        pd.Series([float(t.buyer == t.seller) for t in trades]).rolling(100).mean()
    )
    f["aggressor_run_length"] = runs
    since = [
        d.hour * 60 + d.minute + (d.second + t.ts_event % 10**9 / 1e9) / 60 - 540
        for d, t in zip(local, trades, strict=True)
    ]
    f["minutes_since_open"] = since
    f["minutes_to_close"] = [540 - s for s in since]
    f["session_phase"] = [
        0 if s < 0 else 4 if 540 - s <= 0 else 1 if s < 30 else 3 if 540 - s <= 30 else 2
        for s in since
    ]
    f["day_of_week"] = [d.weekday() for d in local]
    return f


def assert_close(got: pd.DataFrame, want: pd.DataFrame, names: list[str]) -> None:
    for name in names:
        a = got[name].to_numpy(dtype=float)
        b = want[name].to_numpy(dtype=float)
        assert np.array_equal(np.isnan(a), np.isnan(b)), (
            name,
            np.flatnonzero(np.isnan(a) != np.isnan(b))[:5],
        )
        ok = ~np.isnan(b)
        err = np.abs(a[ok] - b[ok]) / np.maximum(1.0, np.abs(b[ok]))
        assert err.max(initial=0.0) <= 1e-9, (name, float(err.max()))


def vectors_frame(vectors: list) -> pd.DataFrame:
    return pd.DataFrame([v.values for v in vectors], columns=list(vectors[0].names))


def test_basic11_against_plain_computation() -> None:
    trades = trade_series(400, boundary_at=250)
    engine = FeatureEngine("basic11")
    vectors = [engine.on_trade(t) for t in trades]
    got = vectors_frame(vectors)
    assert list(got.columns) == list(SETS["basic11"])
    assert_close(got, trade_reference(trades), list(SETS["basic11"]))
    warm = [i for i, v in enumerate(vectors) if v.warm]
    assert warm[0] == 19 and warm == list(range(19, len(trades)))  # price_mean_20 / std_20
    assert vectors[14].missing == ("price_mean_20", "price_std_20")


QT_TRADE_NAMES = [
    n
    for n in SETS["qt"]
    if n
    not in {
        "ofi_100",
        "spread",
        "spread_relative",
        "microprice_deviation",
        "imbalance_1",
        "imbalance_5",
        "depth_5",
        "book_slope_5",
        "cancel_rate_100",
        "replenish_rate_100",
        "trade_mid_deviation",
    }
]


def test_qt_trade_features_against_plain_computation_across_a_session_boundary() -> None:
    trades = trade_series(700, boundary_at=450)
    engine = FeatureEngine("qt")
    vectors = [engine.on_trade(t) for t in trades]
    got = vectors_frame(vectors)
    want = trade_reference(trades)
    assert_close(got, want, QT_TRADE_NAMES)
    # the boundary: session features and session windows restart, trade windows do not
    assert got["vwap_dev_session"][450] == pytest.approx(0.0, abs=1e-12)
    assert got["cumulative_delta_session"][450] in (-trades[450].quantity, 0, trades[450].quantity)
    assert got["session_phase"][449] == 2 and got["session_phase"][450] == 0
    assert not math.isnan(got["return_100"][450])
    # no book events: every book feature NaN with its reason, the vector never warm
    last = vectors[-1]
    assert not last.warm and last.reasons["spread"] == NO_BOOK
    assert engine.counters["no_book"] == len(trades)


def book_reference(events: list) -> pd.DataFrame:
    """Replay the book from scratch for every trade; OFI and rates by a plain loop."""
    bids: list[list[float]] = []
    asks: list[list[float]] = []
    history: list[tuple[int, int, int]] = []  # (ofi e, shrink, grow) per book event
    rows = []
    for ev in events:
        if isinstance(ev, BookUpdate):
            book = bids if ev.side == "bid" else asks
            before = (bids[0][:] if bids else None, asks[0][:] if asks else None)
            shrink = grow = 0
            if ev.action == "full":
                book[:] = [[lv[0], lv[1]] for lv in ev.levels]
            elif ev.action == "add":
                book.insert(ev.position, [ev.price, ev.quantity])
                grow = 1
            elif ev.action == "edit":
                old = book[ev.position][1]
                book[ev.position][1] = ev.quantity
                grow, shrink = int(ev.quantity > old), int(ev.quantity < old)
            elif ev.action == "delete":
                book.pop(ev.position)
                shrink = 1
            else:
                for _ in range(ev.position + 1):
                    book.pop(0)
                shrink = 1
            e = 0
            (b0, a0), b1, a1 = before, bids[0] if bids else None, asks[0] if asks else None
            if b0 and b1:
                e += (b1[1] if b1[0] >= b0[0] else 0) - (b0[1] if b1[0] <= b0[0] else 0)
            if a0 and a1:
                e += (a0[1] if a1[0] >= a0[0] else 0) - (a1[1] if a1[0] <= a0[0] else 0)
            history.append((e, shrink, grow))
            continue
        row: dict[str, float] = {}
        last = history[-100:]
        full = len(history) >= 100
        row["ofi_100"] = sum(h[0] for h in last) if full else math.nan
        row["cancel_rate_100"] = sum(h[1] for h in last) / 100 if full else math.nan
        row["replenish_rate_100"] = sum(h[2] for h in last) / 100 if full else math.nan
        (bp, bq), (ap, aq) = bids[0], asks[0]
        mid = (bp + ap) / 2
        row["spread"] = ap - bp
        row["spread_relative"] = (ap - bp) / mid
        row["microprice_deviation"] = ((bp * aq + ap * bq) / (bq + aq) - mid) / mid
        row["imbalance_1"] = (bq - aq) / (bq + aq)
        qb = sum(level[1] for level in bids[:5])
        qa = sum(level[1] for level in asks[:5])
        row["imbalance_5"] = (qb - qa) / (qb + qa)
        row["depth_5"] = qb + qa
        row["book_slope_5"] = (qb + qa) / (asks[:5][-1][0] - bids[:5][-1][0])
        row["trade_mid_deviation"] = ev.price / mid - 1
        rows.append(row)
    return pd.DataFrame(rows)


def test_qt_book_features_against_a_replayed_book() -> None:
    trades = trade_series(500)
    events = book_series(trades)
    engine = FeatureEngine("qt")
    vectors = [v for v in (engine.on_event(ev) for ev in events) if v is not None]
    assert len(vectors) == len(trades)
    got = vectors_frame(vectors)
    want = book_reference(events)
    assert set(QT_TRADE_NAMES) | set(want.columns) == set(SETS["qt"])  # every qt feature tested
    assert_close(got, want, list(want.columns))
    kinds = Counter(ev.action for ev in events if isinstance(ev, BookUpdate))
    assert set(kinds) == {"full", "add", "edit", "delete", "delete_from"}, kinds
    assert engine.counters["bad_book_position"] == 0
    assert vectors[-1].warm and vectors[-1].lineage["book"]["session"] == "b"
    assert vectors[-1].lineage["trade"] == {"session": "s1", "seq": 500, "trade_id": 500}
    assert vectors[-1].ts_event == trades[-1].ts_event


def _book(engine: FeatureEngine, ts: int, bid: float, ask: float) -> None:
    for side, price in (("bid", bid), ("ask", ask)):
        engine.on_book(BookUpdate(SYMBOL, ts, side, "full", levels=[[price, 10, 1]]))


def test_bad_input_is_skipped_and_counted_never_raised() -> None:
    trades = trade_series(5)
    engine = FeatureEngine("qt")
    t0 = trades[0]
    _book(engine, t0.ts_event, 5400.5, 5400.0)  # crossed
    v = engine.on_trade(t0)
    assert v is not None and v.reasons["spread"] == CROSSED_BOOK
    assert math.isnan(v.values[v.names.index("spread")])
    assert engine.counters["crossed_book"] == 1
    from dataclasses import replace

    assert engine.on_trade(replace(trades[1], price=math.nan)) is None
    assert engine.on_trade(replace(trades[1], price=math.inf)) is None
    assert engine.on_trade(replace(trades[1], quantity=0)) is None
    assert engine.on_trade(replace(trades[1], ts_event=t0.ts_event - 1)) is None
    engine.on_book(BookUpdate(SYMBOL, t0.ts_event, "bid", "edit", 7, 5400.0, 3))
    engine.on_book(BookUpdate(SYMBOL, t0.ts_event, "bid", "add", 0, 5400.0, 3, book="offer"))
    assert engine.counters["bad_price"] == 2
    assert engine.counters["bad_quantity"] == 1
    assert engine.counters["out_of_order"] == 1
    assert engine.counters["bad_book_position"] == 1
    assert engine.counters["book_ignored"] == 1
    # the skipped trades left no trace: the next vector is the second trade's
    second = engine.on_trade(trades[1])
    assert second.values[0] == trades[1].price
    assert second.values[second.names.index("return_1")] == pytest.approx(
        trades[1].price / t0.price - 1
    )


def test_symbols_are_independent() -> None:
    trades = trade_series(30)
    engine = FeatureEngine("basic11")
    for t in trades:
        engine.on_trade(t)
    other = engine.on_trade(Trade("DOLQ25", trades[-1].ts_event, 5.0, 1))
    assert other.values[0] == 5.0 and math.isnan(other.values[1])
    assert set(engine.symbols) == {SYMBOL, "DOLQ25"}
