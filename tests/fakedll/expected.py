"""What fake_profitdll.c emits, decoded: the values tests compare events with.

Keep in step with KNOWN_TRADES, emit_ticker, emit_price_book, emit_offer_book and emit_history in
fake_profitdll.c. Times are the fake's session clock, 2025-08-08 09:00 in São Paulo (UTC-3).
"""

from __future__ import annotations

from datetime import UTC, datetime

SYMBOL = "WDOQ25"
MS = 1_000_000


def session_ns(offset_ms: int) -> int:
    """2025-08-08 09:00:00.000 São Paulo time plus `offset_ms`, in ns since the epoch."""
    return int(datetime(2025, 8, 8, 12, tzinfo=UTC).timestamp()) * 1_000_000_000 + offset_ms * MS


CONNECTION_STATES = [
    ("activation", 0, "CONNECTION_ACTIVATE_VALID"),
    ("login", 0, "LOGIN_CONNECTED"),
    ("market_data", 1, "MARKET_CONNECTING"),
    ("market_data", 2, "MARKET_WAITING"),
    ("market_data", 4, "MARKET_CONNECTED"),
]

# (trade_id, ts_event, price, quantity, volume, buyer, seller, buyer_name, seller_name,
#  trade_type, aggressor, is_edit)
KNOWN_TRADES = [
    (101, session_ns(100), 5500.0, 5, 275000.0, 72, 3, "Bradesco", "XP", 2, "buy", False),
    (102, session_ns(250), 5500.5, 2, 110010.0, 3, 72, "XP", "Bradesco", 3, "sell", False),
    (103, session_ns(1000), 5501.0, 10, 550100.0, 1, 2, "BTG", "A2", 4, "none", False),
    # the edit of 102 (TC_IS_EDIT): quantity 2 -> 3
    (102, session_ns(250), 5500.5, 3, 165015.0, 3, 72, "XP", "Bradesco", 3, "sell", True),
    # out of order (earlier than 103), trade type 32 "unknown": no aggressor
    (104, session_ns(900), 5499.5, 1, 54995.0, 8, 1, "A8", "BTG", 32, "none", False),
    # a trade type no table knows
    (105, session_ns(2000), 5500.0, 4, 220000.0, 72, 8, "Bradesco", "A8", 99, "none", False),
]
TRADE_FIELDS = (
    "trade_id",
    "ts_event",
    "price",
    "quantity",
    "volume",
    "buyer",
    "seller",
    "buyer_name",
    "seller_name",
    "trade_type",
    "aggressor",
    "is_edit",
)


def generated_trade(i: int) -> tuple[int, int, float, int, str]:
    """(trade_id, ts_event, price, quantity, aggressor) of the i-th FAKE_PROFIT_TRADES trade."""
    price = 5500.0 + (((i * 7) % 11) - 5) * 0.5
    return 1000 + i, session_ns(60_000 + i), price, 1 + i % 5, "sell" if i % 2 else "buy"


def history_trade(i: int, window_start_ns: int) -> tuple[int, int, float, int]:
    """(trade_id, ts_event, price, quantity) of the i-th history trade of a window."""
    return 5000 + i, window_start_ns + i * 1010 * MS, 5400.0 + (i % 10) * 0.5, 1 + i % 3


TOP_OF_BOOK_FINAL = (5500.0, 12, 5500.5, 7)
DAILY = {
    "ts_event": session_ns(2000),
    "open": 5490.0,
    "high": 5510.0,
    "low": 5480.5,
    "close": 5500.5,
    "volume": 1.2e9,
    "adjust": 5495.5,
    "max_limit": 5800.0,
    "min_limit": 5200.0,
    "buy_volume": 6.5e8,
    "sell_volume": 5.5e8,
    "quantity": 24000,
    "trades": 5000,
    "open_interest": 300000,
    "buy_quantity": 12500,
    "sell_quantity": 11500,
    "buy_trades": 2600,
    "sell_trades": 2400,
}

PRICE_BOOK_FULL = {
    "bid": [[5500.0, 12, 3], [5499.0, 15, 2], [5498.5, 20, 4], [5498.0, 25, 2], [5497.5, 30, 3]],
    "ask": [[5500.5, 7, 2], [5501.0, 9, 1], [5501.5, 18, 2], [5502.0, 25, 3], [5502.5, 40, 5]],
}
# (side, action, position, price, quantity, count)
PRICE_BOOK_UPDATES = [
    ("bid", "add", 1, 5499.5, 8, 1),
    ("ask", "edit", 0, 5500.5, 11, 3),  # price filled in from the book
    ("bid", "delete", 5, 5497.5, 30, 3),  # the removed level
    ("ask", "delete_from", 1, 5501.0, 0, 0),  # the first level removed (positions 1 and 0)
]
PRICE_BOOK_AFTER = {
    "bid": [[5500.0, 12, 3], [5499.5, 8, 1], [5499.0, 15, 2], [5498.5, 20, 4], [5498.0, 25, 2]],
    "ask": [[5501.5, 18, 2], [5502.0, 25, 3], [5502.5, 40, 5]],
}

OFFER_BOOK_FULL = {  # [price, quantity, agent, order id] per order
    "bid": [
        [5500.0, 8, 3, 9004],
        [5500.0, 4, 1, 9003],
        [5499.5, 10, 72, 9002],
        [5499.0, 5, 3, 9001],
    ],
    "ask": [[5500.5, 4, 3, 9103], [5500.5, 3, 1, 9102], [5501.0, 6, 72, 9101]],
}
# (side, action, position, price, quantity, agent, order_id); the add carries its own date
OFFER_BOOK_UPDATES = [
    ("bid", "add", 0, 5500.0, 2, 72, 9005),
    ("ask", "edit", 1, 5500.5, 1, 1, 9102),
    ("bid", "delete", 4, 5499.0, 5, 3, 9001),
    ("ask", "delete_from", 0, 5500.5, 4, 3, 9103),
]
OFFER_ADD_TS = session_ns(3000)
OFFER_BOOK_AFTER = {
    "bid": [
        [5500.0, 2, 72, 9005],
        [5500.0, 8, 3, 9004],
        [5500.0, 4, 1, 9003],
        [5499.5, 10, 72, 9002],
    ],
    "ask": [[5500.5, 1, 1, 9102], [5501.0, 6, 72, 9101]],
}
