"""Time-travel features: today's trades against reference statistics of stored history.

Reference statistics are computed once per symbol and exchange-local session date (on the
symbol's first trade of that date), from stored 1-minute candles and one day of stored trades
read through the query API, and cached; a trade only updates O(1) state and looks the cached
references up. Definitions: the `history` group of the catalog (docs/FEATURES.md).

Minute grid: a session's minute index k is the exchange-local minutes since the session open
(09:00 by default), floored; the close of minute k is the last trade price at or before the end
of minute k in that session (carried forward over minutes without a trade). Previous sessions
are the exchange-local dates before today, within the last LOOKBACK_DAYS calendar days, that
have candles; at most REFERENCE_SESSIONS of the most recent count.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Protocol

import numpy as np
import pandas as pd

from qt_cli.core.events import EXCHANGE_TZ, Trade
from qt_cli.core.features.rolling import NAN

LOOKBACK_DAYS = 30
MIN_SESSIONS = 5
REFERENCE_SESSIONS = 20  # volume pattern: the most recent sessions averaged
MOMENTUM_MINUTES = 30
VOL_MINUTES = 30
CORR_MINUTES = 30
LARGE_QUANTILE = 0.95
LARGE_WINDOW = 200
MIN_TRADES_FOR_THRESHOLD = 100
NS_PER_MIN = 60_000_000_000

HISTORY_FEATURES = (
    "volume_pattern_score",
    "historical_momentum_rank",
    "volatility_regime_30d",
    "microstructure_imbalance",
    "correlation_stability",
)

NO_SOURCE = "history: no stored history source (run with Valkey)"
BEFORE_OPEN = "before the session open"


class HistorySource(Protocol):
    """Where reference statistics come from (`StoredHistory` reads Valkey via the query API)."""

    def minute_bars(self, symbol: str, from_ns: int, to_ns: int) -> pd.DataFrame:
        """1-minute candles opening in [from_ns, to_ns): columns ts_event (open), close, quantity."""
        ...

    def trade_quantities(self, symbol: str, from_ns: int, to_ns: int) -> np.ndarray:
        """Quantities of the trades with from_ns <= ts_event <= to_ns."""
        ...


class StoredHistory:
    """Reference data from Valkey through the query API (`qt_cli.core.query`)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.reads = 0

    def minute_bars(self, symbol: str, from_ns: int, to_ns: int) -> pd.DataFrame:
        from qt_cli.core import keys, query

        self.reads += 1
        if not self.client.exists(keys.stream_key("candles:1m", symbol)):
            return pd.DataFrame({"ts_event": [], "close": [], "quantity": []})
        frame = query.query(
            "candles:1m", symbols=[symbol], start=from_ns, end=to_ns - 1, client=self.client
        )
        return frame[["ts_event", "close", "quantity"]].reset_index(drop=True)

    def trade_quantities(self, symbol: str, from_ns: int, to_ns: int) -> np.ndarray:
        from qt_cli.core import keys
        from qt_cli.core.store import reader

        self.reads += 1
        if not (
            self.client.exists(keys.stream_key("ticks", symbol))
            or self.client.exists(keys.history_key("ticks", symbol))
        ):
            return np.zeros(0, dtype=np.int64)
        columns = reader.read_ticks(self.client, symbol, from_ns, to_ns)
        return np.asarray(columns.arrays["quantity"], dtype=np.int64)


class FrameHistory:
    """Reference data from DataFrames in memory (files, notebooks): per symbol, 1-minute candles
    (ts_event = open ns, close, quantity) and trades (ts_event ns, quantity)."""

    def __init__(
        self, bars: dict[str, pd.DataFrame], trades: dict[str, pd.DataFrame] | None = None
    ) -> None:
        self.bars = bars
        self.trades = trades or {}
        self.reads = 0

    def minute_bars(self, symbol: str, from_ns: int, to_ns: int) -> pd.DataFrame:
        self.reads += 1
        frame = self.bars.get(symbol)
        if frame is None:
            return pd.DataFrame({"ts_event": [], "close": [], "quantity": []})
        pick = (frame["ts_event"] >= from_ns) & (frame["ts_event"] < to_ns)
        return frame.loc[pick, ["ts_event", "close", "quantity"]].reset_index(drop=True)

    def trade_quantities(self, symbol: str, from_ns: int, to_ns: int) -> np.ndarray:
        self.reads += 1
        frame = self.trades.get(symbol)
        if frame is None:
            return np.zeros(0, dtype=np.int64)
        pick = (frame["ts_event"] >= from_ns) & (frame["ts_event"] <= to_ns)
        return frame.loc[pick, "quantity"].to_numpy(dtype=np.int64)


def _midnight_ns(day: date) -> int:
    return int(datetime.combine(day, time(0), tzinfo=EXCHANGE_TZ).timestamp() * 1e9)


def session_grids(bars: pd.DataFrame, open_min: int, close_min: int) -> dict[date, np.ndarray]:
    """Per exchange-local date, closes on the minute grid 0 .. close-open-1, carried forward
    (NaN before the session's first candle)."""
    closes = bars["close"].to_numpy(dtype=np.float64)
    out: dict[date, np.ndarray] = {}
    for day, minutes, rows in _session_minutes(bars, open_min, close_min):
        grid = np.full(close_min - open_min, np.nan)
        grid[minutes] = closes[rows]
        out[day] = pd.Series(grid).ffill().to_numpy()
    return out


def _cum_quantities(bars: pd.DataFrame, open_min: int, close_min: int) -> dict[date, np.ndarray]:
    qty = bars["quantity"].to_numpy(dtype=np.float64)
    out: dict[date, np.ndarray] = {}
    for day, minutes, rows in _session_minutes(bars, open_min, close_min):
        grid = np.zeros(close_min - open_min)
        np.add.at(grid, minutes, qty[rows])
        out[day] = np.cumsum(grid)
    return out


def _session_minutes(
    bars: pd.DataFrame, open_min: int, close_min: int
) -> Iterator[tuple[date, np.ndarray, np.ndarray]]:
    """Per exchange-local date with bars inside the session: (date, minute index since the
    open of each such bar, the mask of those bars)."""
    if bars.empty:
        return
    times = pd.to_datetime(bars["ts_event"].to_numpy(dtype=np.int64), utc=True).tz_convert(
        EXCHANGE_TZ
    )
    minute = (times.hour * 60 + times.minute).to_numpy() - open_min
    days = times.date
    inside = (minute >= 0) & (minute < close_min - open_min)
    for day in sorted(set(days)):
        rows = (days == day) & inside
        if rows.any():
            yield day, minute[rows], rows


def momentum_values(grid: np.ndarray, lag: int = MOMENTUM_MINUTES) -> np.ndarray:
    """close_k / close_{k-lag} - 1 for every minute k >= lag where both are defined."""
    values = grid[lag:] / grid[:-lag] - 1.0
    return values[np.isfinite(values)]


def rolling_vol(grid: np.ndarray, n: int = VOL_MINUTES) -> np.ndarray:
    """std (ddof 1) of the last n 1-minute log returns at each minute end (defined ones only)."""
    returns = np.log(grid[1:] / grid[:-1])
    if len(returns) < n:
        return np.zeros(0)
    windows = np.lib.stride_tricks.sliding_window_view(returns, n)
    values = windows.std(axis=1, ddof=1)
    return values[np.isfinite(values)]


def rolling_corr(a: np.ndarray, b: np.ndarray, n: int = CORR_MINUTES) -> np.ndarray:
    """Pearson correlation of the two 1-minute log-return series over each n-minute window
    (windows where both are defined and neither is constant)."""
    ra = np.log(a[1:] / a[:-1])
    rb = np.log(b[1:] / b[:-1])
    if len(ra) < n:
        return np.zeros(0)
    wa = np.lib.stride_tricks.sliding_window_view(ra, n)
    wb = np.lib.stride_tricks.sliding_window_view(rb, n)
    da = wa - wa.mean(axis=1, keepdims=True)
    db = wb - wb.mean(axis=1, keepdims=True)
    den = np.sqrt((da * da).sum(axis=1) * (db * db).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (da * db).sum(axis=1) / den
    return values[np.isfinite(values)]


@dataclass
class Reference:
    """One symbol's cached statistics for one session date (NaN fields carry a reason)."""

    sessions: int
    volume_cum: list[float] | None  # mean cumulative contracts through each minute index
    momentum: list[float] | None  # sorted reference momentums
    vol_low: float
    vol_high: float
    large_qty: float
    correlation_stability: float
    reasons: dict[str, str]


def build_reference(
    source: HistorySource,
    symbol: str,
    day: date,
    others: Sequence[str],
    open_min: int,
    close_min: int,
) -> Reference:
    """The reference statistics of `symbol` for session date `day` (see the catalog)."""
    end = _midnight_ns(day)
    start = _midnight_ns(day - timedelta(days=LOOKBACK_DAYS))
    bars = source.minute_bars(symbol, start, end)
    grids = session_grids(bars, open_min, close_min)
    days = sorted(grids)
    reasons: dict[str, str] = {}
    short = (
        f"history: {len(days)} previous session(s) in {LOOKBACK_DAYS} days, needs {MIN_SESSIONS}"
    )
    volume_cum = momentum = None
    vol_low = vol_high = NAN
    if len(days) < MIN_SESSIONS:
        for name in HISTORY_FEATURES[:3]:
            reasons[name] = short
    else:
        cums = _cum_quantities(bars, open_min, close_min)
        recent = days[-REFERENCE_SESSIONS:]
        volume_cum = np.mean([cums[d] for d in recent], axis=0).tolist()
        momentum = np.sort(np.concatenate([momentum_values(grids[d]) for d in days])).tolist()
        if not momentum:
            momentum = None
            reasons["historical_momentum_rank"] = "history: no 30-minute momentum on record"
        vols = np.concatenate([rolling_vol(grids[d]) for d in days])
        if len(vols):
            vol_low, vol_high = np.percentile(vols, [25.0, 75.0]).tolist()
        else:
            reasons["volatility_regime_30d"] = "history: no 30-minute volatility on record"
    large_qty = NAN
    for previous in reversed(days):
        qty = source.trade_quantities(
            symbol, _midnight_ns(previous), _midnight_ns(previous + timedelta(days=1)) - 1
        )
        if len(qty) >= MIN_TRADES_FOR_THRESHOLD:
            large_qty = float(np.percentile(qty, LARGE_QUANTILE * 100))
        break  # only the latest previous session counts
    if large_qty != large_qty:
        reasons["microstructure_imbalance"] = (
            f"history: no previous session with {MIN_TRADES_FOR_THRESHOLD} trades in "
            f"{LOOKBACK_DAYS} days"
        )
    stability = NAN
    if not others:
        reasons["correlation_stability"] = "no other symbol to correlate with"
    else:
        per_symbol = []
        for other in others:
            other_grids = session_grids(source.minute_bars(other, start, end), open_min, close_min)
            common = [d for d in days if d in other_grids]
            if len(common) < MIN_SESSIONS:
                continue
            values = np.concatenate([rolling_corr(grids[d], other_grids[d]) for d in common])
            if len(values):
                per_symbol.append(1.0 - float(np.std(values)))
        if per_symbol:
            stability = float(np.mean(per_symbol))
        else:
            reasons["correlation_stability"] = (
                f"history: fewer than {MIN_SESSIONS} previous sessions shared with "
                f"{', '.join(others)} in {LOOKBACK_DAYS} days"
            )
    return Reference(
        len(days), volume_cum, momentum, vol_low, vol_high, large_qty, stability, reasons
    )


class HistoryBlock:
    """Per symbol: today's minute closes and volume, the large-trade window, the cached
    reference of the current session date."""

    def __init__(self, engine: Any, symbol: str) -> None:
        self.engine = engine
        self.symbol = symbol
        self.day = -1
        self.ref: Reference | None = None
        self.closes: list[float] = []  # today's close per minute index so far (carried forward)
        self.cum_qty = 0
        self.vol_minute = -1
        self.vol_value = NAN
        self.large: deque[tuple[int, int]] = deque()  # (quantity, side) of the last 200 trades
        self.large_buy = 0
        self.large_sell = 0

    def _new_day(self, ordinal: int) -> None:
        self.day = ordinal
        self.closes = []
        self.cum_qty = 0
        self.vol_minute = -1
        self.vol_value = NAN
        engine = self.engine
        if engine.history is None:
            self.ref = None
            return
        others = [s for s in engine.history_symbols() if s != self.symbol]
        self.ref = build_reference(
            engine.history, self.symbol, date.fromordinal(ordinal), others, engine.open_min,
            engine.close_min,
        )  # fmt: skip
        engine.counters["history_references"] += 1
        self._recount()

    def _recount(self) -> None:
        threshold = self.ref.large_qty if self.ref is not None else NAN
        self.large_buy = sum(q for q, s in self.large if s > 0 and q >= threshold)
        self.large_sell = sum(q for q, s in self.large if s < 0 and q >= threshold)

    def update(
        self,
        trade: Trade,
        clock: tuple[int, int, int, int],
        v: dict[str, float],
        reasons: dict[str, str],
    ) -> None:
        hour, minute, _, ordinal = clock
        if ordinal != self.day:
            self._new_day(ordinal)
        engine = self.engine
        ref = self.ref
        k = hour * 60 + minute - engine.open_min
        length = engine.close_min - engine.open_min
        p = trade.price
        counted = not (trade.is_edit or trade.history)
        if 0 <= k < length and counted:
            closes = self.closes
            if closes:
                last = closes[-1]
                while len(closes) < k:
                    closes.append(last)
            else:
                while len(closes) < k:
                    closes.append(NAN)
            if len(closes) == k:
                closes.append(p)
            else:
                closes[k] = p
            self.cum_qty += trade.quantity
        q = trade.quantity
        side = 1 if trade.aggressor == "buy" else -1 if trade.aggressor == "sell" else 0
        threshold = ref.large_qty if ref is not None else NAN
        self.large.append((q, side))
        if q >= threshold:
            if side > 0:
                self.large_buy += q
            elif side < 0:
                self.large_sell += q
        if len(self.large) > LARGE_WINDOW:
            old_q, old_side = self.large.popleft()
            if old_q >= threshold:
                if old_side > 0:
                    self.large_buy -= old_q
                elif old_side < 0:
                    self.large_sell -= old_q

        if ref is None:
            for name in HISTORY_FEATURES:
                v[name] = NAN
                reasons[name] = NO_SOURCE
            return
        missing = ref.reasons
        # volume pattern
        name = "volume_pattern_score"
        if name in missing:
            v[name] = NAN
            reasons[name] = missing[name]
        elif not 0 <= k < length:
            v[name] = NAN
            reasons[name] = BEFORE_OPEN if k < 0 else "after the session close"
        else:
            expected = ref.volume_cum[k]  # type: ignore[index]
            if expected > 0:
                v[name] = self.cum_qty / expected
            else:
                v[name] = NAN
                reasons[name] = "history: no volume by this minute on previous sessions"
        # momentum rank
        name = "historical_momentum_rank"
        closes = self.closes
        if name in missing:
            v[name] = NAN
            reasons[name] = missing[name]
        elif not (
            MOMENTUM_MINUTES <= k < length
            and len(closes) > k - MOMENTUM_MINUTES
            and closes[k - MOMENTUM_MINUTES] > 0
        ):
            v[name] = NAN
            reasons[name] = f"needs a trade {MOMENTUM_MINUTES} minutes into today's session"
        else:
            x = p / closes[k - MOMENTUM_MINUTES] - 1.0
            ref_m = ref.momentum
            below = bisect_left(ref_m, x)  # type: ignore[arg-type]
            upto = bisect_right(ref_m, x)  # type: ignore[arg-type]
            v[name] = (below + 0.5 * (upto - below)) / len(ref_m)  # type: ignore[arg-type]
        # volatility regime: std of the last 30 complete minutes' log returns, once per minute
        name = "volatility_regime_30d"
        if name in missing:
            v[name] = NAN
            reasons[name] = missing[name]
        else:
            if k != self.vol_minute:
                self.vol_minute = k
                self.vol_value = NAN
                if VOL_MINUTES < k <= length:
                    window = np.asarray(closes[k - VOL_MINUTES - 1 : k], dtype=np.float64)
                    if len(window) == VOL_MINUTES + 1 and np.all(window > 0):
                        self.vol_value = float(np.std(np.log(window[1:] / window[:-1]), ddof=1))
            vol = self.vol_value
            if vol != vol:
                v[name] = NAN
                reasons[name] = (
                    f"needs {VOL_MINUTES + 1} complete minutes with trades in today's session"
                )
            else:
                v[name] = 0.0 if vol < ref.vol_low else 2.0 if vol > ref.vol_high else 1.0
        # large-trade imbalance
        name = "microstructure_imbalance"
        if name in missing:
            v[name] = NAN
            reasons[name] = missing[name]
        elif len(self.large) < LARGE_WINDOW:
            v[name] = NAN
            reasons[name] = f"needs {LARGE_WINDOW} trades"
        else:
            total = self.large_buy + self.large_sell
            if total:
                v[name] = (self.large_buy - self.large_sell) / total
            else:
                v[name] = NAN
                reasons[name] = f"no large aggressor trade in the last {LARGE_WINDOW} trades"
        name = "correlation_stability"
        v[name] = ref.correlation_stability
        if name in missing:
            reasons[name] = missing[name]
