"""Event files: JSON lines (files, stdin, stdout), CSV and Parquet, as sinks and sources.

One row per event; the columns are the wire dict's fields (`event.to_dict()`, so `type` is always
there and a Trade keeps the seed-compatible `timestamp`, `timestamp_ms`, `recv_ns`). CSV values
are flat strings as in Valkey stream fields (booleans `1`/`0`, a NaN or absent value empty, lists
and dicts JSON). Parquet columns are typed (int64, float64, bool, string; lists and dicts as JSON
text); a field that an event type does not have is null.

A CSV or Parquet file has one fixed set of columns: all the fields of the event types it was
opened for (`types=`), or else of every market-data type (tick, book, tob, daily, state) plus the
types in its first batch. An event of another type with fields outside that set raises DataError
(write one file per kind, or use JSON lines).

Sources read in blocks and decode each row; a row that does not decode is counted (`stats`), kept
as a `DeadLetter` (`take_rejects()`) with its line number in the reason, and skipped; `strict=True`
makes it a DataError instead. A row whose `ts_event` lies outside the plausible window (2000-01-01
to a day ahead of the wall clock) is such a row too: the reason names the unit it looks like
("ts_event 1723112400000000 looks like microseconds; use --time-unit us"). `time_unit` (s, ms, us,
ns) says the unit of the file's `ts_*` and `recv_ns` columns; they are converted to nanoseconds.
A row without `ts_init` (and `recv_ns`) gets the time of receipt, like any other input.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import select
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

import orjson

from qt_cli.core.endpoints import FILE_FORMATS, STREAM_FORMATS
from qt_cli.core.errors import DataError, DecodeError, QtError, UsageError
from qt_cli.core.events import (
    EVENT_TYPES,
    NS_PER_MS,
    NS_PER_S,
    Event,
    ReceiveClock,
    Trade,
    decode_dict,
    now_ns,
    utc_datetime,
)
from qt_cli.core.records import MAX_RAW_BYTES, DeadLetter
from qt_cli.core.sources.base import SourceStats

FORMATS = STREAM_FORMATS
MARKET_TYPES = ("tick", "book", "tob", "daily", "state")
_READ_CHUNK = 1 << 20
_PARQUET_ROWS = 65_536

# --- plausible times ---------------------------------------------------------------------------

TIME_UNITS = {"s": NS_PER_S, "ms": NS_PER_MS, "us": 1_000, "ns": 1}  # unit -> ns per unit
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
EARLIEST_NS = 946_684_800 * NS_PER_S  # 2000-01-01T00:00:00Z: nothing we replay is older
AHEAD_NS = 86_400 * NS_PER_S  # nor more than a day ahead of the wall clock
_TIME_FIELDS = ("ts_event", "ts_init", "recv_ns", "ts_features")  # converted by time_unit


def time_unit_factor(unit: str | None) -> int:
    """ns per unit of `--time-unit` (None: nanoseconds); UsageError for an unknown unit."""
    if unit is None:
        return 1
    factor = TIME_UNITS.get(unit.strip().lower())
    if factor is None:
        raise UsageError(f"--time-unit {unit!r}: choose one of {', '.join(TIME_UNITS)}")
    return factor


def plausible_ns(ts_ns: int, now: int) -> bool:
    """True for a time from 2000-01-01 to a day ahead of `now` (ns)."""
    return EARLIEST_NS <= ts_ns <= now + AHEAD_NS


def implausible_time(name: str, value: Any, ts_ns: int, now: int) -> str:
    """Why `value` (field `name` as written; `ts_ns` once read) is not a plausible time, and the
    unit it looks like when one fits (the units' windows do not overlap)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = ts_ns
    if name == "ts_event":  # timestamp_ms is milliseconds by name: --time-unit does not apply
        for guess, factor in TIME_UNITS.items():
            if plausible_ns(number * factor, now):
                return f"{name} {value} looks like {_UNIT_NAMES[guess]}; use --time-unit {guess}"
    when = utc_datetime(ts_ns).strftime("%Y-%m-%d") if -(2**62) < ts_ns < 2**62 else "?"
    hint = "; if it is in another unit, give --time-unit s|ms|us|ns" if name == "ts_event" else ""
    return f"{name} {value} is not a plausible time ({when}: before 2000 or a day ahead){hint}"


def _scale(value: Any, factor: int) -> Any:
    """A time value in another unit as ns (left as is when it is not a number: decode says so)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value * factor
    try:
        return int(value) * factor
    except (TypeError, ValueError):
        pass
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return round(number * factor) if math.isfinite(number) else value


class OutputClosed(QtError):
    """The reader of our output went away (e.g. `qt feed --out - | head`)."""


# --- columns -------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


def type_columns(wire_type: str) -> dict[str, str]:
    """Wire fields of one event type -> column kind (int, float, bool, str, json), in order."""
    cls = EVENT_TYPES[wire_type]
    sample = cls(symbol="X", ts_event=1).to_dict()
    if cls is Trade:
        sample.update(buyer_name="", seller_name="", history=False)
    return {name: _kind(value) for name, value in sample.items()}


def columns_for(wire_types: Iterable[str]) -> dict[str, str]:
    """Union of the columns of several event types (first type's order first)."""
    out: dict[str, str] = {}
    for wire_type in wire_types:
        for name, kind in type_columns(wire_type).items():
            if name not in out:
                out[name] = kind
            elif out[name] != kind and {out[name], kind} == {"int", "float"}:
                out[name] = "float"
            elif out[name] != kind:
                out[name] = "json"
    return out


def _flat(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, int | str):
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


# --- JSON lines --------------------------------------------------------------------------------


class JsonLinesSink:
    """Events as JSON lines (the wire payload, one per line) to a file, or stdout when path is None."""

    def __init__(self, path: Path | str | None, *, append: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.written = 0
        if self.path is None:
            self._out: BinaryIO = sys.stdout.buffer
            self._own = False
        else:
            try:
                self._out = open(self.path, "ab" if append else "wb", buffering=1 << 20)  # noqa: SIM115
            except OSError as exc:
                raise UsageError(f"cannot write {self.path}: {exc.strerror}") from None
            self._own = True

    def send(self, events: Sequence[Event]) -> None:
        option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
        self._write(b"".join(orjson.dumps(e.to_dict(), option=option) for e in events))
        self.written += len(events)

    def write_payloads(self, payloads: Iterable[bytes]) -> None:
        """Write already-encoded wire payloads, one per line."""
        lines = [p + b"\n" for p in payloads]
        self._write(b"".join(lines))
        self.written += len(lines)

    def _write(self, data: bytes) -> None:
        try:
            self._out.write(data)
            if not self._own:
                self._out.flush()  # a pipe reader should see each batch at once
        except BrokenPipeError:
            self._detach()
            raise OutputClosed("the reader of stdout went away; stopping") from None

    def _detach(self) -> None:
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._out.fileno())
            os.close(devnull)

    def flush(self) -> None:
        try:
            self._out.flush()
        except BrokenPipeError:
            self._detach()
            raise OutputClosed("the reader of stdout went away; stopping") from None

    def close(self) -> None:
        try:
            self.flush()
        except OutputClosed:
            pass
        finally:
            if self._own:
                self._out.close()


class _RowSource:
    """Shared bookkeeping of the file sources: stats, rejects, strictness, time checks."""

    def __init__(self, name: str, *, strict: bool, time_unit: str | None = None) -> None:
        self.name = name
        self.strict = strict
        self.time_unit = time_unit
        self._factor = time_unit_factor(time_unit)
        self._clock = ReceiveClock()
        self.stats = SourceStats()
        self._rejects: list[DeadLetter] = []
        self._done = False

    @property
    def finished(self) -> bool:
        return self._done

    def take_rejects(self) -> list[DeadLetter]:
        out, self._rejects = self._rejects, []
        return out

    def _bad(self, where: str, reason: str, field: str | None, raw: bytes) -> None:
        message = f"{self.name}:{where}: {reason}"
        if self.strict:
            raise DataError(f"{message} (--strict stops at the first bad record)")
        self.stats.reject(message)
        self._rejects.append(
            DeadLetter(message, raw[:MAX_RAW_BYTES], self.name, "", field or "", now_ns())
        )

    def read(self, timeout_s: float) -> list[Event]:
        raise NotImplementedError

    def batches(self) -> Iterator[list[Event]]:
        """Every event, in batches, until the end of the input."""
        while not self._done:
            batch = self.read(1.0)
            if batch:
                yield batch

    def _decode(self, data: Any, where: str, raw: bytes) -> Event | None:
        received = self._clock()
        written = data.get("ts_event", data.get("timestamp_ms")) if isinstance(data, dict) else None
        if isinstance(data, dict):
            if self._factor != 1:
                for name in _TIME_FIELDS:
                    if name in data:
                        data[name] = _scale(data[name], self._factor)
            if "ts_init" not in data and "recv_ns" not in data:
                data["ts_init"] = received
        try:
            event = decode_dict(data)
        except DecodeError as exc:
            self._bad(where, str(exc), exc.field, raw)
            return None
        if not plausible_ns(event.ts_event, received):
            name = "ts_event" if "ts_event" in data else "timestamp_ms"
            reason = implausible_time(name, written, event.ts_event, received)
            self._bad(where, reason, name, raw)
            return None
        self.stats.produced += 1
        return event


class JsonLinesSource(_RowSource):
    """Events from JSON lines: a file, or stdin when path is None (read with a timeout)."""

    def __init__(
        self, path: Path | str | None, *, strict: bool = False, time_unit: str | None = None
    ) -> None:
        self.path = Path(path) if path is not None else None
        name = str(self.path) if self.path is not None else "-"
        super().__init__(name, strict=strict, time_unit=time_unit)
        if self.path is None:
            try:  # a closed stdin (`<&-`) is None; a replaced one may have no descriptor
                self._fd = sys.stdin.fileno()
            except (AttributeError, OSError, ValueError):
                raise UsageError(
                    "--in -: stdin is closed or not a file; pipe events into it, e.g. "
                    "qt feed --sim --out - | qt bridge --in -"
                ) from None
            self._own = False
        else:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                raise UsageError(f"cannot read {self.path}: {exc.strerror}") from None
            self._own = True
        self._pending = b""
        self.line = 0  # lines consumed so far
        self.bytes_read = 0

    @property
    def total_bytes(self) -> int | None:
        if self.path is None:
            return None
        try:
            return os.fstat(self._fd).st_size
        except OSError:
            return None

    def read(self, timeout_s: float, max_events: int = 10_000) -> list[Event]:
        if self._done:
            return []
        if self.path is None:
            ready, _, _ = select.select([self._fd], [], [], max(timeout_s, 0))
            if not ready:
                return []
        chunk = os.read(self._fd, _READ_CHUNK)
        if not chunk:
            self._done = True
            lines = [self._pending] if self._pending.strip() else []
            self._pending = b""
        else:
            self.bytes_read += len(chunk)
            data = self._pending + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                self._pending = data
                return []
            lines = data[: cut + 1].split(b"\n")[:-1]
            self._pending = data[cut + 1 :]
        return self._lines(lines)

    def _lines(self, lines: list[bytes]) -> list[Event]:
        out: list[Event] = []
        for raw in lines:
            self.line += 1
            if not raw.strip():
                continue
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                self._bad(f"{self.line}", f"not JSON: {exc}", None, raw)
                continue
            event = self._decode(data, str(self.line), raw)
            if event is not None:
                out.append(event)
        return out

    def close(self) -> None:
        if self._own:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._own = False


# --- CSV ---------------------------------------------------------------------------------------


class _TableSink:
    """Common part of the CSV and Parquet sinks: fixed columns, chosen at the first batch."""

    def __init__(self, path: Path | str, *, types: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.written = 0
        self.columns: dict[str, str] | None = columns_for(types) if types else None
        self._types: set[str] = set(types or ())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot write {self.path}: {exc.strerror}") from None

    def _rows(self, events: Sequence[Event]) -> list[dict[str, Any]]:
        rows = [e.to_dict() for e in events]
        if self.columns is None:
            self._types = {row["type"] for row in rows} | set(MARKET_TYPES)
            self.columns = columns_for(sorted(self._types, key=_type_order))
        for row in rows:
            if row["type"] not in self._types:
                extra = set(row) - set(self.columns)
                if extra:
                    raise DataError(
                        f"{self.path}: a {row['type']!r} event has fields ({', '.join(sorted(extra))}) "
                        f"that this file's columns (for {', '.join(sorted(self._types))}) lack; "
                        "write one file per kind or use .jsonl"
                    )
        return rows


def _type_order(wire_type: str) -> int:
    order = list(EVENT_TYPES)
    return order.index(wire_type) if wire_type in order else len(order)


class CsvSink(_TableSink):
    """Events as CSV rows of flat wire fields, with a header line."""

    def __init__(self, path: Path | str, *, types: Sequence[str] | None = None) -> None:
        super().__init__(path, types=types)
        try:
            self._file = open(self.path, "w", newline="", encoding="utf-8", buffering=1 << 20)  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"cannot write {self.path}: {exc.strerror}") from None
        self._writer: Any = None

    def send(self, events: Sequence[Event]) -> None:
        if not events:
            return
        rows = self._rows(events)
        assert self.columns is not None
        names = list(self.columns)
        if self._writer is None:
            self._writer = csv.writer(self._file)
            self._writer.writerow(names)
        self._writer.writerows([_flat(row.get(name)) for name in names] for row in rows)
        self.written += len(rows)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            if self._writer is None and self.columns is not None:
                csv.writer(self._file).writerow(list(self.columns))
            self._file.close()


class CsvSource(_RowSource):
    """Events from a CSV of wire fields (header line required; empty cells are absent fields)."""

    def __init__(
        self,
        path: Path | str,
        *,
        strict: bool = False,
        batch_rows: int = 10_000,
        time_unit: str | None = None,
    ) -> None:
        self.path = Path(path)
        super().__init__(str(self.path), strict=strict, time_unit=time_unit)
        try:
            self._file = open(self.path, newline="", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"cannot read {self.path}: {exc.strerror}") from None
        self.batch_rows = batch_rows
        self._reader = csv.reader(self._file)
        try:
            self.header = next(self._reader)
        except StopIteration:
            self.header = []
            self._done = True
        except (csv.Error, UnicodeDecodeError) as exc:
            self._file.close()
            raise DataError(f"{self.path}: cannot read the header: {exc}") from None
        if self.header and "type" not in self.header:
            self._file.close()
            raise DataError(
                f"{self.path}: no 'type' column; expected the wire fields of events "
                "(as `qt query --format csv` writes) or a Nelogica tick export"
            )
        self.total_bytes = self.path.stat().st_size

    @property
    def bytes_read(self) -> int:
        try:
            if self._file.closed:
                return self.total_bytes
            return cast(BinaryIO, self._file.buffer).tell()  # a text file's binary buffer
        except (OSError, ValueError):
            return 0

    def read(self, timeout_s: float = 0.0) -> list[Event]:
        out: list[Event] = []
        header = self.header
        width = len(header)
        while len(out) < self.batch_rows and not self._done:
            try:
                row = next(self._reader)
            except StopIteration:
                self._done = True
                break
            except (csv.Error, UnicodeDecodeError) as exc:
                self._bad(str(self._reader.line_num), f"unreadable line: {exc}", None, b"")
                continue
            line = str(self._reader.line_num)
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != width:
                raw = ",".join(row).encode()
                self._bad(line, f"expected {width} fields, got {len(row)}", None, raw)
                continue
            data = {k: v for k, v in zip(header, row, strict=True) if v != ""}
            event = self._decode(data, line, ",".join(row).encode())
            if event is not None:
                out.append(event)
        return out

    def close(self) -> None:
        self._file.close()


# --- Parquet -----------------------------------------------------------------------------------


def _arrow_type(kind: str) -> Any:
    import pyarrow as pa

    return {
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "str": pa.string(),
        "json": pa.string(),
    }[kind]


class ParquetSink(_TableSink):
    """Events as Parquet rows (typed columns); written in row groups of 65,536 and at close."""

    def __init__(self, path: Path | str, *, types: Sequence[str] | None = None) -> None:
        super().__init__(path, types=types)
        self._buffer: list[dict[str, Any]] = []
        self._writer: Any = None
        self._schema: Any = None

    def send(self, events: Sequence[Event]) -> None:
        if not events:
            return
        self._buffer += self._rows(events)
        self.written += len(events)
        if len(self._buffer) >= _PARQUET_ROWS:
            self._write()

    def _write(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.columns is None:
            return
        if self._schema is None:
            self._schema = pa.schema([(n, _arrow_type(k)) for n, k in self.columns.items()])
        json_cols = [n for n, k in self.columns.items() if k == "json"]
        rows = self._buffer
        self._buffer = []
        if json_cols:
            for row in rows:
                for name in json_cols:
                    if name in row and not isinstance(row[name], str):
                        row[name] = orjson.dumps(
                            row[name], option=orjson.OPT_SERIALIZE_NUMPY
                        ).decode()
        table = pa.Table.from_pylist(rows, schema=self._schema)
        if self._writer is None:
            try:
                self._writer = pq.ParquetWriter(self.path, self._schema, compression="zstd")
            except OSError as exc:
                raise UsageError(f"cannot write {self.path}: {exc}") from None
        self._writer.write_table(table)

    def flush(self) -> None:
        """Parquet is written in row groups: rows stay buffered until 65,536 or close."""

    def close(self) -> None:
        if self._buffer or self._writer is None:
            self._write()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ParquetSource(_RowSource):
    """Events from a Parquet file of wire fields, read in record batches."""

    def __init__(
        self,
        path: Path | str,
        *,
        strict: bool = False,
        batch_rows: int = 10_000,
        time_unit: str | None = None,
    ) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        super().__init__(str(self.path), strict=strict, time_unit=time_unit)
        try:
            self._file = pq.ParquetFile(self.path)
        except FileNotFoundError:
            raise UsageError(f"cannot read {self.path}: no such file") from None
        except Exception as exc:  # pyarrow raises ArrowInvalid and friends
            raise DataError(f"{self.path}: not a readable Parquet file ({exc})") from None
        names = self._file.schema_arrow.names
        if "type" not in names:
            raise DataError(f"{self.path}: no 'type' column; expected the wire fields of events")
        self.total_rows = self._file.metadata.num_rows
        self.rows_read = 0
        self._batches = self._file.iter_batches(batch_size=batch_rows)

    def read(self, timeout_s: float = 0.0) -> list[Event]:
        if self._done:
            return []
        try:
            batch = next(self._batches)
        except StopIteration:
            self._done = True
            return []
        out: list[Event] = []
        for row in batch.to_pylist():
            self.rows_read += 1
            data = {k: v for k, v in row.items() if v is not None}
            raw = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY, default=str)
            event = self._decode(data, f"row {self.rows_read}", raw)
            if event is not None:
                out.append(event)
        return out

    def close(self) -> None:
        self._file.close()


# --- opening -------------------------------------------------------------------------------------


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"file format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return fmt


def open_file_sink(
    path: Path | str, format: str, *, types: Sequence[str] | None = None
) -> JsonLinesSink | CsvSink | ParquetSink:
    """A sink that records events to `path` in `format` (jsonl, csv, parquet)."""
    fmt = _check_format(format)
    if fmt == "jsonl":
        return JsonLinesSink(path)
    if fmt == "csv":
        return CsvSink(path, types=types)
    return ParquetSink(path, types=types)


def open_file_source(
    path: Path | str, format: str, *, strict: bool = False, time_unit: str | None = None
) -> JsonLinesSource | CsvSource | ParquetSource:
    """A source that replays events recorded in `path` (jsonl, csv, parquet)."""
    fmt = _check_format(format)
    path = Path(path)
    if not path.exists():
        raise UsageError(f"cannot read {path}: no such file")
    if fmt == "jsonl":
        return JsonLinesSource(path, strict=strict, time_unit=time_unit)
    if fmt == "csv":
        return CsvSource(path, strict=strict, time_unit=time_unit)
    return ParquetSource(path, strict=strict, time_unit=time_unit)


def read_events(path: Path | str, format: str | None = None, *, strict: bool = True) -> list[Event]:
    """Every event of a file (format from the suffix when not given); for tests and small files."""
    path = Path(path)
    fmt = format or FILE_FORMATS.get(path.suffix.lower(), "")
    source = open_file_source(path, fmt, strict=strict)
    try:
        return [event for batch in source.batches() for event in batch]
    finally:
        source.close()


def write_events(path: Path | str, events: Sequence[Event], format: str | None = None) -> int:
    """Write events to a file (format from the suffix when not given); returns the count."""
    path = Path(path)
    fmt = format or FILE_FORMATS.get(path.suffix.lower(), "")
    sink = open_file_sink(path, fmt)
    try:
        sink.send(events)
    finally:
        sink.close()
    return len(events)


__all__ = [
    "FORMATS",
    "TIME_UNITS",
    "MAX_RAW_BYTES",
    "CsvSink",
    "CsvSource",
    "JsonLinesSink",
    "JsonLinesSource",
    "OutputClosed",
    "ParquetSink",
    "ParquetSource",
    "DeadLetter",
    "columns_for",
    "open_file_sink",
    "open_file_source",
    "plausible_ns",
    "read_events",
    "time_unit_factor",
    "type_columns",
    "write_events",
]
