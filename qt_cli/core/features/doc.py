"""docs/FEATURES.md, generated from the catalog (`make docs`; a test fails when it is stale)."""

from __future__ import annotations

import sys
from pathlib import Path

from qt_cli.core.features.catalog import CATALOG, DEFAULT_SET, ENGINE_VERSION, SETS, catalog_hash

INTRO = """\
# Feature catalog

Generated from `qt_cli/core/features/catalog.py` by `make docs`; do not edit by hand.
`qt features catalog` prints the same (`--json`, `--markdown`).

Catalog version `{version}` (sha256 of every definition and the engine version `{engine}`; it
changes whenever a definition does). A **feature set** is an ordered list of catalog names; the
default is `{default}`.

## How values are computed

- The engine keeps one state per symbol, fed in event-time order (trades and price-book events).
  Each trade yields one vector, stamped with the trade's `ts_event` and the ids (session, seq,
  trade id) of the last trade and last book event it used.
- Windows count trades (or book events, or bars of 10 trades), not minutes. Until a feature's
  window is full it is NaN; the vector then has `warm = false` and lists the features still
  missing. No neutral constant is ever written in their place.
- Updates cost O(what changed): rolling sums and sums of squares over ring buffers, Wilder and
  EMA states, monotonic deques for min/max, a sorted window for the median. Running sums are
  rebased on the window mean and recomputed exactly (`math.fsum`) every ~4096 updates, and at once
  when rounding could show (a large value left, or a variance cancels), so they stay within
  1e-9 of a from-scratch computation however long the series.
- Bad input has a defined result and a counter, never a crash: a trade with a NaN, infinite or
  non-positive price is skipped (`bad_price`), one with a quantity <= 0 too (`bad_quantity`);
  an event older than the symbol's last one is skipped (`out_of_order`); a crossed or empty-sided
  book makes the book features NaN with that reason (`crossed_book`, `no_book`); a book event at
  a position that does not exist is skipped (`bad_book_position`); offer-book events are not used
  (`book_ignored`), nor are other event types. A skipped event leaves the state untouched.
  Session windows (`*_session`) reset at each exchange-local date; the others run across days.

## seed65: the training code's values, quirks included

The users' models were trained by `train_csv_5m_realistic.py` on one row per trade. Once a
vector is warm, `seed65` reproduces that code's values; only warm-up differs (the training code
wrote 0 there; qt leaves NaN and does not score the vector). Reproduced quirks:

1. Prices are float32, so `returns_*`, `log_returns_*`, `returns_1**2` and the ratios of returns
   (`momentum_*`) are float32 arithmetic. Rolling statistics are float64 (pandas computes them in
   float64) over those float32 values. Every output is rounded to float32.
2. Final clean-up: inf -> 0 and NaN -> 0 for every value computed from a full window (e.g.
   `momentum_5_20` when `returns_20` is 0 is 0; `volatility_ratio_*` when the mean is 0 but the
   volatility is not is 0).
3. `volatility_ratio_*` and `trade_intensity_ratio` had `fillna(1)`: 0/0 gives 1, not 0.
4. `time_normalized`, `is_opening_30min` and `is_closing_30min` use whole minutes since 09:00
   clipped to [0, 480]: trades before 09:00 count as opening, every trade from 16:30 on
   (including after 17:00) as closing. Hour, minute and weekday are exchange-local
   (America/Sao_Paulo).
5. Rolling windows run across day boundaries (nothing resets at a new session).
6. `trade_intensity` uses the trade's whole second (the tick export had 1 s timestamps).
7. `volume_weighted_return` uses the financial volume (`volume`), the z-scores and ratios the
   quantity in contracts.
8. `top_buyer_i_active` / `top_seller_i_active` compared with the 5 most frequent agents of the
   whole training file, a ranking the models never saved: the engine takes it as parameters
   (`top_buyers`, `top_sellers`, agent ids, most frequent first). Without them these 12 features
   are NaN with the reason `no agent ranking`, and the vector is never warm.
9. `buyer_changed` / `seller_changed` were 1 on the first row; here the first trade has no
   previous one, so they are NaN there (warm-up).
10. Standard deviations are sample (ddof 1), as pandas computes them; a window of equal values
    has exactly 0.
11. `log_returns_*` use numpy's float32 `log` (not a correctly rounded one, as the training
    code's `np.log` of a float32 column).

Known difference: pandas' rolling variance accumulates its own rounding (about 1e-10 relative);
qt's is exact to ~1e-15. On features derived from a rolling standard deviation
(`volatility_*`, `sharpe_*`, `volume_zscore_*`, `bb_position`) a value can therefore differ from
the training code's by one float32 step in rare rows (about 1 value in 10,000 in the test series); every
other feature is bit-identical.

## Sets

{sets}
"""


def _table(names: tuple[str, ...]) -> list[str]:
    rows = [
        "| # | name | group | inputs | window | definition |",
        "|---|---|---|---|---|---|",
    ]
    for i, name in enumerate(names):
        f = CATALOG[name]
        definition = f.definition.replace("|", "\\|")
        rows.append(
            f"| {i} | `{name}` | {f.group} | {', '.join(f.inputs)} | {f.window} | {definition} |"
        )
    return rows


def render() -> str:
    sets = []
    for set_name, names in SETS.items():
        sets += [f"### `{set_name}` ({len(names)} features)", "", *_table(names), ""]
    return INTRO.format(
        version=catalog_hash(),
        engine=ENGINE_VERSION,
        default=DEFAULT_SET,
        sets="\n".join(sets).rstrip() + "\n",
    )


if __name__ == "__main__":
    Path(sys.argv[1] if len(sys.argv) > 1 else "docs/FEATURES.md").write_text(render())
