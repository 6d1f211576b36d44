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
message, a log line or a repr.
"""

from __future__ import annotations

import ctypes
import math
import os
import queue
import re
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from ctypes import (
    POINTER,
    Structure,
    c_double,
    c_int,
    c_int64,
    c_ubyte,
    c_uint,
    c_ushort,
    c_void_p,
    c_wchar,
    c_wchar_p,
)
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from qt_cli.core import keys
from qt_cli.core.errors import DllError, UsageError
from qt_cli.core.events import (
    EXCHANGE_TZ,
    NS_PER_MS,
    NS_PER_S,
    BookUpdate,
    Daily,
    Event,
    ReceiveClock,
    State,
    TopOfBook,
    Trade,
    aggressor_of,
)
from qt_cli.core.sources.base import SourceStats
from qt_cli.core.timeparse import parse_time

IS_WINDOWS = sys.platform == "win32"
# Every export and every callback of ProfitDLL is stdcall (§1); Linux (the test fake) has cdecl.
FUNCTYPE: Any = getattr(ctypes, "WINFUNCTYPE", None) if IS_WINDOWS else ctypes.CFUNCTYPE
LIBRARY: Any = getattr(ctypes, "WinDLL", None) if IS_WINDOWS else ctypes.CDLL

# --- return codes (§3) -----------------------------------------------------------------------

NL_OK = 0
RESULT_CODES: dict[int, tuple[str, str]] = {
    -2147483647: ("NL_INTERNAL_ERROR", "internal error"),
    -2147483646: ("NL_NOT_INITIALIZED", "DLL not initialized"),
    -2147483645: ("NL_INVALID_ARGS", "bad arguments"),
    -2147483644: ("NL_WAITING_SERVER", "request sent, data not loaded yet"),
    -2147483643: ("NL_NO_LOGIN", "no login"),
    -2147483642: ("NL_NO_LICENSE", "no license"),
    -2147483641: ("NL_PASSWORD_HASH_SHA1", "password is not SHA1"),
    -2147483640: ("NL_PASSWORD_HASH_MD5", "password is not MD5"),
    -2147483639: ("NL_OUT_OF_RANGE", "value out of range or dates out of order"),
    -2147483638: ("NL_MARKET_ONLY", "license has no routing"),
    -2147483637: ("NL_NO_POSITION", "no position"),
    -2147483636: ("NL_NOT_FOUND", "not found"),
    -2147483635: ("NL_VERSION_NOT_SUPPORTED", "record version not supported"),
    -2147483634: ("NL_OCO_NO_RULES", "OCO without rules"),
    -2147483633: ("NL_EXCHANGE_UNKNOWN", "unknown exchange"),
    -2147483632: ("NL_NO_OCO_DEFINED", "no OCO for the order"),
    -2147483631: ("NL_INVALID_SERIE", "invalid series"),
    -2147483630: ("NL_LICENSE_NOT_ALLOWED", "feature not in the license"),
    -2147483629: ("NL_NOT_HARD_LOGOUT", "not in hard-logout state"),
    -2147483628: ("NL_SERIE_NO_HISTORY", "series has no history on the server"),
    -2147483627: ("NL_ASSET_NO_DATA", "asset data not loaded"),
    -2147483626: ("NL_SERIE_NO_DATA", "series empty"),
    -2147483625: ("NL_HAS_STRATEGY_RUNNING", "a strategy is running"),
    -2147483624: ("NL_SERIE_NO_MORE_HISTORY", "no more history"),
    -2147483623: ("NL_SERIE_MAX_COUNT", "series at its maximum size"),
    -2147483622: ("NL_DUPLICATE_RESOURCE", "duplicate (already initialized?)"),
    -2147483621: ("NL_UNSIGNED_CONTRACT", "contract not signed"),
    -2147483620: ("NL_NO_PASSWORD", "no password given"),
    -2147483619: ("NL_NO_USER", "no user given"),
    -2147483618: ("NL_FILE_ALREADY_EXISTS", "file exists"),
    -2147483617: ("NL_INVALID_TICKER", "invalid asset"),
    -2147483616: ("NL_NOT_MASTER_ACCOUNT", "not a master account"),
    -2147483602: ("NL_HISTORY_PERIOD_LIMIT", "history start more than 30 days ago"),
}
NL_INVALID_TICKER = -2147483617
NL_WAITING_SERVER = -2147483644


def result_name(rc: int) -> str:
    """`NL_EXCHANGE_UNKNOWN` for its code; an unknown negative code is a generic error."""
    if rc == NL_OK:
        return "NL_OK"
    known = RESULT_CODES.get(rc)
    if known:
        return known[0]
    return f"NL_UNKNOWN_ERROR({rc})" if rc < 0 else str(rc)


def describe_result(rc: int) -> str:
    """`NL_EXCHANGE_UNKNOWN (unknown exchange)`, for error messages."""
    known = RESULT_CODES.get(rc)
    return f"{known[0]} ({known[1]})" if known else result_name(rc)


# --- connection and ticker states in words (§4, §7) ----------------------------------------

CONNECTION_STATES: dict[int, tuple[str, dict[int, str]]] = {
    0: (
        "login",
        {
            0: "LOGIN_CONNECTED",
            1: "LOGIN_INVALID",
            2: "LOGIN_INVALID_PASS",
            3: "LOGIN_BLOCKED_PASS",
            4: "LOGIN_EXPIRED_PASS",
            200: "LOGIN_UNKNOWN_ERR",
        },
    ),
    1: (
        "routing",
        {
            0: "ROTEAMENTO_DISCONNECTED",
            1: "ROTEAMENTO_CONNECTING",
            2: "ROTEAMENTO_CONNECTED",
            3: "ROTEAMENTO_BROKER_DISCONNECTED",
            4: "ROTEAMENTO_BROKER_CONNECTING",
            5: "ROTEAMENTO_BROKER_CONNECTED",
        },
    ),
    2: (
        "market_data",
        {
            0: "MARKET_DISCONNECTED",
            1: "MARKET_CONNECTING",
            2: "MARKET_WAITING",
            3: "MARKET_NOT_LOGGED",
            4: "MARKET_CONNECTED",
            5: "MARKET_PERFORMANCE_WARNING",
            6: "MARKET_PARTIAL_CONNECTED",
        },
    ),
    3: ("activation", {0: "CONNECTION_ACTIVATE_VALID", 1: "CONNECTION_ACTIVATE_INVALID"}),
}
LOGIN_HINTS = {
    "LOGIN_INVALID": "the user was not recognised: check PROFIT_USER",
    "LOGIN_INVALID_PASS": "wrong password: check PROFIT_PASSWORD",
    "LOGIN_BLOCKED_PASS": "the password is blocked: unblock it with Nelogica",
    "LOGIN_EXPIRED_PASS": "the password expired: change it in Profit, then set PROFIT_PASSWORD",
    "LOGIN_UNKNOWN_ERR": "the login server gave an unknown error: try again later",
    "CONNECTION_ACTIVATE_INVALID": "the activation key was rejected: check PROFIT_ACTIVATION_KEY",
}
TICKER_STATES = {
    0: "OPENED",
    2: "FROZEN",
    3: "INHIBITED",
    4: "AUCTIONED",
    6: "CLOSED",
    10: "PRE_CLOSING",
    13: "PRE_OPENING",
}


def state_words(conn_type: int, result: int) -> tuple[str, str]:
    """(source, text) of a connection state, e.g. (2, 4) -> ("market_data", "MARKET_CONNECTED")."""
    source, texts = CONNECTION_STATES.get(conn_type, (f"connection_{conn_type}", {}))
    return source, texts.get(result, f"UNKNOWN_STATE_{result}")


# --- structures (§2) and callback prototypes (§6) ------------------------------------------


class SystemTime(Structure):
    _fields_ = [
        ("wYear", c_ushort),
        ("wMonth", c_ushort),
        ("wDayOfWeek", c_ushort),
        ("wDay", c_ushort),
        ("wHour", c_ushort),
        ("wMinute", c_ushort),
        ("wSecond", c_ushort),
        ("wMilliseconds", c_ushort),
    ]


class TAssetIDRec(Structure):
    """Declared without packing like the official example (24 bytes on 64-bit; the DLL's packed
    record is 20): same field offsets, and libffi classifies unpacked structs correctly."""

    _fields_ = [("ticker", c_wchar_p), ("bolsa", c_wchar_p), ("feed", c_int)]


class TConnectorAssetIdentifier(Structure):
    _fields_ = [
        ("Version", c_ubyte),
        ("Ticker", c_wchar_p),
        ("Exchange", c_wchar_p),
        ("FeedType", c_ubyte),
    ]


class TConnectorTrade(Structure):
    _fields_ = [
        ("Version", c_ubyte),
        ("TradeDate", SystemTime),
        ("TradeNumber", c_uint),
        ("Price", c_double),
        ("Quantity", c_int64),
        ("Volume", c_double),
        ("BuyAgent", c_int),
        ("SellAgent", c_int),
        ("TradeType", c_ubyte),
    ]


WChar = c_ushort  # Delphi Char is a 2-byte WideChar; test `!= 0` (§9)

StateCallback = FUNCTYPE(None, c_int, c_int)
TradeCallbackV2 = FUNCTYPE(None, TConnectorAssetIdentifier, c_void_p, c_uint)
DailyCallback = FUNCTYPE(None, TAssetIDRec, c_wchar_p, *([c_double] * 10), *([c_int] * 7))
TinyBookCallback = FUNCTYPE(None, TAssetIDRec, c_double, c_int, c_int)
PriceBookCallbackV2 = FUNCTYPE(
    None, TAssetIDRec, c_int, c_int, c_int, c_int64, c_int, c_double, c_void_p, c_void_p
)
OfferBookCallbackV2 = FUNCTYPE(
    None,
    TAssetIDRec,
    c_int,
    c_int,
    c_int,
    c_int64,
    c_int,
    c_int64,
    c_double,
    WChar,
    WChar,
    WChar,
    WChar,
    WChar,
    c_wchar_p,
    c_void_p,
    c_void_p,
)
ProgressCallback = FUNCTYPE(None, TAssetIDRec, c_int)
ChangeStateTickerCallback = FUNCTYPE(None, TAssetIDRec, c_wchar_p, c_int)
InvalidTickerCallback = FUNCTYPE(None, TConnectorAssetIdentifier)

# One table of (restype, argtypes) for every export the binding calls, on every platform.
FUNCTIONS: dict[str, tuple[Any, list[Any]]] = {
    "DLLInitializeMarketLogin": (
        c_int,
        [
            c_wchar_p,
            c_wchar_p,
            c_wchar_p,
            StateCallback,
            c_void_p,  # NewTradeCallback (V1): replaced by SetTradeCallbackV2
            DailyCallback,
            c_void_p,  # PriceBookCallback (V1): replaced by SetPriceBookCallbackV2
            c_void_p,  # OfferBookCallback (V1): replaced by SetOfferBookCallbackV2
            c_void_p,  # HistoryTradeCallback (V1): replaced by SetHistoryTradeCallbackV2
            ProgressCallback,
            TinyBookCallback,
        ],
    ),
    "DLLFinalize": (c_int, []),
    "SubscribeTicker": (c_int, [c_wchar_p, c_wchar_p]),
    "UnsubscribeTicker": (c_int, [c_wchar_p, c_wchar_p]),
    "SubscribePriceBook": (c_int, [c_wchar_p, c_wchar_p]),
    "UnsubscribePriceBook": (c_int, [c_wchar_p, c_wchar_p]),
    "SubscribeOfferBook": (c_int, [c_wchar_p, c_wchar_p]),
    "UnsubscribeOfferBook": (c_int, [c_wchar_p, c_wchar_p]),
    "GetHistoryTrades": (c_int, [c_wchar_p, c_wchar_p, c_wchar_p, c_wchar_p]),
    "TranslateTrade": (c_int, [c_void_p, POINTER(TConnectorTrade)]),
    "FreePointer": (c_int, [c_void_p, c_int]),
    "GetAgentNameLength": (c_int, [c_int, c_uint]),
    "GetAgentName": (c_int, [c_int, c_int, POINTER(c_wchar), c_uint]),
    "SetStateCallback": (c_int, [StateCallback]),
    "SetTradeCallbackV2": (c_int, [TradeCallbackV2]),
    "SetHistoryTradeCallbackV2": (c_int, [TradeCallbackV2]),
    "SetDailyCallback": (c_int, [DailyCallback]),
    "SetTinyBookCallback": (c_int, [TinyBookCallback]),
    "SetPriceBookCallbackV2": (c_int, [PriceBookCallbackV2]),
    "SetOfferBookCallbackV2": (c_int, [OfferBookCallbackV2]),
    "SetSerieProgressCallback": (c_int, [ProgressCallback]),
    "SetChangeStateTickerCallback": (c_int, [ChangeStateTickerCallback]),
    "SetInvalidTickerCallback": (c_int, [InvalidTickerCallback]),
    # optional: used when present
    "GetServerClock": (c_int, [POINTER(c_double)] + [POINTER(c_int)] * 7),
    "SetEnabledLogToDebug": (c_int, [c_int]),
}
OPTIONAL_EXPORTS = frozenset({"GetServerClock", "SetEnabledLogToDebug"})
REQUIRED_EXPORTS = tuple(name for name in FUNCTIONS if name not in OPTIONAL_EXPORTS)

TC_IS_EDIT = 1
TC_LAST_PACKET = 2
OB_LAST_PACKET = 1
CM_IS_SHORT_NAME = 1
BOOK_ACTIONS = {0: "add", 1: "edit", 2: "delete", 3: "delete_from", 4: "full"}
ACTION_ADD, ACTION_EDIT, ACTION_DELETE, ACTION_DELETE_FROM, ACTION_FULL = range(5)
SIDES = {0: "bid", 1: "ask"}
BOOK_KINDS = ("price", "offer")
MAX_ARRAY_BYTES = 64 << 20  # a book array larger than this is corrupt, not data

_PRICE_ENTRY = struct.Struct("<dqI")  # price book V2: price, qty Int64, count Cardinal (§8)
_OFFER_ENTRY = struct.Struct("<dqiqh")  # offer book V2: price, qty, agent, offer id, date length
_HEADER = struct.Struct("<ii")

# raw record kinds on the queue
(
    _STATE,
    _TRADE,
    _HISTORY,
    _DAILY,
    _TINY,
    _PRICE_BOOK,
    _OFFER_BOOK,
    _PROGRESS,
    _TICKER_STATE,
    _INVALID_TICKER,
) = range(10)


def load_library(path: str | os.PathLike[str]) -> Any:
    """Load the DLL, check every required export and declare argtypes; DllError says what is wrong."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DllError(
            f"ProfitDLL not found: {file} does not exist or is not a file. Pass the path of "
            "ProfitDLL64.dll (64-bit Python) or ProfitDLL.dll with --dll."
        )
    if LIBRARY is None or FUNCTYPE is None:  # pragma: no cover - Windows without WinDLL
        raise DllError("this Python has no stdcall support (ctypes.WinDLL) to load ProfitDLL")
    if IS_WINDOWS and sys.maxsize <= 2**32:
        raise DllError(
            "32-bit Python cannot receive ProfitDLL's callbacks (structs passed by value crash "
            "ctypes on x86, CPython issue 85193): use 64-bit Python with ProfitDLL64.dll"
        )
    resolved = file.resolve()
    if IS_WINDOWS:  # companion files live beside the DLL (§1)
        os.add_dll_directory(str(resolved.parent))  # type: ignore[attr-defined,unused-ignore]
    try:
        lib = LIBRARY(str(resolved))
    except OSError as exc:
        bits = 64 if sys.maxsize > 2**32 else 32
        raise DllError(
            f"cannot load {file}: it is not a loadable library for this {bits}-bit Python ({exc}). "
            "Use ProfitDLL64.dll with 64-bit Python and keep its companion files beside it."
        ) from None
    missing = [name for name in REQUIRED_EXPORTS if not hasattr(lib, name)]
    if missing:
        raise DllError(
            f"{file} is not a usable ProfitDLL: it does not export {', '.join(missing)}. "
            "Install a current ProfitDLL (4.0.0.31 or later)."
        )
    for name, (restype, argtypes) in FUNCTIONS.items():
        if hasattr(lib, name):
            function = getattr(lib, name)
            function.restype = restype
            function.argtypes = argtypes
    return lib


# --- helpers ---------------------------------------------------------------------------------

_DLL_DATE_RE = re.compile(
    r"^\s*(\d{1,2})/(\d{1,2})/(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,6}))?)?)?\s*$"
)
# B3 futures: root + month letter + 2-digit year (WDOQ25, DI1F26); equities: 4 letters + class
# digits (PETR4, BOVA11, AAPL34, PETR4F). An explicit ":B" or ":F" always wins over this guess.
_FUTURE_RE = re.compile(r"^[A-Z0-9]{3}[FGHJKMNQUVXZ](\d{2})$")
_EQUITY_RE = re.compile(r"^[A-Z]{4}\d{1,2}F?$")
_EQUITY_CLASSES = frozenset({"11", "31", "32", "33", "34", "35", "39"})  # units, ETFs, BDRs


def parse_symbol(item: str | Sequence[str]) -> tuple[str, str]:
    """(ticker, exchange) from `("WDOQ25", "F")`, `"WDOQ25:F"` or `"WDOQ25"` (exchange guessed:
    `B` for equity-like tickers such as PETR4, else `F` for derivatives)."""
    if isinstance(item, str):
        ticker, _, exchange = item.partition(":")
    else:
        ticker, exchange = item[0], item[1]
    ticker = ticker.strip().upper()
    exchange = exchange.strip().upper() or _guess_exchange(ticker)
    if not keys.valid_symbol(ticker):
        raise UsageError(f"symbol {ticker!r}: use letters, digits, '.', '_' or '-' (e.g. WDOQ25)")
    if len(exchange) != 1 or not exchange.isalpha():
        raise UsageError(
            f"symbol {item!r}: the exchange is one letter, B (B3 equities) or F (derivatives)"
        )
    return ticker, exchange


def _guess_exchange(ticker: str) -> str:
    future = _FUTURE_RE.match(ticker)
    if future and future[1] not in _EQUITY_CLASSES:
        return "F"
    return "B" if _EQUITY_RE.match(ticker) else "F"


def dll_date_ns(text: str | None) -> int | None:
    """ns of a DLL date string `DD/MM/YYYY HH:mm:SS.ZZZ` in B3 local time; None if it is not one."""
    if not text:
        return None
    match = _DLL_DATE_RE.match(text)
    if match is None:
        return None
    day, month, year, hour, minute, second, fraction = match.groups()
    try:
        stamp = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            tzinfo=EXCHANGE_TZ,
        )
    except ValueError:
        return None
    micros = int((fraction or "0").ljust(6, "0"))
    return int(stamp.timestamp()) * NS_PER_S + micros * 1000


def _to_local(value: int | datetime | str) -> datetime:
    """A history bound (ns, datetime, or any time text `qt` reads) as B3 local time."""
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=EXCHANGE_TZ)
        return stamp.astimezone(EXCHANGE_TZ)
    ns = value if isinstance(value, int) else parse_time(value, tz="America/Sao_Paulo")
    return datetime.fromtimestamp(ns / NS_PER_S, tz=EXCHANGE_TZ)


def history_windows(
    start: int | datetime | str, end: int | datetime | str | None
) -> list[tuple[str, str]]:
    """Split [start, end] into one window per B3 calendar day, as the DLL's date strings.

    The DLL rejects WDO/WIN windows of 10 days or more and silently returns less for large ones;
    one day at a time is what works (§5, §9).
    """
    first = _to_local(start)
    last = _to_local(end) if end is not None else datetime.now(tz=EXCHANGE_TZ)
    if last < first:
        raise UsageError("--history-from is after --history-to")
    windows = []
    cursor = first
    while cursor <= last:
        midnight = datetime(cursor.year, cursor.month, cursor.day, tzinfo=EXCHANGE_TZ)
        day_end = min(last, midnight + timedelta(days=1) - timedelta(seconds=1))
        windows.append((_dll_format(cursor), _dll_format(day_end)))
        cursor = midnight + timedelta(days=1)
    return windows


def _dll_format(stamp: datetime) -> str:
    return stamp.strftime("%d/%m/%Y %H:%M:%S")


def parse_price_array(data: bytes) -> list[list[float]]:
    """Price book V2 full-book array (§8) -> [[price, qty, count], …] in array order."""
    count, _size = _HEADER.unpack_from(data, 0)
    end = _HEADER.size + count * _PRICE_ENTRY.size
    if count < 0 or end > len(data):
        raise ValueError(f"price book array of {len(data)} bytes cannot hold {count} levels")
    return [[price, qty, n] for price, qty, n in _PRICE_ENTRY.iter_unpack(data[_HEADER.size : end])]


def parse_offer_array(data: bytes) -> tuple[list[list[Any]], int]:
    """Offer book V2 full-book array (§8) -> ([[price, qty, agent, offer id, date], …], flags).

    Entries are walked by each one's date length T (the manual's fixed 53-byte stride assumes
    T = 23); the trailer holds the OfferBookFlags.
    """
    count, _size = _HEADER.unpack_from(data, 0)
    if count < 0:
        raise ValueError(f"offer book array with {count} entries")
    offset = _HEADER.size
    offers: list[list[Any]] = []
    for _ in range(count):
        if offset + _OFFER_ENTRY.size > len(data):
            raise ValueError(f"offer book array of {len(data)} bytes ends inside an entry")
        price, qty, agent, offer_id, length = _OFFER_ENTRY.unpack_from(data, offset)
        offset += _OFFER_ENTRY.size
        if length < 0 or offset + length > len(data):
            raise ValueError(f"offer book entry date of {length} bytes runs past the array")
        date = data[offset : offset + length].decode("latin-1")
        offset += length
        offers.append([price, qty, agent, offer_id, date])
    flags = struct.unpack_from("<I", data, offset)[0] if offset + 4 <= len(data) else 0
    return offers, flags


def _best_first(entries: list[list[Any]], side: str) -> list[list[Any]]:
    """The DLL's list runs worst -> best (position 0, counted from the end, is the top); sort by
    price anyway, stable, so a wrong guess about that orientation cannot misorder the levels."""
    ordered = [list(entry) for entry in reversed(entries)]  # copies: the book keeps changing
    ordered.sort(key=lambda entry: entry[0], reverse=(side == "bid"))
    return ordered


class _HistoryWindow:
    __slots__ = ("ticker", "exchange", "start", "end", "requested_at", "trades", "progress_100_at")

    def __init__(self, ticker: str, exchange: str, start: str, end: str) -> None:
        self.ticker = ticker
        self.exchange = exchange
        self.start = start
        self.end = end
        self.requested_at = 0.0
        self.trades = 0
        self.progress_100_at: float | None = None


# --- the source ------------------------------------------------------------------------------


class ProfitDllSource:
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
            for side, data in (("bid", buy), ("ask", sell)):
                if data is None:
                    continue
                levels = parse_price_array(data) if data else []
                self._side_list(self._price_books, ticker, side)[:] = levels
                events.append(
                    BookUpdate(
                        symbol=ticker,
                        ts_event=stamp,
                        side=side,
                        action="full",
                        count=len(levels),
                        book="price",
                        levels=_best_first(levels, side),
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
            for side, data in (("bid", buy), ("ask", sell)):
                if data is None:
                    continue
                offers, _flags = parse_offer_array(data) if data else ([], 0)
                entries = [offer[:4] for offer in offers]
                self._side_list(self._offer_books, ticker, side)[:] = entries
                events.append(
                    BookUpdate(
                        symbol=ticker,
                        ts_event=stamp,
                        side=side,
                        action="full",
                        count=len(entries),
                        book="offer",
                        levels=_best_first(entries, side),
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
