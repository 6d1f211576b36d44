"""The feature catalog: every feature qt computes, declared once, and the named sets over it.

A feature has a name, a group, its inputs (trades, book, candles, history), a window and a
one-line definition. A feature set is an ordered list of catalog names. The catalog version is a
hash of every definition plus the engine version, so a stored vector says which definitions made
it. `docs/FEATURES.md` is generated from here (`make docs`).

Windows count trades ("20 trades" = the feature needs the last 20 trades), book events, or bars
of trades; a feature is NaN until its window is full.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from qt_cli.core.errors import UsageError

# Bump when the engine computes a definition differently (the catalog hash changes with it).
ENGINE_VERSION = "1"

INPUTS = ("trades", "book", "candles", "history")


@dataclass(frozen=True, slots=True)
class Feature:
    """One catalog entry."""

    name: str
    group: str
    inputs: tuple[str, ...]
    window: str
    definition: str


def _trades(n: int) -> str:
    return "1 trade" if n == 1 else f"{n} trades"


# --- seed65: the training code of the users' models, restated (docs/FEATURES.md lists quirks) ---
# (name, group, trades needed before the value is defined, definition)
_SEED65: tuple[tuple[str, str, int, str], ...] = (
    ("returns_1", "returns", 2, "float32 price: p_t / p_{t-1} - 1 in float32 (pct_change(1))"),
    ("returns_2", "returns", 3, "float32 price: p_t / p_{t-2} - 1 in float32"),
    ("returns_5", "returns", 6, "float32 price: p_t / p_{t-5} - 1 in float32"),
    ("returns_10", "returns", 11, "float32 price: p_t / p_{t-10} - 1 in float32"),
    ("returns_20", "returns", 21, "float32 price: p_t / p_{t-20} - 1 in float32"),
    ("returns_50", "returns", 51, "float32 price: p_t / p_{t-50} - 1 in float32"),
    ("returns_100", "returns", 101, "float32 price: p_t / p_{t-100} - 1 in float32"),
    ("log_returns_1", "returns", 2, "float32 log(p_t / p_{t-1})"),
    ("log_returns_5", "returns", 6, "float32 log(p_t / p_{t-5})"),
    ("log_returns_20", "returns", 21, "float32 log(p_t / p_{t-20})"),
    ("volatility_10", "volatility", 11, "std (ddof 1) of the last 10 returns_1"),
    (
        "volatility_ratio_10",
        "volatility",
        30,
        "volatility_10 / mean of the last 20 volatility_10; 0/0 -> 1, x/0 -> 0",
    ),
    ("volatility_20", "volatility", 21, "std (ddof 1) of the last 20 returns_1"),
    (
        "volatility_ratio_20",
        "volatility",
        60,
        "volatility_20 / mean of the last 40 volatility_20; 0/0 -> 1, x/0 -> 0",
    ),
    ("volatility_50", "volatility", 51, "std (ddof 1) of the last 50 returns_1"),
    (
        "volatility_ratio_50",
        "volatility",
        150,
        "volatility_50 / mean of the last 100 volatility_50; 0/0 -> 1, x/0 -> 0",
    ),
    ("volatility_100", "volatility", 101, "std (ddof 1) of the last 100 returns_1"),
    (
        "volatility_ratio_100",
        "volatility",
        300,
        "volatility_100 / mean of the last 200 volatility_100; 0/0 -> 1, x/0 -> 0",
    ),
    (
        "volatility_gk",
        "volatility",
        21,
        "sqrt(mean of the last 20 float32 returns_1**2) (named Garman-Klass, uses no OHLC)",
    ),
    ("momentum_5_20", "technical", 21, "returns_5 / returns_20 in float32; inf and NaN -> 0"),
    ("momentum_20_50", "technical", 51, "returns_20 / returns_50 in float32; inf and NaN -> 0"),
    ("sharpe_5", "technical", 21, "returns_5 / max(volatility_20, 1e-4)"),
    ("sharpe_20", "technical", 51, "returns_20 / max(volatility_50, 1e-4)"),
    (
        "volume_zscore_20",
        "volume",
        20,
        "(qty - mean20(qty)) / max(std20(qty) ddof 1, 0.001); qty = contracts",
    ),
    ("volume_ratio_20", "volume", 20, "qty / max(mean20(qty), 1)"),
    ("volume_zscore_50", "volume", 50, "as volume_zscore_20 over 50 trades"),
    ("volume_ratio_50", "volume", 50, "as volume_ratio_20 over 50 trades"),
    ("volume_zscore_100", "volume", 100, "as volume_zscore_20 over 100 trades"),
    ("volume_ratio_100", "volume", 100, "as volume_ratio_20 over 100 trades"),
    (
        "volume_weighted_return",
        "order_flow",
        21,
        "sum20(returns_1 * vol) / sum20(vol); vol = financial volume; 0/0 -> 0",
    ),
    (
        "trade_intensity",
        "volume",
        51,
        "1 / max(median of the last 50 gaps between trade seconds, 0.001)",
    ),
    (
        "trade_intensity_ratio",
        "volume",
        250,
        "trade_intensity / mean of the last 200 trade_intensity",
    ),
    ("is_buyer_aggressor", "microstructure", 1, "1 if the buyer was the aggressor else 0"),
    ("is_seller_aggressor", "microstructure", 1, "1 if the seller was the aggressor else 0"),
    (
        "order_flow_imbalance_10",
        "order_flow",
        10,
        "(buys10 - sells10) / max(buys10 + sells10, 1), counting aggressor trades",
    ),
    ("order_flow_imbalance_20", "order_flow", 20, "as order_flow_imbalance_10 over 20 trades"),
    ("order_flow_imbalance_50", "order_flow", 50, "as order_flow_imbalance_10 over 50 trades"),
    ("order_flow_imbalance_100", "order_flow", 100, "as order_flow_imbalance_10 over 100 trades"),
    ("signed_volume", "order_flow", 1, "qty * (is_buyer_aggressor - is_seller_aggressor)"),
    ("cumulative_signed_volume", "order_flow", 100, "sum of the last 100 signed_volume"),
    *(
        (
            f"top_{side}_{i}_active",
            "microstructure",
            1,
            f"1 if the trade's {side} is the {i}-th of the engine's top-{side} ranking "
            f"(the training file's most frequent {side}s; a parameter)",
        )
        for i in range(5)
        for side in ("buyer", "seller")
    ),
    ("top_buyers_count", "microstructure", 1, "sum of top_buyer_0..4_active"),
    ("top_sellers_count", "microstructure", 1, "sum of top_seller_0..4_active"),
    ("buyer_changed", "microstructure", 2, "1 if the buyer differs from the previous trade's"),
    ("seller_changed", "microstructure", 2, "1 if the seller differs from the previous trade's"),
    (
        "agent_turnover",
        "order_flow",
        101,
        "mean100(buyer_changed) + mean100(seller_changed)",
    ),
    ("ma_5_20_ratio", "technical", 20, "mean5(price) / mean20(price) - 1 (float32 prices)"),
    ("ma_20_50_ratio", "technical", 50, "mean20(price) / mean50(price) - 1"),
    ("bb_position", "volatility", 20, "(p - mean20(p)) / max(2 * std20(p) ddof 1, 1e-4)"),
    ("hour", "temporal", 1, "exchange-local hour 0-23"),
    ("minute", "temporal", 1, "exchange-local minute 0-59"),
    ("day_of_week", "temporal", 1, "exchange-local weekday, Monday = 0"),
    (
        "time_normalized",
        "temporal",
        1,
        "clip(hour * 60 + minute - 540, 0, 480) / 480 (whole minutes since 09:00)",
    ),
    ("is_opening_30min", "temporal", 1, "1 if clip(minutes since 09:00, 0, 480) <= 30"),
    ("is_closing_30min", "temporal", 1, "1 if clip(minutes since 09:00, 0, 480) >= 450"),
    ("is_lunch_hour", "temporal", 1, "1 if the hour is 12 or 13"),
)

# --- basic11: the seed production system's 11 names, and the rest of the qt set -------------
# (name, group, inputs, window, definition)
_QT: tuple[tuple[str, str, tuple[str, ...], str, str], ...] = (
    ("price_current", "basic", ("trades",), _trades(1), "last trade price"),
    ("price_mean_5", "basic", ("trades",), _trades(5), "mean of the last 5 prices"),
    ("price_mean_20", "basic", ("trades",), _trades(20), "mean of the last 20 prices"),
    ("price_std_20", "basic", ("trades",), _trades(20), "std (ddof 0) of the last 20 prices"),
    ("return_1", "basic", ("trades",), _trades(2), "p_t / p_{t-1} - 1"),
    ("return_mean_5", "basic", ("trades",), _trades(6), "mean of the last 5 return_1"),
    ("return_std_5", "basic", ("trades",), _trades(6), "std (ddof 0) of the last 5 return_1"),
    ("volume_mean_5", "basic", ("trades",), _trades(5), "mean of the last 5 quantities"),
    ("volume_ratio", "basic", ("trades",), _trades(5), "quantity / volume_mean_5"),
    (
        "rsi_14",
        "basic",
        ("trades",),
        _trades(15),
        "Wilder RSI of price changes: averages seeded with the mean of the first 14 gains and "
        "losses, then avg = (13 avg + x) / 14; 100 - 100 / (1 + gain/loss); loss 0 -> 100, "
        "both 0 -> 50",
    ),
    ("momentum_10", "basic", ("trades",), _trades(11), "p_t / p_{t-10} - 1"),
    # returns and momentum (8)
    ("return_5", "returns", ("trades",), _trades(6), "p_t / p_{t-5} - 1"),
    ("return_20", "returns", ("trades",), _trades(21), "p_t / p_{t-20} - 1"),
    ("return_50", "returns", ("trades",), _trades(51), "p_t / p_{t-50} - 1"),
    ("return_100", "returns", ("trades",), _trades(101), "p_t / p_{t-100} - 1"),
    ("log_return_1", "returns", ("trades",), _trades(2), "ln(p_t / p_{t-1})"),
    ("return_mean_20", "returns", ("trades",), _trades(21), "mean of the last 20 return_1"),
    (
        "price_zscore_50",
        "returns",
        ("trades",),
        _trades(50),
        "(p - mean50(p)) / std50(p) ddof 0; 0 when the 50 prices are equal",
    ),
    (
        "up_tick_ratio_20",
        "returns",
        ("trades",),
        _trades(21),
        "share of the last 20 return_1 that are > 0",
    ),
    # volatility (10)
    *(
        (
            f"realized_vol_{n}",
            "volatility",
            ("trades",),
            _trades(n + 1),
            f"sqrt(mean of the last {n} log_return_1**2) (per trade)",
        )
        for n in (10, 20, 50, 100)
    ),
    (
        "vol_ratio_10_50",
        "volatility",
        ("trades",),
        _trades(51),
        "realized_vol_10 / realized_vol_50; 0/0 -> 1",
    ),
    (
        "vol_ratio_20_100",
        "volatility",
        ("trades",),
        _trades(101),
        "realized_vol_20 / realized_vol_100; 0/0 -> 1",
    ),
    (
        "parkinson_vol_10x10",
        "volatility",
        ("trades",),
        "10 bars of 10 trades",
        "sqrt(mean over the last 10 complete 10-trade bars of ln(H/L)**2 / (4 ln 2)); bars "
        "count from the engine's first trade",
    ),
    (
        "garman_klass_vol_10x10",
        "volatility",
        ("trades",),
        "10 bars of 10 trades",
        "sqrt(mean over the last 10 complete 10-trade bars of 0.5 ln(H/L)**2 - (2 ln 2 - 1) "
        "ln(C/O)**2), negative mean -> 0",
    ),
    (
        "atr_14x10",
        "volatility",
        ("trades",),
        "14 bars of 10 trades",
        "Wilder ATR of 10-trade bars: TR = max(H-L, |H-C_prev|, |L-C_prev|), seeded with the "
        "mean of the first 14 TR, then (13 atr + TR) / 14",
    ),
    ("atr_relative", "volatility", ("trades",), "14 bars of 10 trades", "atr_14x10 / p"),
    # volume and VWAP (6)
    ("volume_mean_20", "volume", ("trades",), _trades(20), "mean of the last 20 quantities"),
    (
        "volume_zscore_20q",
        "volume",
        ("trades",),
        _trades(20),
        "(qty - mean20) / std20 ddof 1 of quantities; 0 when the 20 are equal",
    ),
    (
        "volume_ratio_5_50",
        "volume",
        ("trades",),
        _trades(50),
        "mean of the last 5 quantities / mean of the last 50",
    ),
    (
        "vwap_dev_20",
        "volume",
        ("trades",),
        _trades(20),
        "p / VWAP20 - 1, VWAP20 = sum(p q) / sum(q) over the last 20 trades",
    ),
    ("vwap_dev_100", "volume", ("trades",), _trades(100), "p / VWAP100 - 1"),
    (
        "vwap_dev_session",
        "volume",
        ("trades",),
        "session",
        "p / VWAP of the session's trades so far - 1 (resets at each exchange-local date)",
    ),
    # technical (6)
    (
        "macd_12_26",
        "technical",
        ("trades",),
        _trades(26),
        "EMA12(p) - EMA26(p); an EMA_n is seeded with the mean of its first n values, then "
        "alpha = 2 / (n + 1)",
    ),
    (
        "macd_signal_9",
        "technical",
        ("trades",),
        _trades(34),
        "EMA9 of macd_12_26 (seeded like the others)",
    ),
    ("macd_hist", "technical", ("trades",), _trades(34), "macd_12_26 - macd_signal_9"),
    (
        "bb_position_20",
        "technical",
        ("trades",),
        _trades(20),
        "(p - mean20) / (2 std20 ddof 0); 0 when the 20 prices are equal",
    ),
    ("bb_width_20", "technical", ("trades",), _trades(20), "4 std20(p) ddof 0 / mean20(p)"),
    (
        "stoch_k_14",
        "technical",
        ("trades",),
        _trades(14),
        "100 (p - min14) / (max14 - min14); 50 when max14 = min14",
    ),
    # order flow (10)
    *(
        (
            f"trade_imbalance_{n}",
            "order_flow",
            ("trades",),
            _trades(n),
            f"(buy qty - sell qty) / (buy qty + sell qty) over the last {n} trades, by aggressor "
            "side; 0 when none had an aggressor",
        )
        for n in (10, 50, 100)
    ),
    (
        "signed_volume_100",
        "order_flow",
        ("trades",),
        _trades(100),
        "sum of qty * side over the last 100 trades (side +1 buy, -1 sell aggressor, else 0)",
    ),
    (
        "cumulative_delta_session",
        "order_flow",
        ("trades",),
        "session",
        "sum of qty * side over the session's trades so far (resets at each exchange-local date)",
    ),
    (
        "agent_concentration_100",
        "order_flow",
        ("trades",),
        _trades(100),
        "Herfindahl index of agent appearances (buyer and seller each count once) in the last "
        "100 trades: sum of share**2",
    ),
    (
        "unique_agents_100",
        "order_flow",
        ("trades",),
        _trades(100),
        "number of distinct buyer and seller agent ids in the last 100 trades",
    ),
    (
        "self_trade_ratio_100",
        "order_flow",
        ("trades",),
        _trades(100),
        "share of the last 100 trades whose buyer equals the seller (direct trades)",
    ),
    (
        "aggressor_run_length",
        "order_flow",
        ("trades",),
        _trades(1),
        "how many trades in a row, up to this one, have this trade's aggressor side",
    ),
    (
        "ofi_100",
        "order_flow",
        ("book",),
        "100 book events",
        "Cont-Kukanov-Stoikov order-flow imbalance summed over the last 100 price-book events: "
        "e = q_b 1[P_b >= P_b'] - q_b' 1[P_b <= P_b'] - q_a 1[P_a <= P_a'] + q_a' 1[P_a >= P_a'] "
        "(' = before the event, level 1)",
    ),
    # book microstructure (10)
    ("spread", "book", ("book",), "book", "best ask - best bid"),
    ("spread_relative", "book", ("book",), "book", "spread / mid, mid = (bid + ask) / 2"),
    (
        "microprice_deviation",
        "book",
        ("book",),
        "book",
        "(microprice - mid) / mid, microprice = (bid q_ask + ask q_bid) / (q_bid + q_ask)",
    ),
    ("imbalance_1", "book", ("book",), "book", "(q_bid1 - q_ask1) / (q_bid1 + q_ask1)"),
    (
        "imbalance_5",
        "book",
        ("book",),
        "book",
        "(sum q_bid1..5 - sum q_ask1..5) / (sum of both), levels present",
    ),
    ("depth_5", "book", ("book",), "book", "sum q_bid1..5 + sum q_ask1..5 (contracts)"),
    (
        "book_slope_5",
        "book",
        ("book",),
        "book",
        "depth_5 / (ask price of the deepest level present (max 5) - bid price likewise)",
    ),
    (
        "cancel_rate_100",
        "book",
        ("book",),
        "100 book events",
        "share of the last 100 price-book events that remove or shrink a level",
    ),
    (
        "replenish_rate_100",
        "book",
        ("book",),
        "100 book events",
        "share of the last 100 price-book events that add or grow a level",
    ),
    ("trade_mid_deviation", "book", ("trades", "book"), "book", "p / mid - 1 at the trade"),
    # session (4)
    (
        "minutes_since_open",
        "session",
        ("trades",),
        _trades(1),
        "exchange-local minutes (fractional) since the session open (09:00 by default); "
        "negative before it",
    ),
    (
        "minutes_to_close",
        "session",
        ("trades",),
        _trades(1),
        "exchange-local minutes until the session close (18:00 by default); negative after it",
    ),
    (
        "session_phase",
        "session",
        ("trades",),
        _trades(1),
        "0 before open, 1 first 30 min, 2 continuous, 3 last 30 min, 4 after close",
    ),
)

# --- history: time-travel features (qt_cli/core/features/history.py) ---------------------------
_HISTORY: tuple[tuple[str, str, str], ...] = (
    (
        "volume_pattern_score",
        "session minute vs previous sessions",
        "contracts traded today from the session open through this trade / the mean, over the "
        "last 20 previous sessions, of the contracts of the 1-minute candles opening from the "
        "open through this trade's minute (edits and history trades not counted); needs 5 "
        "previous sessions in 30 days",
    ),
    (
        "historical_momentum_rank",
        "30 days of 1-minute candles",
        "mid-rank in [0, 1] of m = p / close of today's minute k-30 - 1 (k = this trade's minute "
        "since the open, closes carried forward) among every close_j / close_{j-30} - 1 of the "
        "previous sessions' 1-minute candles in 30 days: (#below + #equal / 2) / #all; needs 5 "
        "sessions",
    ),
    (
        "volatility_regime_30d",
        "30 days of 1-minute candles",
        "0 LOW / 1 NORMAL / 2 HIGH: std (ddof 1) of today's last 30 complete 1-minute log "
        "returns (closes of minutes k-31..k-1) below the 25th / above the 75th percentile (linear) of the "
        "same statistic at every minute of the previous sessions in 30 days; needs 5 sessions",
    ),
    (
        "microstructure_imbalance",
        "200 trades; previous session",
        "(buy qty - sell qty) / (buy qty + sell qty) over the large aggressor trades among the "
        "last 200 trades (across days); large = quantity >= the 95th percentile (linear) of the quantities of "
        "the latest previous session's trades (needs 100 of them); NaN when none is large",
    ),
    (
        "correlation_stability",
        "30 days of 1-minute candles",
        "1 - std (ddof 0) of the 30-minute rolling Pearson correlations of 1-minute log returns "
        "with another subscribed symbol, every window of the previous sessions both have in 30 "
        "days (needs 5), averaged over the other symbols; one value per session date",
    ),
)

# day_of_week is shared: the seed65 definition (Monday = 0) is also the qt set's fourth session
# feature, computed once.

BASIC11 = (
    "price_current",
    "price_mean_5",
    "price_mean_20",
    "price_std_20",
    "return_1",
    "return_mean_5",
    "return_std_5",
    "volume_mean_5",
    "volume_ratio",
    "rsi_14",
    "momentum_10",
)


def _build() -> dict[str, Feature]:
    out: dict[str, Feature] = {}
    for name, group, need, definition in _SEED65:
        sources = ("trades", "history") if name.startswith("top_") else ("trades",)
        out[name] = Feature(name, group, sources, _trades(need), definition)
    for name, group, inputs, window, definition in _QT:
        if name in out:
            raise ValueError(f"feature {name} declared twice")
        out[name] = Feature(name, group, inputs, window, definition)
    for name, window, definition in _HISTORY:
        out[name] = Feature(name, "history", ("trades", "history"), window, definition)
    return out


CATALOG: dict[str, Feature] = _build()

SEED65 = tuple(row[0] for row in _SEED65)
QT = (
    *(row[0] for row in _QT),
    "day_of_week",
)

HISTORY = tuple(row[0] for row in _HISTORY)
# qt_history: the qt set followed by the time-travel features (they need stored history, so the
# qt set itself stays 65 features that need none)
SETS: dict[str, tuple[str, ...]] = {
    "qt": QT,
    "seed65": SEED65,
    "basic11": BASIC11,
    "qt_history": (*QT, *HISTORY),
}
DEFAULT_SET = "qt"


def catalog_hash() -> str:
    """Stable version of the catalog: sha256 of every definition and the engine version."""
    payload = {
        "engine": ENGINE_VERSION,
        "features": [asdict(f) for f in CATALOG.values()],
        "sets": {k: list(v) for k, v in SETS.items()},
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def catalog_dict() -> dict[str, object]:
    """The catalog as JSON-ready data (`qt features catalog --json`)."""
    return {
        "version": catalog_hash(),
        "engine_version": ENGINE_VERSION,
        "default_set": DEFAULT_SET,
        "features": [
            {**asdict(f), "inputs": list(f.inputs), "sets": sets_of(f.name)}
            for f in CATALOG.values()
        ],
        "sets": {k: list(v) for k, v in SETS.items()},
    }


def sets_of(name: str) -> list[str]:
    return [s for s, names in SETS.items() if name in names]


def feature_set(name: str) -> tuple[str, ...]:
    """The ordered names of a set; UsageError naming the known sets otherwise."""
    try:
        return SETS[name]
    except KeyError:
        raise UsageError(
            f"unknown feature set {name!r}: use one of {', '.join(SETS)} "
            "(qt features catalog lists them)"
        ) from None
