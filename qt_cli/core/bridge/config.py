"""The bridge's settings (`BridgeConfig`), counters (`BridgeStats`) and tunables."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qt_cli.core import keys
from qt_cli.core.candles import (
    DEFAULT_TIMEFRAMES,
)
from qt_cli.core.endpoints import parse_endpoint
from qt_cli.core.errors import UsageError
from qt_cli.core.records import DEFAULT_MAX_MESSAGE_BYTES
from qt_cli.core.store.writer import (
    DEFAULT_MAXLEN,
)

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

STAGE = "bridge"
PARTIAL_MAXLEN = 10
DEFAULT_BATCH_SIZE = 2_000
DEFAULT_BATCH_MS = 1.0
MAX_BATCH_MS = 60_000.0  # a batch waits at most a minute to fill
DEFAULT_BUFFER_EVENTS = 200_000
RESUME_PAGE = 5_000
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0
OUTAGE_REPORT_EVERY_S = 5.0
DERIVE_QUEUE_MAX = 1_000_000  # ticks waiting for candles/chunks before the backlog is re-read
DERIVE_BATCH = 2_000  # ticks the deriver gathers (or waits DERIVE_LINGER_S for) per pass
DERIVE_LINGER_S = 0.05
SWITCH_INTERVAL_S = 0.0005  # interpreter-lock slice while the bridge runs (default 5 ms)
GC_EVERY_S = 30.0  # reference cycles are collected this often instead of automatically
LATENCY_WINDOW = 4_096  # samples kept for p50/p99 (sorted once a second)
LATENCY_STRIDE = 8  # latency of every 8th written event
WRITE_TIMEOUT_S = 10.0

Say = Callable[[str], None]


def _log_say(message: str) -> None:
    log.warning("%s", message)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- configuration and counters ------------------------------------------------------------------


@dataclass(frozen=True)
class BridgeConfig:
    """Everything `qt bridge` needs; units in the names."""

    inputs: tuple[str, ...]
    output: str
    symbols: tuple[str, ...] = ()
    replay: str | None = None  # the feed's replay endpoint; None: gaps are recorded as lost
    timeframes: tuple[str, ...] = DEFAULT_TIMEFRAMES
    maxlen: int = DEFAULT_MAXLEN
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_ms: float = DEFAULT_BATCH_MS
    buffer_events: int = DEFAULT_BUFFER_EVENTS
    spill_dir: Path = Path()
    name: str = "default"
    candles: bool = True
    chunks: bool = True
    catch_up: bool = True
    replay_timeout_s: float = 2.0
    rcvhwm: int = 200_000  # ZeroMQ receive high-water mark per input, in messages
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # a longer ZeroMQ message: dead letter
    duration_s: float | None = None
    stop_after: int | None = None
    stats_interval_s: float = 1.0
    password: str | None = field(default=None, repr=False)
    time_unit: str | None = None  # files and stdin: unit of their ts_* columns (s, ms, us, ns)

    def __post_init__(self) -> None:
        # not `0 <= x`: NaN passes that; infinity and huge waits overflow the clock
        if not 0.0 <= self.batch_ms <= MAX_BATCH_MS:
            raise UsageError(
                f"--batch-ms {self.batch_ms}: give milliseconds from 0 to {MAX_BATCH_MS:,.0f}"
            )
        for symbol in self.symbols:
            if not keys.valid_symbol(symbol):  # the one rule: a filter that could never match
                raise UsageError(
                    f"symbol {symbol!r}: use letters, digits, '.', '_' or '-' (e.g. WDOQ25)"
                )

    @property
    def spill_path(self) -> Path:
        return self.spill_dir / f"{self.name}.spill"


@dataclass
class BridgeStats:
    """Counters of a bridge run (also published to `qt:stats:bridge:<name>`)."""

    received: int = 0
    written: int = 0
    duplicates: int = 0
    batches: int = 0
    late: int = 0
    filtered: int = 0
    deadletters: int = 0
    gaps_detected: int = 0
    gaps_recovered: int = 0
    gaps_lost: int = 0
    messages_recovered: int = 0
    messages_lost: int = 0
    candles: int = 0
    candle_skipped: int = 0
    chunks: int = 0
    spilled: int = 0
    outages: int = 0
    outage_s: float = 0.0
    lag_ms: float = float("nan")
    latency_p50_ms: float = float("nan")
    latency_p99_ms: float = float("nan")
    rate: float = 0.0
    elapsed_s: float = 0.0
    stopped_by: str = ""


@dataclass
class _FeedRun:
    received: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)
    rate_base: int = 0
    rate: float = 0.0
    gaps_recovered: int = 0
    gaps_lost: int = 0


def _raise_marks(into: dict[str, int], marks: dict[str, int]) -> None:
    """Raise each session's mark in `into` to the one in `marks` where that is higher."""
    for session, seq in marks.items():
        if seq > into.get(session, 0):
            into[session] = seq


def _round(value: float) -> float | None:
    return None if value != value else round(value, 3)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].rstrip(".")


def check_file_inputs(inputs: Sequence[str]) -> None:
    """UsageError for a file input that is missing, empty or a directory (before any server
    is started or connected to: the same verdict `qt feed --replay` gives)."""
    from qt_cli.core.sources.replay import detect_format

    for uri in inputs:
        endpoint = parse_endpoint(uri)
        if endpoint.kind == "file":
            detect_format(endpoint.path, option="--in")


def check_time_unit(time_unit: str | None, inputs: Sequence[str]) -> None:
    """UsageError for an unknown `--time-unit`, or one given without a file or stdin input."""
    if time_unit is None:
        return
    from qt_cli.core.files import time_unit_factor

    time_unit_factor(time_unit)
    if not any(parse_endpoint(uri).kind in ("file", "stdio") for uri in inputs):
        raise UsageError("--time-unit applies to file and stdin inputs (--in FILE, --in -)")
