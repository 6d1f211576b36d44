"""Where a `qt feed --sim` run starts in venue time, so runs never overlap what is stored.

- `--start T`: there (São Paulo time unless T names an offset; outside session hours the next
  open). A date is its 09:00 open, so `--start 2025-07-01 --duration 270h --rate 0` is 30 sessions.
- paced (no `--rate 0`): now, so `ts_event` is the wall clock (the simulator's default).
- `--rate 0`: at the first session open after the latest event the Valkey streams of these
  symbols hold (the Valkey the settings name, or the one on localhost:6379 or the managed one if
  running; none is started for this), else today's 09:00 (the simulator's default). A new run
  is a new day: its price level comes from its own seed, so it never jumps mid-session.

A paced run whose symbols already hold events later than now is warned about: its events would
be stored as late entries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from qt_cli.core import config, keys
from qt_cli.core.errors import QtError
from qt_cli.core.events import EXCHANGE_TZ, NS_PER_MS
from qt_cli.core.sources.sim import next_open_ns
from qt_cli.core.timeparse import format_ns, parse_time

# The streams a feed's events land in, per symbol (candles and features derive from them).
FEED_KINDS = ("ticks", "book", "daily", "state")


def plan_start(
    start: str | None,
    *,
    rate: float | None,
    symbols: Sequence[str],
    say: Callable[[str], None],
) -> int | None:
    """Venue time (ns) the simulation starts at, or None for the simulator's own default."""
    if start:
        return parse_time(start, tz=EXCHANGE_TZ)
    stored_ms, where = _stored_until_ms(symbols)
    names = ", ".join(symbols)
    if rate != 0:  # paced
        if stored_ms is not None and stored_ms * NS_PER_MS > time.time_ns():
            say(
                f"Warning: {where} already holds {names} up to {format_ns(stored_ms * NS_PER_MS)}, "
                "later than now: this run's events will be stored as late entries "
                "(give --start after that time, or trim with qt cleanup)"
            )
        return None
    if stored_ms is None:
        say(
            f"{where}: the simulation starts at today's session open (Friday's at a weekend; "
            "--start to choose)"
        )
        return None
    start_ns = next_open_ns(stored_ms * NS_PER_MS)
    say(
        f"{where} holds {names} up to {format_ns(stored_ms * NS_PER_MS)}: the simulation "
        f"continues at the next session's open, {format_ns(start_ns)} (--start to choose)"
    )
    return start_ns


def _stored_until_ms(symbols: Sequence[str]) -> tuple[int | None, str]:
    """(latest event ms the streams of `symbols` hold, 'Valkey at URL'); without one, (None,
    why not)."""
    from qt_cli.core import store
    from qt_cli.core.store.reader import stored_until_ms

    settings = config.current()
    url = store.find_url(settings)
    if url is None:
        return None, "no Valkey configured or running to continue after"
    where = f"Valkey at {store.mask_url(url)}"
    try:
        client = store.connect(url, password=settings.valkey_password, timeout_s=2.0)
    except QtError as exc:
        return None, f"{exc} (nothing to continue after)"
    try:
        stream_keys = [keys.stream_key(kind, s) for s in symbols for kind in FEED_KINDS]
        stored = stored_until_ms(client, stream_keys)
    except store.ConnectionFailure:
        return None, f"{where} stopped answering (nothing to continue after)"
    finally:
        client.close()
    if stored is None:
        return None, f"{where} holds nothing of {', '.join(symbols)}"
    return stored, where
