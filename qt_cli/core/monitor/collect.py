"""Collecting a `Snapshot` from Valkey (`Monitor.collect`).

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
(last - first) / first with first = the OLDEST trade in the window and last = the newest."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from qt_cli.core import keys
from qt_cli.core.config import Settings
from qt_cli.core.errors import DecodeError, QtError
from qt_cli.core.events import (
    NS_PER_MS,
    NS_PER_S,
    FeatureVector,
    Prediction,
    Signal,
    TopOfBook,
    decode_fields,
)
from qt_cli.core.monitor.snapshot import (
    BOOK_SCAN,
    GROUP_STREAM_KINDS,
    NAN,
    SPARK_BUCKETS,
    SPARK_CHARS,
    STAGE_ORDER,
    GroupView,
    MonitorOptions,
    Snapshot,
    StageView,
    SymbolView,
    Tick,
    ValkeyHealth,
    WindowStats,
)

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


def _id_text(id_ms: int, id_seq: int) -> str:
    return f"{id_ms}-{id_seq}"


def parse_tick(entry_id: bytes | str, fields_: dict[Any, Any]) -> Tick | None:
    """A Tick from stream fields, or None when the entry lacks a usable time or price."""
    get: Callable[[Any], Any] = fields_.get  # a missing field fails int()/float(): no tick
    try:
        id_ms, id_seq = keys.parse_id(entry_id)
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
            self.top = keys.parse_id(entries[0][0])
            if self.floor is None:
                self.floor = keys.parse_id(entries[-1][0])

    def add_older(self, entries: list[tuple[Any, Any]]) -> None:
        """Entries newest first, all older than `floor`."""
        parsed = self._parse(entries)
        self.ticks.extendleft(parsed)
        if entries:
            self.floor = keys.parse_id(entries[-1][0])
            if self.top is None:
                self.top = keys.parse_id(entries[0][0])

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

        from qt_cli.core.store import cluster

        # A cluster pipeline takes no keyless command: INFO (of every primary, merged) goes
        # on its own there.
        on_cluster = cluster.is_cluster(client)
        pipe = client.pipeline(transaction=False)
        if not on_cluster:
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
        if on_cluster:
            self._commands += 1
            replies = [cluster.merged_info(client), *replies]
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
        from qt_cli.core.store import cluster

        pattern = keys.stream_pattern("ticks")
        if cluster.is_cluster(client):  # scan_iter walks every primary
            self._commands += 1
            for raw in client.scan_iter(match=pattern, count=1_000, _type="stream"):
                parsed = keys.parse_stream_key(_text(raw))
                if parsed and parsed[0] == "ticks":
                    found.add(parsed[1])
            return sorted(found)
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
            top = keys.parse_id(reply[0][0])
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
        view.reasons[kind] = f"no entries in {keys.stream_key(kind, view.symbol)}"
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
