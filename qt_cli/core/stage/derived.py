"""Derived streams written exactly once by workers that read their input through a consumer group.

A derived entry's identity comes from its input (docs/contracts.md, "Derived streams"):
session `<stage>.<input session>` and the input's seq (`derived_identity`; for input without a
session: `<stage>.<input stream key>` and ms * 1000 + n of the input entry id), monotone in the
input's position. So a restarted worker, or one that claimed a dead worker's entries,
writes the same (session, seq) again and `qt_append`'s high-water marks skip it.

High-water marks skip anything at or below the highest seq written, so the writes of one session
must happen in input order even when several workers share the input. `GroupWorker` keeps that
order with the group's own bookkeeping: a worker writes the results of its oldest held entries of
a stream only when no older entry of that stream is still pending (delivered to some consumer and
not acknowledged) and not held by this worker, and acknowledges entries only after their
results are confirmed stored. An
entry acknowledged is therefore stored, and nothing later of its stream is stored before it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from qt_cli.core.endpoints import Sink
from qt_cli.core.events import NS_PER_MS, Event
from qt_cli.core.keys import parse_id
from qt_cli.core.stage.lifecycle import StopFlag
from qt_cli.core.stage.stats import RateMeter, StatsPublisher
from qt_cli.core.store import ConnectionFailure
from qt_cli.core.store.reader import SourceEntry, StreamSource
from qt_cli.core.store.writer import StreamBatch, StreamWriter, event_key, event_values

if TYPE_CHECKING:
    from qt_cli.core.stage.inputs import ZmqInput

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0
SEQ_PER_MS = 1000  # entry ids <ms>-<n> with n below 1000: ms * 1000 + n stays exact in a double


def derived_identity(stage: str, entry: SourceEntry) -> tuple[str, int]:
    """(session, seq) of what stage `stage` derives from one input entry.

    The input's own identity when it has one: session `<stage>.<input session>`, seq the input's
    seq (monotone in the input stream: `qt_append` stores each session in seq order). An input
    entry without a session (written by a seed-era tool) gets `<stage>.<input stream key>` and
    `derived_seq(entry id)`."""
    event = entry.event
    session = getattr(event, "session", "")
    seq = getattr(event, "seq", 0)
    if session and seq > 0:
        return derived_session(stage, session), seq
    return derived_session(stage, entry.key), derived_seq(entry.id)


def derived_session(stage: str, source: str) -> str:
    """The session of what stage `stage` derives from `source` (an input session or stream)."""
    return f"{stage}.{source}"


def derived_seq(entry_id: bytes | str) -> int:
    """A seq monotone in the input's position: ms * 1000 + n of the input entry id `<ms>-<n>`
    (`qt_append` compares seqs as doubles: this stays exact, ms * 2**20 would not)."""
    ms, n = parse_id(entry_id)
    if n >= SEQ_PER_MS:
        raise ValueError(
            f"entry id {entry_id!r}: {n + 1} entries in one ms of a session-less input; give the "
            "input entries a session and seq (as qt bridge writes them)"
        )
    return ms * SEQ_PER_MS + n


def input_id(seq: int) -> str:
    """The input entry id `derived_seq` came from."""
    return f"{seq // SEQ_PER_MS}-{seq % SEQ_PER_MS}"


class Derived(NamedTuple):
    """One derived entry: its stream, field names (with `session` and `seq`), values, event ms;
    `event`, when given, is also sent to the stage's ZeroMQ/file sinks once stored. (A named
    tuple: one is made per derived entry, on the hot path.)"""

    key: str
    names: tuple[str, ...]
    values: tuple[Any, ...]
    event_ms: int
    event: Event | None = None

    @classmethod
    def of(cls, event: Event) -> Derived:
        """The entry storing `event` in its stream, under its own (session, seq)."""
        names, values = event_values(event)
        return cls(event_key(event), names, values, event.ts_event // NS_PER_MS, event)


# derive(entry, session, seq) -> the entries to write for one input entry (may be empty)
Derive = Callable[[SourceEntry, str, int], Sequence[Derived]]


@dataclass
class WorkerStats:
    received: int = 0
    written: int = 0
    duplicates: int = 0
    acked: int = 0
    waits: int = 0  # times a write waited for an older entry another worker holds
    outages: int = 0  # failed steps while Valkey was unreachable
    lag_ms: float | None = None
    stopped_by: str = ""


class GroupWorker(StopFlag):
    """A derived stage over a consumer-group `StreamSource`: read -> derive -> write in input order
    (one `StreamWriter` path) -> acknowledge after the write is confirmed -> send the derived
    events to `sinks`; stats published as `qt:stats:<stage>:<name>` (plus `describe()`'s fields).
    Driven by `stage.run_stage` (open/run/stop/close). The source may also be a `ZmqInput`
    (nothing to acknowledge) and the writer None (ZeroMQ/file outputs only)."""

    def __init__(
        self,
        source: StreamSource | ZmqInput,
        writer: StreamWriter | None,
        derive: Derive,
        *,
        stage: str,
        name: str,
        sinks: Sequence[Sink] = (),
        stats_client: Any | None = None,
        describe: Callable[[], dict[str, Any]] | None = None,
        duration_s: float | None = None,
        max_held: int = 1_000,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.writer = writer
        self.derive = derive
        self.stage = stage
        self.name = name
        self.sinks = list(sinks)
        self.describe = describe or dict
        self.duration_s = duration_s
        self.max_held = max_held
        self.warn = warn or log.warning
        self.stats = WorkerStats()
        client = stats_client if stats_client is not None else getattr(writer, "client", None)
        self.publisher = StatsPublisher(client, stage, name) if client is not None else None
        self._rate = RateMeter()
        self._stop = threading.Event()
        self._held: dict[str, list[SourceEntry]] = {}  # input stream -> entries in id order
        self._held_ids: set[tuple[str, str]] = set()
        self._closed = False

    # -- lifecycle --

    def open(self) -> None:
        """Nothing to open: the source and writer come connected."""

    def run(self) -> WorkerStats:
        """Read, derive, write and acknowledge until stopped or `duration_s`. Valkey going away
        is waited out with backoff: what was read stays pending in the group meanwhile."""
        started = time.monotonic()
        backoff = BACKOFF_START_S
        while not self._stop.is_set():
            if self.duration_s is not None and time.monotonic() - started >= self.duration_s:
                self.stop("duration")
                break
            try:
                self._step()
            except ConnectionFailure as exc:
                if self.stats.outages == 0 or backoff == BACKOFF_START_S:
                    self.warn(
                        f"{self.stage} {self.name}: Valkey unreachable ({exc}); "
                        "retrying with backoff (the entries read stay pending)"
                    )
                self.stats.outages += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = BACKOFF_START_S
        with contextlib.suppress(*ConnectionFailure):
            self._write_ready()  # what may go now; the rest stays pending for a restart or claim
            if self.publisher is not None:
                self.publish_stats()
        return self.stats

    def _step(self) -> None:
        held = sum(map(len, self._held.values()))
        if held < self.max_held:
            self._hold(self.source.read_entries(0.05 if held else 0.2))
        else:
            # Full: what blocks the held entries may be a dead consumer's; take it over.
            self._hold(self.source.claim())
            self._stop.wait(0.01)
        self._write_ready()
        if self.publisher is not None and self.publisher.due():
            self.publish_stats()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for sink in self.sinks:
                sink.close()
            self.source.close()

    # -- writing in input order --

    def _hold(self, entries: list[SourceEntry]) -> None:
        for entry in entries:
            ident = (entry.key, entry.id)
            if ident in self._held_ids:  # claimed back while still held here
                continue
            self._held_ids.add(ident)
            self._held.setdefault(entry.key, []).append(entry)
            self.stats.received += 1

    def _write_ready(self) -> None:
        """Write and acknowledge, per input stream, the held entries that no pending entry held
        elsewhere precedes (that one belongs to another worker, live or dead: wait for it, or
        for `claim` to bring it here)."""
        ready: list[SourceEntry] = []
        for key, entries in self._held.items():
            if not entries:
                continue
            entries.sort(key=lambda e: parse_id(e.id))
            mine = {e.id for e in entries}
            boundary: tuple[int, int] | None = None  # the first pending entry not held here
            for pending in self.source.pending_ids(
                key, until=entries[-1].id, count=len(entries) + 1
            ):
                if pending not in mine:
                    boundary = parse_id(pending)
                    break
            if boundary is None:
                ready += entries
                self._held[key] = []
                continue
            cut = 0
            while cut < len(entries) and parse_id(entries[cut].id) < boundary:
                cut += 1
            if cut < len(entries):
                self.stats.waits += 1
            ready += entries[:cut]
            self._held[key] = entries[cut:]
        if not ready:
            return
        try:
            self._write(ready)
        except BaseException:
            for entry in ready:  # still pending in the group: written again after the outage
                self._held.setdefault(entry.key, []).append(entry)
            raise

    def _write(self, ready: list[SourceEntry]) -> None:
        derived: list[Derived] = []
        for entry in ready:
            session, seq = derived_identity(self.stage, entry)
            derived += self.derive(entry, session, seq)
        if self.writer is not None:
            batches: dict[str, StreamBatch] = {}
            for out in derived:
                batch = batches.get(out.key)
                if batch is None:
                    batch = batches[out.key] = self.writer.batch(out.key)
                batch.add(out.names, out.values, out.event_ms)
            for result in self.writer.append_many(batches.values()):  # raises unless all stored
                self.stats.written += result.written
                self.stats.duplicates += result.duplicates
        self.stats.acked += self.source.ack(ready)
        events = [out.event for out in derived if out.event is not None]
        if events:
            for sink in self.sinks:
                sink.send(events)
        for entry in ready:
            self._held_ids.discard((entry.key, entry.id))
        ts_init = getattr(ready[-1].event, "ts_init", 0)
        if ts_init:
            self.stats.lag_ms = max(time.time_ns() - ts_init, 0) / 1e6

    def publish_stats(self) -> None:
        assert self.publisher is not None
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
        fields.update({k: str(v) for k, v in self.describe().items()})
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
            "outages": s.outages,
            **self.describe(),
            "stopped_by": s.stopped_by or "end",
        }


__all__ = [
    "Derive",
    "Derived",
    "GroupWorker",
    "WorkerStats",
    "derived_identity",
    "derived_seq",
    "derived_session",
    "input_id",
]
