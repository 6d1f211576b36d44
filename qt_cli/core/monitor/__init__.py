"""`qt monitor`: collect a snapshot of the pipeline from Valkey, and draw it with rich renderables.

`Monitor.collect()` (collect) reads Valkey with a bounded number of cheap commands and returns a
`Snapshot` (snapshot: plain data, `as_dict()` for JSON); `render()` (render) turns a snapshot into
rich renderables. There is no I/O loop here: the command owns the refresh loop and the live display.
"""

from qt_cli.core.monitor.collect import Monitor, parse_tick, resolve_target, sparkline, window_stats
from qt_cli.core.monitor.render import STATE_STYLE, fmt_age, fmt_compact, fmt_price, render
from qt_cli.core.monitor.snapshot import (
    BOOK_SCAN,
    DEFAULT_REFRESH_NS,
    DEFAULT_STALE_NS,
    DEFAULT_WINDOW_NS,
    DISCOVER_INTERVAL_NS,
    FIRST_PAGES,
    GROUP_STREAM_KINDS,
    NAN,
    NS_PER_MIN,
    PAGES_PER_REFRESH,
    SPARK_BUCKETS,
    SPARK_CHARS,
    STAGE_ORDER,
    TICK_PAGE,
    GroupView,
    MonitorOptions,
    Snapshot,
    StageView,
    SymbolView,
    Tick,
    ValkeyHealth,
    WindowStats,
)

__all__ = [
    "BOOK_SCAN",
    "DEFAULT_REFRESH_NS",
    "DEFAULT_STALE_NS",
    "DEFAULT_WINDOW_NS",
    "DISCOVER_INTERVAL_NS",
    "FIRST_PAGES",
    "GROUP_STREAM_KINDS",
    "GroupView",
    "Monitor",
    "MonitorOptions",
    "NAN",
    "NS_PER_MIN",
    "PAGES_PER_REFRESH",
    "SPARK_BUCKETS",
    "SPARK_CHARS",
    "STAGE_ORDER",
    "STATE_STYLE",
    "Snapshot",
    "StageView",
    "SymbolView",
    "TICK_PAGE",
    "Tick",
    "ValkeyHealth",
    "WindowStats",
    "fmt_age",
    "fmt_compact",
    "fmt_price",
    "parse_tick",
    "render",
    "resolve_target",
    "sparkline",
    "window_stats",
]
