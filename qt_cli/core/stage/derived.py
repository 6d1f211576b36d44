"""Derived streams written exactly once by workers that read their input through a consumer group.

A derived entry's identity comes from its input (docs/contracts.md, "Derived streams"):
session `<stage>.<input stream key>`, seq `derived_seq(input entry id)` = ms * 2**20 + n, monotone
in the input's position. So a restarted worker, or one that claimed a dead worker's entries,
writes the same (session, seq) again and `qt_append`'s high-water marks skip it.

High-water marks skip anything at or below the highest seq written, so the writes of one session
must happen in input order even when several workers share the input. `GroupWorker` keeps that
order with the group's own bookkeeping: a worker writes the results of its oldest held entries of
a stream only when no older entry of that stream is still pending (delivered to some consumer and
not acknowledged), and acknowledges entries only after their results are confirmed stored. An
entry acknowledged is therefore stored, and nothing later of its stream is stored before it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qt_cli.core.keys import parse_id
from qt_cli.core.stage.stats import RateMeter, StatsPublisher
from qt_cli.core.store.reader import SourceEntry, StreamSource
from qt_cli.core.store.writer import StreamBatch, StreamWriter

log = logging.getLogger(__name__)

SEQ_SHIFT = 20  # entry id n below 2**20 (a million entries in one ms of one stream)


def derived_session(stage: str, input_key: str) -> str:
    """The session of what stage `stage` derives from the input stream `input_key`."""
    return f"{stage}.{input_key}"


def derived_seq(entry_id: bytes | str) -> int:
    """A seq monotone in the input's position: ms * 2**20 + n of the input entry id."""
    ms, n = parse_id(entry_id)
    if n >= 1 << SEQ_SHIFT:
        raise ValueError(f"entry id {entry_id!r}: sequence part beyond 2**{SEQ_SHIFT}")
    return (ms << SEQ_SHIFT) | n


def input_id(seq: int) -> str:
    """The input entry id a derived seq came from (the inverse of `derived_seq`)."""
    return f"{seq >> SEQ_SHIFT}-{seq & ((1 << SEQ_SHIFT) - 1)}"


@dataclass(frozen=True)
class Derived:
    """One derived entry: its stream, field names (with `session` and `seq`), values, event ms."""

    key: str
    names: tuple[str, ...]
    values: tuple[Any, ...]
    event_ms: int


# derive(entry, session, seq) -> the entries to write for one input entry (may be empty)
Derive = Callable[[SourceEntry, str, int], Sequence[Derived]]


@dataclass
class WorkerStats:
    received: int = 0
    written: int = 0
    duplicates: int = 0
    acked: int = 0
    waits: int = 0  # times a write waited for an older entry another worker holds
    lag_ms: float | None = None
    stopped_by: str = ""


class GroupWorker:
    """A derived stage over a consumer-group `StreamSource`: read -> derive -> write in input order
    (one `StreamWriter` path) -> acknowledge after the write is confirmed; stats published as
    `qt:stats:<stage>:<name>`. Driven by `stage.run_stage` (open/run/stop/close)."""

    def __init__(
        self,
        source: StreamSource,
        writer: StreamWriter,
        derive: Derive,
        *,
        stage: str,
        name: str,
        stats_client: Any | None = None,
        duration_s: float | None = None,
        max_held: int = 10_000,
    ) -> None:
        if source.group is None:
            raise ValueError("GroupWorker needs a StreamSource with a consumer group")
        self.source = source
        self.writer = writer
        self.derive = derive
        self.stage = stage
        self.name = name
        self.duration_s = duration_s
        self.max_held = max_held
        self.stats = WorkerStats()
        self.publisher = StatsPublisher(stats_client or writer.client, stage, name)
        self._rate = RateMeter()
        self._stop = threading.Event()
        self._held: dict[str, list[SourceEntry]] = {}  # input stream -> entries in id order
        self._held_ids: set[tuple[str, str]] = set()
        self._closed = False

    # -- lifecycle --

    def open(self) -> None:
        """Nothing to open: the source and writer come connected."""

    def stop(self, reason: str = "stopped") -> None:
        if not self._stop.is_set():
            self.stats.stopped_by = self.stats.stopped_by or reason
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> WorkerStats:
        started = time.monotonic()
        while not self._stop.is_set():
            if self.duration_s is not None and time.monotonic() - started >= self.duration_s:
                self.stop("duration")
                break
            held = sum(map(len, self._held.values()))
            if held < self.max_held:
                for entry in self.source.read_entries(0.05 if held else 0.2):
                    ident = (entry.key, entry.id)
                    if ident in self._held_ids:  # claimed back while still held here
                        continue
                    self._held_ids.add(ident)
                    self._held.setdefault(entry.key, []).append(entry)
                    self.stats.received += 1
            elif self._stop.wait(0.01):
                break
            self._write_ready()
            if self.publisher.due():
                self.publish_stats()
        self._write_ready()  # what may go now; the rest stays pending for a restart or a claim
        self.publish_stats()
        return self.stats

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.source.close()

    # -- writing in input order --

    def _write_ready(self) -> None:
        """Write and acknowledge, per input stream, the held entries no older pending one
        precedes (entries older than all held ones belong to other workers: wait for them)."""
        ready: list[SourceEntry] = []
        for key, entries in self._held.items():
            if not entries:
                continue
            entries.sort(key=lambda e: parse_id(e.id))
            oldest = self.source.oldest_pending(key)
            if oldest is not None and parse_id(oldest) < parse_id(entries[0].id):
                self.stats.waits += 1
                continue
            ready += entries
            self._held[key] = []
        if not ready:
            return
        batches: dict[str, StreamBatch] = {}
        for entry in ready:
            session = derived_session(self.stage, entry.key)
            for out in self.derive(entry, session, derived_seq(entry.id)):
                batch = batches.get(out.key)
                if batch is None:
                    batch = batches[out.key] = self.writer.batch(out.key)
                batch.add(out.names, out.values, out.event_ms)
        for result in self.writer.append_many(batches.values()):  # raises unless all stored
            self.stats.written += result.written
            self.stats.duplicates += result.duplicates
        self.stats.acked += self.source.ack(ready)
        for entry in ready:
            self._held_ids.discard((entry.key, entry.id))
        ts_init = getattr(ready[-1].event, "ts_init", 0)
        if ts_init:
            self.stats.lag_ms = max(time.time_ns() - ts_init, 0) / 1e6

    def publish_stats(self) -> None:
        s = self.stats
        fields = self.publisher.common(
            received=s.received,
            written=s.written,
            rate=self._rate.update(s.written),
            lag_ms=s.lag_ms,
        )
        fields.update(
            duplicates=str(s.duplicates),
            acked=str(s.acked),
            claimed=str(self.source.claimed),
            rejected=str(self.source.rejected),
            group=self.source.group or "",
            consumer=self.source.consumer,
        )
        self.publisher.publish(fields)

    def totals(self) -> dict[str, Any]:
        s = self.stats
        return {
            "stage": self.stage,
            "name": self.name,
            "received": s.received,
            "written": s.written,
            "duplicates": s.duplicates,
            "acked": s.acked,
            "claimed": self.source.claimed,
            "rejected": self.source.rejected,
            "waits": s.waits,
            "stopped_by": s.stopped_by or "end",
        }


__all__ = [
    "Derive",
    "Derived",
    "GroupWorker",
    "WorkerStats",
    "derived_seq",
    "derived_session",
    "input_id",
]
