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

## Time-travel features (group `history`, set `qt_history`)

Five features compare today with stored history. They are not in `qt` (which stays the 65
features that need no history, so a model trained on `qt` never depends on a Valkey holding 30
days); the set `qt_history` is `qt` followed by the five, in the order below. The engine gets its
history source as a parameter (`FeatureEngine(..., history=StoredHistory(client), symbols=…)`;
`qt features --from …` passes the Valkey it reads); without one they are NaN with the reason
`history: no stored history source`.

- **Computed once per day, not per tick.** On a symbol's first trade of an exchange-local date
  the engine reads that symbol's 1-minute candles of the previous 30 calendar days (one query
  API call per symbol, plus one per other subscribed symbol for the correlation) and the trades
  of the latest previous session (one call), and derives every reference statistic from them;
  each trade then costs O(1) plus two binary searches (see BENCHMARKS.md). The seed issued ~30
  range queries per calculation.
- **Minute grid.** Minute index k = exchange-local minutes since the session open (09:00),
  floored; the close of minute k is the last price at or before the end of minute k in that
  session, carried forward over minutes without a trade. Previous sessions are the dates before
  today, within 30 calendar days, that have 1-minute candles.
- **Not enough history is NaN with a reason, never a neutral constant:** fewer than 5 previous
  sessions (`history: 2 previous session(s) in 30 days, needs 5`), no previous session with 100
  trades, no other symbol (`no other symbol to correlate with`), before the open, too early in
  the session (`needs a trade 30 minutes into today's session`), no large trade in the window.
- `volatility_regime_30d` is an ordinal for models: 0 LOW, 1 NORMAL, 2 HIGH.
- `correlation_stability` correlates the symbol with the engine's other subscribed symbols
  (`symbols=`; by default those it has seen), from their stored candles; it is one value per
  session date.

## Backfill: `qt features --from … --to … --symbol …`

`qt_cli/core/features/backfill.py` reads the symbols' stored trades (history chunks, the
per-event tail and late entries, through `qt_cli.core.query`) and price-book events (only when
the set uses the book: the entries, order and values the query gives, read from the book
stream's entries directly, without a DataFrame per page) and feeds them to the same engine in
this order, the one the live stage receives them in (when the symbols' book streams hold more
than 100,000 entries, a forked helper process on another core reads, decodes and merges both
and hands the events' values over a pipe, while this one computes):

1. by `ts_event`;
2. at equal `ts_event`, trades before book events (the book change a trade causes carries the
   trade's time; the trade happened first);
3. within one kind, the order the query returns, i.e. the stored order (the feed's order).

Tests prove that the backfill over a session stored through the real bridge equals feeding the
same events to the engine directly (same timestamps, values within 1e-9, same warm flags).

Output: `--output FILE` (parquet, csv, jsonl), or `--out valkey://…`: the vectors go to
`stream:features:{{SYM}}` through the live stage's writer path (`backfill.store_events`), each
under the identity the live stage gives it (`backfill.stream_identity`: session
`features.<trade session>`, the trade's seq, from the vector's lineage), so a backfill and a live
stage over the same range store each vector once (`qt train` then reads them). The last
period's vector is written only once a later trade in the range closes its period, as live.

`--every` picks the vectors kept: `trade` (every trade's vector: the training granularity of
the users' models), `candle` (the last vector of each 1-minute period) or a period (`250ms`,
`1s`, `5s`, …; the last vector of each period per symbol, emitted when a later event arrives or
the range ends). The default is `1s`: a stored vector is about 2.2 kB (the wire event
`events.FeatureVector(...).to_wire()` of the qt set; its flat stream fields about the same), so
one per trade would be ~1.1 GB per symbol and day of 500,000 trades in Valkey, while `1s` keeps
at most 32,400 per symbol and session (~70 MB). In parquet (zstd) a qt vector costs ~170 B at
`--every trade` (measured in BENCHMARKS.md).

Book retention: the bridge trims `stream:book:{{SYM}}` to `--maxlen` (100,000 entries by
default, well under an hour of an active symbol) and keeps no columnar history of the book, so a
backfill of the book features over older ranges needs a bridge run with `--maxlen 0` (or a
larger value); the trade features come from the history chunks and need nothing.

## The live stage: `qt features --in valkey://… --symbol SYM`

```bash
qt features --in valkey://127.0.0.1:6379 --symbol WDOQ25 --set qt --every 1s \\
    --out valkey://127.0.0.1:6379 --out tcp://127.0.0.1:5560
```

`qt_cli/core/features/live.py` runs on the stage runtime (`stage.run_stage`): it reads the
symbols' `stream:ticks:{{SYM}}` and `stream:book:{{SYM}}` (the book only when the set uses it)
from their start, merges them in the backfill's order above (an entry is released once the
other stream has read past it: each stream is in event-time order), feeds the same engine and
keeps the vectors of the same `--every` rule (`backfill.Sampler`, shared by both; default
`1s`). The vector of a period still open is written once a later event closes it, never at stop.
Catching up (a start or restart over a stored day), the ticks are read faster than the book they
wait for: once a symbol's merge holds 10,000 entries the stream read ahead pauses (its entries
wait in Valkey) until the other catches up. One worker's throughput is in BENCHMARKS.md.

Without `--group`, the reading is done by a forked helper process on another core
(`live.AsideReader`; not on systems without fork): it reads the streams (its own connection),
decodes and merges them, and hands the stage the released events in order down a pipe (as
plain value tuples); the stage only computes and writes. The same entries in the same order as
reading in the stage's own process (tested: same vectors, same identities, same counts). The
helper stops with the stage (and by itself when the stage's process is gone); a Valkey outage
there shows in the stage as an outage (one warning, retried with backoff). Top-of-book entries
and messages (`tob`) are not decoded by the stage's readers, ZeroMQ or Valkey: only their
event time moves the merge (`events.Passed`); a malformed one is still rejected and counted.
Both processes, like every stage run by `run_stage`, run with Python's cycle collector tuned for
their loop (`gcpause.streaming_gc`): what exists at the start is frozen out of its sight and a
young collection starts every 10,000 new objects instead of 700, so a batch in flight is no
longer walked again and again in the older generations (the worker's throughput rose by about a
fifth).

- Exactly once (Valkey input): each vector goes to `stream:features:{{SYM}}` through the one writer path
  (`qt_append`) with the identity of the trade that produced it (`stage.derived`: session
  `features.<the trade's session>`, the trade's seq). Reading from the start, a restarted stage
  has the state it had and recomputes the same vectors: those already stored are skipped by the
  high-water marks (counted in `duplicates`), none is skipped.
- Stored fields: those of the wire event (`features` a JSON object, `reasons`, `feature_set`,
  `catalog_hash`, `warm`, `ts_event`, `ts_init`, `session`, `seq`) plus `timestamp_ms`, as the
  seed guide's `get_latest_features` reads them.
- `--out tcp://…` publishes each vector on ZeroMQ, topic `features_SYMBOL`, message
  `{{"type": "features", "symbol", "features": {{…}}, …}}` (the seed guide's
  `publish_feature_update`). Without a `valkey://` `--out`, nothing is stored (stats still go to
  the input's Valkey); without any `--out`, the input's Valkey is the output.
- Stats: `qt:stats:features:<--name>` (`received`, `written`, `vectors`, `duplicates`,
  `not_warm`, `lag_ms` = now − event time of the last vector), shown by `qt monitor`.
  SIGINT/SIGTERM print one line; `--json` prints the totals (vectors, written, duplicates,
  not warm, trades, book events, the engine's bad-input counters).

Tests (`tests/e2e/test_features_live.py`, real processes `qt feed --sim` -> `qt bridge` ->
`qt features --in valkey://…`): the stored live vectors equal a backfill of the same stored range
(same timestamps, values within 1e-9, NaN where NaN, same warm flags; the backfill's last vector
is the live stage's open period); a stage killed with SIGKILL and restarted stores no duplicate
and no gap.

ZeroMQ input: `--in tcp://…:5555 --in tcp://…:5556 --out valkey://…` reads the feed's ticks
and book channels from now (late joins and gaps recovered from `--replay`, the feed's replay
endpoint), merged the same way; each vector's identity is derived from its trade's own (session,
seq), the identity the bridge stores it under, so the vectors equal those computed from the
stored streams (tested). A message that does not decode, or is longer than
`--max-message-bytes` (16 MiB), is counted in `rejected` (stats and totals) with one warning
line, and never stops the stage. A restarted stage on ZeroMQ input starts cold (its first vectors are
not warm again) and skips what is already stored.

Workers sharing symbols: `--group G --consumer C` (Valkey input). A vector depends on its
symbol's whole past, so workers share symbols, not entries (`qt_cli/core/features/share.py`):
each symbol has a lease `qt:lease:features:G:{{SYM}}` (the holder's name, 3 s unless renewed),
each worker heartbeats in `qt:members:features:G` and holds at most ceil(symbols / live workers),
taking free symbols up to that and giving back those over it. A worker renews a symbol's lease
just before writing its vectors and drops them when the lease is gone. A worker killed: its
leases expire, the others take its symbols and compute them from the start of their streams;
what it stored is skipped (same identities), nothing is skipped (tested with SIGKILL).

Not yet: the `qt_history` set live (the live engine has no stored-history reader). The live
stage reads its input from the start of the streams on every start: a restart over a full day
costs about a backfill of that day (BENCHMARKS.md).

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
