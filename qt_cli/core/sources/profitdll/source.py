"""Nelogica ProfitDLL market data through ctypes: the `qt feed --dll PATH` source.

How it works (docs/profitdll-binding.md has the long version; ../shared/docs/profitdll.md is the
interface reference the section numbers below point to):

- `load_library` loads the DLL (stdcall `WinDLL` on Windows, `CDLL` elsewhere), checks that every
  export the binding calls exists and declares `argtypes`/`restype` for each from one table.
- `ProfitDllSource.open` logs in with `DLLInitializeMarketLogin` and registers every market-data
  callback (`Set*Callback`). The callbacks run on the DLL's own thread: they copy scalars and
  strings into a tuple stamped with one shared receive clock and `put_nowait` it on a queue —
  nothing else (trades are translated with `TranslateTrade` inside the callback because the trade
  handle dies when it returns; book arrays are copied and freed with `FreePointer` there too).
- `read` runs on the feed's publishing thread: it turns the queued tuples into events, keeps the
  price and offer books per side so full snapshots carry levels and every update carries the
  affected price, subscribes once the market-data connection is up (2,4) and requests history one
  day at a time. A failed login becomes a `State` event, then a `DllError` from the next `read`.
- `close` calls `DLLFinalize` (which stops the DLL's thread) and only then drops the callback
  objects, so no collected thunk can ever be called.

Credentials are passed to `DLLInitializeMarketLogin` and dropped; they never appear in an error
message, a log line or a repr."""

from __future__ import annotations

import ctypes
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from ctypes import (
    c_double,
    c_int,
)
from datetime import datetime
from pathlib import Path
from typing import Any

from qt_cli.core.errors import DllError, UsageError
from qt_cli.core.events import (
    Event,
    ReceiveClock,
    State,
)
from qt_cli.core.sources.base import SourceStats
from qt_cli.core.sources.profitdll.api import (
    _DAILY,
    _HEADER,
    _HISTORY,
    _INVALID_TICKER,
    _OFFER_BOOK,
    _PRICE_BOOK,
    _PROGRESS,
    _STATE,
    _TICKER_STATE,
    _TINY,
    _TRADE,
    BOOK_KINDS,
    MAX_ARRAY_BYTES,
    NL_OK,
    ChangeStateTickerCallback,
    DailyCallback,
    InvalidTickerCallback,
    OfferBookCallbackV2,
    PriceBookCallbackV2,
    ProgressCallback,
    StateCallback,
    TAssetIDRec,
    TConnectorAssetIdentifier,
    TConnectorTrade,
    TinyBookCallback,
    TradeCallbackV2,
    describe_result,
    load_library,
)
from qt_cli.core.sources.profitdll.convert import _KIND_NAMES, _Converter
from qt_cli.core.sources.profitdll.parse import (
    _best_first,
    _HistoryWindow,
    history_windows,
    parse_symbol,
)

# --- the source ------------------------------------------------------------------------------


class ProfitDllSource(_Converter):
    """Market data from ProfitDLL: trades, history trades, books, top of book, daily bars, states.

    `symbols` are (ticker, exchange) pairs (a bare ticker guesses the exchange, see parse_symbol).
    `history_from`/`history_to` (ns, aware datetime, ISO text or the DLL's DD/MM/YYYY HH:MM:SS)
    request history trades one day at a time after the live subscription. `books` chooses which
    books to subscribe ("price" per level, "offer" per order).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        key: str,
        user: str,
        password: str,
        symbols: Iterable[str | Sequence[str]],
        history_from: int | datetime | str | None = None,
        history_to: int | datetime | str | None = None,
        *,
        books: Sequence[str] = BOOK_KINDS,
        agent_names: bool = True,
        login_timeout_s: float = 60.0,
        history_timeout_s: float = 600.0,
        max_batch: int = 8192,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.path = Path(path)
        self.symbols = [parse_symbol(item) for item in symbols]
        if not self.symbols:
            raise UsageError("give at least one --symbol to subscribe (e.g. --symbol WDOQ25)")
        unknown_books = [book for book in books if book not in BOOK_KINDS]
        if unknown_books:
            raise UsageError(f"book {unknown_books[0]!r}: choose from {', '.join(BOOK_KINDS)}")
        self.books = tuple(books)
        self._credentials: tuple[str, str, str] | None = (key, user, password)
        self._history: list[_HistoryWindow] = []
        if history_from is not None:
            for start, end in history_windows(history_from, history_to):
                for ticker, exchange in self.symbols:
                    self._history.append(_HistoryWindow(ticker, exchange, start, end))
        elif history_to is not None:
            raise UsageError("--history-to needs --history-from")
        self.agent_names = agent_names
        self.login_timeout_s = login_timeout_s
        self.history_timeout_s = history_timeout_s
        self.max_batch = max_batch
        self.clock = clock or ReceiveClock()
        self.stats = SourceStats()
        self.counters: dict[str, int] = {
            "callback_failures": 0,
            "zero_history_trades": 0,
            "translate_failures": 0,
            "book_position_errors": 0,
            "history_windows_done": 0,
            "backpressure_states": 0,
        }
        self.callback_threads: set[int] = set()  # idents of the threads callbacks ran on
        self.callback_errors: list[str] = []  # first few exceptions raised inside callbacks
        self._errors_reported = 0
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._lib: Any = None
        self._callbacks: dict[str, Any] = {}  # every FUNCTYPE object, alive until after finalize
        self._api_lock = threading.Lock()
        self._initialized = False
        self._closed = False
        self._fatal: DllError | None = None
        self._opened_at = 0.0
        self._market_connected = False
        self._subscribed = False
        self._last_state = "none yet"
        self._active_history: _HistoryWindow | None = None
        self._agent_cache: dict[int, str] = {}
        self._hour_ns: dict[tuple[int, int, int, int], int] = {}
        self._tob: dict[str, list[Any]] = {}
        self._price_books: dict[str, dict[str, list[list[Any]]]] = {}
        self._offer_books: dict[str, dict[str, list[list[Any]]]] = {}

    def __repr__(self) -> str:  # never the credentials
        return f"ProfitDllSource(path={str(self.path)!r}, symbols={self.symbols!r})"

    # --- lifecycle ----------------------------------------------------------------------------

    def open(self) -> None:
        """Load the DLL, log in and register every market-data callback (does not wait for login)."""
        if self._lib is not None:
            return
        if self._credentials is None:
            raise DllError("this ProfitDLL source was already used; create a new one")
        lib = load_library(self.path)
        self._make_callbacks(lib)
        key, user, password = self._credentials
        self._credentials = None
        cb = self._callbacks
        with self._api_lock:
            rc = lib.DLLInitializeMarketLogin(
                key,
                user,
                password,
                cb["state"],
                None,
                cb["daily"],
                None,
                None,
                None,
                cb["progress"],
                cb["tiny_book"],
            )
        del key, user, password
        if rc < 0:
            hint = (
                " Check that PROFIT_ACTIVATION_KEY, PROFIT_USER and PROFIT_PASSWORD are set."
                if rc == -2147483645
                else ""
            )
            raise DllError(f"DLLInitializeMarketLogin failed: {describe_result(rc)}.{hint}")
        self._lib = lib
        self._initialized = True
        self._opened_at = time.monotonic()
        registrations = (
            ("SetStateCallback", "state"),
            ("SetTradeCallbackV2", "trade"),
            ("SetHistoryTradeCallbackV2", "history_trade"),
            ("SetDailyCallback", "daily"),
            ("SetTinyBookCallback", "tiny_book"),
            ("SetPriceBookCallbackV2", "price_book"),
            ("SetOfferBookCallbackV2", "offer_book"),
            ("SetSerieProgressCallback", "progress"),
            ("SetChangeStateTickerCallback", "ticker_state"),
            ("SetInvalidTickerCallback", "invalid_ticker"),
        )
        for function, name in registrations:
            rc = getattr(lib, function)(cb[name])
            if rc < 0:
                self.close()
                raise DllError(f"{function} failed: {describe_result(rc)}")

    @property
    def backlog(self) -> int:
        """Records the callbacks queued that `read` has not taken yet."""
        return self._queue.qsize()

    @property
    def finished(self) -> bool:
        """A live feed never finishes by itself; true once closed."""
        return self._closed

    def close(self) -> None:
        """DLLFinalize (joins the DLL's thread), then drop the callback objects. Idempotent."""
        with self._api_lock:
            if self._lib is not None and self._initialized:
                self._initialized = False
                self._lib.DLLFinalize()
            self._closed = True
            self._callbacks.clear()  # only now: nothing can call them any more

    def __enter__(self) -> ProfitDllSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- callbacks (DLL thread): copy, stamp, enqueue ----------------------------------------

    def _make_callbacks(self, lib: Any) -> None:
        put = self._queue.put_nowait
        clock = self.clock
        translate = lib.TranslateTrade
        free_pointer = lib.FreePointer
        string_at = ctypes.string_at
        threads = self.callback_threads
        get_ident = threading.get_ident
        counters = self.counters
        errors = self.callback_errors
        live_trade = TConnectorTrade()
        history_trade = TConnectorTrade()

        def failed(where: str, exc: BaseException) -> None:
            counters["callback_failures"] += 1
            if len(errors) < 10:
                errors.append(f"{where}: {exc!r}")

        def copy_array(pointer: int | None) -> bytes | None:
            # Book arrays are only valid during the callback: copy, then give them back (§8).
            if not pointer:
                return None
            _count, size = _HEADER.unpack(string_at(pointer, _HEADER.size))
            data = string_at(pointer, size) if _HEADER.size <= size <= MAX_ARRAY_BYTES else b""
            free_pointer(pointer, size)
            return data

        def on_state(conn_type: int, result: int) -> None:
            try:
                threads.add(get_ident())
                put((_STATE, clock(), conn_type, result))
            except BaseException as exc:
                failed("state", exc)

        def trade_callback(kind: int, buffer: TConnectorTrade, where: str) -> Callable[..., None]:
            def on_trade(asset: TConnectorAssetIdentifier, p_trade: int | None, flags: int) -> None:
                try:
                    stamp = clock()
                    threads.add(get_ident())
                    buffer.Version = 0
                    rc = translate(p_trade, buffer)  # only valid now: the handle dies on return
                    d = buffer.TradeDate
                    put(
                        (
                            kind,
                            stamp,
                            asset.Ticker,
                            flags,
                            rc,
                            d.wYear,
                            d.wMonth,
                            d.wDay,
                            d.wHour,
                            d.wMinute,
                            d.wSecond,
                            d.wMilliseconds,
                            buffer.TradeNumber,
                            buffer.Price,
                            buffer.Quantity,
                            buffer.Volume,
                            buffer.BuyAgent,
                            buffer.SellAgent,
                            buffer.TradeType,
                        )
                    )
                except BaseException as exc:
                    failed(where, exc)

            return on_trade

        def on_daily(asset: TAssetIDRec, date: str | None, *values: float) -> None:
            try:
                threads.add(get_ident())
                put((_DAILY, clock(), asset.ticker, date, values))
            except BaseException as exc:
                failed("daily", exc)

        def on_tiny_book(asset: TAssetIDRec, price: float, qty: int, side: int) -> None:
            try:
                threads.add(get_ident())
                put((_TINY, clock(), asset.ticker, price, qty, side))
            except BaseException as exc:
                failed("tiny_book", exc)

        def on_price_book(
            asset: TAssetIDRec,
            action: int,
            position: int,
            side: int,
            qty: int,
            count: int,
            price: float,
            p_sell: int | None,
            p_buy: int | None,
        ) -> None:
            try:
                stamp = clock()
                threads.add(get_ident())
                sell = copy_array(p_sell)
                buy = copy_array(p_buy)
                put(
                    (_PRICE_BOOK, stamp, asset.ticker, action, position, side, qty, count, price)
                    + (sell, buy)
                )
            except BaseException as exc:
                failed("price_book", exc)

        def on_offer_book(
            asset: TAssetIDRec,
            action: int,
            position: int,
            side: int,
            qty: int,
            agent: int,
            offer_id: int,
            price: float,
            has_price: int,
            has_qty: int,
            has_date: int,
            has_offer_id: int,
            has_agent: int,
            date: str | None,
            p_sell: int | None,
            p_buy: int | None,
        ) -> None:
            try:
                stamp = clock()
                threads.add(get_ident())
                has = (
                    (1 if has_price & 0xFFFF else 0)
                    | (2 if has_qty & 0xFFFF else 0)
                    | (4 if has_date & 0xFFFF else 0)
                    | (8 if has_offer_id & 0xFFFF else 0)
                    | (16 if has_agent & 0xFFFF else 0)
                )
                sell = copy_array(p_sell)
                buy = copy_array(p_buy)
                put(
                    (_OFFER_BOOK, stamp, asset.ticker, action, position, side, qty, agent)
                    + (offer_id, price, has, date, sell, buy)
                )
            except BaseException as exc:
                failed("offer_book", exc)

        def on_progress(asset: TAssetIDRec, progress: int) -> None:
            try:
                threads.add(get_ident())
                put((_PROGRESS, clock(), asset.ticker, progress))
            except BaseException as exc:
                failed("progress", exc)

        def on_ticker_state(asset: TAssetIDRec, date: str | None, state: int) -> None:
            try:
                threads.add(get_ident())
                put((_TICKER_STATE, clock(), asset.ticker, date, state))
            except BaseException as exc:
                failed("ticker_state", exc)

        def on_invalid_ticker(asset: TConnectorAssetIdentifier) -> None:
            try:
                threads.add(get_ident())
                put((_INVALID_TICKER, clock(), asset.Ticker, asset.Exchange))
            except BaseException as exc:
                failed("invalid_ticker", exc)

        self._callbacks = {
            "state": StateCallback(on_state),
            "trade": TradeCallbackV2(trade_callback(_TRADE, live_trade, "trade")),
            "history_trade": TradeCallbackV2(
                trade_callback(_HISTORY, history_trade, "history_trade")
            ),
            "daily": DailyCallback(on_daily),
            "tiny_book": TinyBookCallback(on_tiny_book),
            "price_book": PriceBookCallbackV2(on_price_book),
            "offer_book": OfferBookCallbackV2(on_offer_book),
            "progress": ProgressCallback(on_progress),
            "ticker_state": ChangeStateTickerCallback(on_ticker_state),
            "invalid_ticker": InvalidTickerCallback(on_invalid_ticker),
            # the trade buffers are written by the DLL inside callbacks: keep them as long
            "_buffers": (live_trade, history_trade),
        }

    # --- read (publishing thread): raw records -> events ------------------------------------

    def read(self, timeout_s: float) -> list[Event]:
        """Events decoded from what the callbacks queued; [] after `timeout_s` with nothing new.

        Raises DllError when the login failed (after returning the failing State), when the
        market-data connection does not come up within `login_timeout_s`, or when a subscription
        or history request is refused.
        """
        if self._fatal is not None:
            raise self._fatal
        if self._lib is None:
            raise DllError("the ProfitDLL source is not open")
        if self._closed:
            return []
        events: list[Event] = []
        raws: list[tuple[Any, ...]] = []
        try:
            raws.append(self._queue.get(timeout=max(timeout_s, 0.0)))
            while len(raws) < self.max_batch:
                raws.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        for raw in raws:
            try:
                self._convert(raw, events)
            except Exception as exc:  # one bad record must not stop the feed: count it
                self.stats.reject(f"{_KIND_NAMES.get(raw[0], raw[0])}: {exc}")
            if self._fatal is not None:
                break
        while self._errors_reported < len(self.callback_errors):
            self._problem(f"callback failed: {self.callback_errors[self._errors_reported]}")
            self._errors_reported += 1
        if self._fatal is None:
            try:
                self._advance(events)
            except DllError as exc:
                self._fatal = exc
        if self._fatal is not None and not events:
            raise self._fatal
        # a fatal error is raised by the next read: these events (the failing state) go out first
        self.stats.produced += len(events)
        return events

    def _advance(self, events: list[Event]) -> None:
        """Requests made from the publishing thread, never from a callback (§9)."""
        now = time.monotonic()
        if not self._market_connected and not self._subscribed:
            if now - self._opened_at > self.login_timeout_s:
                self._fatal = DllError(
                    f"no market-data connection from ProfitDLL after {self.login_timeout_s:g} s "
                    f"(last state: {self._last_state}). Check the network and the license."
                )
            return
        if not self._subscribed and self._market_connected:
            self._subscribe(events)
        window = self._active_history
        if window is not None:
            stalled = now - window.requested_at > self.history_timeout_s
            quiet_after_100 = (
                window.progress_100_at is not None and now - window.progress_100_at > 10.0
            )
            if stalled or quiet_after_100:
                reason = "HISTORY_TIMEOUT" if stalled else "HISTORY_DONE"
                self._finish_history(window, events, reason)
        if self._active_history is None and self._history:
            self._request_history(self._history.pop(0), events)

    def _call(self, function: str, *args: Any) -> int:
        with self._api_lock:
            if not self._initialized:
                raise DllError("the ProfitDLL session is closed")
            return int(getattr(self._lib, function)(*args))

    def _subscribe(self, events: list[Event]) -> None:
        self._subscribed = True
        functions = ["SubscribeTicker"]
        if "price" in self.books:
            functions.append("SubscribePriceBook")
        if "offer" in self.books:
            functions.append("SubscribeOfferBook")
        for ticker, exchange in self.symbols:
            for function in functions:
                rc = self._call(function, ticker, exchange)
                if rc < 0:
                    hint = (
                        " Use B for B3 equities or F for derivatives (e.g. WDOQ25:F)."
                        if rc == -2147483633
                        else ""
                    )
                    raise DllError(
                        f"{function}({ticker}, {exchange}) failed: {describe_result(rc)}.{hint}"
                    )
            stamp = self.clock()
            events.append(
                State(
                    symbol=ticker,
                    ts_event=stamp,
                    source="subscription",
                    code=0,
                    text="SUBSCRIBED",
                    ts_init=stamp,
                )
            )

    def _request_history(self, window: _HistoryWindow, events: list[Event]) -> None:
        rc = self._call(
            "GetHistoryTrades", window.ticker, window.exchange, window.start, window.end
        )
        if rc < 0:
            raise DllError(
                f"GetHistoryTrades({window.ticker}, {window.start} .. {window.end}) failed: "
                f"{describe_result(rc)}"
            )
        window.requested_at = time.monotonic()
        self._active_history = window
        stamp = self.clock()
        events.append(
            State(
                symbol=window.ticker,
                ts_event=stamp,
                source="history",
                code=0,
                text=f"HISTORY_REQUESTED {window.start} .. {window.end}",
                ts_init=stamp,
            )
        )

    def _finish_history(self, window: _HistoryWindow, events: list[Event], text: str) -> None:
        self._active_history = None
        self.counters["history_windows_done"] += 1
        stamp = self.clock()
        events.append(
            State(
                symbol=window.ticker,
                ts_event=stamp,
                source="history",
                code=window.trades,
                text=text,
                ts_init=stamp,
            )
        )

    # --- introspection ----------------------------------------------------------------------------

    def depth(self, symbol: str, side: str, book: str = "price") -> list[list[Any]]:
        """The book side as maintained from the DLL's updates, best first (a copy)."""
        books = self._price_books if book == "price" else self._offer_books
        return _best_first(books.get(symbol, {}).get(side, []), side)

    def top_of_book(self, symbol: str) -> tuple[float, int, float, int] | None:
        top = self._tob.get(symbol)
        return (top[0], top[1], top[2], top[3]) if top else None

    def server_clock_ns(self) -> int | None:
        """The DLL's server clock (GetServerClock, B3 local time) as ns, None when unavailable."""
        if self._lib is None or not hasattr(self._lib, "GetServerClock"):
            return None
        date = c_double()
        parts = [c_int() for _ in range(7)]
        with self._api_lock:
            if not self._initialized:
                return None
            rc = self._lib.GetServerClock(ctypes.byref(date), *(ctypes.byref(p) for p in parts))
        if rc != NL_OK:
            return None
        year, month, day, hour, minute, second, ms = (p.value for p in parts)
        try:
            return self._local_ns(year, month, day, hour, minute, second, ms)
        except ValueError:
            return None
