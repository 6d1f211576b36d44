"""A long-running stage's lifecycle: open -> run -> close, stopped by a signal, totals at the end.

Every stage (feed, bridge, features, predict) is driven by `run_stage`; the signals are handled
by `stop_signals` only: SIGINT and SIGTERM ask the stage to stop (the command prints one line and
the totals), SIGHUP asks it to reload when it can. A signal that arrives while the stage is already
stopping gives the previous handler back, so a third Ctrl+C interrupts at once. While it runs,
the cycle collector is tuned for its loop (`gcpause.streaming_gc`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

from qt_cli.core.gcpause import streaming_gc

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stage(Protocol):
    """What `run_stage` drives: `open`, a blocking `run`, `stop` (from a signal or another thread),
    `stopping`, `close`."""

    def open(self) -> None: ...

    def run(self) -> Any: ...

    def stop(self, reason: str = ...) -> None: ...

    @property
    def stopping(self) -> bool: ...

    def close(self) -> None: ...


class StopFlag:
    """`stop(reason)` / `stopping` for a stage whose loop watches `self._stop` (safe from a signal
    handler); the first reason is kept in `self.stats.stopped_by`."""

    _stop: threading.Event
    stats: Any

    def stop(self, reason: str = "stopped") -> None:
        if not self._stop.is_set():
            self.stats.stopped_by = self.stats.stopped_by or reason
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()


@contextlib.contextmanager
def stop_signals(
    stop: Callable[[str], None],
    *,
    stopping: Callable[[], bool] | None = None,
    reload: Callable[[], None] | None = None,
) -> Iterator[bool]:
    """Within the block, SIGINT/SIGTERM call `stop(signal name)` and SIGHUP `reload()` (when
    given); the previous handlers come back at the end. Installed only on the main thread (a
    stage run from another thread is stopped by its owner); yields whether they were installed."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous: dict[int, Any] = {}

    def on_stop(signum: int, _frame: Any) -> None:
        if stopping is not None and stopping():
            # Already stopping (flushing, lingering): this one is passed on, the next interrupts.
            with contextlib.suppress(ValueError):
                signal.signal(signum, previous.get(signum, signal.SIG_DFL))
        stop(signal.Signals(signum).name)

    def on_reload(_signum: int, _frame: Any) -> None:
        if reload is not None:
            reload()

    for stop_signal in STOP_SIGNALS:
        previous[stop_signal] = signal.signal(stop_signal, on_stop)
    if reload is not None and hasattr(signal, "SIGHUP"):
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_reload)
    try:
        yield True
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_stage(
    stage: Stage,
    *,
    run: Callable[[], T] | None = None,
    totals: Callable[[], T] | None = None,
    handle_signals: bool = True,
    reload: Callable[[], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> T:
    """open -> run -> close with the stop signals handled; returns `totals()` taken after the run
    and before close (default: what `run` returned). `run` replaces `stage.run` (e.g. to pass a
    progress callback). The stage is closed whatever happens."""
    guard = (
        stop_signals(stage.stop, stopping=lambda: stage.stopping, reload=reload)
        if handle_signals
        else contextlib.nullcontext(False)
    )
    with guard:  # kept through close: a signal while flushing is passed on, not a traceback
        try:
            stage.open()
            if on_start is not None:
                on_start()
            with streaming_gc():
                result = (run or stage.run)()
            return totals() if totals is not None else result
        finally:
            stage.close()
