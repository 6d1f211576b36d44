"""The simulated market: reproducible, on the tick grid, and its trades and book always agree."""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from datetime import datetime

import numpy as np
import pytest

from qt_cli.core.errors import UsageError
from qt_cli.core.events import (
    EXCHANGE_TZ,
    NS_PER_S,
    BookUpdate,
    Daily,
    Event,
    State,
    TopOfBook,
    Trade,
    decode,
)
from qt_cli.core.sources.base import PACE_S, MarketSource
from qt_cli.core.sources.sim import BROKERS, SessionClock, SimConfig, SimulatedMarket


def at(year: int, month: int, day: int, hour: int, minute: int = 0) -> int:
    """Venue time in ns of a São Paulo wall-clock instant."""
    return int(datetime(year, month, day, hour, minute, tzinfo=EXCHANGE_TZ).timestamp()) * NS_PER_S


MONDAY_11H = at(2025, 8, 4, 11)


def run(config: SimConfig) -> tuple[SimulatedMarket, list[Event]]:
    sim = SimulatedMarket(config)
    sim.open()
    events: list[Event] = []
    while not sim.finished:
        events += sim.read(1.0)
    sim.close()
    return sim, events


class Book:
    """Applies BookUpdates literally as profitdll.md §8 and docs/profitdll-binding.md describe the
    DLL's book: one list per side running worst -> best, `position` counted from the end
    (index = len - position - 1, so position 0 is the best level), `add` inserting at
    len - position, `delete_from` dropping positions `position` … 0, `edit` absolute."""

    def __init__(self) -> None:
        self.sides: dict[str, list[list[float]]] = {"bid": [], "ask": []}

    def apply(self, update: BookUpdate) -> None:
        side = self.sides[update.side]
        n = len(side)
        index = n - update.position - 1
        if update.action == "full":
            side[:] = [[float(p), int(q), int(c)] for p, q, c in reversed(update.levels)]
        elif update.action == "add":
            assert 0 <= update.position <= n
            side.insert(n - update.position, [update.price, update.quantity, update.count])
        elif update.action == "edit":
            level = side[index]
            assert level[0] == update.price, (level, update)
            level[1], level[2] = update.quantity, update.count
        elif update.action == "delete":
            level = side.pop(index)
            assert level == [update.price, update.quantity, update.count], (level, update)
        elif update.action == "delete_from":
            assert side[index][0] == update.price
            del side[index:]
        else:
            raise AssertionError(f"unexpected action {update.action}")

    def best(self, side: str) -> list[float]:
        return self.sides[side][-1]

    def best_first(self, side: str) -> list[list[float]]:
        return self.sides[side][::-1]

    def as_tuples(self) -> dict[str, list[tuple[float, int, int]]]:
        return {k: [(p, int(q), int(c)) for p, q, c in reversed(v)] for k, v in self.sides.items()}


@pytest.fixture(scope="module")
def hour() -> tuple[SimulatedMarket, list[Event]]:
    """One simulated hour of WDOQ25 from 11:00, regimes four times shorter than by default."""
    return run(SimConfig(seed=5, rate=0, duration_s=3600, start_ns=MONDAY_11H, regime_scale=0.25))


def trades_of(events: list[Event]) -> list[Trade]:
    return [e for e in events if isinstance(e, Trade)]


def without_receive_time(event: Event) -> dict:
    data = event.to_dict()
    data.pop("ts_init", None)
    data.pop("recv_ns", None)
    return data


# --- reproducibility and lifecycle -----------------------------------------------------------


def test_sim_is_a_market_source() -> None:
    sim: MarketSource = SimulatedMarket(SimConfig(rate=0, max_events=10))
    sim.open()
    assert len(sim.read(0.0)) == 10
    assert sim.finished and sim.stats.produced == 10


def test_same_seed_same_events_whatever_the_pacing() -> None:
    config = SimConfig(seed=42, rate=0, duration_s=300, start_ns=MONDAY_11H)
    _, first = run(config)
    _, again = run(config)
    assert len(first) > 5_000
    assert [without_receive_time(e) for e in first] == [without_receive_time(e) for e in again]

    _, paced = run(SimConfig(seed=42, rate=200_000, max_events=3_000, start_ns=MONDAY_11H))
    assert [without_receive_time(e) for e in paced] == [
        without_receive_time(e) for e in first[:3_000]
    ]

    _, other = run(SimConfig(seed=43, rate=0, duration_s=300, start_ns=MONDAY_11H))
    assert [e.price for e in trades_of(other)[:200]] != [e.price for e in trades_of(first)[:200]]


def test_a_seed_is_chosen_and_kept_when_none_is_given() -> None:
    sim = SimulatedMarket(SimConfig(rate=0, max_events=5))
    assert isinstance(sim.seed, int)
    _, events = run(SimConfig(seed=sim.seed, rate=0, max_events=5, start_ns=MONDAY_11H))
    assert len(events) == 5


def test_stops_after_max_events() -> None:
    sim, events = run(SimConfig(seed=1, rate=0, max_events=1_234, start_ns=MONDAY_11H))
    assert len(events) == 1_234 and sim.stats.produced == 1_234
    assert sim.read(0.0) == []


def test_stops_at_the_duration_in_session_seconds_at_rate_0() -> None:
    _, events = run(SimConfig(seed=1, rate=0, duration_s=60, start_ns=MONDAY_11H))
    times = [e.ts_event for e in events]
    assert min(times) == MONDAY_11H
    assert max(times) < MONDAY_11H + 60 * NS_PER_S
    assert max(times) > MONDAY_11H + 50 * NS_PER_S


def test_rate_paces_events_per_wall_second() -> None:
    started = time.monotonic()
    sim, events = run(SimConfig(seed=1, rate=2_000, duration_s=0.3, start_ns=MONDAY_11H))
    elapsed = time.monotonic() - started
    assert events
    # never ahead of the requested rate by more than one order's events
    assert len(events) <= 2_000 * elapsed + 200, (len(events), elapsed)


def paced_batches(rate: float, seconds: float) -> tuple[list[int], list[float]]:
    """Batch sizes of a run at `rate`, and how late each batch's first event left (s)."""
    sim = SimulatedMarket(SimConfig(seed=1, rate=rate, duration_s=seconds, start_ns=MONDAY_11H))
    sim.open()
    sizes: list[int] = []
    late: list[float] = []
    while not sim.finished:
        before = sim.stats.produced
        batch = sim.read(0.1)
        if batch:
            late.append(time.monotonic() - sim._mono0 - (before + 1) / rate)
            sizes.append(len(batch))
    sim.close()
    return sizes, late


def test_a_fast_rate_is_paced_in_batches_of_one_pace_interval() -> None:
    # At 23,000 events/s a read per due arrival (~3 events) cost more than the events themselves:
    # events due within one PACE_S leave together, no later than about PACE_S after their time.
    seconds = 0.5
    sizes, late = paced_batches(23_000, seconds)
    assert sum(sizes) > 23_000 * seconds * 0.8
    assert len(sizes) <= seconds / PACE_S * 1.2 + 5, (len(sizes), sizes[:20])
    assert statistics.median(sizes) >= 10, sizes[:20]
    assert statistics.median(late) < PACE_S + 0.002, sorted(late)[len(late) // 2]


def test_a_slow_rate_is_not_held_back_by_the_pace() -> None:
    # 200 events/s: an arrival every ~15 ms leaves on its own, when it is due
    sizes, late = paced_batches(200, 0.5)
    assert statistics.median(sizes) <= 6, sizes
    assert statistics.median(late) < 0.002, sorted(late)


def test_realistic_pacing_runs_session_time_with_the_wall_clock() -> None:
    sim = SimulatedMarket(SimConfig(seed=1, duration_s=0.5, start_ns=MONDAY_11H))
    sim.open()
    opened = time.monotonic()
    events: list[Event] = []
    while not sim.finished:
        batch = sim.read(0.1)
        wall_s = time.monotonic() - opened
        assert all(e.ts_event - MONDAY_11H <= (wall_s + 0.01) * NS_PER_S for e in batch)
        events += batch
    assert trades_of(events)
    assert max(e.ts_event for e in events) < MONDAY_11H + 0.5 * NS_PER_S


def test_bad_settings_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="--rate"):
        SimConfig(rate=-1)
    with pytest.raises(UsageError, match="symbols"):
        SimConfig(symbols=())
    with pytest.raises(UsageError, match="--duration"):
        SimConfig(duration_s=0)
    with pytest.raises(UsageError, match="--stop-after"):
        SimConfig(max_events=0)


# --- prices, trades and the book -------------------------------------------------------------


def test_prices_are_on_the_tick_grid_near_the_wdo_level(hour) -> None:
    _, events = hour
    prices = [e.price for e in trades_of(events)]
    prices += [e.price for e in events if isinstance(e, BookUpdate) and e.action != "full"]
    prices += [p for e in events if isinstance(e, BookUpdate) for p, _, _ in e.levels]
    assert all((p / 0.5).is_integer() for p in prices)
    assert 4_900 < min(prices) and max(prices) < 5_700


def test_book_updates_rebuild_the_book_and_trades_hit_the_best_price(hour) -> None:
    sim, events = hour
    book = Book()
    fulls = tobs = 0
    for event in events:
        if isinstance(event, BookUpdate):
            book.apply(event)
            if event.action == "full":
                fulls += 1
                assert len(event.levels) >= 10
        elif isinstance(event, TopOfBook):
            tobs += 1
            bid, ask = book.best("bid"), book.best("ask")
            assert (event.bid_price, event.bid_qty, event.ask_price, event.ask_qty) == (
                bid[0],
                bid[1],
                ask[0],
                ask[1],
            )
            assert bid[0] < ask[0]
            assert len(book.sides["bid"]) >= 10 and len(book.sides["ask"]) >= 10
            bids = [p for p, _, _ in book.best_first("bid")]
            asks = [p for p, _, _ in book.best_first("ask")]
            assert bids == sorted(bids, reverse=True) and len(set(bids)) == len(bids)
            assert asks == sorted(asks) and len(set(asks)) == len(asks)
            assert all(q >= c >= 1 for side in book.sides.values() for _, q, c in side)
        elif isinstance(event, Trade):
            bid, ask = book.best("bid")[0], book.best("ask")[0]
            assert bid < ask
            if event.aggressor == "buy":
                assert event.price == ask
            elif event.aggressor == "sell":
                assert event.price == bid
            else:
                assert bid <= event.price <= ask
    assert fulls == 2 and tobs > 10_000
    assert book.as_tuples() == sim.book("WDOQ25")
    used = Counter(e.action for e in events if isinstance(e, BookUpdate))
    assert {"full", "add", "edit", "delete", "delete_from"} <= set(used)


def test_trades_carry_aggressor_agents_and_types(hour) -> None:
    _, events = hour
    trades = trades_of(events)
    kinds = Counter(t.trade_type for t in trades)
    assert set(kinds) <= {1, 2, 3, 4} and kinds[1] > 0
    assert 0.35 < kinds[2] / (kinds[2] + kinds[3]) < 0.65
    for t in trades:
        assert t.aggressor == {2: "buy", 3: "sell"}.get(t.trade_type, "none")
        assert t.buyer in BROKERS and t.seller in BROKERS and t.quantity >= 1
        assert t.volume == pytest.approx(t.price * t.quantity * 10.0)
    assert all(t.buyer == t.seller for t in trades if t.trade_type == 1)
    ids = [t.trade_id for t in trades]
    assert ids == list(range(1, len(ids) + 1))
    # flow concentrates on a few brokers, as on B3
    top5 = sum(n for _, n in Counter(t.buyer for t in trades).most_common(5))
    assert top5 / len(trades) > 0.4
    # a sweep is one order: its trades share one time and one aggressor
    by_time = Counter(t.ts_event for t in trades if t.trade_type in (2, 3))
    assert max(by_time.values()) > 5


def test_trade_rate_is_like_wdo_with_bursts(hour) -> None:
    _, events = hour
    seconds = np.array([(t.ts_event - MONDAY_11H) // NS_PER_S for t in trades_of(events)])
    per_second = np.bincount(seconds, minlength=3600)
    assert 7 <= np.median(per_second) <= 14, np.median(per_second)
    assert per_second.mean() > np.median(per_second)  # clustered, not Poisson
    assert (per_second >= 100).sum() >= 5
    assert per_second.max() >= 200


def test_daily_events_total_the_session_so_far(hour) -> None:
    _, events = hour
    seen: list[Trade] = []
    dailies = 0
    for event in events:
        if isinstance(event, Trade):
            seen.append(event)
        elif isinstance(event, Daily):
            dailies += 1
            assert event.trades == len(seen)
            assert event.quantity == sum(t.quantity for t in seen)
            assert event.volume == pytest.approx(sum(t.volume for t in seen))
            assert event.high == max(t.price for t in seen)
            assert event.low == min(t.price for t in seen)
            assert event.close == seen[-1].price and event.open == seen[0].price
            buys = [t for t in seen if t.aggressor == "buy"]
            assert event.buy_trades == len(buys)
            assert event.buy_quantity == sum(t.quantity for t in buys)
            assert math.isnan(event.max_limit)  # not simulated
    assert dailies == 59


def test_volatility_changes_with_the_regime(hour) -> None:
    _, events = hour
    changes = [
        (e.ts_event, e.text) for e in events if isinstance(e, State) and e.source == "sim.regime"
    ]
    assert {name for _, name in changes} == {"calm", "normal", "volatile"}
    # last trade price every 10 s, its changes grouped by the regime in force
    last: dict[int, float] = {}
    for t in trades_of(events):
        last[(t.ts_event - MONDAY_11H) // (10 * NS_PER_S)] = t.price
    moves: dict[str, list[float]] = {"calm": [], "normal": [], "volatile": []}
    for bucket in range(1, 360):
        if bucket in last and bucket - 1 in last:
            begins = MONDAY_11H + (bucket - 1) * 10 * NS_PER_S
            regime = [name for ts, name in changes if ts <= begins][-1]
            moves[regime].append(last[bucket] - last[bucket - 1])
    vol = {name: float(np.std(m)) for name, m in moves.items()}
    assert vol["volatile"] > 2 * vol["calm"], vol
    assert vol["volatile"] > vol["normal"] > vol["calm"], vol


def test_events_survive_the_wire(hour) -> None:
    _, events = hour
    sample = events[:2_000:7] + [e for e in events if isinstance(e, Daily | State)]
    sample += [e for e in events if isinstance(e, BookUpdate) and e.action == "full"]
    for event in sample:
        assert decode(event.to_wire()).to_wire() == event.to_wire()


# --- symbols and the session clock -----------------------------------------------------------


def test_each_symbol_has_its_own_price_level_and_book() -> None:
    symbols = ("WDOQ25", "WDOU25", "WINQ25")
    sim, events = run(
        SimConfig(symbols=symbols, seed=3, rate=0, duration_s=300, start_ns=MONDAY_11H)
    )
    times = [e.ts_event for e in events]
    assert times == sorted(times)
    books = {s: Book() for s in symbols}
    for event in events:
        if isinstance(event, BookUpdate):
            books[event.symbol].apply(event)
    levels = {}
    for symbol in symbols:
        trades = [t for t in trades_of(events) if t.symbol == symbol]
        assert len(trades) > 1_000, symbol
        levels[symbol] = float(np.median([t.price for t in trades]))
        assert books[symbol].as_tuples() == sim.book(symbol)
    tick = {"WDOQ25": 0.5, "WDOU25": 0.5, "WINQ25": 5.0}
    for t in trades_of(events):
        assert (t.price / tick[t.symbol]).is_integer()
    assert levels["WDOQ25"] != levels["WDOU25"]
    assert 5_000 <= levels["WDOQ25"] <= 5_600 and 5_000 <= levels["WDOU25"] <= 5_600
    assert 100_000 < levels["WINQ25"] < 150_000


def test_the_session_closes_at_18h_and_reopens_next_business_day() -> None:
    friday_1758 = at(2025, 8, 8, 17, 58)
    _, events = run(SimConfig(seed=2, rate=0, duration_s=240, start_ns=friday_1758))
    states = [(e.ts_event, e.text) for e in events if isinstance(e, State) and e.source == "sim"]
    monday_9 = at(2025, 8, 11, 9)
    assert states == [(friday_1758, "opened"), (at(2025, 8, 8, 18), "closed"), (monday_9, "opened")]
    trades = trades_of(events)
    friday = [t for t in trades if t.ts_event < monday_9]
    monday = [t for t in trades if t.ts_event >= monday_9]
    assert friday and monday
    assert all(t.ts_event < at(2025, 8, 8, 18) for t in friday)
    assert max(t.ts_event for t in monday) < monday_9 + 120 * NS_PER_S
    # the opening auction, then continuous trading; trade numbers restart each session
    assert monday[0].trade_id == 1 and monday[0].trade_type == 4 and monday[0].ts_event == monday_9
    assert not [t for t in friday if t.trade_type == 4]
    closes = [e for e in events if isinstance(e, Daily) and e.ts_event == at(2025, 8, 8, 18)]
    assert closes and closes[0].trades == len(friday)
    reopen = [e for e in events if isinstance(e, BookUpdate) and e.ts_event == monday_9]
    assert [e.action for e in reopen[:2]] == ["full", "full"]


def test_session_clock_moves_the_start_into_a_session() -> None:
    assert SessionClock(at(2025, 8, 9, 12)).start_ns == at(2025, 8, 11, 9)  # Saturday -> Monday
    assert SessionClock(at(2025, 8, 4, 18, 30)).start_ns == at(2025, 8, 5, 9)
    assert SessionClock(at(2025, 8, 4, 7)).start_ns == at(2025, 8, 4, 9)
    clock = SessionClock(at(2025, 8, 4, 10, 15))
    assert clock.start_ns == at(2025, 8, 4, 10, 15)
    assert clock.ns_at(3600) == at(2025, 8, 4, 11, 15)
    assert clock.ns_at(8 * 3600) == at(2025, 8, 5, 9, 15)  # 7h45 left on Monday
    assert clock.ns_at(5 * 9 * 3600) == at(2025, 8, 11, 10, 15)  # over the weekend


def test_default_start_is_today_9h_or_last_friday_on_a_weekend() -> None:
    sim = SimulatedMarket(SimConfig(rate=0, max_events=1))
    sim.open()
    opened = datetime.fromtimestamp(sim.start_ns / NS_PER_S, EXCHANGE_TZ)
    today = datetime.now(EXCHANGE_TZ).date()
    assert (opened.hour, opened.minute, opened.weekday() < 5) == (9, 0, True)
    assert 0 <= (today - opened.date()).days <= (0 if today.weekday() < 5 else 2)


def test_a_real_time_run_without_a_start_is_stamped_with_the_wall_clock() -> None:
    """Two real-time runs the same day never overlap: each is stamped now, lags are ms."""
    before = time.time_ns()
    sim = SimulatedMarket(SimConfig(seed=3, duration_s=1.5))
    sim.open()
    assert before <= sim.start_ns <= time.time_ns()
    events: list[Event] = []
    while not sim.finished:
        events += sim.read(0.5)
    sim.close()
    assert len(events) > 10
    lags_ms = [(e.ts_init - e.ts_event) / 1e6 for e in events]
    assert 0 <= min(lags_ms) and max(lags_ms) < 250, (min(lags_ms), max(lags_ms))
    assert "real time" in sim.describe()
    fast = SimulatedMarket(SimConfig(seed=3, rate=1000, max_events=1))
    fast.open()  # not real time: venue time does not follow the wall clock; today's open
    assert datetime.fromtimestamp(fast.start_ns / NS_PER_S, EXCHANGE_TZ).hour == 9
    fast.close()


def test_session_clock_opening_now_outside_session_hours() -> None:
    sunday_20h = at(2025, 8, 10, 20)
    clock = SessionClock(sunday_20h, open_now=True)
    assert clock.start_ns == sunday_20h and clock.ns_at(3600) == sunday_20h + 3600 * NS_PER_S
    assert clock.ns_at(9 * 3600) == at(2025, 8, 11, 9)  # closes Monday 05:00, Monday opens 9:00
    friday_20h = SessionClock(at(2025, 8, 8, 20), open_now=True)
    assert friday_20h.day_open_ns(1) == at(2025, 8, 11, 9)
    assert friday_20h.day_open_ns(2) == at(2025, 8, 12, 9)
    thursday_7h = SessionClock(at(2025, 8, 7, 7), open_now=True)  # closes 16:00: Friday next
    assert thursday_7h.day_open_ns(1) == at(2025, 8, 8, 9)
    in_hours = SessionClock(at(2025, 8, 4, 10, 15), open_now=True)  # inside a session: as always
    assert in_hours.start_ns == at(2025, 8, 4, 10, 15) and in_hours.day_open_ns(0) == at(
        2025, 8, 4, 9
    )


def test_a_date_as_start_gives_whole_sessions_over_many_days() -> None:
    """`--start 2025-07-01 --duration 270h --rate 0`: 30 sessions from Tuesday 1 July 09:00 to
    Monday 11 August 18:00, weekends skipped."""
    from qt_cli.core.timeparse import parse_time

    clock = SessionClock(parse_time("2025-07-01"))
    assert clock.start_ns == at(2025, 7, 1, 9)
    opens = [clock.day_open_ns(k) for k in range(30)]
    days = [datetime.fromtimestamp(t / NS_PER_S, EXCHANGE_TZ) for t in opens]
    assert all(d.weekday() < 5 and (d.hour, d.minute) == (9, 0) for d in days)
    assert len({d.date() for d in days}) == 30
    assert days[-1].date().isoformat() == "2025-08-11"
    assert clock.ns_at(270 * 3600 - 1) == at(2025, 8, 11, 18) - NS_PER_S


def _aggressor_signs(alpha: float) -> np.ndarray:
    sim = SimulatedMarket(
        SimConfig(
            symbols=("WDOQ25",),
            seed=5,
            rate=0,
            duration_s=1200,
            start_ns=1_754_308_800 * 1_000_000_000,
            alpha=alpha,
        )
    )
    sim.open()
    signs = []
    while not sim.finished:
        for event in sim.read(timeout_s=1.0):
            if isinstance(event, Trade) and event.aggressor != "none":
                signs.append(1 if event.aggressor == "buy" else -1)
    sim.close()
    return np.asarray(signs)


def test_alpha_plants_an_order_flow_signal() -> None:
    """--alpha: the imbalance of the last 20 aggressor trades leans the next aggressors."""

    def lean(signs: np.ndarray) -> float:
        imbalance = np.convolve(signs, np.ones(20), "full")[: len(signs)] / 20
        return float(np.corrcoef(imbalance[:-1], signs[1:])[0, 1])

    plain, planted = lean(_aggressor_signs(0.0)), lean(_aggressor_signs(0.3))
    assert planted > plain + 0.15, (plain, planted)  # measured 0.29 -> 0.55


def test_alpha_is_off_by_default_and_bounded() -> None:
    assert SimConfig().alpha == 0.0
    with pytest.raises(UsageError, match=r"--alpha must be between 0 \(off\) and 1, got 1.5"):
        SimConfig(alpha=1.5)
    sim = SimulatedMarket(SimConfig(seed=1, rate=0, alpha=0.3))
    assert sim.describe().endswith("planted signal alpha 0.3")
