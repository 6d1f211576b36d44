"""Tick -> OHLCV candles, one code path for live aggregation and for recomputing from storage.

Rules (docs/bridge.md, "Candles"):

- A candle covers `[open, open + timeframe)` in event time, aligned to UTC multiples of the
  timeframe (B3's offset is whole hours, so 1h candles are local hours too).
- Trades are applied in **stream order** (the order the bridge stored them). A trade from a
  period before the candle currently forming is not applied (that period's candle is already
  closed): it is counted in `late`. Edited trades (`is_edit`) and history backfill (`history`)
  are stored as ticks but not applied to candles (`edits`, `history` counters): an edit corrects
  a trade already counted, and backfill would re-count or reopen closed periods.
- A candle closes when the first trade of a later period arrives (event time). It is then
  written to `stream:candles:<tf>:{SYM}` with `closed=1`. The candle still forming is written
  now and then (and on shutdown) to `stream:candles:<tf>:partial:{SYM}` with `closed=0`, which
  is what `qt monitor` shows. The bridge also closes candles when it finishes (`close_forming`):
  at the end of its input every forming candle, on a clean stop those whose period ended by
  the newest tick's event time (docs/bridge.md, "Candles").
- `ts_init` of a candle is the `ts_init` of the last trade it includes, `session` is
  `candles.<tf>` and `seq` the period number (open / timeframe), so each candle is stored once.
- Each stored candle carries `src`, the stream id of the last tick it includes; the forming
  candle also carries `pv` (sum of price × quantity) so a restarted bridge resumes exactly.

Because live and recomputed candles run this same code over the same ticks in the same order,
`candles_from_ticks(stored ticks)` equals what the bridge wrote.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from qt_cli.core.chunks import AGGRESSOR_CODES, AGGRESSOR_NAMES
from qt_cli.core.errors import UsageError
from qt_cli.core.events import NS_PER_S, Candle, Trade
from qt_cli.core.keys import parse_id

DEFAULT_TIMEFRAMES = ("1m",)
AGGRESSOR_BUY, AGGRESSOR_SELL = AGGRESSOR_CODES["buy"], AGGRESSOR_CODES["sell"]
_TF_RE = re.compile(r"^(?P<n>[1-9]\d*)(?P<unit>s|m|h)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
DAY_S = 86_400


def timeframe_ns(timeframe: str) -> int:
    """`1m` -> 60e9. A timeframe must divide a day evenly (so candles align to the clock)."""
    match = _TF_RE.match(timeframe.strip())
    if match is None:
        raise UsageError(
            f"timeframe {timeframe!r}: expected a number and s, m or h (e.g. 1m, 5m, 15m, 1h)"
        )
    seconds = int(match["n"]) * _UNIT_S[match["unit"]]
    if DAY_S % seconds:
        raise UsageError(
            f"timeframe {timeframe!r}: must divide a day evenly (e.g. 1m, 5m, 15m, 30m, 1h)"
        )
    return seconds * NS_PER_S


def parse_timeframes(values: str | Sequence[str] | None) -> tuple[str, ...]:
    """`"1m,5m"` or `["1m", "15m"]` -> ("1m", "5m", "15m") in order, without repeats."""
    if not values:
        return DEFAULT_TIMEFRAMES
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            tf = part.strip()
            if not tf:
                continue
            timeframe_ns(tf)
            if tf not in out:
                out.append(tf)
    if not out:
        return DEFAULT_TIMEFRAMES
    return tuple(out)


def _sum_in_order(start: float, values: np.ndarray) -> float:
    """start + v0 + v1 + … added left to right, as a loop of `+=` does (np.sum would pair them)."""
    if not len(values):
        return start
    with np.errstate(over="ignore"):  # sums past the float maximum are inf, as a loop gives
        return float(np.cumsum(np.concatenate(([start], values)))[-1])


@dataclass
class _Forming:
    open_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    quantity: int
    trades: int
    buy_volume: float
    sell_volume: float
    pv: float
    ts_init: int
    src: str


class CandleBuilder:
    """Candles of one symbol and one timeframe; pure, no I/O."""

    def __init__(self, symbol: str, timeframe: str = "1m") -> None:
        self.symbol = symbol
        self.timeframe = timeframe
        self.tf_ns = timeframe_ns(timeframe)
        self.session = f"candles.{timeframe}"
        self._forming: _Forming | None = None
        self._closed_open_ns = -1  # open time of the last closed candle
        self.src = ""  # stream id of the last tick seen (applied or not)
        # While re-reading stored ticks after a resume: skip ids up to this one (None: not resuming)
        self._resume_key: tuple[int, int] | None = None
        self.closed_src = ""  # id of the last tick of the candle that closed last
        self.late = 0
        self.edits = 0
        self.history = 0

    # -- resume --

    def resume_after_closed(self, candle: Candle, src: str) -> None:
        """State right after `candle` closed, having seen ticks up to `src`."""
        self._forming = None
        self._closed_open_ns = candle.ts_event
        self.src = self.closed_src = src
        self._resume_key = parse_id(src)

    def resume_forming(self, candle: Candle, *, pv: float, src: str) -> None:
        """State of a forming candle as stored in the partial stream."""
        self._forming = _Forming(
            open_ns=candle.ts_event,
            open=candle.open,
            high=candle.high,
            low=candle.low,
            close=candle.close,
            volume=candle.volume,
            quantity=candle.quantity,
            trades=candle.trades,
            buy_volume=candle.buy_volume,
            sell_volume=candle.sell_volume,
            pv=pv,
            ts_init=candle.ts_init,
            src=src,
        )
        self._closed_open_ns = candle.ts_event - self.tf_ns
        self.src = src
        self._resume_key = parse_id(src)

    # -- aggregation --

    def add(self, trade: Trade, src: str = "") -> Candle | None:
        """Apply one stored tick; returns the candle it closed, if any.

        A tick at or before the resume point (`src`) was already applied and is ignored.
        """
        return self.add_tick(
            trade.ts_event,
            trade.price,
            trade.quantity,
            trade.volume,
            trade.aggressor,
            trade.ts_init,
            src,
            trade.is_edit,
            trade.history,
        )

    def add_tick(
        self,
        ts: int,
        price: float,
        quantity: int,
        volume: float,
        aggressor: str,
        ts_init: int,
        src: str = "",
        is_edit: bool = False,
        history: bool = False,
    ) -> Candle | None:
        """`add` with the trade's fields given one by one (the bridge has no Trade object)."""
        if self._resume_key is not None and src:
            if parse_id(src) <= self._resume_key:
                return None
            self._resume_key = None  # past the resume point: ids only grow from here
        self.src = src
        if is_edit:
            self.edits += 1
            return None
        if history:
            self.history += 1
            return None
        open_ns = ts - ts % self.tf_ns
        forming = self._forming
        closed: Candle | None = None
        if forming is None or open_ns != forming.open_ns:
            last_open = forming.open_ns if forming is not None else self._closed_open_ns
            if open_ns < last_open or (forming is None and open_ns == self._closed_open_ns):
                self.late += 1
                return None
            if forming is not None:
                closed = self._candle(forming, closed_flag=True)
                self._closed_open_ns = forming.open_ns
                self.closed_src = forming.src
            forming = self._forming = _Forming(
                open_ns, price, price, price, price, 0.0, 0, 0, 0.0, 0.0, 0.0, 0, ""
            )
        if price > forming.high:
            forming.high = price
        if price < forming.low:
            forming.low = price
        forming.close = price
        forming.volume += volume
        forming.quantity += quantity
        forming.trades += 1
        if aggressor == "buy":
            forming.buy_volume += volume
        elif aggressor == "sell":
            forming.sell_volume += volume
        forming.pv += price * quantity
        forming.ts_init = ts_init
        forming.src = src
        return closed

    def add_columns(
        self, cols: Mapping[str, np.ndarray], ids: Sequence[str]
    ) -> list[tuple[Candle, str]]:
        """`add_tick` over many stored ticks at once: chunk-style columns (`chunks.TickColumns`
        arrays: ts_event, price, quantity, volume, aggressor, ts_init, is_edit, history) and their
        ids, in stream order. Returns the candles they closed, each with its `closed_src`.

        Bit for bit what `add_tick` per tick gives: sums run in stream order (np.cumsum), and the
        rare cases (a resume point still ahead, a NaN price) take `add_tick` itself.
        """
        n = len(ids)
        if n == 0:
            return []
        price = cols["price"]
        if self._resume_key is not None or np.isnan(price).any():
            return self._add_each(cols, ids)
        self.src = ids[-1]
        ts, quantity, volume = cols["ts_event"], cols["quantity"], cols["volume"]
        aggressor, ts_init = cols["aggressor"], cols["ts_init"]
        opens = ts - ts % self.tf_ns
        forming = self._forming
        # A trade is late when its period is before the newest one applied so far (or, with no
        # candle forming, not after the last closed one): the running maximum of the periods.
        # Edits and history backfill are not applied, so they do not move that maximum.
        skipped = cols["is_edit"] | cols["history"]
        newest = np.maximum.accumulate(np.where(skipped, np.iinfo(np.int64).min, opens))
        before = np.empty_like(opens)
        before[0] = forming.open_ns if forming is not None else self._closed_open_ns + 1
        np.maximum(newest[:-1], before[0], out=before[1:])
        applied = ~skipped & (opens >= before)
        if skipped.any():
            edits = int(np.count_nonzero(cols["is_edit"]))
            self.edits += edits
            self.history += int(np.count_nonzero(skipped)) - edits
        self.late += int(np.count_nonzero(~skipped & (opens < before)))
        index = np.flatnonzero(applied)
        if not len(index):
            return []
        opens = opens[index]
        starts = np.flatnonzero(np.diff(opens)) + 1
        bounds = [0, *starts.tolist(), len(index)]
        out: list[tuple[Candle, str]] = []
        for a, b in zip(bounds, bounds[1:], strict=False):
            rows = index[a:b]
            p = price[rows]
            open_ns = int(opens[a])
            if forming is None or open_ns != forming.open_ns:
                if forming is not None:
                    out.append((self._candle(forming, closed_flag=True), forming.src))
                    self._closed_open_ns = forming.open_ns
                    self.closed_src = forming.src
                first = float(p[0])
                forming = self._forming = _Forming(
                    open_ns, first, first, first, first, 0.0, 0, 0, 0.0, 0.0, 0.0, 0, ""
                )
            forming.high = max(forming.high, float(p.max()))
            forming.low = min(forming.low, float(p.min()))
            forming.close = float(p[-1])
            v = volume[rows]
            q = quantity[rows]
            a_codes = aggressor[rows]
            forming.volume = _sum_in_order(forming.volume, v)
            forming.quantity += int(q.sum())
            forming.trades += b - a
            forming.buy_volume = _sum_in_order(forming.buy_volume, v[a_codes == AGGRESSOR_BUY])
            forming.sell_volume = _sum_in_order(forming.sell_volume, v[a_codes == AGGRESSOR_SELL])
            with np.errstate(over="ignore"):  # a price near the float maximum: vwap inf
                forming.pv = _sum_in_order(forming.pv, p * q)
            forming.ts_init = int(ts_init[rows[-1]])
            forming.src = ids[int(rows[-1])]
        return out

    def _add_each(
        self, cols: Mapping[str, np.ndarray], ids: Sequence[str]
    ) -> list[tuple[Candle, str]]:
        out: list[tuple[Candle, str]] = []
        for ts, price, quantity, volume, aggressor, ts_init, src, is_edit, history in zip(
            cols["ts_event"].tolist(),
            cols["price"].tolist(),
            cols["quantity"].tolist(),
            cols["volume"].tolist(),
            cols["aggressor"].tolist(),
            cols["ts_init"].tolist(),
            ids,
            cols["is_edit"].tolist(),
            cols["history"].tolist(),
            strict=True,
        ):
            closed = self.add_tick(
                ts,
                price,
                quantity,
                volume,
                AGGRESSOR_NAMES.get(aggressor, "none"),
                ts_init,
                src,
                is_edit,
                history,
            )
            if closed is not None:
                out.append((closed, self.closed_src))
        return out

    @property
    def forming_end_ns(self) -> int | None:
        """End (exclusive) of the forming candle's period; None when none is forming."""
        return self._forming.open_ns + self.tf_ns if self._forming is not None else None

    def close_forming(self) -> tuple[Candle, str] | None:
        """Close the forming candle now, with the id of its last tick; None when none forms.

        For when no more of its period can come (the input ended, or event time is past it);
        a later trade of that period then counts as late, as after any close.
        """
        forming = self._forming
        if forming is None:
            return None
        candle = self._candle(forming, closed_flag=True)
        self._closed_open_ns = forming.open_ns
        self.closed_src = forming.src
        self._forming = None
        return candle, forming.src

    def partial(self) -> Candle | None:
        """The candle still forming (closed=False), or None before the first trade."""
        if self._forming is None:
            return None
        return self._candle(self._forming, closed_flag=False)

    @property
    def partial_pv(self) -> float:
        return self._forming.pv if self._forming is not None else math.nan

    @property
    def partial_src(self) -> str:
        return self._forming.src if self._forming is not None else ""

    def _candle(self, f: _Forming, *, closed_flag: bool) -> Candle:
        return Candle(
            symbol=self.symbol,
            ts_event=f.open_ns,
            timeframe=self.timeframe,
            open=f.open,
            high=f.high,
            low=f.low,
            close=f.close,
            volume=f.volume,
            quantity=f.quantity,
            trades=f.trades,
            buy_volume=f.buy_volume,
            sell_volume=f.sell_volume,
            vwap=f.pv / f.quantity if f.quantity > 0 else math.nan,
            closed=closed_flag,
            ts_init=f.ts_init,
            session=self.session,
            seq=f.open_ns // self.tf_ns,
        )


@dataclass(frozen=True)
class ClosedCandle:
    """A candle that just closed, with `src` = id of the last tick it includes."""

    candle: Candle
    src: str


class CandleAggregator:
    """Candle builders for every (symbol, timeframe) the bridge sees."""

    def __init__(self, timeframes: Sequence[str] = DEFAULT_TIMEFRAMES) -> None:
        self.timeframes = tuple(timeframes)
        for tf in self.timeframes:
            timeframe_ns(tf)
        self.builders: dict[str, list[CandleBuilder]] = {}

    def builders_for(self, symbol: str) -> list[CandleBuilder]:
        found = self.builders.get(symbol)
        if found is None:
            found = self.builders[symbol] = [CandleBuilder(symbol, tf) for tf in self.timeframes]
        return found

    def add(self, trade: Trade, src: str = "") -> list[ClosedCandle]:
        out: list[ClosedCandle] = []
        for builder in self.builders_for(trade.symbol):
            closed = builder.add(trade, src)
            if closed is not None:
                out.append(ClosedCandle(closed, builder.closed_src))
        return out

    @property
    def late(self) -> int:
        return sum(b.late for bs in self.builders.values() for b in bs)


def candles_from_ticks(
    ticks: Iterable[Trade | tuple[str, Trade]],
    timeframes: Sequence[str] = DEFAULT_TIMEFRAMES,
    *,
    include_partial: bool = False,
    final: bool = False,
    complete_by_ns: int | None = None,
) -> list[Candle]:
    """Candles of stored ticks given in stream order (Trades, or (entry id, Trade) pairs).

    Returns the closed candles in the order the bridge writes them (and, with
    `include_partial`, each builder's forming candle at the end, closed=False). As the bridge
    does when it finishes: `final` (its input ended) closes every forming candle at the end,
    `complete_by_ns` (a clean stop: the newest tick's event time) those whose period ended by
    then.
    """
    aggregator = CandleAggregator(timeframes)
    out: list[Candle] = []
    for item in ticks:
        if isinstance(item, tuple):
            src, trade = item
        else:
            src, trade = "", item
        out.extend(c.candle for c in aggregator.add(trade, src))
    if final or complete_by_ns is not None:
        for builders in aggregator.builders.values():
            for builder in builders:
                end = builder.forming_end_ns
                if end is not None and (final or end <= (complete_by_ns or 0)):
                    closed = builder.close_forming()
                    out.append(closed[0])  # type: ignore[index]
    if include_partial:
        for builders in aggregator.builders.values():
            for builder in builders:
                partial = builder.partial()
                if partial is not None:
                    out.append(partial)
    return out
