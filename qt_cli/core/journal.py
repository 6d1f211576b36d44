"""The feed's append-only on-disk journal: every message is written here before it is published.

Layout (one directory per UTC day, one segment file per publisher session and day)::

    <dir>/2025-08-08/9f2c61d4.ticks_000000000001.qtj    data: header + records
    <dir>/2025-08-08/9f2c61d4.ticks_000000000001.qtx    sparse index: (seq, offset) pairs

A segment's name carries its session and the seq of its first record. A new segment starts when
the day changes or the segment reaches `segment_bytes`.

Data file: `QTJ1` + u16 session length + session (UTF-8), then records::

    u32 body length | u32 CRC-32 of body | body = u64 seq | u16 topic length | topic | payload

all little-endian. The payload is the exact wire message (orjson) that was published. A record
whose header or body is cut short, or whose checksum does not match, ends the segment: that is
the torn last write of a crash, and everything before it reads back.

Index file: u64 seq, u64 offset pairs, one every `index_every` records (and the first), so a range
read seeks close to its first seq and scans at most `index_every` records. An index may be shorter
than its data (crash): readers scan from its last entry.

Durability (`fsync`): `none` hands the data to the OS at the end of every published batch (a
killed process loses nothing; a power cut may lose the last seconds); `batch` also fsyncs at most
every `fsync_interval_ms` (default 200 ms) and at close; `always` fsyncs at the end of every batch,
before the batch is published. In every policy the data reaches the OS before it is published, so
the replay endpoint can always serve a seq that a subscriber has seen after a gap.

Retention (`trim_journal`, `RetentionThread`): whole segments go, oldest first per session, never
one a writer still holds open (the writer keeps a shared `flock` on every open segment), never
one written to within the retention; see docs/feed.md, "Journal retention".
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import logging
import operator
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from qt_cli.core import keys
from qt_cli.core.errors import DataError, UnavailableError, UsageError
from qt_cli.core.events import Event
from qt_cli.core.timeparse import parse_duration_ns

try:
    import fcntl
except ImportError:  # Windows: an open file cannot be deleted there, which protects it as well
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MAGIC = b"QTJ1"
DATA_SUFFIX = ".qtj"
INDEX_SUFFIX = ".qtx"
FSYNC_POLICIES = ("none", "batch", "always")

_REC_HEAD = struct.Struct("<II")  # body length, crc32(body)
_BODY_HEAD = struct.Struct("<QH")  # seq, topic length
_INDEX_ENTRY = struct.Struct("<QQ")  # seq, offset
_SESSION_LEN = struct.Struct("<H")
_MAX_BODY = 256 * 1024 * 1024  # a length beyond this is garbage, not a record
_SEGMENT_RE = re.compile(r"^(?P<session>.+)_(?P<seq>\d{12,})$")
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class Record(NamedTuple):
    """One journaled message."""

    session: str
    seq: int
    topic: bytes
    payload: bytes


def _utc_day(ts_s: float) -> str:
    return datetime.fromtimestamp(ts_s, tz=UTC).strftime("%Y-%m-%d")


def _next_day_start(ts_s: float) -> float:
    day = datetime.fromtimestamp(ts_s, tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp() + 86_400


def segment_name(session: str, first_seq: int) -> str:
    return f"{session}_{first_seq:012d}"


def _hold_open(fd: int) -> None:
    """Mark a segment as open for writing: a shared lock that retention cannot take over."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)


def _try_lock_unused(fd: int) -> bool:
    """An exclusive lock on a segment nobody writes to any more (False: a writer holds it)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


# --- writing ---------------------------------------------------------------------------------


class _OpenSegment:
    __slots__ = ("count", "data", "first_seq", "index", "path", "size")

    def __init__(self, path: Path, session: str, first_seq: int) -> None:
        self.path = path
        self.first_seq = first_seq
        data_path = path.parent / (path.name + DATA_SUFFIX)
        self.data = open(data_path, "xb", buffering=1 << 20)  # noqa: SIM115
        _hold_open(self.data.fileno())
        self.index = open(path.parent / (path.name + INDEX_SUFFIX), "xb", buffering=64 * 1024)  # noqa: SIM115
        encoded = session.encode()
        header = MAGIC + _SESSION_LEN.pack(len(encoded)) + encoded
        self.data.write(header)
        self.size = len(header)
        self.count = 0

    def flush(self, fsync: bool) -> None:
        self.data.flush()
        self.index.flush()
        if fsync:
            os.fsync(self.data.fileno())
            os.fsync(self.index.fileno())

    def close(self, fsync: bool) -> None:
        try:
            self.flush(fsync)
        finally:
            try:
                self.data.close()
            finally:
                self.index.close()


class JournalWriter:
    """Appends records of any number of sessions; call `commit()` at the end of every batch.

    `append` only buffers; `commit` hands the buffer to the OS (and fsyncs per policy). The feed
    calls commit before it sends a batch, so a message is in the journal before anyone can see it.
    Not thread-safe: one publishing thread owns a writer.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        fsync: str = "batch",
        fsync_interval_ms: int = 200,
        segment_bytes: int = 1 << 30,
        index_every: int = 1024,
        on_roll: Callable[[], None] | None = None,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise UsageError(f"--fsync {fsync!r}: choose one of {', '.join(FSYNC_POLICIES)}")
        self.directory = Path(directory).expanduser()
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_ms / 1000
        self.segment_bytes = segment_bytes
        self.index_every = index_every
        self.on_roll = (
            on_roll  # called after segments were closed (size or day roll): cheap, please
        )
        self.bytes_written = 0
        self.records_written = 0
        self._segments: dict[str, _OpenSegment] = {}
        self._last_fsync = time.monotonic()
        self._day = ""
        self._day_end = 0.0
        self._dirty = False
        self._closed = False
        self._failed = False  # a write failed and was reported: close() adds no second error
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnavailableError(
                f"journal directory {self.directory}: {exc.strerror}; choose another with --journal DIR"
            ) from None
        self._roll_day(time.time())

    def _roll_day(self, now: float) -> None:
        self._day = _utc_day(now)
        self._day_end = _next_day_start(now)
        rolled = bool(self._segments)
        for segment in self._segments.values():
            segment.close(self.fsync != "none")
        self._segments.clear()
        if rolled and self.on_roll is not None:
            self.on_roll()

    def _open_segment(self, session: str, seq: int) -> _OpenSegment:
        day_dir = self.directory / self._day
        try:
            day_dir.mkdir(exist_ok=True)
            segment = _OpenSegment(day_dir / segment_name(session, seq), session, seq)
        except OSError as exc:
            raise UnavailableError(
                f"journal: cannot create a segment in {day_dir}: {exc}"
            ) from None
        self._segments[session] = segment
        self.bytes_written += segment.size
        return segment

    def append(self, session: str, seq: int, topic: bytes, payload: bytes) -> None:
        """Buffer one record (session, seq, topic, payload)."""
        segment = self._segments.get(session)
        if segment is None or segment.size >= self.segment_bytes:
            rolled = segment is not None
            if segment is not None:
                segment.close(self.fsync != "none")
            segment = self._open_segment(session, seq)
            if rolled and self.on_roll is not None:
                self.on_roll()
        body = _BODY_HEAD.pack(seq, len(topic)) + topic + payload
        record = _REC_HEAD.pack(len(body), zlib.crc32(body)) + body
        try:
            if segment.count % self.index_every == 0:
                segment.index.write(_INDEX_ENTRY.pack(seq, segment.size))
            segment.data.write(record)
        except OSError as exc:
            raise self._write_failed(segment, exc) from None
        segment.size += len(record)
        segment.count += 1
        self.bytes_written += len(record)
        self.records_written += 1
        self._dirty = True

    def append_batch(
        self, session: str, first_seq: int, frames: Sequence[tuple[bytes, bytes]]
    ) -> None:
        """Buffer consecutive records `first_seq`, `first_seq + 1`, … of one session in one write."""
        if not frames:
            return
        segment = self._segments.get(session)
        if segment is None or segment.size >= self.segment_bytes:
            rolled = segment is not None
            if segment is not None:
                segment.close(self.fsync != "none")
            segment = self._open_segment(session, first_seq)
            if rolled and self.on_roll is not None:
                self.on_roll()
        pack_body = _BODY_HEAD.pack
        pack_rec = _REC_HEAD.pack
        crc32 = zlib.crc32
        every = self.index_every
        size = segment.size
        count = segment.count
        parts: list[bytes] = []
        push = parts.append
        index: list[bytes] = []
        seq = first_seq
        for topic, payload in frames:
            if count % every == 0:
                index.append(_INDEX_ENTRY.pack(seq, size))
            head = pack_body(seq, len(topic)) + topic
            length = len(head) + len(payload)
            push(pack_rec(length, crc32(payload, crc32(head))))
            push(head)
            push(payload)
            size += 8 + length
            count += 1
            seq += 1
        try:
            segment.data.write(b"".join(parts))
            if index:
                segment.index.write(b"".join(index))
        except OSError as exc:
            raise self._write_failed(segment, exc) from None
        self.bytes_written += size - segment.size
        self.records_written += count - segment.count
        segment.size = size
        segment.count = count
        self._dirty = True

    def commit(self) -> None:
        """End of a batch: hand buffered records to the OS; fsync per policy; roll the day."""
        if self._dirty:
            now = time.monotonic()
            fsync = self.fsync == "always" or (
                self.fsync == "batch" and now - self._last_fsync >= self.fsync_interval_s
            )
            for segment in self._segments.values():
                try:
                    segment.flush(fsync)
                except OSError as exc:
                    raise self._write_failed(segment, exc) from None
            if fsync:
                self._last_fsync = now
            self._dirty = False
        if time.time() >= self._day_end:
            self._roll_day(time.time())

    def _write_failed(self, segment: _OpenSegment, exc: OSError) -> UnavailableError:
        """The one error a failed write gives (a full disk, an I/O error): which file, why,
        and what to do. What the journal did not take was not published."""
        self._failed = True
        return UnavailableError(
            f"journal: cannot write {segment.data.name}: {exc.strerror or exc}; nothing after the "
            f"last journaled seq was published. Free space in {self.directory} or choose "
            "another directory with --journal DIR, then start the feed again (a new session)"
        )

    def close(self) -> None:
        """Flush and close every segment; an error a failed write already reported is not
        raised again (what was buffered after it is dropped, as it was never published)."""
        if self._closed:
            return
        self._closed = True
        first: UnavailableError | None = None
        for segment in self._segments.values():
            try:
                segment.close(self.fsync != "none")
            except OSError as exc:
                if not self._failed and first is None:
                    first = self._write_failed(segment, exc)
        self._segments.clear()
        if first is not None:
            raise first

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- stamping ------------------------------------------------------------------------------


_FAST_WIRE: dict[type, Any] = {}


def wire_dict(event: Event) -> dict[str, Any]:
    """`event.to_dict()`, faster for types that keep the base implementation.

    The base `Event.to_dict` is `{"type": TYPE, field: value, ...}` over the class spec; one
    C-level attrgetter call builds the same dict without a Python loop per field.
    """
    cls = type(event)
    fast = _FAST_WIRE.get(cls)
    if fast is None:
        if cls.to_dict is Event.to_dict:
            names = tuple(name for name, _, _ in cls._spec)
            getter = operator.attrgetter(*names)
            keys_ = ("type", *names)
            type_name = cls.TYPE
            if len(names) == 1:

                def fast(e: Event) -> dict[str, Any]:
                    return dict(zip(keys_, (type_name, getter(e)), strict=True))
            else:

                def fast(e: Event) -> dict[str, Any]:
                    return dict(zip(keys_, (type_name, *getter(e)), strict=True))
        else:
            fast = cls.to_dict
        _FAST_WIRE[cls] = fast
    return fast(event)


class Sequencer:
    """Numbers the messages of one publisher session, encodes them and journals them.

    `encode(events)` returns `(topic, payload)` pairs ready to send, after the whole batch is in
    the journal (committed). `stamp(events)` does the same but returns copies of the events with
    `session`/`seq` set, for sinks that take events (files, Valkey). Seq starts at 1, gap-free.

    With `keep_identity`, an event that arrives with a session of its own (a replayed record:
    see `sources/replay.py`) keeps it as its storage identity: the wire message carries it as
    `origin`/`origin_seq` beside the transport `session`/`seq` (which stay gap-free for gap
    detection and the journal), and `stamp` hands sinks copies whose `session`/`seq` are that
    identity, so what they store is deduplicated on it.
    """

    def __init__(
        self, session: str, journal: JournalWriter | None = None, *, keep_identity: bool = False
    ) -> None:
        self.session = session
        self.journal = journal
        self.keep_identity = keep_identity
        self.seq = 0
        self._topics: dict[tuple[str, str], bytes] = {}

    def topic_of(self, wire_type: str, symbol: str) -> bytes:
        key = (wire_type, symbol)
        topic = self._topics.get(key)
        if topic is None:
            try:
                text = keys.topic(wire_type, symbol)
            except KeyError:
                text = f"{wire_type}_{symbol}"
            topic = self._topics[key] = text.encode()
        return topic

    def encode(self, events: Iterable[Event]) -> list[tuple[bytes, bytes]]:
        session = self.session
        first = self.seq + 1
        seq = self.seq
        topics = self._topics
        dumps = orjson.dumps
        option = orjson.OPT_SERIALIZE_NUMPY
        out: list[tuple[bytes, bytes]] = []
        push = out.append
        keep = self.keep_identity
        for event in events:
            wire = wire_dict(event)
            seq += 1
            if keep and wire.get("session"):
                wire["origin"] = wire["session"]
                wire["origin_seq"] = wire["seq"]
            wire["session"] = session
            wire["seq"] = seq
            kind = "history" if wire.get("history") else wire["type"]
            topic = topics.get((kind, event.symbol)) or self.topic_of(kind, event.symbol)
            push((topic, dumps(wire, option=option)))
        self.seq = seq
        if self.journal is not None:
            self.journal.append_batch(session, first, out)
            self.journal.commit()
        return out

    def stamp(self, events: Iterable[Event]) -> list[Event]:
        session = self.session
        seq = self.seq
        append = self.journal.append if self.journal is not None else None
        out: list[Event] = []
        keep = self.keep_identity
        for event in events:
            seq += 1
            origin = getattr(event, "session", "") if keep else ""
            stamped = copy.copy(event)
            object.__setattr__(stamped, "session", session)
            object.__setattr__(stamped, "seq", seq)
            if append is not None:
                wire = stamped.to_dict()
                if origin:
                    wire["origin"] = origin
                    wire["origin_seq"] = event.seq  # type: ignore[attr-defined]
                kind = "history" if wire.get("history") else wire["type"]
                payload = orjson.dumps(wire, option=orjson.OPT_SERIALIZE_NUMPY)
                append(session, seq, self.topic_of(kind, event.symbol), payload)
            out.append(event if origin else stamped)
        self.seq = seq
        if self.journal is not None:
            self.journal.commit()
        return out


# --- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One data file of the journal."""

    path: Path
    session: str
    first_seq: int
    day: str

    @property
    def index_path(self) -> Path:
        return self.path.parent / (self.path.name[: -len(DATA_SUFFIX)] + INDEX_SUFFIX)


def _read_header(handle: Any, path: Path) -> str | None:
    """The segment's session; None while a new segment's header is not yet on disk."""
    head = handle.read(len(MAGIC) + _SESSION_LEN.size)
    if head and head[: len(MAGIC)] != MAGIC[: len(head)]:
        raise DataError(f"{path} is not a qt journal segment (bad header)")
    if len(head) < len(MAGIC) + _SESSION_LEN.size:
        return None
    (length,) = _SESSION_LEN.unpack_from(head, len(MAGIC))
    session = handle.read(length)
    if len(session) < length:
        return None
    return session.decode()


def _read_index(path: Path) -> list[tuple[int, int]]:
    try:
        raw = path.read_bytes()
    except OSError:
        return []
    usable = len(raw) - len(raw) % _INDEX_ENTRY.size
    return list(_INDEX_ENTRY.iter_unpack(raw[:usable]))


def _scan(handle: Any, path: Path, *, report_torn: bool) -> Iterator[tuple[int, bytes, bytes]]:
    """Records from the handle's position to the end or the first torn/corrupt record."""
    read = handle.read
    head_size = _REC_HEAD.size
    while True:
        head = read(head_size)
        if len(head) < head_size:
            if head and report_torn:
                log.warning("%s: last record cut short (crash?); it is ignored", path)
            return
        length, crc = _REC_HEAD.unpack(head)
        if length < _BODY_HEAD.size or length > _MAX_BODY:
            if report_torn:
                log.warning("%s: bad record length %d; reading stops there", path, length)
            return
        body = read(length)
        if len(body) < length or zlib.crc32(body) != crc:
            if report_torn:
                log.warning("%s: last record torn or corrupt (crash?); it is ignored", path)
            return
        seq, topic_len = _BODY_HEAD.unpack_from(body)
        start = _BODY_HEAD.size
        yield seq, body[start : start + topic_len], body[start + topic_len :]


class JournalReader:
    """Reads a journal directory: list sessions, read a (session, seq range), or everything.

    Safe to use while a writer appends (it only reads what the writer has committed). Call
    `refresh()` to see segments created since the reader was made (`read_range` does it itself
    when a session or seq is not known yet).
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory).expanduser()
        self._sessions: dict[str, list[Segment]] = {}
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        sessions: dict[str, list[Segment]] = {}
        try:
            days = sorted(
                entry.name
                for entry in os.scandir(self.directory)
                if entry.is_dir() and _DAY_RE.match(entry.name)
            )
        except FileNotFoundError:
            days = []
        except OSError as exc:
            raise UnavailableError(f"journal {self.directory}: {exc.strerror}") from None
        for day in days:
            for entry in os.scandir(self.directory / day):
                if not entry.name.endswith(DATA_SUFFIX):
                    continue
                match = _SEGMENT_RE.match(entry.name[: -len(DATA_SUFFIX)])
                if match is None:
                    continue
                segment = Segment(Path(entry.path), match["session"], int(match["seq"]), day)
                sessions.setdefault(segment.session, []).append(segment)
        for segments in sessions.values():
            segments.sort(key=lambda s: s.first_seq)
        with self._lock:
            self._sessions = sessions

    def sessions(self) -> dict[str, list[Segment]]:
        with self._lock:
            return dict(self._sessions)

    def segments(self) -> list[Segment]:
        return [s for segments in self.sessions().values() for s in segments]

    def size_bytes(self) -> int:
        return sum(s.path.stat().st_size for s in self.segments() if s.path.exists())

    def last_seq(self, session: str) -> int | None:
        """The highest seq journaled for a session (None when the session is unknown)."""
        segments = self.sessions().get(session)
        if not segments:
            return None
        for segment in reversed(segments):
            try:
                size = segment.path.stat().st_size
            except FileNotFoundError:
                continue
            index = [entry for entry in _read_index(segment.index_path) if entry[1] < size]
            last = None
            for seq, _, _ in self._segment_records(segment, index[-1][0] if index else 0, index):
                last = seq
            if last is not None:
                return last
        return None

    def _segment_records(
        self, segment: Segment, from_seq: int, index: Sequence[tuple[int, int]] | None = None
    ) -> Iterator[tuple[int, bytes, bytes]]:
        if index is None:
            index = _read_index(segment.index_path)
        try:
            handle = open(segment.path, "rb", buffering=256 * 1024)  # noqa: SIM115
        except FileNotFoundError:
            return
        with handle:
            if _read_header(handle, segment.path) is None:
                return
            size = os.fstat(handle.fileno()).st_size
            pos = bisect.bisect_right(index, (from_seq, float("inf"))) - 1
            while pos >= 0 and index[pos][1] >= size:  # index ahead of data (crash): step back
                pos -= 1
            if pos >= 0:
                handle.seek(index[pos][1])
            for seq, topic, payload in _scan(handle, segment.path, report_torn=True):
                if seq >= from_seq:
                    yield seq, topic, payload

    def read_range(
        self, session: str, from_seq: int, to_seq: int, *, limit: int | None = None
    ) -> Iterator[Record]:
        """Records of `session` with from_seq <= seq <= to_seq, in seq order (at most `limit`)."""
        segments = self.sessions().get(session)
        refreshed = not segments or segments[-1].first_seq <= from_seq
        if refreshed:
            self.refresh()  # a new session or a new segment may have appeared since
            segments = self.sessions().get(session)
        if not segments:
            return
        starts = [s.first_seq for s in segments]
        todo = segments[max(bisect.bisect_right(starts, from_seq) - 1, 0) :]
        count = 0
        for attempt in range(2):
            for segment in todo:
                if segment.first_seq > to_seq:
                    return
                for seq, topic, payload in self._segment_records(segment, from_seq):
                    if seq > to_seq:
                        return
                    yield Record(session, seq, topic, payload)
                    count += 1
                    if limit is not None and count >= limit:
                        return
            if attempt == 0 and not refreshed:
                # The end of the known segments: one the writer started since the last refresh
                # may follow (the segment list is a snapshot); look once more.
                known = segments[-1].first_seq
                self.refresh()
                todo = [s for s in self.sessions().get(session, []) if s.first_seq > known]
            else:
                return

    def records(self, session: str | None = None) -> Iterator[Record]:
        """Every record (of one session, or of all sessions one after the other), seq order."""
        sessions = self.sessions()
        names = [session] if session is not None else sorted(sessions)
        for name in names:
            for segment in sessions.get(name, []):
                for seq, topic, payload in self._segment_records(segment, 0):
                    yield Record(name, seq, topic, payload)

    def first_seq(self, session: str) -> int | None:
        """The lowest seq the journal still holds for a session (retention removes old segments).

        None when the session is unknown or all its segments are gone.
        """
        for attempt in range(2):
            for segment in self.sessions().get(session, []):
                if segment.path.exists():
                    return segment.first_seq
            if attempt == 0:
                self.refresh()  # a segment removed since the last refresh: look again
        return None

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per session: first and last seq, segment count and bytes (for `--json` and the docs)."""
        out: dict[str, dict[str, Any]] = {}
        for session, segments in sorted(self.sessions().items()):
            sizes = [(s, _size(s.path)) for s in segments]
            held = [(s, size) for s, size in sizes if size is not None]
            if not held:
                continue  # removed by retention since the last refresh
            out[session] = {
                "first_seq": held[0][0].first_seq,
                "last_seq": self.last_seq(session),
                "segments": len(held),
                "bytes": sum(size for _, size in held),
            }
        return out


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


# --- retention -------------------------------------------------------------------------------


def parse_retention(text: str, option: str = "--journal-retention") -> int:
    """`7d` -> ns (a bare number is days, as for `qt cleanup --retention`); UsageError if bad."""
    try:
        ns = parse_duration_ns(text.strip(), default_unit="d")
    except UsageError:
        raise UsageError(f"{option} {text!r}: expected a duration (7d, 12h)") from None
    if ns <= 0:
        raise UsageError(f"{option} {text!r}: must be longer than zero")
    return ns


@dataclass
class SessionTrim:
    """One session of the journal: its segments before and after, what went (or would go)."""

    session: str
    segments_before: int
    segments_after: int
    removed: int  # segments
    first_seq_before: int
    first_seq_after: int | None  # lowest seq still held (None: every segment went)
    bytes_before: int
    freed_bytes: int
    in_use: int = 0  # segments past the cutoff kept because a writer still holds them open


@dataclass
class JournalTrimReport:
    dry_run: bool
    directory: str
    retention: str  # as asked, e.g. 7d
    cutoff: str  # ISO 8601 UTC: segments last written before this go
    sessions: list[SessionTrim]
    seconds: float
    days_removed: list[str] = field(default_factory=list)  # empty day directories removed

    @property
    def removed(self) -> int:
        return sum(s.removed for s in self.sessions)

    @property
    def freed_bytes(self) -> int:
        return sum(s.freed_bytes for s in self.sessions)

    @property
    def in_use(self) -> int:
        return sum(s.in_use for s in self.sessions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "journal": self.directory,
            "retention": self.retention,
            "cutoff": self.cutoff,
            "sessions": [asdict(s) for s in self.sessions],
            "removed": self.removed,
            "freed_bytes": self.freed_bytes,
            "in_use": self.in_use,
            "days_removed": self.days_removed,
            "seconds": round(self.seconds, 3),
        }


def _segment_bytes(segment: Segment) -> int:
    return (_size(segment.path) or 0) + (_size(segment.index_path) or 0)


def _remove_segment(segment: Segment, *, dry_run: bool) -> bool | None:
    """Delete a segment that no writer holds open: True done, False in use, None already gone."""
    try:
        handle = open(segment.path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return None
    with handle:
        if not _try_lock_unused(handle.fileno()):
            return False
        if dry_run:
            return True
        try:
            segment.path.unlink()
        except FileNotFoundError:
            return None
        except PermissionError:  # Windows: still open (a writer or a reader); next time
            return False
        with contextlib.suppress(FileNotFoundError):
            segment.index_path.unlink()
    return True


def trim_journal(
    directory: Path | str,
    retention_ns: int,
    *,
    dry_run: bool = False,
    now_ns: int | None = None,
    retention_text: str = "",
) -> JournalTrimReport:
    """Remove the journal segments that retention lets go (docs/feed.md, "Journal retention").

    Per session, in seq order, a segment goes only when it was last written (its newest record)
    before now - `retention_ns` and no writer holds it open; the first segment that must stay
    stops the session's trimming, so every session keeps one unbroken range of seqs. Empty day
    directories older than the cutoff go too. Safe while feeds write and replay endpoints read.
    """
    if retention_ns <= 0:
        raise UsageError("journal retention must be longer than zero (e.g. 7d)")
    started = time.perf_counter()
    now = time.time_ns() if now_ns is None else now_ns
    cutoff_ns = now - retention_ns
    reader = JournalReader(directory)
    reports: list[SessionTrim] = []
    for session, segments in sorted(reader.sessions().items()):
        present: list[tuple[Segment, os.stat_result]] = []
        for segment in segments:
            with contextlib.suppress(FileNotFoundError):
                present.append((segment, segment.path.stat()))
        if not present:
            continue
        sizes = [_segment_bytes(s) for s, _ in present]
        removed = freed = in_use = 0
        for (segment, stat), size in zip(present, sizes, strict=True):
            if stat.st_mtime_ns >= cutoff_ns:
                break
            done = _remove_segment(segment, dry_run=dry_run)
            if done is False:
                in_use = 1
                break
            removed += 1
            freed += size if done else 0
        after = present[removed:]
        reports.append(
            SessionTrim(
                session=session,
                segments_before=len(present),
                segments_after=len(after),
                removed=removed,
                first_seq_before=present[0][0].first_seq,
                first_seq_after=after[0][0].first_seq if after else None,
                bytes_before=sum(sizes),
                freed_bytes=freed,
                in_use=in_use,
            )
        )
    days = [] if dry_run else _remove_empty_days(reader.directory, min(cutoff_ns, now - 86_400e9))
    return JournalTrimReport(
        dry_run=dry_run,
        directory=str(reader.directory),
        retention=retention_text or f"{retention_ns / 1e9:g}s",
        cutoff=datetime.fromtimestamp(cutoff_ns / 1e9, tz=UTC).isoformat(timespec="seconds"),
        sessions=reports,
        seconds=time.perf_counter() - started,
        days_removed=days,
    )


def _remove_empty_days(directory: Path, before_ns: float) -> list[str]:
    """Empty day directories of days before `before_ns` (a writer only creates today's)."""
    last = _utc_day(before_ns / 1e9)
    out: list[str] = []
    with contextlib.suppress(OSError):
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.is_dir() and _DAY_RE.match(entry.name) and entry.name < last:
                try:
                    os.rmdir(entry.path)
                except OSError:
                    continue  # not empty
                out.append(entry.name)
    return out


class RetentionThread:
    """Trims a feed's journal in the background: at start, when a segment rolls, and every
    `interval_s`. `nudge()` (the writer's `on_roll`) is cheap; `close()` joins the thread.
    """

    def __init__(
        self,
        directory: Path | str,
        retention_ns: int,
        *,
        retention_text: str = "",
        interval_s: float = 600.0,
        on_trim: Callable[[JournalTrimReport], None] | None = None,
    ) -> None:
        if retention_ns <= 0:
            raise UsageError("--journal-retention must be longer than zero (e.g. 7d)")
        self.directory = Path(directory)
        self.retention_ns = retention_ns
        self.retention_text = retention_text
        self.interval_s = interval_s
        self.on_trim = on_trim
        self.runs = 0
        self.segments_removed = 0
        self.bytes_freed = 0
        self.last_error = ""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RetentionThread:
        """The pass at start runs here, before the feed publishes (so its totals count it even
        when the feed stops at once); later passes run on the thread."""
        self._pass()
        self._thread = threading.Thread(target=self._run, name="qt-journal-retention", daemon=True)
        self._thread.start()
        return self

    def nudge(self) -> None:
        self._wake.set()

    def _pass(self) -> None:
        try:
            report = trim_journal(
                self.directory, self.retention_ns, retention_text=self.retention_text
            )
        except Exception as exc:  # a failed pass must not stop the feed; try again later
            self.last_error = str(exc)
            log.warning("journal retention: %s", exc)
        else:
            self.runs += 1
            self.segments_removed += report.removed
            self.bytes_freed += report.freed_bytes
            if report.removed and self.on_trim is not None:
                self.on_trim(report)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._pass()

    def totals(self) -> dict[str, Any]:
        return {
            "retention": self.retention_text,
            "runs": self.runs,
            "segments_removed": self.segments_removed,
            "bytes_freed": self.bytes_freed,
        }

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
