"""Where a `qt feed --sim` run starts, so runs never overlap what is stored (docs/sim.md).

- `--start T`: there (São Paulo time unless T names an offset; outside session hours the next
  open). A date is its 09:00 open, so `--start 2025-07-01 --duration 270h --rate 0` is 30 sessions.
- realistic pacing (no `--rate`): now, so `ts_event` is the wall clock (the simulator's default).
- `--rate 0` or `--rate N`: just after the latest event the Valkey streams of these symbols hold
  (the next session's open when that is outside session hours), else today's 09:00 (the
  simulator's default). Such a run's venue time does not follow the wall clock, so starting it
  now would only make the next run overlap it.

The Valkey is the one the settings name, or the one on localhost:6379, or the managed one if it
runs; none is started for this. A symbol with stored trades starts at its last trade's price, so
consecutive runs join up instead of jumping to another seed's price level. A realistic run whose
symbols already hold events later than now is warned about: they would be stored late.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qt_cli.core import config, keys
from qt_cli.core.errors import QtError
from qt_cli.core.events import EXCHANGE_TZ, NS_PER_MS
from qt_cli.core.timeparse import format_ns, parse_time

# The streams a feed's events land in, per symbol (candles and features derive from them).
FEED_KINDS = ("ticks", "book", "daily", "state")


@dataclass(frozen=True)
class SimStart:
    """`start_ns` None: the simulator's default; `levels`: (symbol, last stored trade price)."""

    start_ns: int | None
    levels: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class _Stored:
    until_ms: int | None  # the latest event time the streams took
    prices: dict[str, float]  # last trade price per symbol
    where: str  # 'Valkey at URL', or why there is nothing to continue after


def plan_start(
    start: str | None,
    *,
    rate: float | None,
    symbols: Sequence[str],
    say: Callable[[str], None],
    settings: config.Settings,
) -> SimStart:
    """Where (and at which prices) the simulation starts; `say` tells the user why. `settings`
    name the Valkey whose streams the simulation continues after."""
    if start:
        return SimStart(parse_time(start, tz=EXCHANGE_TZ))
    stored = _stored(symbols, settings)
    names = ", ".join(symbols)
    levels = tuple(stored.prices.items())
    if levels:
        say(
            "starting from the last stored price of "
            + ", ".join(f"{s} {p:,.2f}" for s, p in levels)
        )
    if rate is None:  # realistic pacing: venue time is the wall clock
        if stored.until_ms is not None and stored.until_ms * NS_PER_MS > time.time_ns():
            say(
                f"Warning: {stored.where} already holds {names} up to "
                f"{format_ns(stored.until_ms * NS_PER_MS)}, later than now: this run's events "
                "will be stored as late entries (give --start after that time, or trim with "
                "qt cleanup)"
            )
        return SimStart(None, levels)
    if stored.until_ms is None:
        say(
            f"{stored.where}: the simulation starts at today's session open (Friday's at a "
            "weekend; --start to choose)"
        )
        return SimStart(None, levels)
    say(
        f"{stored.where} holds {names} up to {format_ns(stored.until_ms * NS_PER_MS)}: the "
        "simulation continues after it (--start to choose)"
    )
    return SimStart((stored.until_ms + 1) * NS_PER_MS, levels)


def _stored(symbols: Sequence[str], settings: config.Settings) -> _Stored:
    from qt_cli.core import store
    from qt_cli.core.store.reader import last_prices, stored_until_ms

    url = store.find_url(settings)
    if url is None:
        return _Stored(None, {}, "no Valkey configured or running to continue after")
    where = f"Valkey at {store.mask_url(url)}"
    try:
        client = store.connect(url, password=settings.valkey_password, timeout_s=2.0)
    except QtError as exc:
        return _Stored(None, {}, f"{exc} (nothing to continue after)")
    try:
        stream_keys = [keys.stream_key(kind, s) for s in symbols for kind in FEED_KINDS]
        until_ms = stored_until_ms(client, stream_keys)
        prices = last_prices(client, symbols)
    except store.ConnectionFailure:
        return _Stored(None, {}, f"{where} stopped answering (nothing to continue after)")
    finally:
        client.close()
    if until_ms is None:
        return _Stored(None, prices, f"{where} holds nothing of {', '.join(symbols)}")
    return _Stored(until_ms, prices, where)
