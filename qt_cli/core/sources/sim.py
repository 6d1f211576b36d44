"""A synthetic B3 market for `qt feed --sim`: trades and a limit order book that always agree.

Per symbol, order events arrive as a self-exciting (Hawkes) point process whose base rate follows
an intraday seasonality and a market-wide volatility regime (calm / normal / volatile), with
exogenous shocks (news, a large player) that set off bursts of up to several hundred trades a
second. Each arrival is an aggressive order, a passive limit order or a cancel (rarely a pull of
the best levels or a cross trade), applied to a price book of 12–20 levels a side. An aggressive order trades against the resting orders at the best opposite level, one trade
per resting order, sweeping to the next level when one is used up; what is left of a marketable
limit order rests on its own side. So every trade is at the best opposite price of the moment and
the book updates say exactly what the trades did. See docs/sim.md for the model and its limits.

Events come out in simulated session time (09:00–18:00 America/Sao_Paulo, Monday to Friday):
`ts_event` is the simulated venue time, `ts_init` the receive clock when the event was made.
"""

from __future__ import annotations

import bisect
import math
import secrets
import time
import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time

import numpy as np

from qt_cli.core import keys
from qt_cli.core.errors import UsageError
from qt_cli.core.events import (
    EXCHANGE_TZ,
    MAX_TS_NS,
    NS_PER_S,
    BookUpdate,
    Daily,
    Event,
    ReceiveClock,
    State,
    TopOfBook,
    Trade,
)
from qt_cli.core.sources.base import PACE_S, SourceStats

SESSION_OPEN = clock_time(9, 0)
SESSION_S = 9 * 3600  # 09:00–18:00
STATE_OPENED = 0  # ticker-state codes as the DLL reports them (profitdll.md §7)
STATE_CLOSED = 6
TRADE_CROSS, TRADE_BUY, TRADE_SELL, TRADE_AUCTION = 1, 2, 3, 4

MIN_DEPTH = 12  # levels per side the book is refilled to after every order event
MAX_DEPTH = 20  # levels beyond this are deleted, deepest first
_BLOCK = 4096  # random draws made per numpy call

# Hawkes process of order events (per second): every arrival adds ALPHA to the intensity, which
# decays at rate BETA; ALPHA / BETA = 0.75 is the mean number of events one event triggers.
_BETA = 4.0
_ALPHA = 3.0
_MU = 5.8  # base arrival rate before seasonality, regime and activity; calibrated in docs/sim.md
_SHOCK_MIN = 60.0  # a shock adds at least this much intensity (Pareto tail, index 1.5) ...
_SHOCK_CAP = 20.0  # ... and at most this many times as much

# What one arrival is.
_P_AGGRESSIVE = 0.30
_P_CROSS = 0.0015
_P_PULL = 0.001  # the best levels of one side withdrawn at once
_P_INSIDE = 0.6  # a passive order lands inside a spread wider than one tick with this probability
_P_FOLLOW = 0.58  # ... and then on the side of the last aggressor with this probability
_QUEUE_TARGET = 26.0  # orders per level around which adds and cancels balance (level 0)
_FLOW_GAIN = 0.04  # aggressor buy probability gained per half tick the fair value is above the mid
ALPHA_TRADES = 20  # --alpha: the order-flow imbalance window, trades
_FAIR_PULL = 1 / 2000  # per minute, of the fair value towards the symbol's price level

# Intraday activity (hours after 09:00 -> relative rate): busy open, US data at 09:30 and the NY
# open at 10:30, lunch lull, afternoon pick-up, quiet last hour. Normalised to a mean of 1.
_SEASON_KNOTS = (
    (0.0, 2.0),
    (0.25, 1.6),
    (0.5, 1.7),
    (1.0, 1.25),
    (1.5, 1.45),
    (2.0, 1.05),
    (3.0, 0.8),
    (4.0, 0.6),
    (5.0, 0.7),
    (6.0, 0.95),
    (7.0, 1.05),
    (8.0, 0.85),
    (9.0, 0.55),
)


def _season_table() -> list[float]:
    hours = [h for h, _ in _SEASON_KNOTS]
    values = [v for _, v in _SEASON_KNOTS]
    minutes = np.interp(np.arange(SESSION_S // 60) / 60.0 + 1 / 120, hours, values)
    return (minutes / minutes.mean()).tolist()


_SEASON = _season_table()


@dataclass(frozen=True)
class Regime:
    """A volatility regime: how busy, how deep and how aggressive the market is."""

    name: str
    sigma_bp: float  # standard deviation of the fair value's change per minute (basis points)
    intensity: float  # multiplies the base arrival rate
    depth: float  # multiplies the queue size levels settle at
    size: float  # multiplies aggressive order sizes
    stickiness: float  # probability an aggressive order has the side of the previous one
    shocks_per_hour: float
    mean_minutes: float  # mean time spent in the regime


REGIMES = (
    Regime("calm", 1.3, 0.65, 1.5, 0.8, 0.45, 70.0, 40.0),
    Regime("normal", 2.8, 1.0, 1.0, 1.0, 0.55, 200.0, 50.0),
    Regime("volatile", 7.5, 1.9, 0.45, 1.6, 0.7, 500.0, 15.0),
)
_REGIME_NEXT = ((0.0, 0.85, 0.15), (0.5, 0.0, 0.5), (0.3, 0.7, 0.0))  # transition probabilities


@dataclass(frozen=True)
class InstrumentProfile:
    """Contract constants of a symbol root; `low`..`high` is where its price level is drawn."""

    tick: float
    low: float
    high: float
    multiplier: float  # financial volume per point and contract (BRL)
    activity: float  # relative order rate


PROFILES = {
    "WDO": InstrumentProfile(0.5, 5000.0, 5600.0, 10.0, 1.0),
    "DOL": InstrumentProfile(0.5, 5000.0, 5600.0, 50.0, 0.1),
    "WIN": InstrumentProfile(5.0, 120000.0, 140000.0, 0.2, 1.0),
    "IND": InstrumentProfile(5.0, 120000.0, 140000.0, 1.0, 0.1),
}


def profile_for(symbol: str) -> InstrumentProfile:
    """The profile of a symbol's root (`WDOQ25` -> WDO); unknown roots behave like WDO."""
    return PROFILES.get(symbol[:3], PROFILES["WDO"])


# Broker codes (B3 participant numbers) and how concentrated their flow is: a Zipf law, the
# aggressive side led by retail brokers, the passive side by institutional and HFT desks.
BROKERS: tuple[int, ...] = (
    3,
    85,
    120,
    308,
    114,
    72,
    8,
    16,
    40,
    238,
    27,
    13,
    45,
    93,
    107,
    147,
    262,
    386,
    1099,
)
BROKERS += (127, 122, 77, 174, 190, 1982, 4090, 1026, 1130, 1618, 2197)
_AGGRESSIVE_BROKERS = np.array(BROKERS)
_PASSIVE_BROKERS = np.array((8, 16, 40, 238, 85, 3, 13, 45, 27, 72, 114, 120, 308, *BROKERS[13:]))
_ZIPF = 1.0 / np.arange(1, len(BROKERS) + 1) ** 1.1
_ZIPF /= _ZIPF.sum()


@dataclass(frozen=True)
class SimConfig:
    """What `qt feed --sim` simulates and how fast.

    `rate`: None = realistic (simulated session time advances with wall time), 0 = as fast as
    possible, N = N events per wall-clock second. `duration_s` is simulated session seconds
    (night and weekend gaps do not count) when `rate` is 0 and wall seconds otherwise.
    `start_ns`: first simulated instant; outside session hours it moves to the next session open.
    None: with realistic pacing (`rate` None) now, so `ts_event` is the wall clock (outside session
    hours a session opens now); at `rate` 0 or N today's 09:00 São Paulo (Friday's on a weekend). `max_events` stops after that many events.
    `activity` multiplies every order rate; `regime_scale` multiplies regime durations.
    `levels` gives a symbol the price it starts at (a run continuing stored data starts at its
    last trade) instead of the level drawn from the seed.
    """

    symbols: tuple[str, ...] = ("WDOQ25",)
    seed: int | None = None
    rate: float | None = None
    duration_s: float | None = None
    start_ns: int | None = None
    max_events: int | None = None
    activity: float = 1.0
    regime_scale: float = 1.0
    batch_max: int = 2048
    levels: tuple[tuple[str, float], ...] = ()  # (symbol, price) to start at instead of the draw
    # A planted, learnable signal (off at 0): the aggressor side of the next orders leans by
    # alpha × the order-flow imbalance of the last ALPHA_TRADES trades (docs/sim.md).
    alpha: float = 0.0

    def __post_init__(self) -> None:
        symbols = tuple(s.strip().upper() for s in self.symbols)
        if not symbols or not all(keys.valid_symbol(s) for s in symbols):
            raise UsageError(f"--sim needs ticker symbols like WDOQ25, got {list(self.symbols)}")
        object.__setattr__(self, "symbols", tuple(dict.fromkeys(symbols)))
        if self.seed is not None and self.seed < 0:
            raise UsageError(f"--seed must be 0 or positive, got {self.seed}")
        if self.rate is not None and not (self.rate >= 0 and math.isfinite(self.rate)):
            raise UsageError(f"--rate must be 0 (as fast as possible) or positive, got {self.rate}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise UsageError(f"--duration must be positive, got {self.duration_s} s")
        if self.start_ns is not None and not EARLIEST_START_NS <= self.start_ns < LATEST_START_NS:
            year = (
                datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=self.start_ns // 1000)
            ).year
            raise UsageError(
                f"--start in {year}: give a time from 2000 to 2198 (the times the stages store)"
            )
        if self.max_events is not None and self.max_events < 1:
            raise UsageError(f"--stop-after must be at least 1, got {self.max_events}")
        if not all(price > 0 and math.isfinite(price) for _, price in self.levels):
            raise UsageError(f"price levels must be positive, got {list(self.levels)}")
        if not (0.0 <= self.alpha <= 1.0):
            raise UsageError(f"--alpha must be between 0 (off) and 1, got {self.alpha}")
        if not (self.activity > 0 and self.regime_scale > 0 and self.batch_max >= 1):
            raise UsageError("activity and regime_scale must be positive, batch_max at least 1")


EARLIEST_START_NS = 946_684_800 * NS_PER_S  # 2000-01-01 UTC, as replayed files (files.py)
LATEST_START_NS = MAX_TS_NS - 366 * 86_400 * NS_PER_S  # a year of sessions before the last time


# --- session calendar ---------------------------------------------------------------------------


def _open_ns(day: date) -> int:
    return int(datetime.combine(day, SESSION_OPEN, tzinfo=EXCHANGE_TZ).timestamp()) * NS_PER_S


def _next_business_day(day: date) -> date:
    day += timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def default_start_ns() -> int:
    """Today 09:00 in São Paulo; on a weekend the last Friday's, so venue time is never ahead."""
    day = datetime.now(EXCHANGE_TZ).date()
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return _open_ns(day)


def _day_of(ts_ns: int) -> date:
    return datetime.fromtimestamp(ts_ns // NS_PER_S, EXCHANGE_TZ).date()


def in_session(ts_ns: int) -> bool:
    """Whether `ts_ns` falls in a session (09:00–18:00 São Paulo, Monday to Friday)."""
    day = _day_of(ts_ns)
    return day.weekday() < 5 and 0 <= ts_ns - _open_ns(day) < SESSION_S * NS_PER_S


class SessionClock:
    """Maps session seconds elapsed since the start to venue time, skipping nights and weekends.

    Sessions are 09:00–18:00 America/Sao_Paulo, Monday to Friday (no holiday calendar). A start
    outside them moves to the next open; with `open_now` a session of the usual length opens at
    the start itself instead (a paced run started in the evening or at a weekend), and the
    following ones keep the calendar.
    """

    def __init__(self, start_ns: int, *, open_now: bool = False) -> None:
        if open_now and not in_session(start_ns):
            self.offset_s = 0.0
            self._days = [start_ns]
            close_ns = start_ns + SESSION_S * NS_PER_S
            day = _day_of(close_ns)
            if day.weekday() >= 5 or _open_ns(day) < close_ns:
                day = _next_business_day(day)
            self._days.append(_open_ns(day))
            self._last_day = day
            self.start_ns = start_ns
            return
        day = _day_of(start_ns)
        offset_ns = start_ns - _open_ns(day)
        if day.weekday() >= 5 or offset_ns >= SESSION_S * NS_PER_S:
            day, offset_ns = _next_business_day(day), 0
        self.offset_s = max(0, offset_ns) / NS_PER_S  # session seconds already gone on day 0
        self._days = [_open_ns(day)]
        self._last_day = day
        self.start_ns = self._days[0] + round(self.offset_s * NS_PER_S)

    def day_open_ns(self, k: int) -> int:
        """Venue time of the open of the k-th session (0 = the first)."""
        while len(self._days) <= k:
            self._last_day = _next_business_day(self._last_day)
            self._days.append(_open_ns(self._last_day))
        return self._days[k]

    def ns_at(self, elapsed_s: float) -> int:
        """Venue time after `elapsed_s` session seconds."""
        k, into = divmod(self.offset_s + elapsed_s, SESSION_S)
        return self.day_open_ns(int(k)) + round(into * NS_PER_S)


class _RegimeTimeline:
    """The market-wide regime as a function of elapsed session seconds (the same for every symbol)."""

    def __init__(self, seed: int, scale: float) -> None:
        self._rng = np.random.default_rng([seed, 0x5E617E])
        self._scale = scale
        self.starts = [0.0]
        self.regimes = [1]  # open in the normal regime

    def at(self, elapsed_s: float) -> int:
        while self.starts[-1] <= elapsed_s:
            current = self.regimes[-1]
            minutes = self._rng.exponential(REGIMES[current].mean_minutes * self._scale)
            self.starts.append(self.starts[-1] + max(60.0, round(minutes) * 60.0))
            self.regimes.append(int(self._rng.choice(3, p=_REGIME_NEXT[current])))
        return self.regimes[bisect.bisect_right(self.starts, elapsed_s) - 1]


class _DayTally:
    """A symbol's session so far, for its Daily events (what the DLL's daily callback reports)."""

    __slots__ = (
        *("adjust", "bqty", "btrades", "bvol", "high", "last", "low", "open", "qty"),
        *("sqty", "strades", "svol", "trades", "vol"),
    )

    def __init__(self, adjust: float) -> None:
        self.adjust = adjust  # the previous session's close
        self.open = self.high = self.low = self.last = math.nan
        self.vol = self.bvol = self.svol = 0.0
        self.qty = self.bqty = self.sqty = self.trades = self.btrades = self.strades = 0

    def add(self, first: float, last: float, qty: int, vol: float, n: int) -> None:
        """`n` trades of `qty` contracts in all, priced from `first` to `last` (one sweep)."""
        if self.open != self.open:
            self.open = self.high = self.low = first
        self.high = max(self.high, first, last)
        self.low = min(self.low, first, last)
        self.last = last
        self.qty += qty
        self.vol += vol
        self.trades += n

    def daily(self, symbol: str, ts: int, ts_init: int) -> Daily:
        return Daily(
            symbol,
            ts,
            open=self.open,
            high=self.high,
            low=self.low,
            close=self.last,
            volume=self.vol,
            adjust=self.adjust,
            buy_volume=self.bvol,
            sell_volume=self.svol,
            quantity=self.qty,
            trades=self.trades,
            buy_quantity=self.bqty,
            sell_quantity=self.sqty,
            buy_trades=self.btrades,
            sell_trades=self.strades,
            ts_init=ts_init,
        )


def _stream(draw: Callable[[], np.ndarray]) -> Iterator:
    """Endless values drawn `_BLOCK` at a time (numpy is fast per block, slow per value)."""
    while True:
        yield from draw().tolist()


# --- one symbol -------------------------------------------------------------------------------


class _SymbolSim:
    """Book and order flow of one symbol. `run` is a generator driven by `SimulatedMarket`.

    Book sides are lists of [price in ticks, quantity, order count], best level first, the same
    order as `BookUpdate.levels`. The DLL keeps its list the other way round (worst to best) and
    counts `position` from the end, so an update's `position` is the index here: 0 = the best.
    `edit` carries the level's new absolute quantity and count, `delete` the level it removes.
    """

    def __init__(
        self,
        symbol: str,
        seed: int,
        activity: float,
        level: float | None = None,
        alpha: float = 0.0,
    ) -> None:
        self.symbol = symbol
        self.alpha = alpha
        self.profile = profile_for(symbol)
        self.rng = np.random.default_rng([seed, zlib.crc32(symbol.encode())])
        tick = self.profile.tick
        lo = math.ceil((self.profile.low * 0.9 + self.profile.high * 0.1) / tick)
        hi = math.floor((self.profile.low * 0.1 + self.profile.high * 0.9) / tick)
        self.anchor = int(self.rng.integers(lo, hi + 1))  # price level, ticks
        if level is not None:  # drawn all the same, so the random stream does not change
            self.anchor = max(1, round(level / tick))
        self.activity = activity * self.profile.activity
        self.bids: list[list[int]] = []
        self.asks: list[list[int]] = []

    def book(self) -> dict[str, list[tuple[float, int, int]]]:
        tick = self.profile.tick
        return {
            "bid": [(p * tick, q, c) for p, q, c in self.bids],
            "ask": [(p * tick, q, c) for p, q, c in self.asks],
        }

    def _build_book(self, mid: int, depth_mult: float) -> None:
        rng = self.rng
        for side, sign, best in ((self.bids, -1, mid), (self.asks, 1, mid + 1)):
            side.clear()
            for k in range(15):
                count = max(1, int(rng.poisson(_QUEUE_TARGET * depth_mult * (1 + 0.12 * k))))
                qty = max(count, round(count * 4.5 * rng.uniform(0.6, 1.4)))
                side.append([best + sign * k, qty, count])

    def run(
        self, clock: SessionClock, timeline: _RegimeTimeline
    ) -> Generator[float | list[Event], int, None]:
        """Yields the elapsed session seconds of the next arrival, then (after `send(ts_init)`)
        the events it makes; forever."""
        sym = self.symbol
        tick = self.profile.tick
        mult = self.profile.multiplier
        rng = self.rng
        expo = _stream(lambda: rng.standard_exponential(_BLOCK))
        unif = _stream(lambda: rng.random(_BLOCK))
        aggressive_size = _stream(lambda: rng.lognormal(0.8, 1.2, _BLOCK))
        order_size = _stream(
            lambda: np.clip(np.rint(rng.lognormal(1.0, 1.0, _BLOCK)), 1, 500).astype(np.int64)
        )
        depth_offset = _stream(lambda: rng.geometric(0.35, _BLOCK) - 1)
        aggressor_agent = _stream(lambda: rng.choice(_AGGRESSIVE_BROKERS, _BLOCK, p=_ZIPF))
        passive_agent = _stream(lambda: rng.choice(_PASSIVE_BROKERS, _BLOCK, p=_ZIPF))
        # the steps below (_aggressive, _passive, …) draw from the same streams
        self._unif, self._order_size, self._depth_offset = unif, order_size, depth_offset
        self._aggressive_size, self._aggressor_agent = aggressive_size, aggressor_agent
        self._passive_agent = passive_agent
        bids, asks = self.bids, self.asks
        gauss = _stream(lambda: rng.standard_normal(_BLOCK))
        # Informed flow: aggressors lean towards a latent fair value that moves every minute.
        fair = float(self.anchor)
        fair2 = 2 * fair  # in half ticks, to compare with best bid + best ask
        activity = self.activity
        exp, log = math.exp, math.log
        p_pull = 1 - _P_CROSS
        p_passive = p_pull - _P_PULL
        nan = math.nan

        alpha = self.alpha
        # signs (+1 buy, -1 sell) of the last ALPHA_TRADES aggressor trades, for --alpha only
        signs: deque[int] = deque(maxlen=ALPHA_TRADES)
        flow = 0  # their sum

        mid = self.anchor
        adjust = mid * tick  # the previous close
        s = clock.offset_s
        k_day = 0
        regime_index = -1
        last_buy = True
        while True:  # one session per pass
            day_ns = clock.day_open_ns(k_day)
            base = k_day * SESSION_S - clock.offset_s  # elapsed = base + s
            ri = timeline.at(base + s)
            regime = REGIMES[ri]
            self._build_book(mid, regime.depth)
            trade_id = 0
            day = _DayTally(adjust)

            ts_init = yield base + s
            ts = day_ns + round(s * NS_PER_S)
            events: list[Event] = [State(sym, ts, "sim", STATE_OPENED, "opened", ts_init)]
            if ri != regime_index:
                events.append(State(sym, ts, "sim.regime", ri, regime.name, ts_init))
                regime_index = ri
            for name, side in (("bid", bids), ("ask", asks)):
                levels = [[p * tick, q, c] for p, q, c in side]
                events.append(
                    BookUpdate(sym, ts, name, "full", 0, nan, 0, 0, 0, 0, "price", levels, ts_init)
                )
            self._top = [bids[0][0], bids[0][1], asks[0][0], asks[0][1]]
            tb, tbq, ta, taq = self._top
            events.append(TopOfBook(sym, ts, tb * tick, tbq, ta * tick, taq, ts_init))
            if s == 0:  # the opening auction: a few trades at one price, no aggressor
                price = ta * tick
                for _ in range(3 + int(next(unif) * 6)):
                    qty = next(order_size) * 3
                    trade_id += 1
                    events.append(
                        Trade(
                            sym,
                            ts,
                            price,
                            qty,
                            price * qty * mult,
                            trade_id,
                            buyer=next(aggressor_agent),
                            seller=next(passive_agent),
                            trade_type=TRADE_AUCTION,
                            ts_init=ts_init,
                        )
                    )
                    day.add(price, price, qty, price * qty * mult, 1)
            yield events

            lam = 0.0
            minute = int(s // 60)
            next_b = min(SESSION_S, (minute + 1) * 60.0)
            mu = _MU * _SEASON[minute] * regime.intensity * activity
            nu = regime.shocks_per_hour / 3600.0
            r_size, r_depth, stick = regime.size, regime.depth, regime.stickiness
            while True:
                # Next event of a Hawkes process with exponential kernel (Dassios & Zhao 2013):
                # the earliest of a base arrival, a triggered arrival and a shock.
                w = next(expo) / mu
                if lam > 1e-9:
                    d = 1.0 - _BETA * next(expo) / lam
                    if d > 0:
                        w2 = -log(d) / _BETA
                        if w2 < w:
                            w = w2
                w3 = next(expo) / nu
                shock = w3 < w
                if shock:
                    w = w3
                if s + w >= next_b:  # a minute boundary: the rates may change; restart from it
                    lam *= exp(-_BETA * (next_b - s))
                    s = next_b
                    if s >= SESSION_S:
                        break
                    minute = int(s // 60)
                    next_b = min(SESSION_S, s + 60.0)
                    ts_init = yield base + s
                    ts = day_ns + round(s * NS_PER_S)
                    events = [day.daily(sym, ts, ts_init)]
                    sigma = regime.sigma_bp * 1e-4 * fair
                    fair += sigma * next(gauss) + (self.anchor - fair) * _FAIR_PULL
                    fair2 = 2 * fair
                    ri = timeline.at(base + s)
                    if ri != regime_index:
                        regime_index = ri
                        regime = REGIMES[ri]
                        r_size, r_depth, stick = regime.size, regime.depth, regime.stickiness
                        nu = regime.shocks_per_hour / 3600.0
                        events.append(State(sym, ts, "sim.regime", ri, regime.name, ts_init))
                    mu = _MU * _SEASON[minute] * regime.intensity * activity
                    yield events
                    continue
                lam *= exp(-_BETA * w)
                s += w
                if shock:
                    lam += _SHOCK_MIN * min(_SHOCK_CAP, next(unif) ** -0.6667) * activity
                    continue
                lam += _ALPHA

                ts_init = yield base + s
                ts = day_ns + round(s * NS_PER_S)
                events = []
                u = next(unif)
                if u < _P_AGGRESSIVE:
                    # An aggressive (marketable limit) order: one trade per resting order hit.
                    if next(unif) < stick:
                        buy = last_buy
                    else:
                        p_buy = 0.5 + _FLOW_GAIN * (fair2 - bids[0][0] - asks[0][0])
                        if alpha:
                            p_buy += alpha * flow / ALPHA_TRADES
                        buy = next(unif) < min(0.85, max(0.15, p_buy))
                    last_buy = buy
                    before = trade_id
                    trade_id = self._aggressive(events, ts, ts_init, buy, r_size, day, trade_id)
                    filled = trade_id - before  # one trade id per resting order hit
                    if alpha and filled:
                        sign = 1 if buy else -1
                        for _ in range(filled):
                            if len(signs) == ALPHA_TRADES:
                                flow -= signs[0]
                            signs.append(sign)
                            flow += sign
                elif u < p_passive:
                    self._passive(events, ts, ts_init, last_buy, r_depth)
                elif u < p_pull:
                    self._withdraw(events, ts, ts_init)
                else:
                    trade_id = self._cross(events, ts, ts_init, day, trade_id)
                self._settle(events, ts, ts_init, r_depth)
                yield events

            # The close, then the next business day opens near where this one closed.
            ts_init = yield base + SESSION_S
            ts = day_ns + SESSION_S * NS_PER_S
            yield [
                day.daily(sym, ts, ts_init),
                State(sym, ts, "sim", STATE_CLOSED, "closed", ts_init),
            ]
            if day.last == day.last:
                adjust = day.last
            fair += rng.normal(0.0, 0.003 * fair)  # the overnight gap
            fair2 = 2 * fair
            mid = round(fair)
            k_day += 1
            s = 0.0

    def _aggressive(
        self,
        events: list[Event],
        ts: int,
        ts_init: int,
        buy: bool,
        r_size: float,
        day: _DayTally,
        trade_id: int,
    ) -> int:
        """An aggressive (marketable limit) order: one trade per resting order hit. Returns the
        last trade id."""
        sym, tick, mult, nan = self.symbol, self.profile.tick, self.profile.multiplier, math.nan
        bids, asks = self.bids, self.asks
        unif, order_size, depth_offset = self._unif, self._order_size, self._depth_offset
        aggressive_size, aggressor_agent = self._aggressive_size, self._aggressor_agent
        passive_agent = self._passive_agent
        size = int(next(aggressive_size) * r_size + 0.5) or 1
        agent = next(aggressor_agent)
        if buy:
            book, own, name, kind, aggressor, step = (
                asks,
                bids,
                "ask",
                TRADE_BUY,
                "buy",
                1,
            )
        else:
            book, own, name, kind, aggressor, step = (
                bids,
                asks,
                "bid",
                TRADE_SELL,
                "sell",
                -1,
            )
        level = book[0]
        limit = level[0]
        if next(unif) < 0.2:
            limit += step * (1 + next(depth_offset))
        remaining = size
        filled = 0
        notional = 0.0
        first = nan
        while True:
            p, q, c = level
            if (p - limit) * step > 0:
                break
            f = q if c == 1 else min(next(order_size), q - c + 1)
            fill = remaining if remaining < f else f
            price = p * tick
            if first != first:
                first = price
            trade_id += 1
            other = next(passive_agent)
            value = price * fill * mult
            events.append(
                Trade(
                    sym,
                    ts,
                    price,
                    fill,
                    value,
                    trade_id,
                    buyer=agent if buy else other,
                    seller=other if buy else agent,
                    trade_type=kind,
                    aggressor=aggressor,
                    ts_init=ts_init,
                )
            )
            notional += value
            filled += 1
            remaining -= fill
            q -= fill
            if q == 0:  # the level is used up: `delete` carries it as it was
                del book[0]
                events.append(
                    BookUpdate(
                        sym,
                        ts,
                        name,
                        "delete",
                        0,
                        price,
                        level[1],
                        level[2],
                        ts_init=ts_init,
                    )
                )
                if not book:
                    break
                level = book[0]
            else:
                level[1] = q
                if fill == f:
                    c -= 1
                    level[2] = c
                events.append(BookUpdate(sym, ts, name, "edit", 0, price, q, c, ts_init=ts_init))
            if not remaining:
                break
        if remaining:  # the rest of the order rests at its limit, on its own side
            events.append(
                BookUpdate(
                    sym,
                    ts,
                    "bid" if buy else "ask",
                    "add",
                    0,
                    limit * tick,
                    remaining,
                    1,
                    ts_init=ts_init,
                )
            )
            own.insert(0, [limit, remaining, 1])
        if filled:
            qty = size - remaining
            day.add(first, price, qty, notional, filled)
            if buy:
                day.bvol += notional
                day.bqty += qty
                day.btrades += filled
            else:
                day.svol += notional
                day.sqty += qty
                day.strades += filled
        return trade_id

    def _passive(
        self, events: list[Event], ts: int, ts_init: int, last_buy: bool, r_depth: float
    ) -> None:
        """A passive limit order or a cancel; queues settle around a target size."""
        sym, tick = self.symbol, self.profile.tick
        bids, asks = self.bids, self.asks
        unif, order_size, depth_offset = self._unif, self._order_size, self._depth_offset
        # A passive limit order or a cancel; queues settle around a target size.
        inside = asks[0][0] - bids[0][0] > 1 and next(unif) < _P_INSIDE
        # Into a gap, orders mostly follow the last aggressor (the price moves on);
        # elsewhere either side.
        p_bid = (_P_FOLLOW if last_buy else 1 - _P_FOLLOW) if inside else 0.5
        if next(unif) < p_bid:
            book, name, step = bids, "bid", -1
        else:
            book, name, step = asks, "ask", 1
        if inside:
            price_ticks = book[0][0] - step
            qty = next(order_size)
            book.insert(0, [price_ticks, qty, 1])
            events.append(
                BookUpdate(sym, ts, name, "add", 0, price_ticks * tick, qty, 1, ts_init=ts_init)
            )
        else:
            i = next(depth_offset)
            if i >= len(book):
                i = len(book) - 1
            level = book[i]
            p, q, c = level
            target = _QUEUE_TARGET * r_depth * (1 + 0.12 * i)
            if next(unif) * (c + target) < target:
                q += next(order_size)
                c += 1
            elif c == 1:
                del book[i]
                events.append(
                    BookUpdate(sym, ts, name, "delete", i, p * tick, q, 1, ts_init=ts_init)
                )
                q = 0
            else:
                q -= min(next(order_size), q - c + 1)
                c -= 1
            if q:
                level[1] = q
                level[2] = c
                events.append(
                    BookUpdate(
                        sym,
                        ts,
                        name,
                        "edit",
                        i,
                        p * tick,
                        q,
                        c,
                        ts_init=ts_init,
                    )
                )

    def _withdraw(self, events: list[Event], ts: int, ts_init: int) -> None:
        """Liquidity withdrawn: the best 1–3 levels of one side cancelled at once."""
        bids, asks, unif, depth_offset = self.bids, self.asks, self._unif, self._depth_offset
        # Liquidity withdrawn: the best 1–3 levels of one side cancelled at once
        # (`delete_from` counts from the top, so it removes positions k-1 … 0).
        book, name = (bids, "bid") if next(unif) < 0.5 else (asks, "ask")
        k = 1 + min(2, next(depth_offset))
        p = book[k - 1][0]
        del book[:k]
        events.append(
            BookUpdate(
                self.symbol, ts, name, "delete_from", k - 1, p * self.profile.tick, ts_init=ts_init
            )
        )

    def _cross(
        self, events: list[Event], ts: int, ts_init: int, day: _DayTally, trade_id: int
    ) -> int:
        """A cross (direct) trade: one broker on both sides, inside the spread, no aggressor,
        the book untouched. Returns the last trade id."""
        sym, tick, mult = self.symbol, self.profile.tick, self.profile.multiplier
        bids, asks = self.bids, self.asks
        unif, order_size, aggressor_agent = self._unif, self._order_size, self._aggressor_agent
        price = (bids[0][0] if next(unif) < 0.5 else asks[0][0]) * tick
        qty = next(order_size) * 5
        agent = next(aggressor_agent)
        trade_id += 1
        events.append(
            Trade(
                sym,
                ts,
                price,
                qty,
                price * qty * mult,
                trade_id,
                buyer=agent,
                seller=agent,
                trade_type=TRADE_CROSS,
                ts_init=ts_init,
            )
        )
        day.add(price, price, qty, price * qty * mult, 1)
        return trade_id

    def _settle(self, events: list[Event], ts: int, ts_init: int, r_depth: float) -> None:
        """Keep 12–20 levels a side (refill deeper levels, drop the deepest beyond 20); a new
        top of book when it changed."""
        sym, tick = self.symbol, self.profile.tick
        bids, asks, unif = self.bids, self.asks, self._unif
        top = self._top  # [best bid, its quantity, best ask, its quantity] last published
        if len(bids) < MIN_DEPTH or len(asks) < MIN_DEPTH:
            self._refill(events, ts, ts_init, r_depth, unif)
        for name, book in (("bid", bids), ("ask", asks)):
            while len(book) > MAX_DEPTH:
                p, q, c = book.pop()
                events.append(
                    BookUpdate(sym, ts, name, "delete", len(book), p * tick, q, c, ts_init=ts_init)
                )
        b0 = bids[0]
        a0 = asks[0]
        if b0[1] != top[1] or a0[1] != top[3] or b0[0] != top[0] or a0[0] != top[2]:
            top[:] = tb, tbq, ta, taq = b0[0], b0[1], a0[0], a0[1]
            events.append(TopOfBook(sym, ts, tb * tick, tbq, ta * tick, taq, ts_init))

    def _refill(
        self, events: list[Event], ts: int, ts_init: int, depth: float, unif: Iterator[float]
    ) -> None:
        """Add levels at the deep end of a side that fell below MIN_DEPTH."""
        tick = self.profile.tick
        bids, asks = self.bids, self.asks
        for name, book, other, step in (("bid", bids, asks, -1), ("ask", asks, bids, 1)):
            while len(book) < MIN_DEPTH:
                if book:
                    price = book[-1][0] + step * (2 if next(unif) < 0.05 else 1)
                else:  # swept clean: start one tick outside the other side's best
                    price = other[0][0] + step
                i = len(book)
                count = max(1, int(_QUEUE_TARGET * depth * (1 + 0.12 * i) * (0.5 + next(unif))))
                qty = max(count, round(count * 4.5 * (0.6 + 0.8 * next(unif))))
                book.append([price, qty, count])
                events.append(
                    BookUpdate(
                        self.symbol, ts, name, "add", i, price * tick, qty, count, ts_init=ts_init
                    )
                )


# --- the source -------------------------------------------------------------------------------


class SimulatedMarket:
    """The `--sim` MarketSource: `read()` returns the events that are due, in venue-time order.

    Same seed and start, same events (apart from `ts_init`, the receive clock), whatever the pacing.
    """

    def __init__(self, config: SimConfig | None = None, *, clock: Callable[[], int] | None = None):
        self.config = config or SimConfig()
        self.seed = self.config.seed if self.config.seed is not None else secrets.randbits(32)
        self.stats = SourceStats()
        self._receive = clock or ReceiveClock()
        levels = dict(self.config.levels)
        self._sims = [
            _SymbolSim(s, self.seed, self.config.activity, levels.get(s), self.config.alpha)
            for s in self.config.symbols
        ]
        self._gens: list[Generator[float | list[Event], int, None]] = []
        self._heads: list[float] = []
        self._opened = False
        self._finished = False
        self._mono0 = 0.0
        self._last_batch = -math.inf  # monotonic time the last paced batch was handed out
        self.pace_s = PACE_S
        self.clock: SessionClock | None = None
        self.timeline = _RegimeTimeline(self.seed, self.config.regime_scale)

    # lifecycle

    def open(self) -> None:
        if self._opened:
            return
        self.clock = self._session_clock()
        self._gens = [sim.run(self.clock, self.timeline) for sim in self._sims]
        self._heads = [next(gen) for gen in self._gens]  # type: ignore[misc]
        self._opened = True
        self._mono0 = time.monotonic()

    def _session_clock(self) -> SessionClock:
        if self.config.start_ns is not None:
            return SessionClock(self.config.start_ns)
        if self.config.rate is None:  # realistic pacing: venue time is the wall clock
            return SessionClock(time.time_ns(), open_now=True)
        return SessionClock(default_start_ns())

    @property
    def finished(self) -> bool:
        return self._finished

    def close(self) -> None:
        self._finished = True
        for gen in self._gens:
            gen.close()
        self._gens = []

    # reading

    def read(self, timeout_s: float) -> list[Event]:
        """Events due now (at most `batch_max`); waits up to `timeout_s` for some, else []."""
        if not self._opened:
            self.open()
        if self._finished:
            return []
        cfg = self.config
        if cfg.rate == 0:
            end = cfg.duration_s if cfg.duration_s is not None else math.inf
            return self._take(self._pull(end, cfg.batch_max, stop_at_limit=True))
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            now = time.monotonic()
            wall_s = now - self._mono0
            if cfg.duration_s is not None and wall_s >= cfg.duration_s:
                self._finished = True
                return []
            # at most one batch per pace_s: what falls due meanwhile waits for the next one
            held_s = self._last_batch + self.pace_s - now
            if held_s > 0:
                events = []
                wait_s = held_s
            elif cfg.rate is None:  # realistic: simulated session time runs with the wall clock
                events = self._pull(wall_s, cfg.batch_max)
                wait_s = min(self._heads) - wall_s
            else:
                due = int(cfg.rate * wall_s) - self.stats.produced
                events = self._pull(math.inf, min(due, cfg.batch_max)) if due > 0 else []
                wait_s = (self.stats.produced + 1) / cfg.rate - wall_s
            if events:
                # a batch cut at batch_max (catching up) lets the rest follow at once
                self._last_batch = now if len(events) < cfg.batch_max else -math.inf
                return self._take(events)
            if held_s > 0:  # sleep until the pace allows a batch, or the next event is due
                if cfg.rate is None:
                    wait_s = max(held_s, min(self._heads) - wall_s)
                else:
                    wait_s = max(held_s, (self.stats.produced + 1) / cfg.rate - wall_s)
            wait_s = min(wait_s, deadline - now)
            if cfg.duration_s is not None:
                wait_s = min(wait_s, cfg.duration_s - wall_s)
            if wait_s <= 0:
                return []
            time.sleep(wait_s)

    def _pull(self, limit_s: float, want: int, *, stop_at_limit: bool = False) -> list[Event]:
        """Events of arrivals up to `limit_s` elapsed session seconds, about `want` of them.

        With `stop_at_limit`, reaching the limit ends the simulation (`duration_s` at rate 0).
        """
        out: list[Event] = []
        gens, heads = self._gens, self._heads
        receive = self._receive
        if len(gens) == 1:
            gen = gens[0]
            head = heads[0]
            while len(out) < want:
                if head >= limit_s:
                    self._finished = self._finished or stop_at_limit
                    break
                # the generator alternates: a send gives a batch, next() the next head time
                out += gen.send(receive())  # type: ignore[arg-type]  # a batch (list), see above
                head = next(gen)  # type: ignore[assignment]  # a head time (float)
            heads[0] = head
            return out
        while len(out) < want:
            i = min(range(len(heads)), key=heads.__getitem__)
            if heads[i] >= limit_s:
                self._finished = self._finished or stop_at_limit
                break
            gen = gens[i]
            out += gen.send(receive())  # type: ignore[arg-type]  # a batch, as above
            heads[i] = next(gen)  # type: ignore[assignment]  # a head time
        return out

    def _take(self, events: list[Event]) -> list[Event]:
        limit = self.config.max_events
        if limit is not None and self.stats.produced + len(events) >= limit:
            events = events[: limit - self.stats.produced]
            self._finished = True
        self.stats.produced += len(events)
        return events

    # inspection (tests, docs)

    def describe(self) -> str:
        """One line for the user: what is simulated, from when, with which seed and pace."""
        start = (self.clock or self._session_clock()).start_ns
        when = datetime.fromtimestamp(start // NS_PER_S, EXCHANGE_TZ).strftime("%Y-%m-%d %H:%M:%S")
        rate = self.config.rate
        pace = (
            "real time"
            if rate is None
            else "as fast as possible"
            if rate == 0
            else f"{rate:g} events/s"
        )
        planted = f", planted signal alpha {self.config.alpha:g}" if self.config.alpha else ""
        return f"simulated {', '.join(self.config.symbols)} from {when} São Paulo, seed {self.seed}, {pace}{planted}"

    @property
    def start_ns(self) -> int:
        """Venue time of the first simulated instant (after `open()`)."""
        if self.clock is None:
            raise RuntimeError("open() the simulator first")
        return self.clock.start_ns

    def book(self, symbol: str) -> dict[str, list[tuple[float, int, int]]]:
        """The simulator's own book of `symbol`: {'bid': [(price, qty, count), …], 'ask': …}."""
        for sim in self._sims:
            if sim.symbol == symbol:
                return sim.book()
        raise KeyError(symbol)

    def price_level(self, symbol: str) -> float:
        """The price a symbol's simulation is centred on."""
        for sim in self._sims:
            if sim.symbol == symbol:
                return sim.anchor * sim.profile.tick
        raise KeyError(symbol)
