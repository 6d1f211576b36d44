"""What one refresh of `qt monitor` sees: plain data (`Snapshot`, `as_dict()` for JSON)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from qt_cli.core import keys
from qt_cli.core.errors import UsageError
from qt_cli.core.events import (
    NS_PER_MS,
    NS_PER_S,
)

NS_PER_MIN = 60 * NS_PER_S
DEFAULT_WINDOW_NS = 5 * NS_PER_MIN
DEFAULT_STALE_NS = 5 * NS_PER_S
DEFAULT_REFRESH_NS = NS_PER_S
DISCOVER_INTERVAL_NS = 30 * NS_PER_S
TICK_PAGE = 1_000  # entries per XREVRANGE of a ticks stream
FIRST_PAGES = 100  # pages the first refresh may read per symbol to fill the window (100k ticks)
PAGES_PER_REFRESH = 5  # pages a later refresh may read per symbol
BOOK_SCAN = 64  # newest book entries searched for a TopOfBook
SPARK_BUCKETS = 24
STAGE_ORDER = ("feed", "bridge", "features", "predict")
# The streams a later stage reads through a consumer group (features <- ticks, predict <-
# features, …); a subset of events.STREAM_KINDS, checked by a test.
GROUP_STREAM_KINDS = ("ticks", "features", "predictions", "signals")
SPARK_CHARS = "▁▂▃▄▅▆▇█"
NAN = math.nan


# --- plain data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorOptions:
    """What to watch and how: durations in ns, sizes in entries."""

    symbols: tuple[str, ...] = ()  # empty: every symbol with a ticks stream (SCAN)
    window_ns: int = DEFAULT_WINDOW_NS
    stale_ns: int = DEFAULT_STALE_NS
    refresh_ns: int = DEFAULT_REFRESH_NS
    spark_buckets: int = SPARK_BUCKETS
    page_size: int = TICK_PAGE
    first_pages: int = FIRST_PAGES
    pages_per_refresh: int = PAGES_PER_REFRESH
    discover_interval_ns: int = DISCOVER_INTERVAL_NS

    def __post_init__(self) -> None:
        for symbol in self.symbols:
            if not keys.valid_symbol(symbol):
                raise UsageError(
                    f"symbol {symbol!r}: use letters, digits, '.', '_' or '-' (e.g. WDOQ25)"
                )
        if self.window_ns <= 0:
            raise UsageError("--window must be longer than zero, e.g. 5m")
        if self.stale_ns <= 0:
            raise UsageError("--stale must be longer than zero, e.g. 5s")
        if self.refresh_ns < 50 * NS_PER_MS:
            raise UsageError("--refresh must be at least 50ms, e.g. 1s")
        if min(self.page_size, self.first_pages, self.pages_per_refresh, self.spark_buckets) < 1:
            raise UsageError(
                "page_size, first_pages, pages_per_refresh and spark_buckets must be >= 1"
            )


class Tick(NamedTuple):
    """The part of a stored trade the monitor uses."""

    id_ms: int
    id_seq: int
    ts_event: int
    price: float
    quantity: int
    volume: float
    trade_id: int
    ts_init: int = 0  # receive time; 0 when the entry has none


@dataclass
class WindowStats:
    """Trades in [end_ns - window_ns, end_ns] of event time; NaN where nothing to compute."""

    start_ns: int = 0
    end_ns: int = 0
    trades: int = 0
    volume: float = 0.0
    quantity: int = 0
    first_price: float = NAN
    last_price: float = NAN
    change_pct: float = NAN
    sparkline: list[float | None] = field(default_factory=list)


@dataclass
class SymbolView:
    """One row of the symbols table."""

    symbol: str
    state: str = "NO DATA"
    stale: bool = False
    last_price: float = NAN
    last_ts_event: int | None = None
    last_ts_init: int | None = None  # newest receive time of a tick: what STALE is judged on
    received_age_ms: float = NAN
    volume: float = 0.0
    quantity: int = 0
    trades: int = 0
    change_pct: float = NAN
    first_price: float = NAN
    window_start_ns: int | None = None
    window_end_ns: int | None = None
    window_complete: bool = True
    bid: float = NAN
    ask: float = NAN
    spread: float = NAN
    book_ts_event: int | None = None
    feature_count: int = 0
    features_valid: int = 0
    features_warm: bool = False
    feature_set: str = ""
    prediction_label: str = ""
    prediction_value: float = NAN
    prediction_model: str = ""
    signal_action: str = ""
    signal_confidence: float = NAN
    signal_model: str = ""
    signal_ts_event: int | None = None
    signal_age_s: float = NAN
    lag_ticks_ms: float = NAN
    lag_features_ms: float = NAN
    lag_predictions_ms: float = NAN
    sparkline: list[float | None] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass
class StageView:
    """One row of the pipeline panel, from a `qt:stats:<stage>:<name>` hash."""

    stage: str
    name: str = ""
    key: str = ""
    status: str = "not seen"  # ok | stale | not seen
    seen: bool = False
    stale: bool = False
    pid: int | None = None
    host: str = ""
    age_s: float = NAN
    rate: float = NAN
    received: int | None = None
    written: int | None = None
    lag_ms: float = NAN
    gaps_recovered: int | None = None
    gaps_lost: int | None = None
    deadletters: int | None = None
    duplicates: int | None = None
    pending: int | None = None
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class GroupView:
    """A consumer group on a per-symbol stream."""

    stream: str
    group: str
    consumers: int
    pending: int
    lag: int | None
    stage: str | None


@dataclass
class ValkeyHealth:
    """Server health from INFO."""

    version: str = ""
    used_memory: int | None = None
    used_memory_human: str = ""
    maxmemory: int | None = None
    memory_ratio: float = NAN
    aof_enabled: bool | None = None
    aof_status: str = ""
    connected_clients: int | None = None
    ops_per_sec: int | None = None
    deadletters: int | None = None
    gaps: int | None = None
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass
class Snapshot:
    """Everything one frame shows; `as_dict()` is what `qt monitor --json` prints."""

    now_ns: int
    url: str
    reachable: bool
    error: str = ""
    attempts: int = 0  # failed attempts in a row while unreachable
    data_ns: int | None = None  # when the symbols and stages shown were read
    window_ns: int = DEFAULT_WINDOW_NS
    stale_ns: int = DEFAULT_STALE_NS
    refresh_ns: int = DEFAULT_REFRESH_NS
    valkey: ValkeyHealth = field(default_factory=ValkeyHealth)
    symbols: list[SymbolView] = field(default_factory=list)
    stages: list[StageView] = field(default_factory=list)
    groups: list[GroupView] = field(default_factory=list)
    commands: int = 0  # Valkey commands this refresh sent

    def as_dict(self) -> dict[str, Any]:
        return _json_ready(asdict(self))


def _json_ready(value: Any) -> Any:
    """NaN becomes null (JSON has no NaN); everything else as is."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value
