"""Rows out: the events' wire fields (`Trade.to_dict()` for ticks) written page by page as
csv, jsonl, json or parquet (`run`), or kept for a table (`table_rows`)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, BinaryIO

import numpy as np
import orjson
import pandas as pd

from qt_cli.core.chunks import TickColumns
from qt_cli.core.errors import UsageError
from qt_cli.core.events import (
    EXCHANGE_TZ,
    NS_PER_MS,
    TRADE_LAYOUT,
    TRADE_OPTIONAL_FIELDS,
    TRADE_WIRE_FIELDS,
    Trade,
)
from qt_cli.core.query.frames import (
    _expand_features,
    _type_fields,
    entries_frame,
    ticks_frame,
    with_time_index,
)
from qt_cli.core.query.paging import Stats, pages
from qt_cli.core.query.request import FORMATS, Request, _base_kind, resolve_symbols, time_field
from qt_cli.core.timeparse import format_ns

# --- wire rows for files ---------------------------------------------------------------------

_MINUTE_MS = 60_000
_SECONDS_MS: Any = None  # "SS.mmm" for every ms of a minute, built on first use


def iso_array(ts_ns: np.ndarray, tz: tzinfo) -> Any:
    """ISO 8601 strings with ms and offset (as events.iso_local writes) for many times at once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    global _SECONDS_MS
    if _SECONDS_MS is None:
        _SECONDS_MS = pa.array([f"{i // 1000:02d}.{i % 1000:03d}" for i in range(_MINUTE_MS)])
    if len(ts_ns) == 0:
        return pa.array([], type=pa.string())
    ms = ts_ns // NS_PER_MS
    minute = ms // _MINUTE_MS
    within = ms - minute * _MINUTE_MS
    # Offsets change on whole minutes, so one datetime per distinct minute is enough.
    unique, inverse = np.unique(minute, return_inverse=True)
    heads, tails = [], []
    for m in unique.tolist():
        stamp = datetime.fromtimestamp(m * 60, tz).isoformat()  # YYYY-MM-DDTHH:MM:SS+HH:MM
        heads.append(stamp[:17])
        tails.append(stamp[19:])
    index = pa.array(inverse)
    return pc.binary_join_element_wise(
        pa.array(heads).take(index),
        _SECONDS_MS.take(pa.array(within)),
        pa.array(tails).take(index),
        "",
    )


def _strings(values: Any) -> list[Any]:
    return [None if isinstance(v, float) else v for v in values.tolist()]


TICK_WIRE_COLUMNS = (*TRADE_WIRE_FIELDS, *TRADE_OPTIONAL_FIELDS, "late")


# Ticks' string fields stay Series (categories); these ints are written as int64 whatever width
# the chunks store them in; every other column goes out as its array.
_STRING_FIELDS = frozenset(f.name for f in dataclasses.fields(Trade) if f.type == "str")
_WIRE_INT64 = frozenset(("buyer", "seller", "trade_type"))


def _tick_wire(frame: pd.DataFrame) -> dict[str, Any]:
    """The wire columns of ticks (`TRADE_LAYOUT`'s order, as Trade.to_dict), as arrays."""
    ts = frame["ts_event"].to_numpy(dtype=np.int64)
    n = len(frame)
    wire: dict[str, Any] = {}
    for name, attr in (*TRADE_LAYOUT, *((f, f) for f in TICK_WIRE_COLUMNS[len(TRADE_LAYOUT) :])):
        if not attr:
            wire[name] = np.full(n, Trade.TYPE, dtype=object)
        elif name == "timestamp":
            wire[name] = iso_array(ts, EXCHANGE_TZ)
        elif name == "timestamp_ms":
            wire[name] = ts // NS_PER_MS
        elif attr == "ts_event":
            wire[name] = ts
        elif attr in _STRING_FIELDS:
            wire[name] = frame[attr]
        else:
            wire[name] = frame[attr].to_numpy(dtype=np.int64 if attr in _WIRE_INT64 else None)
    return wire


def _tick_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows exactly as Trade.to_dict() gives them (names and history only when set), + late."""
    wire = _tick_wire(frame)
    lists = {
        name: (value.to_pylist() if hasattr(value, "to_pylist") else list(value.tolist()))
        if not isinstance(value, pd.Series)
        else value.astype(object).tolist()
        for name, value in wire.items()
    }
    base = TICK_WIRE_COLUMNS[:18]
    rows = []
    for values in zip(*(lists[name] for name in base), strict=True):
        rows.append(dict(zip(base, values, strict=True)))
    for i, row in enumerate(rows):
        if lists["buyer_name"][i] or lists["seller_name"][i]:
            row["buyer_name"] = lists["buyer_name"][i]
            row["seller_name"] = lists["seller_name"][i]
        if lists["history"][i]:
            row["history"] = True
        if lists["late"][i]:
            row["late"] = True
    return rows


def _entry_records(kind: str, frame: pd.DataFrame, tz: tzinfo) -> list[dict[str, Any]]:
    """Rows of a per-event kind: `time` (ISO in tz) and the wire fields of each row's type."""
    column = time_field(kind)
    times = iso_array(frame[column].to_numpy(dtype=np.int64), tz).to_pylist()
    names = list(frame.columns)
    lists = [_plain(frame[c]) for c in names]
    allowed = _type_fields(kind)
    rows = []
    for i, values in enumerate(zip(*lists, strict=True)):
        row: dict[str, Any] = {"time": times[i]}
        fields_of = allowed.get(values[0]) if allowed else None
        for name, value in zip(names, values, strict=True):
            if name == "late":
                if value:
                    row["late"] = True
            elif fields_of is None or name in fields_of:
                row[name] = value
        rows.append(row)
    return rows


def _plain(series: pd.Series) -> list[Any]:
    """Python values with None for missing (NaN floats stay NaN: JSON null, CSV empty)."""
    if series.dtype.kind in "iubf":
        return series.tolist()
    values = series.astype(object).tolist()
    return [None if (v is pd.NA or (isinstance(v, float) and math.isnan(v))) else v for v in values]


def _arrow_table(kind: str, frame: pd.DataFrame, tz: tzinfo, *, for_csv: bool) -> Any:
    """Wire columns as a pyarrow Table (nested values as JSON text; for CSV bools as 1/0, NaN empty)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind == "ticks":
        columns = _tick_wire(frame)
    else:
        columns = {"time": iso_array(frame[time_field(kind)].to_numpy(dtype=np.int64), tz)}
        for name in frame.columns:
            columns[name] = frame[name]
    arrays = [_arrow_column(value, pa) for value in columns.values()]
    table = pa.table(arrays, names=list(columns))
    if for_csv:
        fixed = []
        for col in table.columns:
            if pa.types.is_boolean(col.type):
                col = col.cast(pa.int8())
            elif pa.types.is_floating(col.type):
                col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
            fixed.append(col)
        table = pa.table(fixed, names=table.column_names)
    return table


def _arrow_column(value: Any, pa: Any) -> Any:
    if isinstance(value, pa.Array | pa.ChunkedArray):
        return value
    if isinstance(value, pd.Series):
        dtype = value.dtype
        if isinstance(dtype, pd.CategoricalDtype) or dtype.kind in "OSUT":
            plain = _plain(value)
            if any(isinstance(v, dict | list) for v in plain):
                plain = [None if v is None else orjson.dumps(v).decode() for v in plain]
            return pa.array([None if v is None else str(v) for v in plain], type=pa.string())
        if str(dtype) in ("Int64", "boolean", "string"):
            return pa.array(value.astype(object).where(value.notna(), None).tolist())
        return pa.array(value.to_numpy())
    if isinstance(value, np.ndarray) and value.dtype == object:
        return pa.array(value.tolist(), type=pa.string())
    return pa.array(value)


# --- writers ---------------------------------------------------------------------------------


class _Writer:
    def __init__(self, out: BinaryIO, kind: str, tz: tzinfo) -> None:
        self.out = out
        self.kind = kind
        self.tz = tz

    def write(self, frame: pd.DataFrame) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.out.flush()


class _JsonLines(_Writer):
    def records(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        if self.kind == "ticks":
            return _tick_records(frame)
        return _entry_records(self.kind, frame, self.tz)

    def write(self, frame: pd.DataFrame) -> None:
        dumps = orjson.dumps
        option = orjson.OPT_SERIALIZE_NUMPY
        self.out.write(b"".join([dumps(r, option=option) + b"\n" for r in self.records(frame)]))


class _JsonArray(_JsonLines):
    def __init__(self, out: BinaryIO, kind: str, tz: tzinfo) -> None:
        super().__init__(out, kind, tz)
        self.first = True
        out.write(b"[")

    def write(self, frame: pd.DataFrame) -> None:
        records = self.records(frame)
        if not records:
            return
        option = orjson.OPT_SERIALIZE_NUMPY
        body = b",\n".join(orjson.dumps(r, option=option) for r in records)
        self.out.write((b"\n" if self.first else b",\n") + body)
        self.first = False

    def close(self) -> None:
        self.out.write(b"]\n" if self.first else b"\n]\n")
        super().close()


class _Csv(_Writer):
    def __init__(self, out: BinaryIO, kind: str, tz: tzinfo) -> None:
        super().__init__(out, kind, tz)
        self.writer: Any = None
        self.schema: Any = None

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow.csv as pcsv

        table = _arrow_table(self.kind, frame, self.tz, for_csv=True)
        if self.writer is None:
            self.schema = table.schema
            self.writer = pcsv.CSVWriter(self.out, self.schema)
        self.writer.write_table(_conform(table, self.schema))

    def close(self) -> None:
        if self.writer is None:
            self.write(_empty_frame(self.kind))
        self.writer.close()
        super().close()


class _Parquet(_Csv):
    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = _arrow_table(self.kind, frame, self.tz, for_csv=False)
        if self.writer is None:
            self.schema = table.schema
            self.writer = pq.ParquetWriter(self.out, self.schema, compression="zstd")
        self.writer.write_table(_conform(table, self.schema))


def _conform(table: Any, schema: Any) -> Any:
    """A later page's table in the first page's schema (a column all null there may differ)."""
    if table.schema.equals(schema):
        return table
    import pyarrow as pa

    columns = []
    for item in schema:
        if item.name in table.column_names:
            col = table.column(item.name)
            if col.type != item.type:
                if pa.types.is_null(item.type) or pa.types.is_null(col.type):
                    col = pa.nulls(len(table), item.type) if col.null_count == len(col) else col
                col = col.cast(item.type)
        else:
            col = pa.nulls(len(table), item.type)
        columns.append(col)
    return pa.table(columns, schema=schema)


def _empty_frame(kind: str) -> pd.DataFrame:
    return ticks_frame(TickColumns.empty(), []) if kind == "ticks" else entries_frame(kind, [])


WRITERS = {"jsonl": _JsonLines, "json": _JsonArray, "csv": _Csv, "parquet": _Parquet}


# --- run: the command's one call -------------------------------------------------------------


@dataclass
class Result:
    """What `run` did: rows written (or counted), the first rows for a table, read statistics."""

    request: Request
    symbols: list[str]
    rows: int
    seconds: float
    preview: pd.DataFrame | None
    stats: Stats

    def as_dict(self) -> dict[str, Any]:
        r = self.request
        return {
            "kind": r.kind,
            "symbols": self.symbols,
            "from": format_ns(r.from_ns, r.tz),
            "to": format_ns(r.to_ns, r.tz),
            "as_of": None if r.as_of_ns is None else format_ns(r.as_of_ns, r.tz),
            "tz": r.tz_name,
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "chunks": self.stats.read.chunks,
            "entries": self.stats.read.entries + self.stats.read.tail_entries,
            "problems": self.stats.read.problems[:20],
        }


Progress = Callable[[float, int], None]


def run(
    client: Any,
    request: Request,
    *,
    fmt: str,
    out: BinaryIO | None = None,
    limit: int = 50,
    progress: Progress | None = None,
) -> Result:
    """Read the request page by page: write each page in `fmt` to `out`, or (fmt "table") keep
    the first `limit` rows and count the rest. `progress(fraction, rows)` after each page."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    stats = Stats()
    started = time.perf_counter()
    symbols = resolve_symbols(client, request)
    writer = None if fmt == "table" else WRITERS[fmt](out, request.kind, request.tz)  # type: ignore[arg-type]
    kept: list[pd.DataFrame] = []
    kept_rows = 0
    rows = 0
    span = max(1, request.to_ns - request.from_ns)
    try:
        for frame, watermark in pages(client, request, stats=stats):
            rows += len(frame)
            if writer is not None:
                writer.write(frame)
            elif kept_rows < limit:
                kept.append(frame.iloc[: limit - kept_rows])
                kept_rows += len(kept[-1])
            if progress is not None:
                progress(min(1.0, max(0.0, (watermark - request.from_ns) / span)), rows)
    finally:
        if writer is not None:
            writer.close()
    preview = None
    if fmt == "table":
        preview = pd.concat(kept, ignore_index=True) if kept else None
        if preview is not None:
            if _base_kind(request.kind) == "features":
                preview = _expand_features(preview)
            preview = with_time_index(preview, time_field(request.kind), request.tz)
    stats.rows = rows
    stats.seconds = time.perf_counter() - started
    return Result(request, symbols, rows, stats.seconds, preview, stats)


# Columns a table leaves out (still in every file format).
TABLE_HIDDEN = frozenset(
    {"type", "timestamp", "timestamp_ms", "recv_ns", "ts_event", "ts_init", "session", "id", "seq"}
)
# Ticks have many columns; a table shows these (files have them all).
TICK_TABLE_COLUMNS = (
    "symbol",
    "price",
    "quantity",
    "aggressor",
    "buyer",
    "seller",
    "trade_id",
    "is_edit",
    "history",
    "late",
)

TABLE_LABELS = {
    "quantity": "qty",
    "aggressor": "side",
    "trade_id": "trade",
    "position": "pos",
    "bid_price": "bid",
    "ask_price": "ask",
    "bid_qty": "bid qty",
    "ask_qty": "ask qty",
    "buy_volume": "buy vol",
    "sell_volume": "sell vol",
}
# On a narrow terminal a table keeps these columns longest, in this order (time always stays);
# the others go first, the rightmost first. Kinds not listed keep their columns left to right.
TABLE_KEEP = {
    "ticks": ("symbol", "price", "quantity", "aggressor", "trade_id", "buyer", "seller"),
    "book": ("symbol", "side", "action", "price", "quantity", "bid_price", "ask_price")
    + ("bid_qty", "ask_qty", "position", "count"),
    "candles": ("symbol", "open", "high", "low", "close", "volume", "quantity", "trades"),
    "daily": ("symbol", "open", "high", "low", "close", "volume", "quantity", "trades"),
    "state": ("symbol", "text", "source", "code"),
}


def _table_names(result: Result) -> list[str]:
    frame = result.preview
    if frame is None or frame.empty:
        return []
    if result.request.kind == "ticks":
        names = list(TICK_TABLE_COLUMNS)
    else:
        names = [c for c in frame.columns if c not in TABLE_HIDDEN]
    if "symbol" in names and len(result.symbols) <= 1:
        names.remove("symbol")
    return [
        c
        for c in names
        if not (frame[c].dtype == bool and not frame[c].any()) and not frame[c].isna().all()
    ]


def table_priorities(result: Result) -> list[int]:
    """How long each column of `table_rows` stays on a narrow terminal: 0 (the time) always,
    then lower numbers longer (`TABLE_KEEP`)."""
    names = _table_names(result)
    if not names:
        return []
    keep = TABLE_KEEP.get(_base_kind(result.request.kind))
    if keep is None:
        return [0, *range(1, len(names) + 1)]
    return [0, *(keep.index(n) + 1 if n in keep else len(keep) + 1 for n in names)]


def table_rows(result: Result) -> tuple[list[str], list[list[str]]]:
    """Header and cell texts of the preview: local time first (the zone in the header), then
    the columns that say something (a symbol column only for several symbols, flags only when
    one is set, no column that is blank in every row)."""
    frame = result.preview
    names = _table_names(result)
    if frame is None or not names:
        return [], []
    header = [f"time ({result.request.tz_name})", *(TABLE_LABELS.get(n, n) for n in names)]
    times = [t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}" for t in frame.index]
    columns = [[_cell(v) for v in _plain(frame[c])] for c in names]
    body = [[times[i], *(col[i] for col in columns)] for i in range(len(frame))]
    return header, body


def _cell(value: Any) -> str:
    """A table cell: missing values (None, NA, NaN) blank, as in CSV."""
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value).removesuffix(".0")
    if isinstance(value, dict | list):
        text = orjson.dumps(value).decode()
        return text if len(text) <= 40 else text[:39] + "…"
    return str(value)
