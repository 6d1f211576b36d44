"""Known trade and book series for the feature tests (seeded, so every run sees the same)."""

from __future__ import annotations

import random
from datetime import datetime

from qt_cli.core.events import EXCHANGE_TZ, BookUpdate, Trade

SYMBOL = "WDOQ25"
DAY1_0855 = int(datetime(2025, 8, 7, 8, 55, tzinfo=EXCHANGE_TZ).timestamp()) * 1_000_000_000
DAY2_0858 = int(datetime(2025, 8, 8, 8, 58, tzinfo=EXCHANGE_TZ).timestamp()) * 1_000_000_000


def trade_series(n: int, *, seed: int = 7, boundary_at: int | None = None) -> list[Trade]:
    """A WDO-like random walk: 0.5 ticks, flat stretches, 1 s stamps with ties, 8 agents.

    Stamps advance by 0-3 s or 40 s (many trades share a second, as in the tick export); the
    price stays put for 50 trades every 300 (zero volatility, zero returns); at
    `boundary_at` the series jumps to the next day, just before its open.
    """
    rng = random.Random(seed)
    price = 5400.0
    ts = DAY1_0855
    out = []
    for i in range(n):
        if i == boundary_at:
            ts = DAY2_0858
        step = 1.0 if i % 300 >= 250 else rng.random()  # a quiet stretch every 300 trades
        if step < 0.25:
            price -= 0.5
        elif step < 0.5:
            price += 0.5
        elif step < 0.52:
            price += 2.0 * rng.choice((-1, 1))
        ts += rng.choice((0, 0, 1, 1, 2, 3, 40)) * 1_000_000_000 + rng.randrange(1_000_000)
        qty = rng.choice((1, 1, 2, 5, 5, 10, 25, 100))
        side = rng.choice(("buy", "buy", "sell", "sell", "none"))
        buyer = rng.choice((3, 3, 3, 72, 72, 8, 15, 40, 120, 1982))
        seller = rng.choice((3, 72, 72, 8, 8, 15, 40, 120, 1982))
        out.append(
            Trade(
                SYMBOL,
                ts,
                price,
                qty,
                price * qty * 10.0,
                trade_id=i + 1,
                buyer=buyer,
                seller=seller,
                trade_type={"buy": 2, "sell": 3}.get(side, 1),
                aggressor=side,
                session="s1",
                seq=i + 1,
            )
        )
    return out


def book_series(trades: list[Trade], *, seed: int = 11) -> list[BookUpdate | Trade]:
    """Trades interleaved with price-book events around them (adds, edits, deletes, pulls)."""
    rng = random.Random(seed)
    events: list[BookUpdate | Trade] = []
    seq = 0
    first = trades[0]
    bids = [[first.price - 0.5 * (i + 1), rng.randint(5, 50)] for i in range(6)]
    asks = [[first.price + 0.5 * i, rng.randint(5, 50)] for i in range(6)]

    def emit(ts: int, side: str, action: str, pos: int, price: float, qty: int) -> None:
        nonlocal seq
        seq += 1
        events.append(BookUpdate(SYMBOL, ts, side, action, pos, price, qty, session="b", seq=seq))

    for name, book in (("bid", bids), ("ask", asks)):
        seq += 1
        events.append(
            BookUpdate(
                SYMBOL,
                first.ts_event,
                name,
                "full",
                levels=[[p, q, 1] for p, q in book],
                session="b",
                seq=seq,
            )
        )
    for trade in trades:
        for _ in range(rng.randint(0, 3)):
            side, book = ("bid", bids) if rng.random() < 0.5 else ("ask", asks)
            u = rng.random()
            if u < 0.4 and book:
                pos = rng.randrange(len(book))
                book[pos][1] = max(1, book[pos][1] + rng.randint(-10, 10))
                emit(trade.ts_event, side, "edit", pos, book[pos][0], book[pos][1])
            elif u < 0.6 and len(book) > 2:
                pos = rng.randrange(len(book))
                price = book.pop(pos)[0]
                emit(trade.ts_event, side, "delete", pos, price, 0)
            elif u < 0.65 and len(book) > 3:
                del book[:2]
                emit(trade.ts_event, side, "delete_from", 1, 0.0, 0)
            else:
                sign = -1 if side == "bid" else 1
                best = book[0][0] if book else trade.price + sign * 0.5
                price = best - sign * 0.5 if rng.random() < 0.3 else best
                if price != best or not book:
                    other = asks if side == "bid" else bids
                    if other and (
                        (side == "bid" and price >= other[0][0])
                        or (side == "ask" and price <= other[0][0])
                    ):
                        continue
                    book.insert(0, [price, rng.randint(1, 30)])
                    emit(trade.ts_event, side, "add", 0, price, book[0][1])
        events.append(trade)
    return events
