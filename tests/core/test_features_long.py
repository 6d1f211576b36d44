"""Over a long series (30,000 trades, several days) the engine's windowed values still match a
from-scratch computation: no drift of the running sums inside the assembled engine."""

from __future__ import annotations

import numpy as np
import pandas as pd

from qt_cli.core.features.catalog import SETS
from qt_cli.core.features.engine import FeatureEngine
from tests.core.features_data import trade_series
from tests.core.test_features_qt import QT_TRADE_NAMES, assert_close, trade_reference
from tests.core.test_features_seed65 import TOP_BUYERS, TOP_SELLERS, training_frame

N = 30_000
TAIL = 400  # a multiple of 10, so the reference's 10-trade bars line up with the engine's

# state that starts at the first trade or the session open, not a window of the tail
HISTORY_STATE = {
    "rsi_14",
    "atr_14x10",
    "atr_relative",
    "macd_12_26",
    "macd_signal_9",
    "macd_hist",
    "vwap_dev_session",
    "cumulative_delta_session",
    "aggressor_run_length",
}


def test_qt_windows_after_30000_trades_match_a_fresh_computation_of_the_tail() -> None:
    trades = trade_series(N, seed=19)
    engine = FeatureEngine("qt")
    vectors = [engine.on_trade(t) for t in trades]
    tail = vectors[-1:]
    got = pd.DataFrame([v.values for v in tail], columns=list(SETS["qt"]))
    want = trade_reference(trades[-TAIL:]).iloc[[-1]].reset_index(drop=True)
    names = [n for n in QT_TRADE_NAMES if n not in HISTORY_STATE]
    assert_close(got, want, names)


def test_seed65_after_30000_trades_still_equals_the_training_code() -> None:
    trades = trade_series(N, seed=23)
    engine = FeatureEngine("seed65", top_buyers=TOP_BUYERS, top_sellers=TOP_SELLERS)
    vectors = [engine.on_trade(t) for t in trades]
    got = np.array([v.values for v in vectors[-200:]], dtype=np.float32)
    want = training_frame(trades, TOP_BUYERS, TOP_SELLERS).to_numpy()[-200:]
    differ = got != want
    assert differ.sum() <= 0.001 * got.size
    assert np.all(np.abs(got - want)[differ] <= np.spacing(np.abs(want[differ])))
