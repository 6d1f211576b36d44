"""Pure helpers of the ProfitDLL source: symbols, the DLL's dates, history windows, book arrays."""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from qt_cli.core import keys
from qt_cli.core.errors import UsageError
from qt_cli.core.events import (
    EXCHANGE_TZ,
    NS_PER_S,
)
from qt_cli.core.sources.profitdll.api import _HEADER, _OFFER_ENTRY, _PRICE_ENTRY
from qt_cli.core.timeparse import parse_time

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
    ns = value if isinstance(value, int) else parse_time(value, tz=EXCHANGE_TZ)
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
