"""ProfitDLL's interface through ctypes: return codes, states in words, structures, callback
prototypes, the table of exports, and `load_library` (section numbers: ../shared/docs/profitdll.md)."""

from __future__ import annotations

import ctypes
import os
import struct
import sys
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
from pathlib import Path
from typing import Any

from qt_cli.core.errors import DllError

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
