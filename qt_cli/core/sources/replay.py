"""`qt feed --replay FILE` and `--replay-journal DIR`: recorded events back onto the wire.

Inputs, detected from the file:

- **Recorded events**: JSON lines, CSV or Parquet whose rows are wire dicts with `type` (what
  `qt query --format` and `qt feed --out FILE` write).
- **Nelogica tick export** (CSV with the header
  `ticker,date,time,trade_number,price,qty,vol,buy_agent,sell_agent,trade_type,aft`): read in
  blocks with pyarrow and converted column-wise (no per-row parsing). `date` is YYYYMMDD and
  `time` HHMMSS in B3 local time (America/Sao_Paulo, historical DST included). Times have 1-second
  resolution, so the n trades of one second (consecutive rows with the same date and time) get
  offsets k * 1 s / n, k = 0..n-1, in file order. Agents are broker names (`buyer_name`,
  `seller_name`; the numeric `buyer`/`seller` ids are 0 = unknown). `trade_type` maps
  AggressorBuyer/Compra Agressão → 2 (aggressor buy), AggressorSeller/Venda Agressão → 3,
  Auction/Leilão → 4, Direct/Direto → 1 (cross), RLP → 13, a number → itself; anything else → 32
  (unknown, with a note). `aft` is not carried. A semicolon-separated export with decimal commas
  is read too.
- **A journal directory** (`--replay-journal`): every message of every session, merged by
  receive time, re-stamped by the new run.

Pacing: `speed` 0 replays as fast as possible; `speed` s > 0 keeps event time at s × wall time
(1 = real time), except that a pause longer than `max_pause_s` of wall time (nights, weekends)
is shortened to `max_pause_s`.

Bad input (a malformed line, a non-numeric or non-positive price, a bad date or time, a ticker
that `keys.valid_symbol` refuses, a `ts_event` outside 2000-01-01 .. a day ahead — see
files.py and `time_unit`): the line number goes into a notice and `stats`, the rest replays;
`strict=True` raises DataError instead. A file in which nothing is valid (every record bad, or no
records at all) is a DataError once read (`check_read`), so a replay of it does not end as a
success.

Identity: every replayed record leaves the source with a deterministic storage identity in its
`session`/`seq`, the same whichever file (or journal) it comes from, so loading it again stores
nothing new (the bridge's per-session high-water marks skip it). The feed keeps the identity
beside its own transport session (`origin`/`origin_seq`, see journal.Sequencer):

- Nelogica rows: `nelogica:<SYM>:<YYYY-MM-DD>` (the export's B3 date), seq = `trade_number`.
- recorded events with a session and seq: those (the identity they were stored or published
  under); a journal's records: their `origin` identity if they have one, else session/seq.
- recorded events without one: `file:<type>:<SYM>:<B3 date>`, seq = microsecond of the B3 day
  × 1000 + the record's rank among those of the same microsecond.
- a record whose seq is not above the last one of its identity session handed out by this run
  and was never handed out (the file goes back in trade numbers or time): `file:<content
  hash>`, seq = its rank among the records this source hands out. (One handed out before is
  the same record again, e.g. a journal holding two loads of a file: it keeps its identity.) A mark would otherwise skip it as a duplicate; this way
  it is stored, and loading the same file again still stores nothing new (an overlapping file
  with other content stores such records again). Counted in `stats` and noted.
"""

from __future__ import annotations

import bisect
import copy
import heapq
import logging
import math
import time
import unicodedata
from array import array
from collections.abc import Iterator, Sequence
from datetime import datetime
from itertools import repeat
from pathlib import Path
from typing import Any

import orjson

from qt_cli.core import keys
from qt_cli.core.errors import DataError, DecodeError, UsageError
from qt_cli.core.events import EXCHANGE_TZ, NS_PER_S, Event, Trade, decode_dict, now_ns
from qt_cli.core.files import EARLIEST_NS
from qt_cli.core.records import DeadLetter
from qt_cli.core.sources.base import PACE_S, SourceStats

log = logging.getLogger(__name__)

NELOGICA_COLUMNS = (
    "ticker",
    "date",
    "time",
    "trade_number",
    "price",
    "qty",
    "vol",
    "buy_agent",
    "sell_agent",
    "trade_type",
    "aft",
)
NELOGICA_REQUIRED = NELOGICA_COLUMNS[:-1]  # `aft` may be absent
SUBSECOND_NOTE = (
    "Nelogica export: times have 1-second resolution; the trades of one second get evenly "
    "spaced sub-second offsets in file order (k/n s for the k-th of n)."
)
MAX_NOTICES = 20

_TRADE_TYPES = {
    "aggressorbuyer": 2,
    "aggressorbuy": 2,
    "buyaggressor": 2,
    "compraagressao": 2,
    "compradoragressor": 2,
    "agressaocompra": 2,
    "compra": 2,
    "buy": 2,
    "aggressorseller": 3,
    "aggressorsell": 3,
    "sellaggressor": 3,
    "vendaagressao": 3,
    "vendedoragressor": 3,
    "agressaovenda": 3,
    "venda": 3,
    "sell": 3,
    "auction": 4,
    "leilao": 4,
    "direct": 1,
    "direto": 1,
    "cross": 1,
    "rlp": 13,
    "none": 0,
    "unknown": 32,
    "desconhecido": 32,
}


def _normalize(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isalnum() and not unicodedata.combining(c)).lower()


def trade_type_code(text: str) -> int | None:
    """The DLL trade type of a Nelogica `trade_type` value; None when not recognised."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    return _TRADE_TYPES.get(_normalize(value))


# --- detection ---------------------------------------------------------------------------------


def _first_line(path: Path) -> tuple[str, str]:
    """(first line, encoding) of a text file."""
    with open(path, "rb") as handle:
        head = handle.read(64 * 1024)
    try:
        head.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError as exc:
        encoding = "utf-8" if exc.start > len(head) - 4 else "latin-1"  # cut mid-character
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    return line.decode(encoding, errors="replace").lstrip("\ufeff"), encoding


def detect_format(path: Path | str, *, option: str = "--replay") -> str:
    """`nelogica`, `jsonl`, `csv` or `parquet` for a replay file; UsageError when unknown.

    `option` names the file in messages (`--replay` for the feed, `--in` for the bridge).
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{option} {path}: no such file")
    if path.is_dir():
        hint = (
            "use --replay-journal" if option == "--replay" else "qt feed --replay-journal reads it"
        )
        raise UsageError(f"{option} {path} is a directory (a journal? {hint})")
    if path.stat().st_size == 0:
        raise UsageError(f"{option} {path} is empty (nothing to replay)")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == b"PAR1":
        return "parquet"
    line, _ = _first_line(path)
    if line.lstrip().startswith("{"):
        return "jsonl"
    names = _header_names(line)
    if "type" in names:
        return "csv"
    if len(set(names) & set(NELOGICA_COLUMNS)) >= 3:  # a Nelogica export, maybe lacking columns
        return "nelogica"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    what = "is empty" if not line.strip() else "is not a recognised file"
    raise UsageError(
        f"{option} {path} {what} (expected JSON lines, CSV or Parquet of events "
        "with a 'type' column, or a Nelogica tick export with a ticker,date,time,… header)"
    )


def _delimiter(line: str) -> str:
    return ";" if line.count(";") > line.count(",") else ","


def _header_names(line: str) -> list[str]:
    return [n.strip().strip('"').strip().lower() for n in line.split(_delimiter(line))]


# --- pacing ------------------------------------------------------------------------------------


class _Paced:
    """Turns a generator of event batches into `read(timeout)` at a replay speed."""

    def __init__(self, *, speed: float, max_pause_s: float = 10.0, batch: int = 4096) -> None:
        if not speed >= 0 or speed == float("inf"):  # NaN fails every comparison
            raise UsageError(f"--speed {speed}: must be 0 (as fast as possible) or positive")
        self.speed = speed
        self.max_pause_s = max_pause_s
        self.batch = batch
        self.stats = SourceStats()
        self._pending: list[Event] = []
        self._pos = 0
        self._done = False
        self._gen: Iterator[list[Event]] | None = None
        self._anchor_wall = 0.0
        self._anchor_ts = 0
        self._last_ts = 0
        self._notices: list[str] = []
        self.pace_s = PACE_S
        self._last_batch = -math.inf  # monotonic time the last paced batch was handed out
        self._last_identity: dict[str, int] = {}  # identity session -> last seq handed out
        # identity session -> every seq handed out under it (increasing: sorted), to tell a
        # record seen again (same identity: the marks skip it) from one out of order
        self._handed: dict[str, Any] = {}
        self._same_us: dict[str, tuple[int, int]] = {}  # derived session -> (µs of day, rank)
        self._day: tuple[int, int, str] = (0, 0, "")  # [start, end) ns of a B3 day, its date
        self._ordinal = 0  # records handed out: the seq of the fallback identity
        self._fallback = ""  # the fallback session, `file:<content hash>` (made when needed)
        self.out_of_identity_order = 0

    # subclasses
    def _batches(self) -> Iterator[list[Event]]:
        raise NotImplementedError

    def open(self) -> None:
        if self._gen is None:
            self._gen = self._batches()

    @property
    def finished(self) -> bool:
        return self._done and self._pos >= len(self._pending)

    def take_notices(self) -> list[str]:
        out, self._notices = self._notices, []
        return out

    def _note(self, text: str) -> None:
        self._notices.append(text)

    def _fill(self) -> bool:
        if self._pos < len(self._pending):
            return True
        if self._done:
            return False
        self.open()
        assert self._gen is not None
        for batch in self._gen:
            if batch:
                self._pending, self._pos = batch, 0
                return True
        self._done = True
        self._pending, self._pos = [], 0
        return False

    def read(self, timeout_s: float) -> list[Event]:
        if not self._fill():
            return []
        if self.speed == 0:
            out = self._pending[self._pos :] if self._pos else self._pending
            self._pending, self._pos = [], 0
            return out
        return self._read_paced(timeout_s)

    def _due(self, ts: int) -> float:
        if self._anchor_wall == 0.0:
            self._anchor_wall, self._anchor_ts = time.monotonic(), ts
        elif (ts - self._last_ts) / NS_PER_S / self.speed > self.max_pause_s:
            # a long pause (night, weekend): shorten it to max_pause_s of wall time
            self._anchor_wall = self._due(self._last_ts) + self.max_pause_s
            self._anchor_ts = ts
        return self._anchor_wall + (ts - self._anchor_ts) / NS_PER_S / self.speed

    def _read_paced(self, timeout_s: float) -> list[Event]:
        deadline = time.monotonic() + timeout_s
        out: list[Event] = []
        now = time.monotonic()
        while len(out) < self.batch:
            if not self._fill():
                break
            event = self._pending[self._pos]
            due = self._due(event.ts_event)
            if not out:  # at most one batch per pace_s (sources/base.py)
                due = max(due, self._last_batch + self.pace_s)
            now = time.monotonic()
            if due > now:
                if out or now >= deadline:
                    break
                time.sleep(min(due, deadline) - now)
                now = time.monotonic()
                if due > now:
                    break
            out.append(event)
            self._last_ts = max(self._last_ts, event.ts_event)
            self._pos += 1
        if out:  # a batch cut at its size (catching up) lets the rest follow at once
            self._last_batch = now if len(out) < self.batch else -math.inf
        return out

    def close(self) -> None:
        self._gen = None

    # -- identities --

    def _content_hash(self) -> str:
        """A digest of what is replayed (the fallback identity's session names it)."""
        raise NotImplementedError

    def _fallback_session(self) -> str:
        if not self._fallback:
            self._fallback = f"file:{self._content_hash()}"
        return self._fallback

    def _b3_day(self, ts: int) -> tuple[int, str]:
        """(start ns, YYYY-MM-DD) of the B3 day holding `ts` (cached: files hold few days)."""
        start, end, date = self._day
        if not start <= ts < end:
            day = datetime.fromtimestamp(ts // NS_PER_S, tz=EXCHANGE_TZ).date()
            start = _local_midnight_ns(day.year, day.month, day.day)
            after = datetime.fromtimestamp(start // NS_PER_S + 36 * 3600, tz=EXCHANGE_TZ).date()
            end = _local_midnight_ns(after.year, after.month, after.day)
            date = day.isoformat()
            self._day = (start, end, date)
        return start, date

    def _identify(self, events: list[Event]) -> list[Event]:
        """Give each event its storage identity (module docstring), in place."""
        last = self._last_identity
        same_us = self._same_us
        ordinal = self._ordinal
        for i, event in enumerate(events):
            ordinal += 1
            session: str = getattr(event, "session", "")
            seq: int = getattr(event, "seq", 0)
            if not session or seq <= 0:
                start, date = self._b3_day(event.ts_event)
                session = f"file:{event.TYPE}:{event.symbol}:{date}"
                micro = (event.ts_event - start) // 1000
                before = same_us.get(session)
                rank = before[1] + 1 if before is not None and before[0] == micro else 0
                same_us[session] = (micro, rank)
                seq = micro * 1000 + min(rank, 999)
            if seq > last.get(session, 0):
                last[session] = seq
                handed = self._handed.get(session)
                if handed is None:
                    handed = self._handed[session] = array("q")
                handed.append(seq)
            elif not _holds(self._handed.get(session), seq):
                session, seq = self._fallback_session(), ordinal
                self.out_of_identity_order += 1
            if session != getattr(event, "session", "") or seq != getattr(event, "seq", 0):
                stamped = copy.copy(event)
                object.__setattr__(stamped, "session", session)
                object.__setattr__(stamped, "seq", seq)
                events[i] = stamped
        self._ordinal = ordinal
        return events

    def _note_identity_order(self) -> None:
        if self.out_of_identity_order:
            self._note(
                f"{self.out_of_identity_order} records go back in their day's order (trade "
                f"number, seq or time); they are identified by this file ({self._fallback}): "
                "loading it again stores nothing new, but a different file holding them "
                "stores them again"
            )


def _holds(handed: Any, seq: int) -> bool:
    """Whether a sorted array of seqs holds `seq`."""
    if not handed:
        return False
    i = bisect.bisect_left(handed, seq)
    return i < len(handed) and handed[i] == seq


def _local_midnight_ns(year: int, month: int, day: int) -> int:
    """UTC ns of the start of a B3 date (offset taken at noon: DST moved at midnight)."""
    noon = datetime(year, month, day, 12, tzinfo=EXCHANGE_TZ)
    return (int(noon.timestamp()) - 12 * 3600) * NS_PER_S


def _wanted(symbols: Sequence[str]) -> frozenset[str]:
    return frozenset(symbols)


# --- recorded events ---------------------------------------------------------------------------


class RecordedFileSource(_Paced):
    """Replays a JSON lines, CSV or Parquet file of wire events."""

    def __init__(
        self,
        path: Path | str,
        *,
        format: str,
        speed: float = 0.0,
        symbols: Sequence[str] = (),
        strict: bool = False,
        max_pause_s: float = 10.0,
        time_unit: str | None = None,
    ) -> None:
        super().__init__(speed=speed, max_pause_s=max_pause_s)
        from qt_cli.core.files import open_file_source

        self.path = Path(path)
        self.format = format
        self.symbols = _wanted(symbols)
        self._reader = open_file_source(self.path, format, strict=strict, time_unit=time_unit)
        self.stats = self._reader.stats
        self.total_bytes = self.path.stat().st_size

    @property
    def valid(self) -> int:
        """Records read that became events (before the symbol filter)."""
        return self.stats.produced

    @property
    def progress(self) -> tuple[int, int]:
        """(done, total) in bytes, or rows for Parquet."""
        reader: Any = self._reader
        if self.format == "parquet":
            return reader.rows_read, reader.total_rows
        done = reader.bytes_read
        return min(done, self.total_bytes), self.total_bytes

    def take_rejects(self) -> list[Any]:
        return self._reader.take_rejects()

    def _batches(self) -> Iterator[list[Event]]:
        reader = self._reader
        noted = 0
        while not reader.finished:
            batch = reader.read(0.0)
            problems = reader.stats.problems
            while noted < len(problems):
                self._note(problems[noted])
                noted += 1
            if self.symbols:
                batch = [e for e in batch if e.symbol in self.symbols or e.symbol == "*"]
            if batch:
                yield self._identify(batch)
        self._note_identity_order()

    def _content_hash(self) -> str:
        return _file_digest([self.path])

    def close(self) -> None:
        super().close()
        self._reader.close()


# --- Nelogica tick export ----------------------------------------------------------------------


class NelogicaCsvSource(_Paced):
    """Replays a Nelogica tick-export CSV as Trade events (see the module docstring)."""

    def __init__(
        self,
        path: Path | str,
        *,
        speed: float = 0.0,
        symbols: Sequence[str] = (),
        strict: bool = False,
        max_pause_s: float = 10.0,
        block_bytes: int = 8 << 20,
    ) -> None:
        super().__init__(speed=speed, max_pause_s=max_pause_s)
        self.path = Path(path)
        self.symbols = _wanted(symbols)
        self.strict = strict
        self.block_bytes = block_bytes
        line, self.encoding = _first_line(self.path)
        self.delimiter = _delimiter(line)
        self.columns = _header_names(line)
        missing = [c for c in NELOGICA_REQUIRED if c not in self.columns]
        if missing:
            raise DataError(
                f"{self.path}: line 1: the header lacks column(s) {', '.join(missing)} "
                f"(a Nelogica export has {','.join(NELOGICA_COLUMNS)})"
            )
        self.total_bytes = self.path.stat().st_size
        self.rows = 0  # data rows read (good and bad)
        self.valid = 0  # rows that became trades, or would have but for the symbol filter
        self._rejects: list[DeadLetter] = []
        self.out_of_order = 0
        self.unknown_types: dict[str, int] = {}
        self._file: Any = None
        self._bad_lines: list[int] = []  # malformed lines reported by the CSV parser
        self._problems: list[tuple[int, str]] = []
        self._day_base: dict[int, int] = {}
        self._note(SUBSECOND_NOTE)

    @property
    def progress(self) -> tuple[int, int]:
        if self._file is None or self._file.closed:
            return (self.total_bytes if self._done else 0), self.total_bytes
        return min(self._file.tell(), self.total_bytes), self.total_bytes

    def _bad(self, line: int, reason: str) -> None:
        """Collect a bad line; `_report_bad` reports the block's bad lines in line order."""
        self._problems.append((line, reason))

    def take_rejects(self) -> list[DeadLetter]:
        """Bad lines as DeadLetters, for the bridge's dead-letter stream."""
        out, self._rejects = self._rejects, []
        return out

    def _report_bad(self) -> None:
        problems, self._problems = sorted(self._problems), []
        for line, reason in problems:
            message = f"{self.path}:{line}: {reason}"
            if self.strict:
                raise DataError(f"{message} (--strict stops at the first bad line)")
            self._rejects.append(DeadLetter(message, b"", str(self.path), ts_init=now_ns()))
            if self.stats.rejected < MAX_NOTICES:
                self._note(message)
            elif self.stats.rejected == MAX_NOTICES:
                self._note("more bad lines: counted, not shown")
            self.stats.reject(message)

    def _on_invalid_row(self, row: Any) -> str:
        text = (row.text or "").strip()
        if not text:
            return "skip"
        number = row.number if row.number is not None else -1
        self._bad_lines.append(number)
        self._bad(
            number,
            f"expected {row.expected_columns} fields, got {row.actual_columns}: {text[:120]!r}",
        )
        return "skip"

    def _day_base_ns(self, yyyymmdd: int) -> int | None:
        """UTC ns of local midnight of a B3 date (offset taken at noon: DST moved at midnight)."""
        base = self._day_base.get(yyyymmdd)
        if base is None:
            try:
                base = _local_midnight_ns(yyyymmdd // 10000, yyyymmdd // 100 % 100, yyyymmdd % 100)
            except ValueError:
                return None
            self._day_base[yyyymmdd] = base
        return base

    def _batches(self) -> Iterator[list[Event]]:
        import numpy as np
        import pyarrow as pa
        import pyarrow.csv as pcsv

        names = self.columns
        self._file = open(self.path, "rb")  # noqa: SIM115
        reader = pcsv.open_csv(
            self._file,
            read_options=pcsv.ReadOptions(
                use_threads=False,
                block_size=self.block_bytes,
                skip_rows=1,
                column_names=names,
                encoding=self.encoding,
            ),
            parse_options=pcsv.ParseOptions(
                delimiter=self.delimiter,
                invalid_row_handler=self._on_invalid_row,
                ignore_empty_lines=False,
            ),
            convert_options=pcsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                include_columns=list(NELOGICA_REQUIRED),
                strings_can_be_null=False,
            ),
        )
        carry: dict[str, Any] | None = None
        row0 = 0  # index of the first row of the block among all valid-parse rows
        try:
            for batch in reader:
                n = batch.num_rows
                if n == 0:
                    continue
                cols = self._convert(batch, row0)
                self._report_bad()
                row0 += n
                self.rows += n
                if carry is not None:
                    cols = {k: np.concatenate([carry[k], cols[k]]) for k in cols}
                cols, carry = _split_last_second(cols)
                events = self._events(cols)
                if events:
                    yield events
            self._report_bad()
            if carry is not None:
                events = self._events(carry)
                if events:
                    yield events
        finally:
            self._file.close()
        if self.unknown_types:
            listed = ", ".join(f"{k!r} ({v})" for k, v in sorted(self.unknown_types.items()))
            self._note(f"unknown trade_type values replayed as 32 (unknown): {listed}")
        if self.out_of_order:
            self._note(
                f"{self.out_of_order} rows go back in time from the row before them "
                "(replayed in file order)"
            )
        self._note_identity_order()

    def _line_numbers(self, rows: Any) -> Any:
        """Physical line numbers of parsed rows (by their global index), skipping bad lines."""
        import numpy as np

        bad = np.asarray(sorted(b for b in self._bad_lines if b >= 0), dtype=np.int64)
        if bad.size == 0:
            return rows + 2
        before = bad - 2 - np.arange(bad.size)  # parsed rows before each bad line
        return rows + 2 + np.searchsorted(before, rows, side="right")

    def _convert(self, batch: Any, row0: int) -> dict[str, Any]:
        """One parsed block -> numpy columns of the good rows (bad rows reported and dropped)."""
        import numpy as np
        import pyarrow.compute as pc

        n = batch.num_rows
        col = {name: batch.column(name) for name in NELOGICA_REQUIRED}
        bad = np.zeros(n, dtype=bool)
        reasons: dict[int, str] = {}

        def flag(mask: Any, reason: Any) -> None:
            idx = np.flatnonzero(mask & ~bad)
            for i in idx[: MAX_NOTICES + 1 if not self.strict else 1]:
                reasons[int(i)] = reason(int(i))
            if len(idx) > MAX_NOTICES:
                for i in idx[MAX_NOTICES + 1 :]:
                    reasons[int(i)] = "bad value"
            bad[idx] = True

        ticker = pc.utf8_trim_whitespace(col["ticker"])
        empty_row = np.asarray(pc.equal(pc.binary_length(ticker), 0).to_numpy(zero_copy_only=False))
        for name in ("date", "time", "price", "qty"):
            empty_row &= np.asarray(
                pc.equal(pc.binary_length(col[name]), 0).to_numpy(zero_copy_only=False)
            )
        bad |= empty_row  # blank lines: skipped silently

        def number(name: str, kind: str) -> Any:
            raw = col[name]
            values = _to_numbers(raw, kind)
            missing = np.isnan(values) if kind == "float" else values == _NULL_INT
            flag(
                missing,
                lambda i: f"{name} {raw[i].as_py()!r} is not a number",
            )
            return values

        col["time"] = pc.replace_substring(col["time"], ":", "")  # 09:00:01 -> 090001
        date = number("date", "int")
        clock = number("time", "int")
        price = number("price", "float")
        qty = number("qty", "int")
        trade_number = number("trade_number", "int")
        vol = number("vol", "float")
        flag(
            np.asarray(pc.equal(pc.binary_length(ticker), 0).to_numpy(zero_copy_only=False)),
            lambda i: "ticker is empty",
        )
        encoded = pc.dictionary_encode(ticker)  # one check per distinct ticker
        tickers = encoded.dictionary.to_pylist()
        ticker_codes = encoded.indices.to_numpy(zero_copy_only=False)
        symbols = np.asarray(tickers, dtype=object)[ticker_codes]
        usable = np.fromiter((keys.valid_symbol(t) for t in tickers), bool, len(tickers))
        flag(
            ~usable[ticker_codes],
            lambda i: f"ticker {symbols[i]!r} is not a ticker (letters, digits, '.', '_', '-')",
        )
        flag(~(price > 0), lambda i: f"price {col['price'][i].as_py()!r} must be positive")
        flag(qty < 0, lambda i: f"qty {col['qty'][i].as_py()!r} is negative")
        hh, mm, ss = clock // 10000, clock // 100 % 100, clock % 100
        flag(
            (hh > 23) | (mm > 59) | (ss > 59) | (clock < 0),
            lambda i: f"time {col['time'][i].as_py()!r} is not HHMMSS",
        )
        # dates: one conversion per distinct date
        codes, uniques = _factorize(date)
        bases = np.empty(len(uniques), dtype=np.int64)
        for k, value in enumerate(uniques):
            base = self._day_base_ns(int(value)) if value > 0 else None
            bases[k] = -1 if base is None else base
        base = bases[codes]
        flag(base < 0, lambda i: f"date {col['date'][i].as_py()!r} is not YYYYMMDD")
        flag(
            (base < EARLIEST_NS) | (base > now_ns() + NS_PER_S * 86_400),
            lambda i: f"date {col['date'][i].as_py()!r} is before 2000 or after tomorrow",
        )

        if bad.any():
            rows = np.flatnonzero(bad & ~empty_row)
            if rows.size:
                lines = self._line_numbers(rows + row0)
                for i, line in zip(rows.tolist(), lines.tolist(), strict=True):
                    self._bad(int(line), reasons.get(i, "bad value"))
        keep = ~bad
        self.valid += int(np.count_nonzero(keep))
        seconds = base + (hh * 3600 + mm * 60 + ss) * NS_PER_S
        if self.symbols:
            keep &= np.isin(symbols, list(self.symbols))
        trade_types = _strings(pc.utf8_trim_whitespace(col["trade_type"]))
        return {
            "second": seconds[keep],
            "symbol": symbols[keep],
            "price": price[keep],
            "qty": qty[keep],
            "vol": vol[keep],
            "trade_number": trade_number[keep],
            "day": date[keep],
            "buyer": _strings(pc.utf8_trim_whitespace(col["buy_agent"]))[keep],
            "seller": _strings(pc.utf8_trim_whitespace(col["sell_agent"]))[keep],
            "trade_type": trade_types[keep],
        }

    def _events(self, cols: dict[str, Any]) -> list[Event]:
        import numpy as np

        n = len(cols["second"])
        if n == 0:
            return []
        second = cols["second"]
        # k-th of n trades in a run of equal seconds -> offset k * 1 s / n
        starts = np.flatnonzero(np.r_[True, second[1:] != second[:-1]])
        lengths = np.diff(np.r_[starts, n])
        run_start = np.repeat(starts, lengths)
        run_len = np.repeat(lengths, lengths)
        k = np.arange(n) - run_start
        ts = second + k * NS_PER_S // run_len
        back = int(np.count_nonzero(second[1:] < second[:-1]))
        self.out_of_order += back
        # trade types: one lookup per distinct text
        tt_codes, tt_uniques = _factorize(cols["trade_type"])
        mapped = np.empty(len(tt_uniques), dtype=np.int64)
        for j, text in enumerate(tt_uniques):
            code = trade_type_code(str(text))
            if code is None:
                self.unknown_types[str(text)] = self.unknown_types.get(str(text), 0) + int(
                    np.count_nonzero(tt_codes == j)
                )
                code = 32
            mapped[j] = code
        trade_type = mapped[tt_codes]
        aggressor = np.where(trade_type == 2, "buy", np.where(trade_type == 3, "sell", "none"))
        sessions, seqs = self._identities(cols)
        times = ts.tolist()
        n_rows = len(times)
        # positional Trade fields: symbol, ts_event, price, quantity, volume, trade_id, buyer,
        # seller, trade_type, aggressor, is_edit, buyer_name, seller_name, history, ts_init
        events: list[Event] = list(
            map(
                Trade,
                cols["symbol"].tolist(),
                times,
                cols["price"].tolist(),
                cols["qty"].tolist(),
                cols["vol"].tolist(),
                cols["trade_number"].tolist(),
                repeat(0, n_rows),
                repeat(0, n_rows),
                trade_type.tolist(),
                aggressor.tolist(),
                repeat(False, n_rows),
                cols["buyer"].tolist(),
                cols["seller"].tolist(),
                repeat(False, n_rows),
                times,
                sessions.tolist(),
                seqs.tolist(),
            )
        )
        self.stats.produced += len(events)
        return events

    def _identities(self, cols: dict[str, Any]) -> tuple[Any, Any]:
        """Sessions `nelogica:<SYM>:<date>` and seqs (trade numbers) of the rows, with the
        fallback identity for a trade number not above the last of its session (module doc)."""
        import numpy as np

        trade_number = cols["trade_number"]
        n = len(trade_number)
        sym_codes, symbols = _factorize(cols["symbol"])
        day_codes, days = _factorize(cols["day"])
        codes, pairs = _factorize(sym_codes.astype(np.int64) * len(days) + day_codes)
        names = []
        for pair in pairs.tolist():
            day = int(days[pair % len(days)])
            date = f"{day // 10000:04d}-{day // 100 % 100:02d}-{day % 100:02d}"
            names.append(f"nelogica:{symbols[pair // len(days)]}:{date}")
        sessions = np.asarray(names, dtype=object)[codes]
        seqs = trade_number.astype(np.int64, copy=True)
        back = np.zeros(n, dtype=bool)
        last = self._last_identity
        for j, name in enumerate(names):
            rows = np.flatnonzero(codes == j)
            values = trade_number[rows]
            before = np.maximum.accumulate(np.r_[np.int64(last.get(name, 0)), values])
            behind = values <= before[:-1]
            last[name] = int(before[-1])
            chunks = self._handed.setdefault(name, [])
            chunks.append(values[~behind])  # new highs: increasing, above every earlier chunk
            if behind.any():
                # a trade number handed out before is the same trade again (the marks skip
                # it); one never handed out is out of order and needs the fallback identity
                handed = np.concatenate(chunks)
                chunks[:] = [handed]
                at = np.minimum(np.searchsorted(handed, values[behind]), len(handed) - 1)
                seen = handed[at] == values[behind]
                back[rows[np.flatnonzero(behind)[~seen]]] = True
        ordinal = self._ordinal + np.arange(1, n + 1, dtype=np.int64)
        self._ordinal += n
        if back.any():
            sessions[back] = self._fallback_session()
            seqs[back] = ordinal[back]
            self.out_of_identity_order += int(np.count_nonzero(back))
        return sessions, seqs

    def _content_hash(self) -> str:
        return _file_digest([self.path])

    def close(self) -> None:
        super().close()
        if self._file is not None:
            self._file.close()


_NULL_INT = -(2**63)


def _to_numbers(raw: Any, kind: str) -> Any:
    """A string column as float64 (NaN when not a number) or int64 (_NULL_INT when not one)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    target = pa.float64() if kind == "float" else pa.int64()
    text = pc.utf8_trim_whitespace(raw)
    try:
        values = pc.cast(text, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = None
    if values is None and kind == "float":
        try:  # decimal comma (a semicolon-separated export)
            values = pc.cast(pc.replace_substring(text, ",", "."), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = None
    if values is None:
        import pandas as pd

        series = pd.to_numeric(
            pd.Series(text.to_numpy(zero_copy_only=False), dtype=object).str.replace(
                ",", ".", regex=False
            ),
            errors="coerce",
        )
        floats = series.to_numpy(dtype=np.float64, na_value=np.nan)
        if kind == "float":
            return floats
        whole = np.isfinite(floats) & (floats == np.floor(floats))
        return np.where(whole, np.nan_to_num(floats).astype(np.int64), _NULL_INT)
    if kind == "float":
        return values.to_numpy(zero_copy_only=False).astype(np.float64)
    return values.fill_null(_NULL_INT).to_numpy(zero_copy_only=False).astype(np.int64)


def _factorize(values: Any) -> tuple[Any, Any]:
    import pandas as pd

    codes, uniques = pd.factorize(values)
    return codes, uniques


def _strings(column: Any) -> Any:
    """A pyarrow string column as a numpy object array (dictionary-encoded: cheap per row)."""
    import numpy as np
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(column)
    dictionary = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    return dictionary[encoded.indices.to_numpy(zero_copy_only=False)]


def _split_last_second(cols: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Hold back the rows of the block's last second: it may continue in the next block."""
    import numpy as np

    second = cols["second"]
    n = len(second)
    if n == 0:
        return cols, None
    last = second[-1]
    start = n
    while start > 0 and second[start - 1] == last:
        start -= 1
        if start < n - 100_000:  # pathological: keep the run whole anyway
            break
    if start == 0:
        return {k: v[:0] for k, v in cols.items()}, cols
    head = {k: v[:start] for k, v in cols.items()}
    tail = {k: np.asarray(v[start:]) for k, v in cols.items()}
    return head, tail


# --- journal -----------------------------------------------------------------------------------


class JournalSource(_Paced):
    """Replays every message of a journal directory (`qt feed --replay-journal DIR`).

    Sessions are merged by receive time (`ts_init`), then seq. The new run re-stamps the
    transport session/seq; each event keeps its identity (its `origin` if it has one, else the
    session/seq it was published with), so republishing a journal stores nothing new. A payload
    that no longer decodes is counted and noted.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        speed: float = 0.0,
        symbols: Sequence[str] = (),
        strict: bool = False,
        max_pause_s: float = 10.0,
    ) -> None:
        super().__init__(speed=speed, max_pause_s=max_pause_s)
        from qt_cli.core.journal import JournalReader

        self.directory = Path(directory).expanduser()
        if not self.directory.is_dir():
            raise UsageError(f"--replay-journal {self.directory}: no such directory")
        self.reader = JournalReader(self.directory)
        if not self.reader.sessions():
            raise UsageError(
                f"--replay-journal {self.directory}: no journal segments (*.qtj) in it"
            )
        self.symbols = _wanted(symbols)
        self.strict = strict
        self.total_bytes = self.reader.size_bytes()
        self.done_bytes = 0

    @property
    def progress(self) -> tuple[int, int]:
        return min(self.done_bytes, self.total_bytes), self.total_bytes

    def _session_events(self, session: str, order: int) -> Iterator[tuple[int, int, int, Event]]:
        for record in self.reader.records(session):
            self.done_bytes += len(record.payload) + len(record.topic) + 18
            try:
                event = decode_dict(orjson.loads(record.payload))
            except (orjson.JSONDecodeError, DecodeError) as exc:
                message = f"{session} seq {record.seq}: {exc}"
                if self.strict:
                    raise DataError(f"{message} (--strict)") from None
                if self.stats.rejected < MAX_NOTICES:
                    self._note(message)
                self.stats.reject(message)
                continue
            if self.symbols and event.symbol not in self.symbols and event.symbol != "*":
                continue
            ts = getattr(event, "ts_init", 0) or event.ts_event
            yield ts, order, record.seq, event

    def _batches(self) -> Iterator[list[Event]]:
        sessions = sorted(self.reader.sessions())
        merged = heapq.merge(*(self._session_events(s, i) for i, s in enumerate(sessions)))
        batch: list[Event] = []
        for _, _, _, event in merged:
            batch.append(event)
            if len(batch) >= self.batch:
                self.stats.produced += len(batch)
                yield self._identify(batch)
                batch = []
        if batch:
            self.stats.produced += len(batch)
            yield self._identify(batch)
        self._note_identity_order()

    def _content_hash(self) -> str:
        return _file_digest(sorted(self.directory.rglob("*.qtj")))


def _file_digest(paths: Sequence[Path]) -> str:
    """16 hex digits of a BLAKE2b digest of the files' contents, in the order given."""
    import hashlib

    digest = hashlib.blake2b(digest_size=8)
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


# --- opening -----------------------------------------------------------------------------------


def open_replay(
    path: Path | str,
    *,
    speed: float = 0.0,
    symbols: Sequence[str] = (),
    strict: bool = False,
    time_unit: str | None = None,
    option: str = "--replay",
) -> NelogicaCsvSource | RecordedFileSource:
    """The source for `--replay FILE` (and the bridge's `--in FILE`), by the file's content."""
    fmt = detect_format(path, option=option)
    if fmt == "nelogica":
        if time_unit is not None:
            raise UsageError(
                f"--time-unit applies to files with a ts_event column; {path} is a Nelogica "
                "export (date and time columns): leave --time-unit out"
            )
        return NelogicaCsvSource(path, speed=speed, symbols=symbols, strict=strict)
    return RecordedFileSource(
        path, format=fmt, speed=speed, symbols=symbols, strict=strict, time_unit=time_unit
    )


def check_read(source: Any, name: str | Path) -> None:
    """DataError when a replay that reached its end read nothing valid: every record was bad, or
    there was none. Sources without a `valid` count (journals) always pass."""
    valid = getattr(source, "valid", None)
    if valid is None or valid:
        return
    stats = source.stats
    if stats.rejected:
        first = f" (first: {stats.problems[0]})" if stats.problems else ""
        raise DataError(
            f"nothing valid in {name}: all {stats.rejected:,} records were skipped{first}"
        )
    raise DataError(f"nothing to replay in {name}: it holds no records")


__all__ = [
    "NELOGICA_COLUMNS",
    "SUBSECOND_NOTE",
    "JournalSource",
    "NelogicaCsvSource",
    "RecordedFileSource",
    "check_read",
    "detect_format",
    "open_replay",
    "trade_type_code",
]
