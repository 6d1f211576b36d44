"""Raw DLL records (queued by the callbacks) -> events, and the books kept per side (§8)."""

from __future__ import annotations

import ctypes
import math
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from qt_cli.core import keys
from qt_cli.core.errors import DllError
from qt_cli.core.events import (
    EXCHANGE_TZ,
    NS_PER_MS,
    NS_PER_S,
    BookUpdate,
    Daily,
    Event,
    State,
    TopOfBook,
    Trade,
    aggressor_of,
)
from qt_cli.core.sources.base import SourceStats
from qt_cli.core.sources.profitdll.api import (
    _DAILY,
    _HISTORY,
    _INVALID_TICKER,
    _OFFER_BOOK,
    _PRICE_BOOK,
    _PROGRESS,
    _STATE,
    _TICKER_STATE,
    _TINY,
    _TRADE,
    ACTION_ADD,
    ACTION_DELETE,
    ACTION_DELETE_FROM,
    ACTION_EDIT,
    ACTION_FULL,
    BOOK_ACTIONS,
    CM_IS_SHORT_NAME,
    LOGIN_HINTS,
    NL_INVALID_TICKER,
    NL_OK,
    NL_WAITING_SERVER,
    SIDES,
    TC_IS_EDIT,
    TC_LAST_PACKET,
    TICKER_STATES,
    describe_result,
    state_words,
)
from qt_cli.core.sources.profitdll.parse import (
    _best_first,
    _HistoryWindow,
    dll_date_ns,
    parse_offer_array,
    parse_price_array,
)


class _Converter:
    """The conversion half of `ProfitDllSource` (runs on the publishing thread)."""

    # Set by ProfitDllSource.__init__ (declared here for the type checker only).
    agent_names: bool
    stats: SourceStats
    counters: dict[str, int]
    _lib: Any
    _api_lock: threading.Lock
    _initialized: bool
    _fatal: DllError | None
    _active_history: _HistoryWindow | None
    _agent_cache: dict[int, str]
    _hour_ns: dict[tuple[int, int, int, int], int]
    _tob: dict[str, list[Any]]
    _price_books: dict[str, dict[str, list[list[Any]]]]
    _offer_books: dict[str, dict[str, list[list[Any]]]]

    if TYPE_CHECKING:  # defined by ProfitDllSource

        def _finish_history(
            self, window: _HistoryWindow, events: list[Event], text: str
        ) -> None: ...

    # --- conversion ---------------------------------------------------------------------------

    def _convert(self, raw: tuple[Any, ...], events: list[Event]) -> None:
        kind = raw[0]
        if kind == _TRADE or kind == _HISTORY:
            self._convert_trade(raw, events)
        elif kind == _PRICE_BOOK:
            self._convert_price_book(raw, events)
        elif kind == _OFFER_BOOK:
            self._convert_offer_book(raw, events)
        elif kind == _TINY:
            self._convert_tiny_book(raw, events)
        elif kind == _STATE:
            self._convert_state(raw, events)
        elif kind == _DAILY:
            self._convert_daily(raw, events)
        elif kind == _PROGRESS:
            self._convert_progress(raw, events)
        elif kind == _TICKER_STATE:
            _, stamp, ticker, date, state = raw
            events.append(
                State(
                    symbol=ticker,
                    ts_event=dll_date_ns(date) or stamp,
                    source="ticker",
                    code=state,
                    text=TICKER_STATES.get(state, f"UNKNOWN_TICKER_STATE_{state}"),
                    ts_init=stamp,
                )
            )
        elif kind == _INVALID_TICKER:
            _, stamp, ticker, exchange = raw
            self.stats.reject(f"{ticker} ({exchange}): the DLL says this ticker is invalid")
            events.append(
                State(
                    symbol=ticker if ticker and keys.valid_symbol(ticker) else "*",
                    ts_event=stamp,
                    source="subscription",
                    code=NL_INVALID_TICKER,
                    text="INVALID_TICKER",
                    ts_init=stamp,
                )
            )

    def _convert_state(self, raw: tuple[Any, ...], events: list[Event]) -> None:
        _, stamp, conn_type, result = raw
        source, text = state_words(conn_type, result)
        self._last_state = f"{text} ({conn_type},{result})"
        events.append(
            State(symbol="*", ts_event=stamp, source=source, code=result, text=text, ts_init=stamp)
        )
        if conn_type == 2:
            if result == 4:
                self._market_connected = True
            elif result in (5, 6):
                self.counters["backpressure_states"] += 1
                self._problem(f"ProfitDLL reported {text}: data may be late or lost")
        if (conn_type == 0 and result != 0) or (conn_type == 3 and result != 0):
            hint = LOGIN_HINTS.get(
                text, "check PROFIT_ACTIVATION_KEY, PROFIT_USER and PROFIT_PASSWORD"
            )
            what = "activation" if conn_type == 3 else "login"
            self._fatal = DllError(f"ProfitDLL {what} failed: {text}: {hint}.")

    def _local_ns(
        self, year: int, month: int, day: int, hour: int, minute: int, second: int, ms: int
    ) -> int:
        """A TSystemTime in B3 local time -> ns since the epoch (cached per hour: DST moves at
        hour boundaries)."""
        key = (year, month, day, hour)
        base = self._hour_ns.get(key)
        if base is None:
            if len(self._hour_ns) > 50_000:
                self._hour_ns.clear()
            base = int(datetime(year, month, day, hour, tzinfo=EXCHANGE_TZ).timestamp()) * NS_PER_S
            self._hour_ns[key] = base
        if not (0 <= minute < 60 and 0 <= second <= 60 and 0 <= ms < 1000):
            raise ValueError(f"time {hour:02d}:{minute:02d}:{second:02d}.{ms:03d} is not valid")
        return base + (minute * 60 + second) * NS_PER_S + ms * NS_PER_MS

    def _convert_trade(self, raw: tuple[Any, ...], events: list[Event]) -> None:
        (kind, stamp, ticker, flags, rc, year, month, day, hour, minute, second, ms) = raw[:12]
        number, price, qty, volume, buyer, seller, trade_type = raw[12:]
        history = kind == _HISTORY
        window = self._active_history if history else None
        last_packet = history and bool(flags & TC_LAST_PACKET)
        try:
            if rc != NL_OK:
                self.counters["translate_failures"] += 1
                self.stats.reject(f"{ticker}: TranslateTrade returned {describe_result(rc)}")
            elif year == 0 or not price > 0 or not math.isfinite(price):
                if history:
                    # V2 history downloads can start with an all-zero trade (§9)
                    self.counters["zero_history_trades"] += 1
                self.stats.reject(
                    f"{ticker}: {'history ' if history else ''}trade {number} with zero date or "
                    f"price {price!r} dropped"
                )
            else:
                ts_event = self._local_ns(year, month, day, hour, minute, second, ms)
                events.append(
                    Trade(
                        symbol=ticker,
                        ts_event=ts_event,
                        price=price,
                        quantity=qty,
                        volume=volume,
                        trade_id=number,
                        buyer=buyer,
                        seller=seller,
                        trade_type=trade_type,
                        aggressor=aggressor_of(trade_type),
                        is_edit=bool(flags & TC_IS_EDIT),
                        buyer_name=self._agent_name(buyer),
                        seller_name=self._agent_name(seller),
                        history=history,
                        ts_init=stamp,
                    )
                )
                if window is not None and window.ticker == ticker:
                    window.trades += 1
        finally:
            if last_packet and window is not None and window.ticker == ticker:
                self._finish_history(window, events, "HISTORY_DONE")

    def _agent_name(self, agent: int) -> str:
        if not self.agent_names or agent <= 0:
            return ""
        name = self._agent_cache.get(agent)
        if name is not None:
            return name
        with self._api_lock:
            if not self._initialized:
                return ""
            length = int(self._lib.GetAgentNameLength(agent, CM_IS_SHORT_NAME))
            if length > 0:
                buffer = ctypes.create_unicode_buffer(length + 1)
                copied = int(self._lib.GetAgentName(length, agent, buffer, CM_IS_SHORT_NAME))
                name = buffer.value if copied >= 0 else ""
            else:
                name = ""
        if length != NL_WAITING_SERVER:  # not loaded yet: ask again next time
            self._agent_cache[agent] = name
        return name

    def _convert_tiny_book(self, raw: tuple[Any, ...], events: list[Event]) -> None:
        _, stamp, ticker, price, qty, side = raw
        top = self._tob.setdefault(ticker, [math.nan, 0, math.nan, 0])
        valid = price > 0 and math.isfinite(price)
        if side == 0:
            top[0], top[1] = (price, qty) if valid else (math.nan, 0)
        elif side == 1:
            top[2], top[3] = (price, qty) if valid else (math.nan, 0)
        else:
            raise ValueError(f"tiny book side {side} is neither 0 (buy) nor 1 (sell)")
        events.append(
            TopOfBook(
                symbol=ticker,
                ts_event=stamp,
                bid_price=top[0],
                bid_qty=top[1],
                ask_price=top[2],
                ask_qty=top[3],
                ts_init=stamp,
            )
        )

    def _convert_daily(self, raw: tuple[Any, ...], events: list[Event]) -> None:
        _, stamp, ticker, date, values = raw
        (open_, high, low, close, volume, adjust, max_limit, min_limit) = values[:8]
        (buy_volume, sell_volume, quantity, trades, open_interest) = values[8:13]
        (buy_quantity, sell_quantity, buy_trades, sell_trades) = values[13:17]
        events.append(
            Daily(
                symbol=ticker,
                ts_event=dll_date_ns(date) or stamp,
                open=open_,
                high=high,
                low=low,
                close=close,
                volume=volume,
                adjust=adjust,
                max_limit=max_limit,
                min_limit=min_limit,
                buy_volume=buy_volume,
                sell_volume=sell_volume,
                quantity=quantity,
                trades=trades,
                open_interest=open_interest,
                buy_quantity=buy_quantity,
                sell_quantity=sell_quantity,
                buy_trades=buy_trades,
                sell_trades=sell_trades,
                ts_init=stamp,
            )
        )

    def _convert_progress(self, raw: tuple[Any, ...], events: list[Event]) -> None:
        _, stamp, ticker, progress = raw
        window = self._active_history
        if window is not None and window.ticker == ticker and progress >= 100:
            window.progress_100_at = time.monotonic()
        events.append(
            State(
                symbol=ticker,
                ts_event=stamp,
                source="history",
                code=progress,
                text="HISTORY_PROGRESS",
                ts_init=stamp,
            )
        )

    # --- books (§8) -------------------------------------------------------------------------------

    def _side_list(
        self, books: dict[str, dict[str, list[list[Any]]]], ticker: str, side: str
    ) -> list[list[Any]]:
        return books.setdefault(ticker, {"bid": [], "ask": []})[side]

    def _problem(self, text: str) -> None:
        if len(self.stats.problems) < 20:
            self.stats.problems.append(text)

    def _position_error(
        self, ticker: str, book: str, action: str, position: int, size: int
    ) -> None:
        self.counters["book_position_errors"] += 1
        self._problem(f"{ticker} {book} book: {action} at position {position} of {size} entries")

    def _convert_price_book(self, raw: tuple[Any, ...], events: list[Event]) -> None:
        _, stamp, ticker, action, position, side_code, qty, count, price, sell, buy = raw
        if action == ACTION_FULL:
            for side_name, data in (("bid", buy), ("ask", sell)):
                if data is None:
                    continue
                levels = parse_price_array(data) if data else []
                self._side_list(self._price_books, ticker, side_name)[:] = levels
                events.append(
                    BookUpdate(
                        symbol=ticker,
                        ts_event=stamp,
                        side=side_name,
                        action="full",
                        count=len(levels),
                        book="price",
                        levels=_best_first(levels, side_name),
                        ts_init=stamp,
                    )
                )
            return
        side = SIDES.get(side_code)
        action_name = BOOK_ACTIONS.get(action)
        if side is None or action_name is None:
            raise ValueError(f"price book action {action} side {side_code} is not known")
        entries = self._side_list(self._price_books, ticker, side)
        size = len(entries)
        index = size - position - 1
        if action == ACTION_ADD:
            at = min(max(size - position, 0), size)
            if at != size - position:
                self._position_error(ticker, "price", action_name, position, size)
            entries.insert(at, [price, qty, count])
        elif 0 <= index < size:
            if action == ACTION_EDIT:
                entries[index][1:3] = [qty, count]
                price = entries[index][0]
            elif action == ACTION_DELETE:
                price, qty, count = entries.pop(index)
            else:  # delete_from: this entry and every later one (positions position..0)
                price = entries[index][0]
                del entries[index:]
        else:
            self._position_error(ticker, "price", action_name, position, size)
            price = math.nan
            if action == ACTION_DELETE_FROM and index < 0:
                entries.clear()
        events.append(
            BookUpdate(
                symbol=ticker,
                ts_event=stamp,
                side=side,
                action=action_name,
                position=position,
                price=price,
                quantity=qty,
                count=count,
                book="price",
                ts_init=stamp,
            )
        )

    def _convert_offer_book(self, raw: tuple[Any, ...], events: list[Event]) -> None:
        (_, stamp, ticker, action, position, side_code, qty, agent) = raw[:8]
        (offer_id, price, has, date, sell, buy) = raw[8:]
        if action == ACTION_FULL:
            for side_name, data in (("bid", buy), ("ask", sell)):
                if data is None:
                    continue
                offers, _flags = parse_offer_array(data) if data else ([], 0)
                entries = [offer[:4] for offer in offers]
                self._side_list(self._offer_books, ticker, side_name)[:] = entries
                events.append(
                    BookUpdate(
                        symbol=ticker,
                        ts_event=stamp,
                        side=side_name,
                        action="full",
                        count=len(entries),
                        book="offer",
                        levels=_best_first(entries, side_name),
                        ts_init=stamp,
                    )
                )
            return
        side = SIDES.get(side_code)
        action_name = BOOK_ACTIONS.get(action)
        if side is None or action_name is None:
            raise ValueError(f"offer book action {action} side {side_code} is not known")
        entries = self._side_list(self._offer_books, ticker, side)
        size = len(entries)
        index = size - position - 1
        ts_event = (dll_date_ns(date) if has & 4 else None) or stamp
        if action == ACTION_ADD:
            at = min(max(size - position, 0), size)
            if at != size - position:
                self._position_error(ticker, "offer", action_name, position, size)
            entries.insert(at, [price, qty, agent, offer_id])
        elif 0 <= index < size:
            entry = entries[index]
            if action == ACTION_EDIT:
                for bit, slot, value in (
                    (1, 0, price),
                    (2, 1, qty),
                    (16, 2, agent),
                    (8, 3, offer_id),
                ):
                    if has & bit:
                        entry[slot] = value
            elif action == ACTION_DELETE:
                entries.pop(index)
            else:
                del entries[index:]
            price, qty, agent, offer_id = entry
        else:
            self._position_error(ticker, "offer", action_name, position, size)
            price = math.nan
            if action == ACTION_DELETE_FROM and index < 0:
                entries.clear()
        events.append(
            BookUpdate(
                symbol=ticker,
                ts_event=ts_event,
                side=side,
                action=action_name,
                position=position,
                price=price,
                quantity=qty,
                count=1,
                agent=agent,
                order_id=offer_id,
                book="offer",
                ts_init=stamp,
            )
        )


_KIND_NAMES = {
    _STATE: "state",
    _TRADE: "trade",
    _HISTORY: "history trade",
    _DAILY: "daily",
    _TINY: "tiny book",
    _PRICE_BOOK: "price book",
    _OFFER_BOOK: "offer book",
    _PROGRESS: "progress",
    _TICKER_STATE: "ticker state",
    _INVALID_TICKER: "invalid ticker",
}
