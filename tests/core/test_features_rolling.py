"""The window primitives stay within 1e-9 of a from-scratch computation over long series."""

from __future__ import annotations

import math
import random

import numpy as np

from qt_cli.core.features.rolling import Ema, Lags, Median, MinMax, Prefix, Rolling, Wilder, f32


def test_rolling_sums_do_not_drift_over_a_long_series() -> None:
    rng = random.Random(3)
    windows = {n: Rolling(n) for n in (5, 20, 100, 200)}
    x = 5000.0
    values: list[float] = []
    for step in range(300_000):
        # a price walk with bursts of huge values (that is where running sums lose digits)
        x += rng.choice((-0.5, 0.0, 0.5)) + (rng.random() - 0.5) * 1e-3
        v = x * 1e6 if step % 997 < 3 else x
        values.append(v)
        for roll in windows.values():
            roll.push(v)
        if step % 29_999 == 29_998:
            for n, roll in windows.items():
                window = np.array(values[-n:])
                scale = max(1.0, abs(window.mean()))
                assert abs(roll.mean() - math.fsum(window) / n) <= 1e-9 * scale
                assert abs(roll.sum() - math.fsum(window)) <= 1e-9 * scale * n
                want = float(np.std(window, ddof=1))
                assert abs(roll.std(1) - want) <= 1e-9 * max(1.0, want), (n, step)
            values = values[-200:]


def test_constant_window_is_exactly_its_value_and_zero_variance() -> None:
    roll = Rolling(10)
    for v in (1e9 + 0.1, 3.3, 7.7, *([0.1] * 10)):
        roll.push(v)
    assert roll.mean() == 0.1 and roll.var(1) == 0.0 and roll.var(0) == 0.0


def test_prefix_lags_minmax_median_against_plain_windows() -> None:
    rng = random.Random(5)
    prefix, lags, mm, med = Prefix(50), Lags(30), MinMax(14), Median(50)
    xs: list[int] = []
    for _ in range(2000):
        x = rng.randint(-100, 100)
        xs.append(x)
        prefix.push(x)
        lags.push(float(x))
        mm.push(float(x))
        med.push(float(x))
        for k in (1, 10, 50):
            assert prefix.sum(k) == sum(xs[-k:])
        assert lags.ago(0) == xs[-1] and (len(xs) <= 29 or lags.ago(29) == xs[-30])
        assert math.isnan(lags.ago(len(xs))) if len(xs) < 30 else True
        assert mm.min() == min(xs[-14:]) and mm.max() == max(xs[-14:])
        assert med.median() == float(np.median(xs[-50:]))


def test_ema_and_wilder_are_seeded_with_the_mean_of_their_first_values() -> None:
    ema, wilder = Ema(3), Wilder(3)
    assert math.isnan(ema.push(1.0)) and math.isnan(ema.push(2.0))
    assert ema.push(3.0) == 2.0 and ema.push(6.0) == 2.0 + 0.5 * 4.0
    for v in (1.0, 2.0, 3.0):
        wilder.push(v)
    assert wilder.value == 2.0 and wilder.push(5.0) == (2.0 * 2 + 5.0) / 3


def test_f32_rounds_like_numpy_float32() -> None:
    for x in (0.1, 5400.123, 1e-8, -3.3333333):
        assert f32(x) == float(np.float32(x))
    assert f32(1e39) == math.inf and f32(-1e39) == -math.inf
