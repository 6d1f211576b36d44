"""`qt monitor`: collect a snapshot of the pipeline from Valkey, and draw it with rich renderables.

`Monitor.collect()` reads Valkey with a bounded number of cheap commands and returns a `Snapshot`
(plain data, `as_dict()` for JSON); `render()` turns a snapshot into rich renderables. There is no
I/O loop here: the command owns the refresh loop and the live display.

What one refresh costs (S symbols, G stage hashes):
- per symbol: XREVRANGE of the ticks stream from the last id read (COUNT `page_size`, at most
  `pages_per_refresh` pages, usually one short page), XREVRANGE COUNT 64 of the book stream from the
  last id read, XREVRANGE COUNT 1 of features, predictions and signals, XINFO GROUPS of the
  ticks, features, predictions and signals streams;
- once: SMEMBERS `qt:stages`, HGETALL of each listed stats hash, INFO, XLEN of the dead-letter and
  gap streams.
Independent commands go in one pipeline. No KEYS, no SCAN per frame: symbols are discovered with
SCAN `stream:ticks:*` at the first refresh and every 30 s after.

The ticks window: the monitor keeps the ticks of the last `window` (5 minutes) of EVENT time
in memory and reads only new stream entries each refresh. The window ends at the event time of
the newest tick (the market's clock, not the wall clock), so a closed market or a replay still
shows its last five minutes of trading; the lag column says how old that is. Inside the window,
ticks are ordered by `ts_event` (late entries included), a trade id seen twice (a trade edit, or a
history trade overlapping a live one) counts once with its latest values, and change % is
(last - first) / first with first = the OLDEST trade in the window and last = the newest.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, tzinfo
from typing import Any, NamedTuple

from rich.console import Group, RenderableType
from rich.text import Text

from qt_cli.core import keys
from qt_cli.core.config import Settings
from qt_cli.core.errors import DecodeError, QtError, UsageError
from qt_cli.core.events import (
    EXCHANGE_TZ,
    NS_PER_MS,
    NS_PER_S,
    FeatureVector,
    Prediction,
    Signal,
    TopOfBook,
    decode_fields,
)
from qt_cli.core.tables import Column, fit_table

NS_PER_MIN = 60 * NS_PER_S
DEFAULT_WINDOW_NS = 5 * NS_PER_MIN
DEFAULT_STALE_NS = 5 * NS_PER_S
DEFAULT_REFRESH_NS = NS_PER_S
DISCOVER_INTERVAL_NS = 30 * NS_PER_S
TICK_PAGE = 1_000  # entries per XREVRANGE of a ticks stream
FIRST_PAGES = 100  # pages the first refresh may read per symbol to fill the window (100k ticks)
PAGES_PER_REFRESH = 5  # pages a later refresh may read per symbol
BOOK_SCAN = 64  # newest book entries searched for a TopOfBook
SPARK_BUCKETS = 24
STAGE_ORDER = ("feed", "bridge", "features", "predict")
GROUP_STREAM_KINDS = ("ticks", "features", "predictions", "signals")
SPARK_CHARS = "▁▂▃▄▅▆▇█"
NAN = math.nan


# --- plain data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorOptions:
    """What to watch and how: durations in ns, sizes in entries."""

    symbols: tuple[str, ...] = ()  # empty: every symbol with a ticks stream (SCAN)
    window_ns: int = DEFAULT_WINDOW_NS
    stale_ns: int = DEFAULT_STALE_NS
    refresh_ns: int = DEFAULT_REFRESH_NS
    spark_buckets: int = SPARK_BUCKETS
    page_size: int = TICK_PAGE
    first_pages: int = FIRST_PAGES
    pages_per_refresh: int = PAGES_PER_REFRESH
    discover_interval_ns: int = DISCOVER_INTERVAL_NS

    def __post_init__(self) -> None:
        for symbol in self.symbols:
            if not keys.valid_symbol(symbol):
                raise UsageError(
                    f"symbol {symbol!r}: use letters, digits, '.', '_' or '-' (e.g. WDOQ25)"
                )
        if self.window_ns <= 0:
            raise UsageError("--window must be longer than zero, e.g. 5m")
        if self.stale_ns <= 0:
            raise UsageError("--stale must be longer than zero, e.g. 5s")
        if self.refresh_ns < 50 * NS_PER_MS:
            raise UsageError("--refresh must be at least 50ms, e.g. 1s")
        if min(self.page_size, self.first_pages, self.pages_per_refresh, self.spark_buckets) < 1:
            raise UsageError(
                "page_size, first_pages, pages_per_refresh and spark_buckets must be >= 1"
            )


class Tick(NamedTuple):
    """The part of a stored trade the monitor uses."""

    id_ms: int
    id_seq: int
    ts_event: int
    price: float
    quantity: int
    volume: float
    trade_id: int
    ts_init: int = 0  # receive time; 0 when the entry has none


@dataclass
class WindowStats:
    """Trades in [end_ns - window_ns, end_ns] of event time; NaN where nothing to compute."""

    start_ns: int = 0
    end_ns: int = 0
    trades: int = 0
    volume: float = 0.0
    quantity: int = 0
    first_price: float = NAN
    last_price: float = NAN
    change_pct: float = NAN
    sparkline: list[float | None] = field(default_factory=list)


@dataclass
class SymbolView:
    """One row of the symbols table."""

    symbol: str
    state: str = "NO DATA"
    stale: bool = False
    last_price: float = NAN
    last_ts_event: int | None = None
    last_ts_init: int | None = None  # newest receive time of a tick: what STALE is judged on
    received_age_ms: float = NAN
    volume: float = 0.0
    quantity: int = 0
    trades: int = 0
    change_pct: float = NAN
    first_price: float = NAN
    window_start_ns: int | None = None
    window_end_ns: int | None = None
    window_complete: bool = True
    bid: float = NAN
    ask: float = NAN
    spread: float = NAN
    book_ts_event: int | None = None
    feature_count: int = 0
    features_valid: int = 0
    features_warm: bool = False
    feature_set: str = ""
    prediction_label: str = ""
    prediction_value: float = NAN
    prediction_model: str = ""
    signal_action: str = ""
    signal_confidence: float = NAN
    signal_model: str = ""
    signal_ts_event: int | None = None
    signal_age_s: float = NAN
    lag_ticks_ms: float = NAN
    lag_features_ms: float = NAN
    lag_predictions_ms: float = NAN
    sparkline: list[float | None] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass
class StageView:
    """One row of the pipeline panel, from a `qt:stats:<stage>:<name>` hash."""

    stage: str
    name: str = ""
    key: str = ""
    status: str = "not seen"  # ok | stale | not seen
    seen: bool = False
    stale: bool = False
    pid: int | None = None
    host: str = ""
    age_s: float = NAN
    rate: float = NAN
    received: int | None = None
    written: int | None = None
    lag_ms: float = NAN
    gaps_recovered: int | None = None
    gaps_lost: int | None = None
    deadletters: int | None = None
    duplicates: int | None = None
    pending: int | None = None
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class GroupView:
    """A consumer group on a per-symbol stream."""

    stream: str
    group: str
    consumers: int
    pending: int
    lag: int | None
    stage: str | None


@dataclass
class ValkeyHealth:
    """Server health from INFO."""

    version: str = ""
    used_memory: int | None = None
    used_memory_human: str = ""
    maxmemory: int | None = None
    memory_ratio: float = NAN
    aof_enabled: bool | None = None
    aof_status: str = ""
    connected_clients: int | None = None
    ops_per_sec: int | None = None
    deadletters: int | None = None
    gaps: int | None = None
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass
class Snapshot:
    """Everything one frame shows; `as_dict()` is what `qt monitor --json` prints."""

    now_ns: int
    url: str
    reachable: bool
    error: str = ""
    attempts: int = 0  # failed attempts in a row while unreachable
    data_ns: int | None = None  # when the symbols and stages shown were read
    window_ns: int = DEFAULT_WINDOW_NS
    stale_ns: int = DEFAULT_STALE_NS
    refresh_ns: int = DEFAULT_REFRESH_NS
    valkey: ValkeyHealth = field(default_factory=ValkeyHealth)
    symbols: list[SymbolView] = field(default_factory=list)
    stages: list[StageView] = field(default_factory=list)
    groups: list[GroupView] = field(default_factory=list)
    commands: int = 0  # Valkey commands this refresh sent

    def as_dict(self) -> dict[str, Any]:
        return _json_ready(asdict(self))


def _json_ready(value: Any) -> Any:
    """NaN becomes null (JSON has no NaN); everything else as is."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


# --- the ticks window ---------------------------------------------------------------------------


def window_stats(
    ticks: Iterable[Tick], *, end_ns: int, window_ns: int, buckets: int = SPARK_BUCKETS
) -> WindowStats:
    """Volume, trades, change % and a price sparkline of the trades in [end - window, end].

    `ticks` are in stream order. A trade id (non-zero) seen twice counts once, with the values of
    its later entry (a trade edit, or a history trade that overlaps a live one). Change % is
    (last - first) / first * 100, first = the oldest trade by event time, last = the newest.
    """
    start_ns = end_ns - window_ns
    by_trade: dict[int, int] = {}
    kept: list[Tick] = []
    for tick in ticks:
        if tick.ts_event < start_ns or tick.ts_event > end_ns:
            continue
        if tick.trade_id:
            index = by_trade.get(tick.trade_id)
            if index is not None:
                kept[index] = tick
                continue
            by_trade[tick.trade_id] = len(kept)
        kept.append(tick)
    stats = WindowStats(start_ns=start_ns, end_ns=end_ns)
    if not kept:
        stats.sparkline = [None] * buckets
        return stats
    # One pass, no sort (the window may hold 100k ticks): ties in event time go to stream order.
    width = max(1, window_ns // buckets)
    bucket_ts = [-1] * buckets
    bucket_price: list[float | None] = [None] * buckets
    first = last = kept[0]
    volume = 0.0
    quantity = 0
    for tick in kept:
        ts = tick.ts_event
        if ts < first.ts_event:
            first = tick
        if ts >= last.ts_event:
            last = tick
        index = min(buckets - 1, max(0, (ts - start_ns) // width))
        if ts >= bucket_ts[index]:
            bucket_ts[index] = ts
            bucket_price[index] = tick.price
        volume += tick.volume
        quantity += tick.quantity
    stats.trades = len(kept)
    stats.volume = volume
    stats.quantity = quantity
    stats.first_price = first.price
    stats.last_price = last.price
    stats.change_pct = (last.price - first.price) / first.price * 100.0
    carried: float | None = None
    for i, price in enumerate(bucket_price):
        if price is None:
            bucket_price[i] = carried  # no trade in the bucket: the price did not move
        else:
            carried = price
    stats.sparkline = bucket_price
    return stats


def sparkline(values: Sequence[float | None]) -> str:
    """Eight-level bars; a blank before the first trade; a flat line in the middle."""
    present = [v for v in values if v is not None and math.isfinite(v)]
    if not present:
        return " " * len(values)
    low, high = min(present), max(present)
    out = []
    for value in values:
        if value is None or not math.isfinite(value):
            out.append(" ")
        elif high == low:
            out.append(SPARK_CHARS[3])
        else:
            level = round((value - low) / (high - low) * (len(SPARK_CHARS) - 1))
            out.append(SPARK_CHARS[level])
    return "".join(out)


def _split_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _id_text(id_ms: int, id_seq: int) -> str:
    return f"{id_ms}-{id_seq}"


def parse_tick(entry_id: bytes | str, fields_: dict[Any, Any]) -> Tick | None:
    """A Tick from stream fields, or None when the entry lacks a usable time or price."""
    get = fields_.get
    try:
        id_ms, id_seq = _split_id(entry_id)
        raw_ts = get(b"ts_event") or get("ts_event")
        if raw_ts:
            ts_event = int(raw_ts)
        else:
            ts_event = int(get(b"timestamp_ms") or get("timestamp_ms")) * NS_PER_MS
        price = float(get(b"price") or get("price"))
        quantity = int(get(b"quantity") or get("quantity") or 0)
        volume = float(get(b"volume") or get("volume") or 0.0)
        trade_id = int(get(b"trade_id") or get("trade_id") or 0)
        ts_init = int(get(b"ts_init") or get("ts_init") or get(b"recv_ns") or get("recv_ns") or 0)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(price) or price <= 0 or ts_event <= 0:
        return None
    return Tick(id_ms, id_seq, ts_event, price, quantity, volume, trade_id, ts_init)


class _TickWindow:
    """The ticks of one symbol's window, read incrementally by stream id."""

    def __init__(self) -> None:
        self.ticks: deque[Tick] = deque()
        self.top: tuple[int, int] | None = None  # newest id read
        self.floor: tuple[int, int] | None = None  # oldest id read
        self.backfilled = False  # every entry from the window start up to `floor` is read
        self.newest_ns = 0  # newest event time read
        self.newest_init_ns = 0  # newest receive time read
        self.bad_entries = 0
        self.seen_any = False

    def reset(self) -> None:
        self.ticks.clear()
        self.top = self.floor = None
        self.backfilled = False
        self.newest_ns = self.newest_init_ns = 0

    def start_ms(self, window_ns: int) -> int:
        return max(0, (self.newest_ns - window_ns) // NS_PER_MS)

    def add_newer(self, entries: list[tuple[Any, Any]]) -> None:
        """Entries newest first (as XREVRANGE returns them), all newer than `top`."""
        parsed = self._parse(entries)
        self.ticks.extend(reversed(parsed))
        if entries:
            self.top = _split_id(entries[0][0])
            if self.floor is None:
                self.floor = _split_id(entries[-1][0])

    def add_older(self, entries: list[tuple[Any, Any]]) -> None:
        """Entries newest first, all older than `floor`."""
        parsed = self._parse(entries)
        self.ticks.extendleft(parsed)
        if entries:
            self.floor = _split_id(entries[-1][0])
            if self.top is None:
                self.top = _split_id(entries[0][0])

    def _parse(self, entries: list[tuple[Any, Any]]) -> list[Tick]:
        out = []
        for entry_id, fields_ in entries:
            tick = parse_tick(entry_id, fields_)
            if tick is None:
                self.bad_entries += 1
                continue
            out.append(tick)
            if tick.ts_event > self.newest_ns:
                self.newest_ns = tick.ts_event
            if tick.ts_init > self.newest_init_ns:
                self.newest_init_ns = tick.ts_init
        if entries:
            self.seen_any = True
        return out

    def trim(self, window_ns: int) -> None:
        """Drop entries whose id is below the window start (an id is never below its event time)."""
        start_ms = self.start_ms(window_ns)
        while self.ticks and self.ticks[0].id_ms < start_ms:
            self.ticks.popleft()
            self.backfilled = True
        if self.floor is not None and self.floor[0] < start_ms:
            self.backfilled = True


# --- collection --------------------------------------------------------------------------------


def resolve_target(settings: Settings) -> str:
    """The Valkey URL to watch, without starting anything.

    A configured URL wins; else localhost:6379 if it answers; else the managed server's URL if it
    runs; else localhost:6379 (shown as unreachable until something starts there).
    """
    from qt_cli.core import store

    if settings.valkey_url:
        return str(settings.valkey_url)
    if store.answers(store.DEFAULT_URL):
        return store.DEFAULT_URL
    from qt_cli.core.store.managed import ManagedValkey

    status = ManagedValkey(settings.valkey_dir).status()
    return status.url if status.running else store.DEFAULT_URL


class Monitor:
    """Reads snapshots of the pipeline from one Valkey server; keeps windows between refreshes.

    `url` is a Valkey URL, or a function that finds one (called again before each reconnect, so
    a server that starts later, such as the managed one, is found).
    """

    def __init__(
        self,
        url: str | Callable[[], str],
        options: MonitorOptions | None = None,
        *,
        password: str = "",
        timeout_s: float = 2.0,
    ) -> None:
        self._resolve = url if callable(url) else None
        self.url = url() if callable(url) else url
        self.options = options or MonitorOptions()
        self._password = password
        self._timeout_s = timeout_s
        self._client: Any = None
        self._windows: dict[str, _TickWindow] = {}
        self._books: dict[str, tuple[tuple[int, int] | None, TopOfBook | None]] = {}
        self._symbols: list[str] = list(self.options.symbols)
        self._discovered_ns: int | None = None
        self._attempts = 0
        self._last: Snapshot | None = None
        self._commands = 0

    @property
    def symbols(self) -> list[str]:
        return list(self._symbols)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # one refresh

    def collect(self, now_ns: int | None = None) -> Snapshot:
        """Read one snapshot. Never raises for an unreachable server: the snapshot says so."""
        from qt_cli.core import store
        from qt_cli.core.config import mask_url

        now = time.time_ns() if now_ns is None else now_ns
        self._commands = 0
        try:
            if self._client is None:
                if self._resolve is not None and self._attempts:
                    self.url = self._resolve()
                self._client = store.connect(
                    self.url, password=self._password, timeout_s=self._timeout_s
                )
                self._commands += 1
                self._reset_windows()  # the server may have restarted with other data
            snapshot = self._collect(self._client, now)
        except (QtError, *store.ConnectionFailure, store.ValkeyError) as exc:
            self.close()
            self._attempts += 1
            message = _failure_message(self.url, exc)
            last = self._last
            return Snapshot(
                now_ns=now,
                url=mask_url(self.url),
                reachable=False,
                error=message,
                attempts=self._attempts,
                data_ns=last.data_ns if last else None,
                window_ns=self.options.window_ns,
                stale_ns=self.options.stale_ns,
                refresh_ns=self.options.refresh_ns,
                valkey=ValkeyHealth(reasons={"server": "unreachable"}),
                symbols=last.symbols if last else [],
                stages=last.stages if last else [],
                groups=last.groups if last else [],
                commands=self._commands,
            )
        self._attempts = 0
        self._last = snapshot
        return snapshot

    def _reset_windows(self) -> None:
        self._windows.clear()
        self._books.clear()

    def _collect(self, client: Any, now: int) -> Snapshot:
        from qt_cli.core.config import mask_url

        if not self.options.symbols and (
            self._discovered_ns is None
            or now - self._discovered_ns >= self.options.discover_interval_ns
        ):
            self._symbols = self._discover(client)
            self._discovered_ns = now
        symbols = self._symbols

        pipe = client.pipeline(transaction=False)
        pipe.info()
        pipe.smembers(keys.STAGES_SET)
        pipe.xlen(keys.stream_key("deadletter"))
        pipe.xlen(keys.stream_key("gaps"))
        for symbol in symbols:
            book_top, _ = self._books.get(symbol, (None, None))
            lower = f"({_id_text(*book_top)}" if book_top else "-"
            pipe.xrevrange(keys.stream_key("book", symbol), "+", lower, count=BOOK_SCAN)
            for kind in ("features", "predictions", "signals"):
                pipe.xrevrange(keys.stream_key(kind, symbol), "+", "-", count=1)
            for kind in GROUP_STREAM_KINDS:
                pipe.xinfo_groups(keys.stream_key(kind, symbol))
        self._commands += len(pipe)
        replies = pipe.execute(raise_on_error=False)
        info, members, dead_len, gap_len = replies[:4]
        for reply in (info, members):
            if isinstance(reply, Exception):
                raise reply

        stage_keys = sorted(_text(m) for m in members)
        pipe = client.pipeline(transaction=False)
        for key in stage_keys:
            pipe.hgetall(key)
        self._commands += len(pipe)
        stage_hashes = pipe.execute(raise_on_error=False) if stage_keys else []

        groups: list[GroupView] = []
        views: list[SymbolView] = []
        per_symbol = 1 + 3 + len(GROUP_STREAM_KINDS)
        for i, symbol in enumerate(symbols):
            chunk = replies[4 + i * per_symbol : 4 + (i + 1) * per_symbol]
            view = SymbolView(symbol=symbol)
            self._read_ticks(client, symbol, view, now)
            self._apply_book(symbol, chunk[0], view)
            self._apply_model_side(chunk[1], chunk[2], chunk[3], view, now)
            for kind, reply in zip(GROUP_STREAM_KINDS, chunk[4:], strict=True):
                groups.extend(_groups_of(keys.stream_key(kind, symbol), reply))
            _finish_state(view, self.options.stale_ns)
            views.append(view)

        stages = _stage_views(stage_keys, stage_hashes, groups, now, self.options.stale_ns)
        return Snapshot(
            now_ns=now,
            url=mask_url(self.url),
            reachable=True,
            data_ns=now,
            window_ns=self.options.window_ns,
            stale_ns=self.options.stale_ns,
            refresh_ns=self.options.refresh_ns,
            valkey=_health(info, dead_len, gap_len),
            symbols=views,
            stages=stages,
            groups=groups,
            commands=self._commands,
        )

    def _discover(self, client: Any) -> list[str]:
        """Symbols with a ticks stream (SCAN, never KEYS); at startup and every 30 s."""
        found = set()
        cursor = 0
        pattern = "stream:ticks:*"
        while True:
            cursor, batch = client.scan(cursor, match=pattern, count=1_000, _type="stream")
            self._commands += 1
            for raw in batch:
                parsed = keys.parse_stream_key(_text(raw))
                if parsed and parsed[0] == "ticks":
                    found.add(parsed[1])
            if cursor == 0:
                break
        return sorted(found)

    def _read_ticks(self, client: Any, symbol: str, view: SymbolView, now: int) -> None:
        options = self.options
        key = keys.stream_key("ticks", symbol)
        window = self._windows.get(symbol)
        first = window is None
        if window is None:
            window = self._windows[symbol] = _TickWindow()
        budget = options.first_pages if first else options.pages_per_refresh
        page = options.page_size

        if window.top is None:
            entries = client.xrevrange(key, "+", "-", count=page)
            self._commands += 1
            budget -= 1
            window.add_newer(entries)
            window.backfilled = len(entries) < page
        else:
            upper = "+"
            fresh: list[tuple[Any, Any]] = []
            hole = True
            while budget > 0:
                entries = client.xrevrange(key, upper, f"({_id_text(*window.top)}", count=page)
                self._commands += 1
                budget -= 1
                fresh.extend(entries)
                if len(entries) < page:
                    hole = False
                    break
                upper = f"({_text(entries[-1][0])}"
            if hole:
                # More new entries than this refresh may read: restart the window from the newest.
                window.reset()
                window.add_newer(fresh)
                window.backfilled = False
            else:
                window.add_newer(fresh)
        window.trim(options.window_ns)

        while not window.backfilled and window.floor is not None and budget > 0:
            start_ms = window.start_ms(options.window_ns)
            entries = client.xrevrange(
                key, f"({_id_text(*window.floor)}", str(start_ms), count=page
            )
            self._commands += 1
            budget -= 1
            window.add_older(entries)
            if len(entries) < page:
                window.backfilled = True
        window.trim(options.window_ns)

        if not window.seen_any:
            view.reasons["ticks"] = f"no entries in {key}"
            return
        stats = window_stats(
            window.ticks,
            end_ns=window.newest_ns,
            window_ns=options.window_ns,
            buckets=options.spark_buckets,
        )
        view.state = "ACTIVE"
        view.last_ts_event = window.newest_ns
        view.last_price = stats.last_price
        view.first_price = stats.first_price
        view.volume = stats.volume
        view.quantity = stats.quantity
        view.trades = stats.trades
        view.change_pct = stats.change_pct
        view.window_start_ns = stats.start_ns
        view.window_end_ns = stats.end_ns
        view.window_complete = window.backfilled
        view.sparkline = stats.sparkline
        view.lag_ticks_ms = (now - window.newest_ns) / NS_PER_MS
        received = window.newest_init_ns or window.newest_ns
        view.last_ts_init = window.newest_init_ns or None
        view.received_age_ms = (now - received) / NS_PER_MS
        if view.lag_ticks_ms < 0:
            view.reasons["lag_ticks_ms"] = (
                "event time is ahead of this machine's clock "
                "(a simulation or replay clock, or clock skew)"
            )
        if not window.backfilled:
            view.reasons["window"] = (
                "window not fully read yet (more ticks than one refresh reads); "
                "volume and trades are lower bounds"
            )
        if window.bad_entries:
            view.reasons["bad_entries"] = f"{window.bad_entries} tick entries without time or price"

    def _apply_book(self, symbol: str, reply: Any, view: SymbolView) -> None:
        top, tob = self._books.get(symbol, (None, None))
        if isinstance(reply, Exception):
            view.reasons["book"] = f"book stream: {reply}"
        elif reply:
            top = _split_id(reply[0][0])
            for _, fields_ in reply:
                if _field(fields_, "type") == "tob":
                    try:
                        decoded = decode_fields(fields_)
                    except DecodeError as exc:
                        view.reasons["book"] = f"newest top of book does not decode: {exc}"
                        break
                    if isinstance(decoded, TopOfBook):
                        tob = decoded
                    break
            self._books[symbol] = (top, tob)
        if tob is None:
            view.reasons.setdefault(
                "spread", f"no top of book (type tob) among the newest {BOOK_SCAN} book entries"
            )
            return
        view.bid, view.ask = tob.bid_price, tob.ask_price
        view.book_ts_event = tob.ts_event
        if math.isnan(tob.bid_price) or math.isnan(tob.ask_price):
            view.reasons["spread"] = "one side of the book is empty"
        else:
            view.spread = tob.ask_price - tob.bid_price

    def _apply_model_side(
        self, features: Any, predictions: Any, signals: Any, view: SymbolView, now: int
    ) -> None:
        vector = _newest(features, FeatureVector, view, "features")
        if isinstance(vector, FeatureVector):
            view.feature_count = len(vector.features)
            view.features_valid = sum(1 for v in vector.features.values() if math.isfinite(v))
            view.features_warm = vector.warm
            view.feature_set = vector.feature_set
            view.lag_features_ms = (now - vector.ts_event) / NS_PER_MS
        prediction = _newest(predictions, Prediction, view, "predictions")
        if isinstance(prediction, Prediction):
            view.prediction_label = prediction.label
            view.prediction_value = prediction.value
            view.prediction_model = prediction.model
            view.lag_predictions_ms = (now - prediction.ts_event) / NS_PER_MS
        signal = _newest(signals, Signal, view, "signals")
        if isinstance(signal, Signal):
            view.signal_action = signal.action
            view.signal_confidence = signal.confidence
            view.signal_model = signal.model
            view.signal_ts_event = signal.ts_event
            view.signal_age_s = (now - signal.ts_event) / NS_PER_S


def _failure_message(url: str, exc: BaseException) -> str:
    from qt_cli.core import store
    from qt_cli.core.config import mask_url

    if isinstance(exc, QtError):
        return str(exc)
    reason = (str(exc).strip() or type(exc).__name__).splitlines()[0].rstrip(".")
    if isinstance(exc, store.ConnectionFailure):
        return f"lost the connection to Valkey at {mask_url(url)} ({reason})"
    return f"Valkey at {mask_url(url)} answered with an error ({reason})"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field(fields_: dict[Any, Any], name: str) -> str:
    value = fields_.get(name.encode())
    if value is None:
        value = fields_.get(name)
    return "" if value is None else _text(value)


def _newest(reply: Any, cls: type, view: SymbolView, kind: str) -> Any:
    if isinstance(reply, Exception):
        view.reasons[kind] = f"{kind} stream: {reply}"
        return None
    if not reply:
        view.reasons[kind] = f"no entries in stream:{kind}:{{{view.symbol}}}"
        return None
    try:
        event = decode_fields(reply[0][1])
    except DecodeError as exc:
        view.reasons[kind] = f"newest {kind} entry does not decode: {exc}"
        return None
    if not isinstance(event, cls):
        view.reasons[kind] = f"newest {kind} entry is a {type(event).__name__}"
        return None
    return event


def _finish_state(view: SymbolView, stale_ns: int) -> None:
    """State in words: NO DATA, STALE, WAITING (no features), WARMING, ACTIVE.

    STALE is judged on receive time (`ts_init`, our clock), not on event time: a simulation or a
    replay runs on its own clock and is live as long as ticks keep arriving.
    """
    if view.last_ts_event is None:
        view.state = "NO DATA"
        for name in ("last_price", "change_pct"):
            view.reasons.setdefault(name, "no ticks")
        return
    if not view.trades:
        view.reasons["change_pct"] = "no trades in the window"
    if view.received_age_ms * NS_PER_MS > stale_ns:
        view.stale = True
        view.state = "STALE"
    elif not view.feature_count:
        view.state = "WAITING"
    elif not view.features_warm:
        view.state = "WARMING"
    else:
        view.state = "ACTIVE"
    if not view.signal_action:
        view.reasons.setdefault("signal", "no signal yet")


def _groups_of(stream: str, reply: Any) -> list[GroupView]:
    if isinstance(reply, Exception) or not reply:
        return []  # the stream does not exist or has no groups
    out = []
    for group in reply:
        name = _text(group.get("name", b""))
        lag = group.get("lag")
        out.append(
            GroupView(
                stream=stream,
                group=name,
                consumers=int(group.get("consumers", 0)),
                pending=int(group.get("pending", 0)),
                lag=None if lag is None else int(lag),
                stage=_stage_of_group(name),
            )
        )
    return out


def _stage_of_group(group: str) -> str | None:
    """A group named after a stage (`features`, `features:basic11`, `predict-1`) belongs to it."""
    lowered = group.lower()
    for stage in STAGE_ORDER:
        if lowered == stage or lowered.startswith((f"{stage}:", f"{stage}-", f"{stage}.")):
            return stage
    return None


def _as_int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _as_float(value: str | None) -> float:
    if value is None or value == "":
        return NAN
    try:
        return float(value)
    except ValueError:
        return NAN


def _stage_views(
    stage_keys: list[str], hashes: list[Any], groups: list[GroupView], now: int, stale_ns: int
) -> list[StageView]:
    views: list[StageView] = []
    for key, raw in zip(stage_keys, hashes, strict=True):
        if isinstance(raw, Exception) or not raw:
            continue  # expired (the stage stopped minutes ago) or not a hash
        data = {_text(k): _text(v) for k, v in raw.items()}
        parts = key.split(":", 3)
        stage = data.get("stage") or (parts[2] if len(parts) > 2 else key)
        name = data.get("name") or (parts[3] if len(parts) > 3 else "")
        updated = _as_int(data.get("updated_ns"))
        age_s = NAN if updated is None else (now - updated) / NS_PER_S
        stale = not (age_s * NS_PER_S <= stale_ns)  # NaN age (never updated) is stale too
        views.append(
            StageView(
                stage=stage,
                name=name,
                key=key,
                status="stale" if stale else "ok",
                seen=True,
                stale=stale,
                pid=_as_int(data.get("pid")),
                host=data.get("host", ""),
                age_s=age_s,
                rate=_as_float(data.get("rate")),
                received=_as_int(data.get("received")),
                written=_as_int(data.get("written")),
                lag_ms=_as_float(data.get("lag_ms")),
                gaps_recovered=_as_int(data.get("gaps_recovered")),
                gaps_lost=_as_int(data.get("gaps_lost")),
                deadletters=_as_int(data.get("deadletters")),
                duplicates=_as_int(data.get("duplicates")),
                fields=data,
            )
        )
    pending: dict[str, int] = {}
    for group in groups:
        if group.stage:
            pending[group.stage] = pending.get(group.stage, 0) + group.pending
    seen = {view.stage for view in views}
    for stage in STAGE_ORDER:
        if stage not in seen:
            views.append(StageView(stage=stage))
    for view in views:
        if view.stage in pending:
            view.pending = pending[view.stage]
    rank = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    views.sort(key=lambda v: (rank.get(v.stage, len(rank)), v.stage, v.name))
    return views


def _health(info: dict[str, Any], dead_len: Any, gap_len: Any) -> ValkeyHealth:
    health = ValkeyHealth()
    health.version = str(info.get("valkey_version") or info.get("redis_version") or "")
    health.used_memory = _maybe_int(info.get("used_memory"))
    health.used_memory_human = str(info.get("used_memory_human", ""))
    health.maxmemory = _maybe_int(info.get("maxmemory"))
    if health.maxmemory and health.used_memory is not None:
        health.memory_ratio = health.used_memory / health.maxmemory
    else:
        health.reasons["memory_ratio"] = "maxmemory is not set (no limit)"
    aof = info.get("aof_enabled")
    health.aof_enabled = None if aof is None else bool(int(aof))
    if health.aof_enabled:
        status = str(info.get("aof_last_write_status", "ok"))
        rewrite = str(info.get("aof_last_bgrewrite_status", "ok"))
        health.aof_status = status if status != "ok" else rewrite
    elif health.aof_enabled is False:
        health.aof_status = "off"
    health.connected_clients = _maybe_int(info.get("connected_clients"))
    health.ops_per_sec = _maybe_int(info.get("instantaneous_ops_per_sec"))
    health.deadletters = _maybe_int(dead_len)
    health.gaps = _maybe_int(gap_len)
    return health


def _maybe_int(value: Any) -> int | None:
    if value is None or isinstance(value, Exception):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- rendering ---------------------------------------------------------------------------------


def fmt_age(seconds: float) -> str:
    """0.25 -> 250ms, 3.2 -> 3.2s, 312 -> 5m12s, 7500 -> 2h05m; NaN -> —."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 1:
        return f"{sign}{s * 1000:.0f}ms"
    if s < 60:
        return f"{sign}{s:.1f}s"
    if s < 3600:
        return f"{sign}{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{sign}{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{sign}{s / 86400:.1f}d"


def fmt_compact(value: float | int | None) -> str:
    """1234 -> 1,234; 1_234_567 -> 1.23M; None/NaN -> —."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    magnitude = abs(value)
    for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if magnitude >= limit:
            return f"{value / limit:.2f}{suffix}"
    if isinstance(value, float) and not value.is_integer() and magnitude < 1000:
        return f"{value:,.1f}"
    return f"{round(value):,}"


def fmt_price(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:,.2f}"


def _lag_text(lag_ms: float, stale_ns: int) -> Text:
    if not math.isfinite(lag_ms):
        return Text("—", style="dim")
    if lag_ms < 0:  # event clock ahead of ours (simulation, replay, skew)
        return Text(fmt_age(lag_ms / 1000), style="yellow")
    stale = lag_ms * NS_PER_MS > stale_ns
    return Text(fmt_age(lag_ms / 1000), style="bold red" if stale else "green")


STATE_STYLE = {
    "ACTIVE": "bold green",
    "WARMING": "yellow",
    "WAITING": "cyan",
    "STALE": "bold red",
    "NO DATA": "dim",
}


def _symbol_rows(snapshot: Snapshot) -> tuple[list[Column], list[list[Text]]]:
    minutes = snapshot.window_ns / NS_PER_MIN
    span = f"{minutes:g}m" if minutes >= 1 else fmt_age(snapshot.window_ns / NS_PER_S)
    columns = [
        Column("Symbol", 0, "left"),
        Column("Last", 0),
        Column("Chg %", 1),
        Column(f"Vol {span}", 2),
        Column(f"Trades {span}", 2),
        Column("Lag", 1),
        Column("State", 0, "left"),
        Column("Spread", 3),
        Column("Signal", 3, "left"),
        Column(f"Price {span}", 4, "left"),
        Column("Features", 5),
        Column("Bid / Ask", 5),
        Column("Feat lag", 6),
        Column("Pred lag", 6),
        Column(f"Qty {span}", 7),
    ]
    rows = []
    for view in snapshot.symbols:
        change = round(view.change_pct, 2) + 0.0  # + 0.0: no "-0.00%"
        change_text = (
            Text(f"{change:+.2f}%", style="green" if change > 0 else "red" if change < 0 else "")
            if math.isfinite(change)
            else Text("—", style="dim")
        )
        trades = f"{'≥' if not view.window_complete else ''}{view.trades:,}"
        volume = f"{'≥' if not view.window_complete else ''}{fmt_compact(view.volume)}"
        if view.signal_action:
            confidence = (
                f" {view.signal_confidence:.2f}" if math.isfinite(view.signal_confidence) else ""
            )
            action_style = {"buy": "green", "sell": "red"}.get(view.signal_action, "")
            signal = Text(view.signal_action.upper(), style=action_style)
            signal.append(f"{confidence} {fmt_age(view.signal_age_s)} ago")
        else:
            signal = Text("—", style="dim")
        features = f"{view.features_valid}/{view.feature_count}" if view.feature_count else "—"
        state = Text(view.state, style=STATE_STYLE.get(view.state, ""))
        if not snapshot.reachable:
            state = Text(f"{view.state}?", style="dim")
        rows.append(
            [
                Text(view.symbol, style="cyan"),
                Text(fmt_price(view.last_price)),
                change_text,
                Text(volume),
                Text(trades),
                _lag_text(view.lag_ticks_ms, snapshot.stale_ns),
                state,
                Text(fmt_price(view.spread)),
                signal,
                Text(sparkline(view.sparkline), style="blue"),
                Text(features),
                Text(f"{fmt_price(view.bid)} / {fmt_price(view.ask)}"),
                _lag_text(view.lag_features_ms, snapshot.stale_ns),
                _lag_text(view.lag_predictions_ms, snapshot.stale_ns),
                Text(fmt_compact(view.quantity)),
            ]
        )
    return columns, rows


def _stage_rows(snapshot: Snapshot) -> tuple[list[Column], list[list[Text]]]:
    columns = [
        Column("Stage", 0, "left"),
        Column("Status", 0, "left"),
        Column("Seen", 1),
        Column("Rate/s", 1),
        Column("Received", 2),
        Column("Written", 2),
        Column("Pending", 2),
        Column("Dead", 3),
        Column("Gaps rec.", 3),
        Column("Gaps lost", 3),
        Column("Name", 4, "left"),
        Column("Lag", 5),
    ]
    rows = []
    for view in snapshot.stages:
        if not view.seen:
            status = Text("not seen", style="dim")
        elif view.stale:
            status = Text(f"STALE {fmt_age(view.age_s)}", style="bold red")
        else:
            status = Text("ok", style="green")
        lost = Text(fmt_compact(view.gaps_lost), style="red" if (view.gaps_lost or 0) > 0 else "")
        dead = Text(
            fmt_compact(view.deadletters), style="yellow" if (view.deadletters or 0) > 0 else ""
        )
        rows.append(
            [
                Text(view.stage, style="dim" if not view.seen else "bold"),
                status,
                Text(fmt_age(view.age_s) if view.seen else "—"),
                Text("—" if not math.isfinite(view.rate) else f"{view.rate:,.1f}"),
                Text(fmt_compact(view.received)),
                Text(fmt_compact(view.written)),
                Text(fmt_compact(view.pending)),
                dead,
                Text(fmt_compact(view.gaps_recovered)),
                lost,
                Text(view.name),
                Text(fmt_age(view.lag_ms / 1000) if math.isfinite(view.lag_ms) else "—"),
            ]
        )
    return columns, rows


def _group_rows(snapshot: Snapshot) -> tuple[list[Column], list[list[Text]]]:
    columns = [
        Column("Stream", 0, "left"),
        Column("Group", 0, "left"),
        Column("Pending", 0),
        Column("Lag", 1),
        Column("Consumers", 2),
    ]
    rows = [
        [
            Text(group.stream),
            Text(group.group),
            Text(f"{group.pending:,}", style="yellow" if group.pending else ""),
            Text(fmt_compact(group.lag)),
            Text(str(group.consumers)),
        ]
        for group in snapshot.groups
    ]
    return columns, rows


def _health_text(snapshot: Snapshot) -> Text:
    health = snapshot.valkey
    text = Text("Valkey ", style="bold")
    if health.version:
        text.append(f"{health.version} ")
    text.append(snapshot.url)
    if health.used_memory is not None:
        text.append(" · memory ")
        used = health.used_memory_human or fmt_compact(health.used_memory)
        if health.maxmemory:
            ratio = health.memory_ratio
            style = "bold red" if ratio > 0.9 else "yellow" if ratio > 0.75 else "green"
            text.append(f"{used} of {fmt_compact(health.maxmemory)}B ({ratio:.0%})", style=style)
        else:
            text.append(f"{used} (no maxmemory)")
    if health.aof_enabled is not None:
        text.append(" · AOF ")
        if health.aof_enabled:
            ok = health.aof_status == "ok"
            text.append(
                "on" if ok else f"on, last write {health.aof_status}",
                style="green" if ok else "bold red",
            )
        else:
            text.append("off", style="yellow")
    if health.connected_clients is not None:
        plural = "" if health.connected_clients == 1 else "s"
        text.append(f" · {health.connected_clients} client{plural}")
    if health.ops_per_sec is not None:
        text.append(f" · {health.ops_per_sec:,} ops/s")
    if health.deadletters is not None:
        text.append(
            f" · {health.deadletters:,} dead letters",
            style="yellow" if health.deadletters else "",
        )
    if health.gaps is not None:
        text.append(f" · {health.gaps:,} gap{'' if health.gaps == 1 else 's'}")
    return text


def render(
    snapshot: Snapshot, *, width: int = 100, tz: tzinfo | None = None, live: bool = True
) -> RenderableType:
    """The whole frame: header, Valkey health (or why it is unreachable), symbols, pipeline.

    `live` is false for a one-off frame (`--once`), which does not retry.
    """
    width = max(width, 20)
    when = datetime.fromtimestamp(snapshot.now_ns / NS_PER_S, tz=tz or EXCHANGE_TZ)
    header = Text("qt monitor", style="bold")
    header.append(f"  {when:%Y-%m-%d %H:%M:%S %Z}")
    header.append(
        f"  refresh {fmt_age(snapshot.refresh_ns / NS_PER_S)}"
        f"  stale after {fmt_age(snapshot.stale_ns / NS_PER_S)}",
        style="dim",
    )
    parts: list[RenderableType] = [_one_line(header, width)]
    if snapshot.reachable:
        parts.append(_health_text(snapshot))
    else:
        problem = Text("VALKEY UNREACHABLE: ", style="bold red")
        problem.append(snapshot.error)
        if live:
            problem.append(
                f" — retrying every {fmt_age(snapshot.refresh_ns / NS_PER_S)}"
                f" (attempt {snapshot.attempts})",
                style="red",
            )
        parts.append(problem)
        if snapshot.data_ns is not None:
            age = (snapshot.now_ns - snapshot.data_ns) / NS_PER_S
            parts.append(Text(f"showing data last read {fmt_age(age)} ago", style="dim"))
    parts.append(Text(""))
    if snapshot.symbols:
        columns, rows = _symbol_rows(snapshot)
        parts.append(fit_table(columns, rows, width, title="Symbols", title_justify="left"))
    elif snapshot.reachable:
        parts.append(Text("no symbols: no stream:ticks:* streams yet", style="dim"))
    if snapshot.stages:
        parts.append(Text(""))
        columns, rows = _stage_rows(snapshot)
        parts.append(fit_table(columns, rows, width, title="Pipeline", title_justify="left"))
    if snapshot.groups:
        parts.append(Text(""))
        columns, rows = _group_rows(snapshot)
        parts.append(fit_table(columns, rows, width, title="Consumer groups", title_justify="left"))
    return Group(*parts)


def _one_line(text: Text, width: int) -> Text:
    text.no_wrap = True
    text.overflow = "ellipsis"
    text.truncate(width, overflow="ellipsis")
    return text
