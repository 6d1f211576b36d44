"""The pipelined writer: batches into one `qt_append` call per stream, the watermark, retries
through Valkey outages."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import valkey

from qt_cli.core import keys
from qt_cli.core.bridge.config import (
    BACKOFF_MAX_S,
    BACKOFF_START_S,
    LATENCY_STRIDE,
    OUTAGE_REPORT_EVERY_S,
    _raise_marks,
    _reason,
    _text,
)
from qt_cli.core.bridge.rows import Item, Refill, _ts_init_of, _wire_of, trade_row
from qt_cli.core.bridge.state import _BridgeState
from qt_cli.core.events import (
    NS_PER_MS,
    Event,
    Trade,
    now_ns,
)
from qt_cli.core.records import MAX_RAW_BYTES, DeadLetter, Gap
from qt_cli.core.store import ConnectionFailure, cluster
from qt_cli.core.store.writer import (
    DEADLETTER_MAXLEN,
    E_SEQ,
    E_SESSION,
    GAPS_MAXLEN,
    AppendResult,
    StreamBatch,
    append_command,
    event_values,
    is_transient,
)

log = logging.getLogger(__name__)


watermark_key = keys.watermark_key  # re-exported: the key is built in keys.py


@dataclass
class _Batch:
    """A batch of the writer, grouped per stream and packed into one pipeline of commands."""

    items: list[Item]
    batches: list[StreamBatch]
    placed: dict[str, list[Any]]  # stream key -> its events (Rows for trades), in batch order
    deadletters: list[DeadLetter]
    gaps: list[Gap]
    marks: dict[str, int]  # input session -> highest seq in the batch
    stream_marks: dict[str, dict[str, int]]  # stream key -> session -> highest seq
    per_session: dict[str, int]
    packed: list[bytes]
    ncommands: int
    sent: bool = False
    watermark: dict[str, int] | None = None  # an earlier batch's marks, sent before this one


def _xadd_command(key: str, fields: dict[str, Any], maxlen: int) -> tuple[Any, ...]:
    flat: list[Any] = []
    for name, value in fields.items():
        flat += (name, value)
    return (b"XADD", key, b"MAXLEN", b"~", maxlen, b"*", *flat)


class _Writer(_BridgeState):
    """The bridge's writing half (a part of `Bridge`)."""

    # -- writing --

    def _write_loop(self) -> None:
        config = self.config
        linger_s = config.batch_ms / 1000.0
        ahead: _Batch | None = None  # taken and packed while the previous batch was running
        try:
            while True:
                if ahead is None:
                    receiving = not (self._stop.is_set() or self._inputs_done.is_set())
                    if (
                        not receiving
                        and all(i.finished for i in self._inputs)
                        and not len(self.queue)
                    ):
                        break
                    items = self.queue.take(config.batch_size, wait_s=0.1, linger_s=linger_s)
                    if items and type(items[0]) is Refill:
                        self._refill_step(items[0])
                        continue
                    ahead = self._prepare(items) if items else None
                    if ahead is None and self._outage_since is None:
                        self._guarded(self._check_server)  # idle: no failed send shows a restart
                        self._guarded(self._flush_watermark)  # idle: no send carries it
                if ahead is not None:
                    batch, ahead = ahead, None
                    written, ahead = self._write_with_retry(batch)
                    if not written:
                        break  # stopping while Valkey is down: everything was spilled
                if self._due_stats():
                    self._guarded(self._publish_stats)
            self._guarded(self._flush_watermark)
            # Not stopped: every input ended (files, stdin), so no forming candle can grow.
            self.deriver.finish(ended=not self._stop.is_set())
            self._guarded(self._publish_stats)
        except BaseException as exc:
            self._writer_error = exc
            self._stop.set()
        finally:
            if ahead is not None:
                if ahead.sent and self._conn is not None:
                    self._conn.disconnect()  # its replies are not read: don't pool them
                self.queue.push_front(ahead.items)
            self._release_connection()
            if self._replay_client is not None:
                self._replay_client.close()
                self._replay_client = None
            self.deriver.finish()
            if self.deriver.error is not None and self._writer_error is None:
                self._writer_error = self.deriver.error
            self._writer_done.set()

    def _write_with_retry(self, batch: _Batch) -> tuple[bool, _Batch | None]:
        """Write a batch, riding out Valkey outages: (written, the next batch if one was taken).

        (False, None) when stopping while Valkey is down (everything went to the spill file).
        """
        backoff = BACKOFF_START_S
        last_report = 0.0
        items = batch.items
        while True:
            try:
                if self._outage_since is not None:
                    self.client.ping()
                    refill = self._recovered_from_outage()
                    if refill is not None:
                        # What the server lost goes first: the marks would skip it behind
                        # anything later of its sessions.
                        self.queue.push_front([refill, *items])
                        return True, None
                    return True, self._write_batch(batch, look_ahead=False)
                return True, self._write_batch(batch, look_ahead=True)
            except ConnectionFailure as exc:
                now = time.monotonic()
                if self._outage_since is None:
                    self._outage_since = now
                    self.stats.outages += 1
                    self.warn(
                        f"bridge: Valkey at {self._out.uri} is unreachable or refuses writes ({_reason(exc)}); "
                        "buffering what arrives and retrying with backoff"
                    )
                    last_report = now
                elif now - last_report >= OUTAGE_REPORT_EVERY_S:
                    last_report = now
                    self.warn(
                        f"bridge: Valkey still unreachable after {now - self._outage_since:.0f}s; "
                        f"{len(self.queue) + len(items):,} events buffered "
                        f"({self.queue.spilled_unread:,} spilled to {self.queue.path})"
                    )
                self.stats.spilled = self.queue.spilled_total
                if self._stop.is_set():
                    self.queue.push_front(items)
                    kept = self.queue.persist()
                    self.stats.spilled = self.queue.spilled_total
                    dropped = self.queue.persisted_refill
                    also = (
                        f" (and the seq ranges it could not take, {dropped.describe()}, to fetch "
                        "again from the replay endpoint)"
                        if dropped is not None
                        else ""
                    )
                    self.warn(
                        f"bridge: stopping while Valkey is unreachable: {kept:,} events kept in "
                        f"{self.queue.path}{also}; the next 'qt bridge --name {self.config.name}' "
                        "writes them"
                    )
                    return False, None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    # -- one batch --
    #
    # A batch is prepared (grouped per stream and packed into one pipeline of commands) and sent;
    # while Valkey runs it, the next batch is taken from the queue, prepared and sent too, so the
    # server finds the next batch waiting when it finishes one (two in flight: measured ~87k ->
    # ~99k ticks/s sustained, the server idled between batches before). A batch that fails is
    # retried before anything after it is stored: each call of the second batch requires the
    # marks the first one sets (`StreamBatch.require`); when they are not reached the server
    # refuses it and it is written again after the first.
    #
    # The bridge's watermark (session -> seq, where a restart asks the feed to replay from)
    # moves only after a batch's replies confirmed it stored; it rides with the next send.

    def _prepare(self, items: list[Item], *, after: _Batch | None = None) -> _Batch:
        """Group and pack `items`; `after`: the batch still in flight ahead of this one (each
        stream's call then requires the marks that batch sets, see `StreamBatch.require`)."""
        batches: dict[str, StreamBatch] = {}
        placed: dict[str, list[Any]] = {}
        deadletters: list[DeadLetter] = []
        gaps: list[Gap] = []
        stream_marks: dict[str, dict[str, int]] = {}
        per_session: dict[str, int] = {}
        before = after.stream_marks if after is not None else {}
        key_of = self._key_cache
        key: str | None  # a stream key; None until looked up
        new_batch = self.writer.batch
        for item in items:
            if type(item) is tuple:  # a trade (Row): the hot path
                key, names, entry = item
                session, seq = entry[E_SESSION], entry[E_SEQ]
            else:
                if not isinstance(item, Event):
                    if isinstance(item, DeadLetter):
                        deadletters.append(item)
                    else:
                        gaps.append(item)  # type: ignore[arg-type]
                    continue
                symbol = item.symbol
                kind = item.stream_kind
                key = key_of.get((kind, symbol))
                if key is None:
                    if not keys.valid_symbol(symbol) and symbol != "*":
                        deadletters.append(
                            DeadLetter(
                                f"field 'symbol': {symbol!r} is not a valid ticker",
                                item.to_wire()[:MAX_RAW_BYTES],
                                "bridge",
                                field="symbol",
                                ts_init=now_ns(),
                            )
                        )
                        continue
                    key = key_of[(kind, symbol)] = keys.stream_key(kind, symbol)
                if type(item) is Trade:
                    item = trade_row(item, key)
                    _, names, entry = item
                    session, seq = entry[E_SESSION], entry[E_SEQ]
                else:
                    names, values = event_values(item)
                    entry = (item.ts_event // NS_PER_MS, *values)
                    session = getattr(item, "session", "")
                    seq = getattr(item, "seq", 0)
            batch = batches.get(key)
            if batch is None:
                batch = batches[key] = new_batch(key)
                batch.require = before.get(key)
                placed[key] = []
                stream_marks[key] = {}
            batch.add_entry(names, entry)
            placed[key].append(item)
            if session:
                per_session[session] = per_session.get(session, 0) + 1
                marks = stream_marks[key]
                if seq > marks.get(session, 0):
                    marks[session] = seq

        commands: list[tuple[Any, ...]] = [append_command(b) for b in batches.values()]
        for letter in deadletters:
            commands.append(
                _xadd_command(keys.stream_key("deadletter"), letter.to_fields(), DEADLETTER_MAXLEN)
            )
        for gap in gaps:
            commands.append(_xadd_command(keys.stream_key("gaps"), gap.to_fields(), GAPS_MAXLEN))
        marks = {}  # dict[str, int], as above
        for per_stream in stream_marks.values():
            _raise_marks(marks, per_stream)
        for session in [s for s in marks if ":" in s]:
            # A replayed record's identity (`nelogica:…`, `file:…`; docs/feed.md), not a
            # publisher session: no journal to catch up from, no feed run to report.
            del marks[session]
        return _Batch(
            items,
            list(batches.values()),
            placed,
            deadletters,
            gaps,
            marks,
            stream_marks,
            per_session,
            self._packer.pack_commands(commands),
            len(commands),
        )

    def _connection(self) -> Any:
        """The writer's own connection (taken from the client's pool once)."""
        if self._conn is None:
            self._conn = cluster.connection(self.client)
        return self._conn

    def _release_connection(self) -> None:
        if self._conn is not None:
            try:
                cluster.release(self.client, self._conn)
            except Exception:  # releasing must not hide the run's own outcome
                log.debug("releasing the writer's connection failed", exc_info=True)
            self._conn = None

    def _write_batch(self, batch: _Batch, *, look_ahead: bool) -> _Batch | None:
        """Send a batch (unless it went out as the previous call's look-ahead) and read its
        replies; with `look_ahead`, take, prepare and send the next one first (returned)."""
        conn = self._connection()
        ahead: _Batch | None = None
        try:
            if not batch.sent:
                self._send(conn, batch)
            if look_ahead:
                items = self.queue.take(self.config.batch_size, wait_s=0)
                if items and type(items[0]) is Refill:
                    self.queue.push_front(items)  # the write loop handles it in its turn
                    items = []
                if items:
                    try:
                        ahead = self._prepare(items, after=batch)
                    except BaseException:
                        self.queue.push_front(items)
                        raise
                    self._send(conn, ahead)
            if batch.watermark is not None:
                try:
                    conn.read_response()
                except valkey.ResponseError as exc:  # the marks wait for the next send
                    log.debug("watermark update refused: %s", exc)
                    self._due_watermark(batch.watermark)
                batch.watermark = None
            self._complete(batch, self.writer.read_replies(conn, batch.ncommands))
        except BaseException:
            # Whatever is still in flight is unsure: drop the connection (and the replies it
            # would still deliver); the caller sends `batch` again, the look-ahead's items go
            # back to the queue, and the marks skip whatever of them was stored.
            conn.disconnect()
            for unsure in (batch, ahead):
                if unsure is not None and unsure.watermark is not None:
                    self._due_watermark(unsure.watermark)
                    unsure.watermark = None
            batch.sent = False
            if ahead is not None:
                self.queue.push_front(ahead.items)
            raise
        return ahead

    def _send(self, conn: Any, batch: _Batch) -> None:
        """Put a batch on the wire, led by the watermark of the batches confirmed since."""
        packed = batch.packed
        if self._watermark_due:
            batch.watermark, self._watermark_due = self._watermark_due, {}
            flat: list[Any] = []
            for session, seq in batch.watermark.items():
                flat += (session, seq)
            packed = [*self._packer.pack_commands([(b"HSET", self._watermark_key, *flat)]), *packed]
        conn.send_packed_command(packed, check_health=False)
        batch.sent = True

    def _due_watermark(self, marks: dict[str, int]) -> None:
        _raise_marks(self._watermark_due, marks)

    def _flush_watermark(self) -> None:
        """Store the confirmed marks now (idle or done: no send to carry them)."""
        if self._watermark_due and self._server_run_id() != self._run_id:
            # A server that restarted since the last batch may have lost some of what these
            # marks cover: reconcile first (it drops the marks of what is gone).
            self._last_server_check = 0.0
            self._check_server()
        if self._watermark_due:
            marks, self._watermark_due = self._watermark_due, {}
            try:
                self.client.hset(self._watermark_key, mapping=marks)
            except BaseException:
                self._due_watermark(marks)
                raise

    def _complete(self, batch: _Batch, replies: list[Any]) -> None:
        results, failures = self._check_replies(batch, replies)
        placed = batch.placed
        self.stats.batches += 1
        now = now_ns()
        confirmed = self._confirmed
        stream_marks = batch.stream_marks
        for result in results:
            events = placed[result.key]
            marks = stream_marks.get(result.key)
            if marks:
                held = confirmed.get(result.key)
                if held is None:
                    confirmed[result.key] = dict(marks)
                else:
                    _raise_marks(held, marks)
            self.stats.written += result.written
            self.stats.duplicates += result.duplicates
            self.stats.late += result.late
            if result.written:
                self._after_write(result, events, now)
        for key, error in failures.items():
            self._dead_letter_batch(placed[key], f"Valkey refused the write to {key}: {error}")
        for gap in batch.gaps:
            self._report_gap(gap)
        self.stats.deadletters += len(batch.deadletters)
        self._due_watermark(batch.marks)
        _raise_marks(self._watermark, batch.marks)
        for session, seq in batch.marks.items():
            feed = self._feed(session)
            feed.received += batch.per_session[session]
            channel = session.split(".", 1)[1] if "." in session else session
            feed.last_seq[channel] = max(seq, feed.last_seq.get(channel, 0))

    def _check_replies(
        self, batch: _Batch, replies: list[Any]
    ) -> tuple[list[AppendResult], dict[str, Exception]]:
        """Results of the appends (`StreamWriter.settle`: transient refusals raise and are
        retried like an outage); then the dead letters' and gaps' XADDs."""
        batches = batch.batches
        results, failures = self.writer.settle(
            batches, replies[: len(batches)], rewrite_out_of_order=True
        )
        for reply in replies[len(batches) :]:
            if isinstance(reply, valkey.ConnectionError | valkey.TimeoutError):
                raise reply
            if isinstance(reply, Exception) and is_transient(reply):
                raise valkey.ConnectionError(f"{type(reply).__name__}: {reply}")
        return results, failures

    def _dead_letter_batch(self, events: list[Any], reason: str) -> None:
        self.warn(f"bridge: {reason}; {len(events)} events go to the dead-letter stream")
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            pipe.xadd(
                keys.stream_key("deadletter"),
                DeadLetter(reason, _wire_of(event), "bridge", ts_init=now_ns()).to_fields(),
                maxlen=DEADLETTER_MAXLEN,
                approximate=True,
            )
        pipe.execute()
        self.stats.deadletters += len(events)

    def _after_write(self, result: AppendResult, events: list[Any], now: int) -> None:
        ids = result.ids
        sample = self._latencies.append
        for i in range(len(events) - 1, -1, -LATENCY_STRIDE):  # a sample is enough for p50/p99
            if ids[i]:
                ts_init = _ts_init_of(events[i])
                if ts_init:
                    sample(now - ts_init)
        if ids[-1]:
            ts_init = _ts_init_of(events[-1])
            if ts_init:
                self.stats.lag_ms = (now - ts_init) / NS_PER_MS
        if self.deriver.enabled and result.key.startswith(keys.stream_pattern("ticks")[:-1]):
            self.deriver.push(events, ids, result.late)

    def _load_watermark(self) -> dict[str, int]:
        raw = self.client.hgetall(self._watermark_key)
        return {_text(k): int(v) for k, v in raw.items()}
