"""`qt monitor`: a live dashboard of the pipeline; one frame with --once, JSON with --json."""

from __future__ import annotations

import signal
import time
from typing import Annotated, Any

import typer

from qt_cli.options import AsJson, Duration, Symbols
from qt_cli.output import emit_json, out_console, say

HELP = """\
Live dashboard of the pipeline, read from Valkey: per symbol last price, volume, trades and change % over the window, bid/ask/spread, last signal, lags; per stage rate, totals, last seen, gaps, dead letters and pending; Valkey health. A stage or symbol not updated within --stale is shown as STALE.

Symbols default to every symbol with a stream:ticks:* stream (looked up again every 30 s). Each refresh sends a bounded number of cheap commands (no KEYS, no SCAN per frame).

--once prints one frame and exits; --json prints the same data as JSON and exits. Both exit 3 when Valkey cannot be reached (the frame says why); the live dashboard keeps retrying instead. Ctrl+C exits with 0. NO_COLOR turns colours off.

Example: qt monitor --symbol WDOQ25 --refresh 2s
"""


def register(app: typer.Typer, *, name: str, summary: str) -> None:
    @app.command(name, help=HELP, short_help=summary)
    def monitor(
        symbols: Symbols = None,
        refresh: Annotated[
            str, typer.Option("--refresh", help="Time between frames, e.g. 500ms, 1s, 5s.")
        ] = "1s",
        stale: Annotated[
            str,
            typer.Option("--stale", help="A stage or symbol older than this is shown as STALE."),
        ] = "5s",
        window: Annotated[
            str,
            typer.Option(
                "--window",
                help="Event-time window for volume, trades, change % and the price sparkline.",
            ),
        ] = "5m",
        once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
        as_json: AsJson = False,
        duration: Duration = None,
    ) -> None:
        from qt_cli.core import config
        from qt_cli.core.errors import StoreUnavailable
        from qt_cli.core.monitor import Monitor, MonitorOptions, resolve_target
        from qt_cli.core.timeparse import parse_duration_ns

        settings = config.current()
        options = MonitorOptions(
            symbols=tuple(symbols or ()),
            window_ns=parse_duration_ns(window),
            stale_ns=parse_duration_ns(stale),
            refresh_ns=parse_duration_ns(refresh),
        )
        stop_after_ns = parse_duration_ns(duration) if duration else None
        with Monitor(
            lambda: resolve_target(settings), options, password=settings.valkey_password
        ) as source:
            if once or as_json:
                snapshot = source.collect()
                if as_json:
                    emit_json(snapshot.as_dict())
                else:
                    console = out_console()
                    console.print(_frame(snapshot, console.width, settings.timezone, live=False))
                if not snapshot.reachable:
                    raise StoreUnavailable(snapshot.error)
                return
            frames = _run(source, options.refresh_ns, stop_after_ns, settings.timezone)
        say(f"monitor stopped after {frames} frame{'s' if frames != 1 else ''}")


def _frame(snapshot: Any, width: int, timezone: str, *, live: bool = True) -> Any:
    from qt_cli.core.monitor import render

    return render(snapshot, width=width, tz=_zone(timezone), live=live)


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from qt_cli.core.events import EXCHANGE_TZ

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return EXCHANGE_TZ


def _run(source: Any, refresh_ns: int, stop_after_ns: int | None, timezone: str) -> int:
    """Refresh until Ctrl+C, SIGTERM or --duration; a live screen on a terminal, frames otherwise."""
    from rich.live import Live

    console = out_console()
    frames = 0
    started = time.monotonic_ns()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if console.is_terminal:
            with Live(console=console, auto_refresh=False, vertical_overflow="ellipsis") as live:
                while True:
                    frame_started = time.monotonic_ns()
                    snapshot = source.collect()
                    frames += 1
                    live.update(_frame(snapshot, console.width, timezone), refresh=True)
                    if not _wait(started, frame_started, refresh_ns, stop_after_ns):
                        break
        else:
            while True:
                frame_started = time.monotonic_ns()
                snapshot = source.collect()
                frames += 1
                console.print(_frame(snapshot, console.width, timezone))
                console.print()
                if not _wait(started, frame_started, refresh_ns, stop_after_ns):
                    break
    except KeyboardInterrupt:
        pass  # Ctrl+C is how a dashboard ends: exit 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    return frames


def _wait(started: int, frame_started: int, refresh_ns: int, stop_after_ns: int | None) -> bool:
    """Sleep until the next frame is due; False once --duration has passed.

    A frame slower than --refresh is followed by a quarter refresh of rest, never back to back.
    """
    now = time.monotonic_ns()
    pause = max(frame_started + refresh_ns - now, refresh_ns // 4)
    if stop_after_ns is not None:
        left = started + stop_after_ns - now
        if left <= 0:
            return False
        pause = min(pause, left)
    time.sleep(pause / 1e9)
    return stop_after_ns is None or time.monotonic_ns() - started < stop_after_ns


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
