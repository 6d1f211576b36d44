"""The incremental feature engine: per-symbol state fed in event-time order, one vector per trade.

`FeatureEngine(set_name)` keeps a `SymbolState` per symbol. A trade updates the state's blocks
(each O(1) amortised: ring buffers with running sums, Wilder/EMA states, deques) and yields a
`FeatureVector` stamped with the trade's event time and the ids of the last trade and book event
used. A price-book `BookUpdate` updates the symbol's book and yields nothing. Bad input is skipped
and counted (`FeatureEngine.counters`), never raised. Definitions: docs/FEATURES.md.
"""

from __future__ import annotations

import math
import operator
from array import array
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from itertools import compress
from typing import Any

import numpy as np

from qt_cli.core.errors import UsageError
from qt_cli.core.events import EXCHANGE_TZ, BookUpdate, Event, Trade
from qt_cli.core.features.catalog import HISTORY, SETS, catalog_hash, feature_set
from qt_cli.core.features.history import HistoryBlock, HistorySource
from qt_cli.core.features.rolling import (
    NAN,
    Ema,
    Lags,
    Median,
    MinMax,
    Prefix,
    Rolling,
    Wilder,
    f32,
    restart_stagger,
)

NS_PER_S = 1_000_000_000
NS_PER_MIN = 60 * NS_PER_S
LN2 = math.log(2.0)
GK_C = 2.0 * LN2 - 1.0
BAR_TRADES = 10

# feature names by window, built once (no string formatting per update)
_RET = {i: f"returns_{i}" for i in range(201)}
_LOGRET = {i: f"log_returns_{i}" for i in range(201)}
_VOL = {i: f"volatility_{i}" for i in range(201)}
_VOLR = {i: f"volatility_ratio_{i}" for i in range(201)}
_VZ = {i: f"volume_zscore_{i}" for i in range(201)}
_VR = {i: f"volume_ratio_{i}" for i in range(201)}
_OFI = {i: f"order_flow_imbalance_{i}" for i in range(201)}
_TB = {i: f"top_buyer_{i}_active" for i in range(201)}
_TS = {i: f"top_seller_{i}_active" for i in range(201)}
_TI = {i: f"trade_imbalance_{i}" for i in range(201)}

_TRADE_LAGS = (
    (10, "momentum_10"),
    (5, "return_5"),
    (20, "return_20"),
    (50, "return_50"),
    (100, "return_100"),
)
_ONE32 = np.float32(1.0)
_LOG_AT = [0, 2, 4]  # returns lags 1, 5 and 20 among SeedBlock.RETURN_LAGS

NO_RANKING = "no agent ranking (pass top_buyers and top_sellers)"
# The reasons of the top_* features without a ranking, in the order they are given.
_NO_RANKING_REASONS = {
    **{
        name: NO_RANKING
        for i in range(5)
        for name in (f"top_buyer_{i}_active", f"top_seller_{i}_active")
    },
    "top_buyers_count": NO_RANKING,
    "top_sellers_count": NO_RANKING,
}
NO_BOOK = "no book"
CROSSED_BOOK = "crossed book"


@dataclass(slots=True)
class FeatureVector:
    """One vector: the set's values in order, NaN where a window is not full or input is missing."""

    symbol: str
    ts_event: int
    feature_set: str
    names: tuple[str, ...]
    values: list[float]
    warm: bool
    missing: tuple[str, ...]
    reasons: dict[str, str] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    catalog_version: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "ts_event": self.ts_event,
            "feature_set": self.feature_set,
            "catalog_version": self.catalog_version,
            "warm": self.warm,
            "missing": list(self.missing),
            "reasons": self.reasons,
            "lineage": self.lineage,
            "values": dict(zip(self.names, self.values, strict=True)),
        }


# --- exchange-local time, cached per minute ---------------------------------------------------


class Clock:
    """Exchange-local time parts of an event time; a datetime is built once per minute."""

    __slots__ = ("minute_key", "parts")

    def __init__(self) -> None:
        self.minute_key = -1
        self.parts: tuple[int, int, int, int] = (0, 0, 0, 0)

    def at(self, ts_ns: int) -> tuple[int, int, int, int]:
        """(hour, minute, weekday Monday=0, date ordinal) in exchange time."""
        key = ts_ns // NS_PER_MIN
        if key != self.minute_key:
            local = datetime.fromtimestamp(key * 60, tz=EXCHANGE_TZ)
            self.parts = (local.hour, local.minute, local.weekday(), local.toordinal())
            self.minute_key = key
        return self.parts


# --- seed65 -----------------------------------------------------------------------------------


class SeedBlock:
    """The 65 values of the users' training code (train_csv_5m_realistic.py), restated."""

    RETURN_LAGS = (1, 2, 5, 10, 20, 50, 100)
    VOL = (10, 20, 50, 100)
    QTY = (20, 50, 100)
    FLOW = (10, 20, 50, 100)

    def __init__(self, top_buyers: list[int] | None, top_sellers: list[int] | None) -> None:
        self.t = 0
        self.p = Lags(101)
        self.r1 = {n: Rolling(n) for n in self.VOL}
        self.vol_mean = {n: Rolling(2 * n) for n in self.VOL}
        self.r1sq = Rolling(20)
        self.qty = {n: Rolling(n) for n in self.QTY}
        self.rvol = Rolling(20)
        self.fvol = Rolling(20)
        self.gaps = Median(50)
        self.last_second: int | None = None
        self.intensity = Rolling(200)
        self.buys = Prefix(100)
        self.sells = Prefix(100)
        self.signed = Prefix(100)
        self.bchg = Prefix(100)
        self.schg = Prefix(100)
        self.ma = {n: Rolling(n) for n in (5, 20, 50)}
        self.prev_agents: tuple[int, int] | None = None
        self.top_buyers = top_buyers
        self.top_sellers = top_sellers

    def update(self, trade: Trade, clock: tuple[int, int, int, int], v: dict[str, float]) -> None:
        self.t += 1
        t = self.t
        p = f32(trade.price)
        q = trade.quantity
        lags = self.p
        lags.push(p)
        rets: dict[int, float]
        if t > 100:
            # float32 ratios (a double quotient rounded once is the float32 quotient), float32
            # "- 1" and numpy's float32 log, as pandas/numpy did on the float32 column
            ago = lags.ago
            ratios = np.array([p / ago(k) for k in self.RETURN_LAGS], dtype=np.float32)
            rets = dict(zip(self.RETURN_LAGS, (ratios - _ONE32).tolist(), strict=True))
            for k, r in rets.items():
                v[_RET[k]] = r
            logs = np.log(ratios[_LOG_AT]).tolist()
            v["log_returns_1"], v["log_returns_5"], v["log_returns_20"] = logs
        else:
            rets = {}
            for k in self.RETURN_LAGS:
                if t > k:
                    rets[k] = r = f32(f32(p / lags.ago(k)) - 1.0)
                else:
                    r = NAN
                v[_RET[k]] = r
            for k in (1, 5, 20):
                v[_LOGRET[k]] = float(np.log(np.float32(p / lags.ago(k)))) if t > k else NAN

        vols: dict[int, float] = {}
        if t > 1:
            r1 = rets[1]
            for n in self.VOL:
                roll = self.r1[n]
                roll.push(r1)
                if roll.full:
                    vols[n] = vol = roll.std(1)
                    means = self.vol_mean[n]
                    means.push(vol)
                    if means.full:
                        m = means.mean()
                        if m != 0.0:
                            ratio = vol / m
                        else:
                            ratio = 1.0 if vol == 0.0 else 0.0  # 0/0 -> fillna(1); x/0 -> inf -> 0
                    else:
                        ratio = NAN
                    v[_VOL[n]] = vol
                    v[_VOLR[n]] = ratio
                else:
                    v[_VOL[n]] = NAN
                    v[_VOLR[n]] = NAN
            self.r1sq.push(f32(r1 * r1))
            self.rvol.push(r1 * trade.volume)
            self.fvol.push(trade.volume)
        else:
            for n in self.VOL:
                v[_VOL[n]] = NAN
                v[_VOLR[n]] = NAN
        v["volatility_gk"] = math.sqrt(self.r1sq.mean()) if self.r1sq.full else NAN

        v["momentum_5_20"] = _ratio_f32(rets, 5, 20)
        v["momentum_20_50"] = _ratio_f32(rets, 20, 50)
        v["sharpe_5"] = rets[5] / max(vols[20], 1e-4) if 20 in vols else NAN
        v["sharpe_20"] = rets[20] / max(vols[50], 1e-4) if 50 in vols else NAN

        for n in self.QTY:
            roll = self.qty[n]
            roll.push(float(q))
            if roll.full:
                mean = roll.mean()
                v[_VZ[n]] = (q - mean) / max(roll.std(1), 0.001)
                v[_VR[n]] = q / max(mean, 1.0)
            else:
                v[_VZ[n]] = NAN
                v[_VR[n]] = NAN
        if self.rvol.full:
            den = self.fvol.sum()
            v["volume_weighted_return"] = self.rvol.sum() / den if den != 0.0 else 0.0
        else:
            v["volume_weighted_return"] = NAN

        second = trade.ts_event // NS_PER_S
        if self.last_second is not None:
            self.gaps.push(float(second - self.last_second))
        self.last_second = second
        if self.gaps.full:
            intensity = 1.0 / max(self.gaps.median(), 0.001)
            self.intensity.push(intensity)
            v["trade_intensity"] = intensity
            v["trade_intensity_ratio"] = (
                intensity / self.intensity.mean() if self.intensity.full else NAN
            )
        else:
            v["trade_intensity"] = NAN
            v["trade_intensity_ratio"] = NAN

        is_b = 1 if trade.aggressor == "buy" else 0
        is_s = 1 if trade.aggressor == "sell" else 0
        v["is_buyer_aggressor"] = is_b
        v["is_seller_aggressor"] = is_s
        self.buys.push(is_b)
        self.sells.push(is_s)
        for n in self.FLOW:
            if t >= n:
                b = self.buys.sum(n)
                s = self.sells.sum(n)
                v[_OFI[n]] = (b - s) / max(b + s, 1)
            else:
                v[_OFI[n]] = NAN
        signed = q * (is_b - is_s)
        v["signed_volume"] = signed
        self.signed.push(signed)
        v["cumulative_signed_volume"] = self.signed.sum(100) if t >= 100 else NAN

        buyer, seller = trade.buyer, trade.seller
        if self.top_buyers is None or self.top_sellers is None:
            for i in range(5):
                v[_TB[i]] = NAN
                v[_TS[i]] = NAN
            v["top_buyers_count"] = NAN
            v["top_sellers_count"] = NAN
        else:
            nb = ns = 0
            for i in range(5):
                hb = 1 if buyer == self.top_buyers[i] else 0
                hs = 1 if seller == self.top_sellers[i] else 0
                v[_TB[i]] = hb
                v[_TS[i]] = hs
                nb += hb
                ns += hs
            v["top_buyers_count"] = nb
            v["top_sellers_count"] = ns
        if self.prev_agents is not None:
            bc = 1 if buyer != self.prev_agents[0] else 0
            sc = 1 if seller != self.prev_agents[1] else 0
            self.bchg.push(bc)
            self.schg.push(sc)
            v["buyer_changed"] = bc
            v["seller_changed"] = sc
            v["agent_turnover"] = (
                self.bchg.sum(100) / 100 + self.schg.sum(100) / 100
                if self.bchg.count >= 100
                else NAN
            )
        else:
            v["buyer_changed"] = v["seller_changed"] = v["agent_turnover"] = NAN
        self.prev_agents = (buyer, seller)

        ma5, ma20, ma50 = self.ma[5], self.ma[20], self.ma[50]
        ma5.push(p)
        ma20.push(p)
        ma50.push(p)
        m20 = ma20.mean() if ma20.full else NAN
        v["ma_5_20_ratio"] = ma5.mean() / m20 - 1.0 if ma20.full else NAN
        v["ma_20_50_ratio"] = m20 / ma50.mean() - 1.0 if ma50.full else NAN
        v["bb_position"] = (p - m20) / max(2.0 * ma20.std(1), 1e-4) if ma20.full else NAN

        hour, minute, weekday, _ = clock
        v["hour"] = hour
        v["minute"] = minute
        v["day_of_week"] = weekday
        since = min(max(hour * 60 + minute - 540, 0), 480)
        v["time_normalized"] = since / 480
        v["is_opening_30min"] = 1 if since <= 30 else 0
        v["is_closing_30min"] = 1 if since >= 450 else 0
        v["is_lunch_hour"] = 1 if hour in (12, 13) else 0


def _ratio_f32(rets: dict[int, float], a: int, b: int) -> float:
    """returns_a / returns_b in float32 with the training clean-up (inf and NaN -> 0)."""
    if b not in rets:
        return NAN
    den = rets[b]
    if den == 0.0:
        return 0.0
    out = f32(rets[a] / den)
    return 0.0 if math.isinf(out) else out


# --- basic11 and the qt set's trade features ----------------------------------------------------


class TradeBlock:
    """basic11 and the qt set's features computed from trades alone (float64 prices)."""

    def __init__(self, session_open_min: int, session_close_min: int) -> None:
        self.t = 0
        self.p = Lags(101)
        self.pm5, self.pm20, self.pm50 = Rolling(5), Rolling(20), Rolling(50)
        self.ret5 = Rolling(5)
        self.ret20 = Rolling(20)
        self.ups = Prefix(20)
        self.qty5, self.qty20, self.qty50 = Rolling(5), Rolling(20), Rolling(50)
        self.lr2 = (Rolling(10), Rolling(20), Rolling(50), Rolling(100))
        self.gain = Wilder(14)
        self.loss = Wilder(14)
        self.ema12 = Ema(12)
        self.ema26 = Ema(26)
        self.signal = Ema(9)
        self.mm14 = MinMax(14)
        self.bar_n = 0
        self.bar: list[float] = [NAN, NAN, NAN, NAN]  # open high low close
        self.prev_close = NAN
        self.park = Rolling(10)
        self.gk = Rolling(10)
        self.atr = Wilder(14)
        self.pq20, self.pq100 = Rolling(20), Rolling(100)
        self.qsum = Prefix(100)
        self.session_day = -1
        self.sess_pq = 0.0
        self.sess_pq_c = 0.0  # Neumaier compensation
        self.sess_q = 0
        self.sess_delta = 0
        self.bq = Prefix(100)
        self.sq = Prefix(100)
        self.agents: deque[tuple[int, int]] = deque()
        self.agent_counts: dict[int, int] = {}
        self.agent_sq = 0
        self.self_trades = Prefix(100)
        self.run_side = ""
        self.run = 0
        self.open_min = session_open_min
        self.close_min = session_close_min

    def _agent(self, agent: int, delta: int) -> None:
        counts = self.agent_counts
        c = counts.get(agent, 0)
        self.agent_sq += (c + delta) ** 2 - c * c
        if c + delta:
            counts[agent] = c + delta
        else:
            del counts[agent]

    def update(self, trade: Trade, clock: tuple[int, int, int, int], v: dict[str, float]) -> None:
        self.t += 1
        t = self.t
        p = trade.price
        q = trade.quantity
        lags = self.p
        prev = lags.ago(0)
        lags.push(p)
        v["price_current"] = p
        pm5, pm20, pm50 = self.pm5, self.pm20, self.pm50
        pm5.push(p)
        pm20.push(p)
        pm50.push(p)
        v["price_mean_5"] = pm5.mean() if pm5.full else NAN
        m20 = pm20.mean() if pm20.full else NAN
        v["price_mean_20"] = m20
        sd20 = pm20.std(0) if pm20.full else NAN
        v["price_std_20"] = sd20
        if pm50.full:
            sd50 = pm50.std(0)
            v["price_zscore_50"] = (p - pm50.mean()) / sd50 if sd50 > 0.0 else 0.0
        else:
            v["price_zscore_50"] = NAN

        if t > 1:
            r1 = p / prev - 1.0
            lr = math.log(p / prev)
            self.ret5.push(r1)
            self.ret20.push(r1)
            self.ups.push(1 if r1 > 0.0 else 0)
            change = p - prev
            avg_gain = self.gain.push(change if change > 0.0 else 0.0)
            avg_loss = self.loss.push(-change if change < 0.0 else 0.0)
            lr_sq = lr * lr
            for roll in self.lr2:
                roll.push(lr_sq)
        else:
            r1 = lr = avg_gain = avg_loss = NAN
        v["return_1"] = r1
        v["log_return_1"] = lr
        v["return_mean_5"] = self.ret5.mean() if self.ret5.full else NAN
        v["return_std_5"] = self.ret5.std(0) if self.ret5.full else NAN
        v["return_mean_20"] = self.ret20.mean() if self.ret20.full else NAN
        v["up_tick_ratio_20"] = self.ups.sum(20) / 20 if self.ups.count >= 20 else NAN
        if avg_gain == avg_gain:
            if avg_loss == 0.0:
                v["rsi_14"] = 50.0 if avg_gain == 0.0 else 100.0
            else:
                v["rsi_14"] = 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)
        else:
            v["rsi_14"] = NAN
        if t > 100:
            ago = lags.ago
            v["momentum_10"] = p / ago(10) - 1.0
            v["return_5"] = p / ago(5) - 1.0
            v["return_20"] = p / ago(20) - 1.0
            v["return_50"] = p / ago(50) - 1.0
            v["return_100"] = p / ago(100) - 1.0
        else:
            for k, name in _TRADE_LAGS:
                v[name] = p / lags.ago(k) - 1.0 if t > k else NAN

        lr10, lr20, lr50, lr100 = self.lr2
        if lr100.count == 100:  # every window full
            rv10 = math.sqrt(lr10.mean())
            rv20 = math.sqrt(lr20.mean())
            rv50 = math.sqrt(lr50.mean())
            rv100 = math.sqrt(lr100.mean())
        else:
            rv10 = math.sqrt(lr10.mean()) if lr10.full else NAN
            rv20 = math.sqrt(lr20.mean()) if lr20.full else NAN
            rv50 = math.sqrt(lr50.mean()) if lr50.full else NAN
            rv100 = NAN
        v["realized_vol_10"] = rv10
        v["realized_vol_20"] = rv20
        v["realized_vol_50"] = rv50
        v["realized_vol_100"] = rv100
        v["vol_ratio_10_50"] = _vol_ratio(rv10, rv50)
        v["vol_ratio_20_100"] = _vol_ratio(rv20, rv100)

        # bars of BAR_TRADES trades
        bar = self.bar
        if self.bar_n == 0:
            bar[0] = bar[1] = bar[2] = p
        else:
            if p > bar[1]:
                bar[1] = p
            if p < bar[2]:
                bar[2] = p
        bar[3] = p
        self.bar_n += 1
        if self.bar_n == BAR_TRADES:
            o, h, lo, c = bar
            hl = math.log(h / lo)
            co = math.log(c / o)
            self.park.push(hl * hl)
            self.gk.push(0.5 * hl * hl - GK_C * co * co)
            pc = self.prev_close
            tr = h - lo if pc != pc else max(h - lo, abs(h - pc), abs(lo - pc))
            self.atr.push(tr)
            self.prev_close = c
            self.bar_n = 0
        if self.park.full:
            v["parkinson_vol_10x10"] = math.sqrt(self.park.mean() / (4.0 * LN2))
            v["garman_klass_vol_10x10"] = math.sqrt(max(self.gk.mean(), 0.0))
        else:
            v["parkinson_vol_10x10"] = v["garman_klass_vol_10x10"] = NAN
        atr = self.atr.value
        v["atr_14x10"] = atr
        v["atr_relative"] = atr / p

        qty5, qty20, qty50 = self.qty5, self.qty20, self.qty50
        fq = float(q)
        qty5.push(fq)
        qty20.push(fq)
        qty50.push(fq)
        vm5 = qty5.mean() if qty5.full else NAN
        v["volume_mean_5"] = vm5
        v["volume_ratio"] = q / vm5
        if qty20.full:
            v["volume_mean_20"] = m = qty20.mean()
            sd = qty20.std(1)
            v["volume_zscore_20q"] = (q - m) / sd if sd > 0.0 else 0.0
        else:
            v["volume_mean_20"] = v["volume_zscore_20q"] = NAN
        v["volume_ratio_5_50"] = qty5.mean() / qty50.mean() if qty50.full else NAN
        pq = p * q
        qsum = self.qsum
        qsum.push(q)
        pq20, pq100 = self.pq20, self.pq100
        pq20.push(pq)
        pq100.push(pq)
        v["vwap_dev_20"] = p / (pq20.sum() / qsum.sum(20)) - 1.0 if pq20.full else NAN
        v["vwap_dev_100"] = p / (pq100.sum() / qsum.sum(100)) - 1.0 if pq100.full else NAN

        day = clock[3]
        if day != self.session_day:
            self.session_day = day
            self.sess_pq = self.sess_pq_c = 0.0
            self.sess_q = 0
            self.sess_delta = 0
        s = self.sess_pq
        total = s + pq
        if abs(s) >= abs(pq):
            self.sess_pq_c += (s - total) + pq
        else:
            self.sess_pq_c += (pq - total) + s
        self.sess_pq = total
        self.sess_q += q
        v["vwap_dev_session"] = p / ((self.sess_pq + self.sess_pq_c) / self.sess_q) - 1.0

        e12 = self.ema12.push(p)
        e26 = self.ema26.push(p)
        if e26 == e26:
            macd = e12 - e26
            sig = self.signal.push(macd)
            v["macd_12_26"] = macd
            v["macd_signal_9"] = sig
            v["macd_hist"] = macd - sig
        else:
            v["macd_12_26"] = v["macd_signal_9"] = v["macd_hist"] = NAN
        if pm20.full:
            v["bb_position_20"] = (p - m20) / (2.0 * sd20) if sd20 > 0.0 else 0.0
            v["bb_width_20"] = 4.0 * sd20 / m20
        else:
            v["bb_position_20"] = v["bb_width_20"] = NAN
        mm = self.mm14
        mm.push(p)
        if mm.full:
            lo, hi = mm.min(), mm.max()
            v["stoch_k_14"] = 100.0 * (p - lo) / (hi - lo) if hi > lo else 50.0
        else:
            v["stoch_k_14"] = NAN

        side = trade.aggressor
        bq, sq = self.bq, self.sq
        bq.push(q if side == "buy" else 0)
        sq.push(q if side == "sell" else 0)
        for n in (10, 50):
            if t >= n:
                b = bq.sum(n)
                s_ = sq.sum(n)
                v[_TI[n]] = (b - s_) / (b + s_) if b + s_ else 0.0
            else:
                v[_TI[n]] = NAN
        if t >= 100:
            b = bq.sum(100)
            s_ = sq.sum(100)
            v["trade_imbalance_100"] = (b - s_) / (b + s_) if b + s_ else 0.0
            v["signed_volume_100"] = b - s_
        else:
            v["trade_imbalance_100"] = v["signed_volume_100"] = NAN
        self.sess_delta += q if side == "buy" else -q if side == "sell" else 0
        v["cumulative_delta_session"] = self.sess_delta
        agents = self.agents
        agents.append((trade.buyer, trade.seller))
        self._agent(trade.buyer, 1)
        self._agent(trade.seller, 1)
        if len(agents) > 100:
            old_b, old_s = agents.popleft()
            self._agent(old_b, -1)
            self._agent(old_s, -1)
        if len(agents) == 100:
            v["agent_concentration_100"] = self.agent_sq / 40000.0
            v["unique_agents_100"] = len(self.agent_counts)
        else:
            v["agent_concentration_100"] = v["unique_agents_100"] = NAN
        self.self_trades.push(1 if trade.buyer == trade.seller else 0)
        v["self_trade_ratio_100"] = self.self_trades.sum(100) / 100 if t >= 100 else NAN
        if side == self.run_side:
            self.run += 1
        else:
            self.run_side = side
            self.run = 1
        v["aggressor_run_length"] = self.run

        hour, minute, weekday, _ = clock
        local_min = hour * 60 + minute + (trade.ts_event % NS_PER_MIN) / NS_PER_MIN
        since = local_min - self.open_min
        to_close = self.close_min - local_min
        v["minutes_since_open"] = since
        v["minutes_to_close"] = to_close
        if since < 0:
            phase = 0
        elif to_close <= 0:
            phase = 4
        elif since < 30:
            phase = 1
        elif to_close <= 30:
            phase = 3
        else:
            phase = 2
        v["session_phase"] = phase
        v["day_of_week"] = weekday


def _reasons_of(reasons: dict[str, str], missing: tuple[str, ...]) -> dict[str, str]:
    """The reasons of the missing values, in the order they were given."""
    if not reasons or not missing:
        return {}
    keep = set(missing)
    return {n: r for n, r in reasons.items() if n in keep}


def _vol_ratio(a: float, b: float) -> float:
    if b != b:
        return NAN
    if b == 0.0:
        return 1.0
    return a / b


# --- the book ---------------------------------------------------------------------------------


class BookBlock:
    """A price book per side (best first) from BookUpdate events, and the book features."""

    def __init__(self) -> None:
        self.bids: list[list[float]] = []
        self.asks: list[list[float]] = []
        self.events = 0
        self.ofi = Prefix(100)
        self.cancels = Prefix(100)
        self.replenish = Prefix(100)

    def apply(self, ev: BookUpdate) -> bool:
        """Apply one price-book event; False when its position does not exist (skipped)."""
        bid = ev.side == "bid"
        side = self.bids if bid else self.asks
        pos = ev.position
        # only this side's best level can move: the order-flow imbalance term of the other side
        # is q - q = 0
        p0, q0 = side[0] if side else (NAN, 0)
        grow = shrink = 0
        action = ev.action
        if action == "add":
            if not 0 <= pos <= len(side):
                return False
            side.insert(pos, [ev.price, ev.quantity])
            grow = 1
        elif action == "full":
            side[:] = [[float(lv[0]), float(lv[1])] for lv in ev.levels]
        elif not 0 <= pos < len(side):
            return False
        elif action == "edit":
            level = side[pos]
            old = level[1]
            level[1] = ev.quantity
            grow = 1 if ev.quantity > old else 0
            shrink = 1 if ev.quantity < old else 0
        elif action == "delete":
            del side[pos]
            shrink = 1
        else:  # delete_from: positions pos..0, the best pos + 1 levels
            del side[: pos + 1]
            shrink = 1
        p1, q1 = side[0] if side else (NAN, 0)
        e: float = 0  # quantities may be floats; pushed as int
        if p1 == p1 and p0 == p0:
            if bid:
                e = (q1 if p1 >= p0 else 0) - (q0 if p1 <= p0 else 0)
            else:
                e = (q0 if p1 >= p0 else 0) - (q1 if p1 <= p0 else 0)
        self.ofi.push(int(e))
        self.cancels.push(shrink)
        self.replenish.push(grow)
        self.events += 1
        return True

    def update(self, p: float, v: dict[str, float], reasons: dict[str, str]) -> str | None:
        full = self.events >= 100
        v["ofi_100"] = self.ofi.sum(100) if full else NAN
        v["cancel_rate_100"] = self.cancels.sum(100) / 100 if full else NAN
        v["replenish_rate_100"] = self.replenish.sum(100) / 100 if full else NAN
        bids, asks = self.bids, self.asks
        problem = None
        if not bids or not asks:
            problem = NO_BOOK
        elif bids[0][0] >= asks[0][0]:
            problem = CROSSED_BOOK
        if problem is not None:
            for name in BOOK_NOW:
                v[name] = NAN
                reasons[name] = problem
            return problem
        bp, bq = bids[0]
        ap, aq = asks[0]
        mid = (bp + ap) / 2.0
        v["spread"] = ap - bp
        v["spread_relative"] = (ap - bp) / mid
        lq = bq + aq
        v["microprice_deviation"] = ((bp * aq + ap * bq) / lq - mid) / mid if lq > 0 else NAN
        v["imbalance_1"] = (bq - aq) / lq if lq > 0 else NAN
        b5 = bids[:5]
        a5 = asks[:5]
        qb = sum(lv[1] for lv in b5)
        qa = sum(lv[1] for lv in a5)
        depth = qb + qa
        v["imbalance_5"] = (qb - qa) / depth if depth > 0 else NAN
        v["depth_5"] = depth
        width = a5[-1][0] - b5[-1][0]
        v["book_slope_5"] = depth / width
        v["trade_mid_deviation"] = p / mid - 1.0
        return None


BOOK_NOW = (
    "spread",
    "spread_relative",
    "microprice_deviation",
    "imbalance_1",
    "imbalance_5",
    "depth_5",
    "book_slope_5",
    "trade_mid_deviation",
)


# --- engine -----------------------------------------------------------------------------------


def _minutes(text: str) -> int:
    try:
        hours, minutes = text.split(":")
        value = int(hours) * 60 + int(minutes)
    except ValueError:
        raise UsageError(f"session time {text!r}: expected HH:MM, e.g. 09:00") from None
    if not 0 <= value < 24 * 60:
        raise UsageError(f"session time {text!r}: expected HH:MM between 00:00 and 23:59")
    return value


class SymbolState:
    """Everything the engine keeps for one symbol."""

    def __init__(self, engine: FeatureEngine, symbol: str) -> None:
        restart_stagger()  # the same recompute points in every process: replay == live
        self.clock = Clock()
        self.last_ts = 0
        self.seed = SeedBlock(engine.top_buyers, engine.top_sellers) if engine.uses_seed else None
        self.trades = TradeBlock(engine.open_min, engine.close_min) if engine.uses_trades else None
        self.book = BookBlock() if engine.uses_book else None
        self.history = HistoryBlock(engine, symbol) if engine.uses_history else None
        self.last_trade: dict[str, Any] | None = None
        self.last_book: dict[str, Any] | None = None


class FeatureEngine:
    """Feature vectors of one set, per symbol, from trades and price-book events in time order.

    `top_buyers` / `top_sellers`: the 5 agent ids the seed65 `top_*` features compare with (the
    training file's most frequent buyers and sellers, most frequent first). `history`: where the
    time-travel features' reference statistics come from (`history.StoredHistory(client)`);
    without it they are NaN with a reason. `symbols`: the subscribed symbols
    (`correlation_stability` correlates with the others; default: the symbols seen so far).
    """

    def __init__(
        self,
        set_name: str = "qt",
        *,
        top_buyers: list[int] | None = None,
        top_sellers: list[int] | None = None,
        session_open: str = "09:00",
        session_close: str = "18:00",
        history: HistorySource | None = None,
        symbols: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.set_name = set_name
        self.history = history
        self.subscribed = tuple(symbols)
        self.names = feature_set(set_name)
        self._pick = operator.itemgetter(*self.names)  # the values in the set's order
        if (top_buyers is None) != (top_sellers is None):
            raise UsageError("give both top_buyers and top_sellers (the training file's rankings)")
        for label, ranking in (("top_buyers", top_buyers), ("top_sellers", top_sellers)):
            if ranking is not None and len(ranking) != 5:
                raise UsageError(
                    f"{label}: expected the 5 most frequent agent ids, got {len(ranking)}"
                )
        self.top_buyers = list(top_buyers) if top_buyers is not None else None
        self.top_sellers = list(top_sellers) if top_sellers is not None else None
        self.open_min = _minutes(session_open)
        self.close_min = _minutes(session_close)
        names = set(self.names)
        self.uses_seed = bool(names & set(SETS["seed65"]) - {"day_of_week"})
        self.uses_trades = bool(names - set(SETS["seed65"]))
        self.uses_book = bool(
            names & (set(BOOK_NOW) | {"ofi_100", "cancel_rate_100", "replenish_rate_100"})
        )
        self.uses_history = bool(names & set(HISTORY))
        self.version = catalog_hash()
        self.symbols: dict[str, SymbolState] = {}
        self.counters: dict[str, int] = {
            "trades": 0,
            "book_events": 0,
            "vectors": 0,
            "warm_vectors": 0,
            "bad_price": 0,
            "bad_quantity": 0,
            "out_of_order": 0,
            "bad_book_position": 0,
            "book_ignored": 0,
            "crossed_book": 0,
            "no_book": 0,
            "history_references": 0,
        }
        uses_ranking = any(n.startswith("top_") for n in self.names)
        self._ranking_missing = uses_ranking and self.top_buyers is None
        # the last vector's (missing, reasons given, reasons said): vectors share the last one
        # when both are the same (never changed afterwards)
        self._said: tuple[tuple[str, ...], dict[str, str], dict[str, str]] = ((), {}, {})

    def _state(self, symbol: str) -> SymbolState:
        state = self.symbols.get(symbol)
        if state is None:
            state = self.symbols[symbol] = SymbolState(self, symbol)
        return state

    def history_symbols(self) -> tuple[str, ...]:
        """The subscribed symbols, or those seen so far."""
        return self.subscribed or tuple(self.symbols)

    def on_event(self, event: Event) -> FeatureVector | None:
        if isinstance(event, Trade):
            return self.on_trade(event)
        if isinstance(event, BookUpdate):
            self.on_book(event)
        return None

    def on_book(self, ev: BookUpdate) -> None:
        counters = self.counters
        counters["book_events"] += 1
        state = self._state(ev.symbol)
        if ev.ts_event < state.last_ts:
            counters["out_of_order"] += 1
            return
        if ev.book != "price" or state.book is None:
            counters["book_ignored"] += 1
            return
        if ev.action == "add" and not (math.isfinite(ev.price) and ev.price > 0):
            counters["bad_price"] += 1
            return
        if not state.book.apply(ev):
            counters["bad_book_position"] += 1
            return
        state.last_ts = ev.ts_event
        state.last_book = {"session": ev.session, "seq": ev.seq}

    def on_trade(self, trade: Trade) -> FeatureVector | None:
        counters = self.counters
        counters["trades"] += 1
        p = trade.price
        if not (math.isfinite(p) and p > 0.0):
            counters["bad_price"] += 1
            return None
        if trade.quantity <= 0:
            counters["bad_quantity"] += 1
            return None
        state = self._state(trade.symbol)
        if trade.ts_event < state.last_ts:
            counters["out_of_order"] += 1
            return None
        state.last_ts = trade.ts_event
        clock = state.clock.at(trade.ts_event)
        values: dict[str, float] = {}
        reasons: dict[str, str] = {}
        if state.seed is not None:
            state.seed.update(trade, clock, values)
            if self._ranking_missing:
                reasons.update(_NO_RANKING_REASONS)
        if state.trades is not None:
            state.trades.update(trade, clock, values)
        if state.book is not None:
            problem = state.book.update(p, values, reasons)
            if problem is not None:
                counters["crossed_book" if problem == CROSSED_BOOK else "no_book"] += 1
        if state.history is not None:
            state.history.update(trade, clock, values, reasons)
        out = [*self._pick(values)] if len(self.names) > 1 else [values[self.names[0]]]
        if state.seed is not None and state.trades is None:
            out = array("f", out).tolist()  # the training code's final float32 cast
        total = sum(out)  # NaN when a value is NaN (also for inf - inf: then look)
        missing = () if total == total else tuple(compress(self.names, map(math.isnan, out)))
        state.last_trade = {"session": trade.session, "seq": trade.seq, "trade_id": trade.trade_id}
        counters["vectors"] += 1
        if not missing:
            counters["warm_vectors"] += 1
        if not missing:
            said: dict[str, str] = {}
        elif missing == self._said[0] and reasons == self._said[1]:
            said = self._said[2]  # as the last vector's (a set without its ranking: every one)
        else:
            said = _reasons_of(reasons, missing)
            self._said = (missing, reasons, said)
        return FeatureVector(
            symbol=trade.symbol,
            ts_event=trade.ts_event,
            feature_set=self.set_name,
            names=self.names,
            values=out,
            warm=not missing,
            missing=missing,
            reasons=said,
            lineage={"trade": state.last_trade, "book": state.last_book},
            catalog_version=self.version,
        )
