"""The queue between receivers and the writer: bounded memory, spilling to a file, dropping
into recorded seq ranges (refilled later) when the file cannot be written."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

from qt_cli.core.bridge.config import DEFAULT_BUFFER_EVENTS, Say, _log_say
from qt_cli.core.bridge.rows import Item, Refill, _add_range, _session_seq, tick_row
from qt_cli.core.errors import DecodeError
from qt_cli.core.events import (
    Event,
    decode_dict,
)
from qt_cli.core.records import DeadLetter, Gap
from qt_cli.core.store.writer import (
    E_PRICE,
    E_VOLUME,
    entry_trade,
)

log = logging.getLogger(__name__)


def _item_to_line(item: Item) -> bytes:
    if type(item) is tuple:
        _, names, entry = item
        if entry[E_PRICE] != "" and entry[E_VOLUME] != "":
            # The wire dict the Row was made of (what Trade.to_dict gives), without a Trade.
            wire = dict(zip(names, entry[1:], strict=True))
            wire["is_edit"] = wire["is_edit"] == "1"
            if "history" in wire:
                wire["history"] = True
            return orjson.dumps({"e": wire})
        item = entry_trade(entry)
    if isinstance(item, Event):
        return orjson.dumps({"e": item.to_dict()}, option=orjson.OPT_SERIALIZE_NUMPY)
    if isinstance(item, DeadLetter):
        data = {**item.__dict__, "raw": item.raw.decode("latin-1")}
        return orjson.dumps({"d": data})
    if isinstance(item, Refill):
        return orjson.dumps({"r": item.__dict__})
    return orjson.dumps({"g": item.__dict__})


def _item_from_line(line: bytes) -> Item:
    data = orjson.loads(line)
    if "e" in data:
        wire = data["e"]
        return tick_row(wire) or decode_dict(wire)  # a trade straight to its Row, as received
    if "d" in data:
        d = data["d"]
        return DeadLetter(**{**d, "raw": d["raw"].encode("latin-1")})
    if "r" in data:
        return Refill(**data["r"])
    return Gap(**data["g"])


SPILL_WRITE_LINES = 4_096  # lines per write to the spill file (a failed write drops these on)


class SpillQueue:
    """FIFO between receivers and the writer: up to `max_memory` items in memory, then a file.

    Once spilling starts, every new item goes to the file until the file is drained, so order is
    kept: memory holds the oldest items, the file the newer ones. A spill file left by an earlier
    run is drained first (its events are written once: the high-water marks skip any repeat).

    When the file cannot be written (its disk is full, …) nothing raises: the queue says once
    which path failed, cuts what the failed write left, and from then on drops the events that
    arrive, recording per session the seq range it dropped (gap records and dead letters are still
    kept, in memory). When the writer has taken everything queued before the drop, `take` hands it
    a `Refill` of those ranges (fetched again from the replay endpoint, written in that place of
    the order) and the queue accepts again. `Refill` markers put back with `push_front` are
    always taken alone.
    """

    def __init__(
        self, path: Path, *, max_memory: int = DEFAULT_BUFFER_EVENTS, warn: Say | None = None
    ) -> None:
        self.path = path
        self.max_memory = max(1, max_memory)
        self._warn = warn or _log_say
        self._mem: deque[Item] = deque()
        self._cond = threading.Condition()
        # `put` wakes the taker only once memory holds this many items: 1 while it waits for a
        # first item, the batch size while it lingers for more (a wake-up per put cost the writer
        # a context switch and the interpreter lock each time, for nothing).
        self._wake_at = 1
        self.wakeups = 0  # notifications `put` sent (tests)
        self._file: Any = None
        self._read_offset = 0
        self._markers = 0  # Refill markers in memory
        self._dropping: dict[str, list[int]] | None = None  # session -> [first, last] dropped
        self._drop_reason = ""
        self._full_said = False
        self.spilled_unread = 0
        self.spilled_total = 0
        self.dropped_total = 0  # events dropped because the spill file could not take them
        self.dropped_unnumbered = 0  # of those, events without (session, seq): not refillable
        self.recovered_from_disk = 0
        self.persisted_refill: Refill | None = None  # what `persist` recorded as seq ranges
        if path.exists() and path.stat().st_size > 0:
            self.spilled_unread = self._count_lines()
            self.recovered_from_disk = self.spilled_unread
            if self.spilled_unread == 0:
                path.unlink()

    def _count_lines(self) -> int:
        """Lines of a spill file left by an earlier run; a torn last line (a write cut short) is
        cut off, so what is appended now starts on a line of its own."""
        count = 0
        good = 0
        with self.path.open("rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break
                good += len(line)
                if line.strip():
                    count += 1
            size = handle.seek(0, os.SEEK_END)
        if size != good:
            try:
                os.truncate(self.path, good)
            except OSError as exc:
                log.warning("cannot cut the torn last line of %s: %s", self.path, exc)
        return count

    def __len__(self) -> int:
        with self._cond:
            return len(self._mem) + self.spilled_unread + (self._dropping is not None)

    @property
    def spilling(self) -> bool:
        return self.spilled_unread > 0

    @property
    def dropping(self) -> bool:
        """True while arriving events are dropped (the spill file could not take them)."""
        return self._dropping is not None

    def put(self, items: Sequence[Item]) -> None:
        if not items:
            return
        with self._cond:
            if (
                self.spilled_unread == 0
                and self._dropping is None
                and len(self._mem) + len(items) <= self.max_memory
            ):
                self._mem.extend(items)
            elif self._dropping is not None:
                self._drop(items)
            else:
                room = 0 if self.spilled_unread else max(0, self.max_memory - len(self._mem))
                self._mem.extend(items[:room])
                self._spill(items[room:])
            if len(self._mem) >= self._wake_at or self.spilled_unread or self._dropping is not None:
                self.wakeups += 1
                self._cond.notify_all()

    def _spill(self, items: Sequence[Item]) -> None:
        """Append items to the spill file; what it cannot take (disk full) is dropped."""
        if not items:
            return
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("ab", buffering=0)
        except OSError as exc:
            self._start_dropping(exc)
            self._drop(items)
            return
        for start in range(0, len(items), SPILL_WRITE_LINES):
            part = items[start : start + SPILL_WRITE_LINES]
            data = memoryview(b"\n".join(_item_to_line(i) for i in part) + b"\n")
            fd = self._file.fileno()
            size = os.fstat(fd).st_size
            try:
                while data:
                    data = data[self._file.write(data) :]
            except OSError as exc:
                try:
                    os.ftruncate(fd, size)  # no torn line: the next write starts a line
                except OSError:
                    log.debug("cutting %s back to %d bytes failed", self.path, size)
                self._start_dropping(exc)
                self._drop(items[start:])
                return
            self.spilled_unread += len(part)
            self.spilled_total += len(part)

    def _start_dropping(self, exc: OSError) -> None:
        if self._dropping is None:
            self._dropping = {}
        why = exc.strerror or str(exc)
        self._drop_reason = f"dropped: the spill file {self.path} could not take them ({why})"
        if not self._full_said:
            self._full_said = True
            self._warn(
                f"bridge: cannot write the spill file {self.path}: {exc}; dropping what arrives "
                "until the writer catches up (the dropped seq ranges are recorded and fetched "
                "again from the replay endpoint once Valkey is back)"
            )

    def _drop(self, items: Sequence[Item]) -> None:
        """Record items the spill file cannot take: (session, seq) ranges, to fetch again."""
        ranges = self._dropping
        assert ranges is not None
        for item in items:
            session, seq = _session_seq(item)
            if session and seq:
                _add_range(ranges, session, seq, seq)
                self.dropped_total += 1
            elif isinstance(item, Refill):
                for marked, (first, last) in item.ranges.items():
                    _add_range(ranges, marked, first, last)
            elif isinstance(item, Gap | DeadLetter):
                self._mem.append(item)  # small and rare; their order does not matter
            else:
                self.dropped_total += 1
                self.dropped_unnumbered += 1

    def _end_dropping(self) -> list[Item]:
        """The Refill of what was dropped (the writer reached the place of the drop)."""
        ranges, self._dropping = self._dropping or {}, None
        self._full_said = False
        if self.spilled_unread == 0:
            self._truncate()  # nothing in it (the failed writes were cut): start afresh
        if self.dropped_unnumbered:
            self._warn(
                f"bridge: LOST {self.dropped_unnumbered:,} events without session/seq that the "
                f"spill file {self.path} could not take (they cannot be fetched again)"
            )
            self.dropped_unnumbered = 0
        return [Refill(ranges, self._drop_reason)] if ranges else []

    def take(self, max_items: int, *, wait_s: float, linger_s: float = 0.0) -> list[Item]:
        """Up to `max_items`, waiting up to `wait_s` for the first and `linger_s` for more."""
        with self._cond:
            if not self._mem and not self.spilled_unread and self._dropping is None:
                self._cond.wait(wait_s)
            if linger_s > 0 and 0 < len(self._mem) < max_items and not self.spilled_unread:
                deadline = time.monotonic() + linger_s
                self._wake_at = max_items  # puts below a full batch let the linger run out
                try:
                    while len(self._mem) < max_items:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                finally:
                    self._wake_at = 1
            mem = self._mem
            if mem:
                n = min(max_items, len(mem))
                if self._markers:  # a Refill goes alone: what is behind it waits for it
                    if type(mem[0]) is Refill:
                        self._markers -= 1
                        return [mem.popleft()]
                    for i, item in enumerate(islice(mem, n)):
                        if type(item) is Refill:
                            n = i
                            break
                return [mem.popleft() for _ in range(n)]
            if self.spilled_unread:
                return self._read_spill(max_items)
            if self._dropping is not None:
                return self._end_dropping()
            return []

    def _read_spill(self, max_items: int) -> list[Item]:
        out: list[Item] = []
        with self.path.open("rb") as handle:
            handle.seek(self._read_offset)
            while len(out) < max_items and self.spilled_unread:
                line = handle.readline()
                if not line:
                    self.spilled_unread = 0  # the file ended early (a torn last line)
                    break
                if not line.strip():
                    self._read_offset += len(line)
                    continue
                try:
                    item = _item_from_line(line)
                except (orjson.JSONDecodeError, DecodeError, KeyError, TypeError) as exc:
                    item = DeadLetter(f"unreadable spill line: {exc}", line, str(self.path))
                if type(item) is Refill and out:
                    break  # a marker goes alone: the next take
                self._read_offset += len(line)
                self.spilled_unread -= 1
                out.append(item)
                if type(item) is Refill:
                    break
        if self.spilled_unread == 0:
            self._truncate()
        return out

    def _truncate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)
        self._read_offset = 0

    def push_front(self, items: Sequence[Item]) -> None:
        """Put items back at the head (a batch the writer could not store, a Refill's page)."""
        with self._cond:
            self._mem.extendleft(reversed(items))
            self._markers += sum(1 for i in items if type(i) is Refill)
            self._cond.notify_all()

    def persist(self) -> int:
        """Move everything to the spill file, oldest first (on shutdown while Valkey is down).

        What the file cannot take (disk full) is dropped from the newest end and recorded as a
        Refill line at the end of the file when that still fits (else its ranges are said
        loudly); a restarted bridge also fetches everything after its watermark. Returns how
        many items the file holds."""
        with self._cond:
            unread: list[Item] = []
            while self.spilled_unread:
                unread += self._read_spill(self.spilled_unread)
            everything = [*self._mem, *unread]
            self._mem.clear()
            self._markers = 0
            self._truncate()
            dropped, self._dropping = self._dropping, None  # dropped earlier: the newest of all
            self._spill(everything)
            if dropped is not None:
                if self._dropping is None:
                    self._dropping = dropped
                else:
                    for session, (first, last) in dropped.items():
                        _add_range(self._dropping, session, first, last)
            kept = self.spilled_unread
            self.persisted_refill = None
            if self._dropping:
                marker = Refill(self._dropping, self._drop_reason)
                self._dropping = None
                self._spill([marker])
                if self._dropping is None:
                    self.persisted_refill = marker
                else:
                    self._warn(
                        f"bridge: LOST from {self.path} (disk full): {marker.describe()}; a "
                        "restarted bridge fetches only what follows its watermark again"
                    )
            self._dropping = None
            if self._mem:
                self._warn(
                    f"bridge: LOST {len(self._mem):,} gap records and dead letters the spill "
                    f"file {self.path} could not take"
                )
                self._mem.clear()
            if self._file is not None:
                self._file.close()
                self._file = None
            return kept

    def close(self) -> None:
        with self._cond:
            if self._file is not None:
                self._file.close()
                self._file = None
