"""Time travel: what Valkey holds for a kind, symbols and time range, as a DataFrame or a file.

Two ways out, built on the same ordered pages (`qt_cli/core/store/reader.py`):

- `query(...)` -> a pandas DataFrame with a tz-aware DatetimeIndex (`time`, from `ts_event`; from
  `ts_init` for gaps and dead letters) in event-time order, with proper dtypes (int64, float64,
  bool, categories for repeated strings). For `features` each feature is its own float column.
- `run(...)` -> streams the rows to a file object as csv, jsonl, json or parquet, page by page
  (never the whole range in memory), or keeps the first rows for a table. Rows are the events'
  wire fields (`Trade.to_dict()` for ticks), so `qt feed --replay` reads them back.

`--as-of T` gives, per symbol, the latest entry at or before T (the feature vector a model saw at
T): the range [T - w, T] is read with w growing from one minute until an entry turns up or the
window reaches back past the stream's first entry.

Parts: `request` (what is asked), `frames` (stored data -> DataFrames), `paging` (ordered pages,
`query`), `export` (files and tables, `run`).
"""

from qt_cli.core.query.export import (
    TABLE_HIDDEN,
    TABLE_KEEP,
    TABLE_LABELS,
    TICK_TABLE_COLUMNS,
    TICK_WIRE_COLUMNS,
    WRITERS,
    Progress,
    Result,
    iso_array,
    run,
    table_priorities,
    table_rows,
)
from qt_cli.core.query.frames import entries_frame, ticks_frame, with_time_index
from qt_cli.core.query.paging import Stats, frame_of, pages, query
from qt_cli.core.query.request import (
    AGGRESSOR_CATEGORIES,
    AS_OF_FIRST_WINDOW_NS,
    AS_OF_GROWTH,
    EVENT_KINDS,
    FORMATS,
    GLOBAL_KINDS,
    GLOBAL_SCHEMAS,
    KINDS,
    Request,
    TimeInput,
    check_kind,
    make_request,
    resolve_symbols,
    time_field,
)

__all__ = [
    "AGGRESSOR_CATEGORIES",
    "AS_OF_FIRST_WINDOW_NS",
    "AS_OF_GROWTH",
    "EVENT_KINDS",
    "FORMATS",
    "GLOBAL_KINDS",
    "GLOBAL_SCHEMAS",
    "KINDS",
    "Progress",
    "Request",
    "Result",
    "Stats",
    "TABLE_HIDDEN",
    "TABLE_KEEP",
    "TABLE_LABELS",
    "TICK_TABLE_COLUMNS",
    "TICK_WIRE_COLUMNS",
    "TimeInput",
    "WRITERS",
    "check_kind",
    "entries_frame",
    "frame_of",
    "iso_array",
    "make_request",
    "pages",
    "query",
    "resolve_symbols",
    "run",
    "table_priorities",
    "table_rows",
    "ticks_frame",
    "time_field",
    "with_time_index",
]
