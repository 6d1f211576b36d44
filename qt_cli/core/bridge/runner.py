"""`qt bridge`: events from ZeroMQ (or stdin, or files) into Valkey streams, exactly once.

Threads: one receiver for the ZeroMQ inputs (`SubSource`s, polled together when there are
several: seq tracking, gap recovery from the feed's replay endpoint, rejects) and one per other
input, one writer, one for derived data, and the caller's thread that supervises (`run`).
Receivers put what they get on a `SpillQueue` (bounded memory, spills to a file under the data
dir); the writer takes batches (N entries or T ms, whichever first) and
writes each stream's part of a batch in ONE `qt_append` function call, all streams in one round
trip; the deriver turns the stored ticks into candles (closed, and the forming one now and then)
and columnar history chunks.

Exactly once: each per-event stream keeps `hwm:<stream>` (session -> highest seq) and the
function skips what is at or below it. The bridge also keeps a watermark per input session
(`hwm:bridge:<name>`, written after each batch) so a restarted bridge asks the replay endpoint
for exactly what it missed.

After any reconnect the bridge reconciles with the server (`Bridge._reconcile`): a server that
came back with less than it acknowledged (its append-only file's tail lost) gets the lost ranges
again from the replay endpoint, through a `Refill` marker written in its place of the queue's
order. A spill file that cannot be written (full disk) makes the queue drop into recorded seq
ranges, refilled the same way, instead of stopping the bridge.

Derived data is a pure function of the stored ticks in stream order: on start, and after any
Valkey failure, the bridge rebuilds candle and chunk state from what is stored (the last chunk's
`src`, the stored forming candle, the ticks after them), so a kill or an outage never makes
candles or chunks disagree with the ticks.

See docs/bridge.md."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import valkey

from qt_cli.core import keys
from qt_cli.core.bridge.config import (
    GC_EVERY_S,
    LATENCY_WINDOW,
    STAGE,
    SWITCH_INTERVAL_S,
    WRITE_TIMEOUT_S,
    BridgeConfig,
    BridgeStats,
    Say,
    _FeedRun,
    _log_say,
    _reason,
    _round,
)
from qt_cli.core.bridge.derive import _Deriver
from qt_cli.core.bridge.receive import _Input, _open_input, _Receiver
from qt_cli.core.bridge.reconcile import _Reconciler
from qt_cli.core.bridge.spill import SpillQueue
from qt_cli.core.bridge.writer import _Writer, watermark_key
from qt_cli.core.candles import (
    timeframe_ns,
)
from qt_cli.core.endpoints import parse_endpoint
from qt_cli.core.errors import StoreUnavailable, UsageError
from qt_cli.core.events import (
    NS_PER_MS,
    now_ns,
)
from qt_cli.core.records import Gap
from qt_cli.core.stage.stats import StatsPublisher, fmt_float
from qt_cli.core.store import ConnectionFailure
from qt_cli.core.store.writer import (
    StreamWriter,
    is_transient,
)

log = logging.getLogger(__name__)


class Bridge(_Receiver, _Writer, _Reconciler):
    """The bridge runner: `run()` blocks until stopped; `stop()` from any thread or a signal."""

    def __init__(
        self,
        config: BridgeConfig,
        *,
        say: Say = _log_say,
        warn: Say | None = None,
        client: valkey.Valkey | None = None,
    ) -> None:
        if not config.inputs:
            raise UsageError("no input: give --in tcp://…, '-' or a file")
        for tf in config.timeframes:
            timeframe_ns(tf)
        if config.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        self.config = config
        self.say = say
        self.warn = warn or say
        self.stats = BridgeStats()
        self._endpoints = [parse_endpoint(uri) for uri in config.inputs]
        out = parse_endpoint(config.output)
        if out.kind != "valkey":
            raise UsageError(
                f"--out {out.uri}: the bridge writes to Valkey (valkey://host:port/db)"
            )
        self._out = out
        from qt_cli.core import store

        self.client = client or store.connect(
            out, password=config.password, timeout_s=WRITE_TIMEOUT_S
        )
        self.writer = StreamWriter(self.client, maxlen=config.maxlen)
        self.writer.ensure_library()
        self.queue = SpillQueue(config.spill_path, max_memory=config.buffer_events, warn=self.warn)
        if self.queue.recovered_from_disk:
            self.say(
                f"bridge: {self.queue.recovered_from_disk:,} events left in {config.spill_path} "
                "by an earlier run; writing them first"
            )
        self._symbols = frozenset(config.symbols)
        self._stop = threading.Event()
        self._inputs_done = threading.Event()
        self._writer_done = threading.Event()
        self._writer_error: BaseException | None = None
        self._inputs: list[_Input] = []
        self._count_lock = threading.Lock()
        self._started_mono = time.monotonic()
        self.publisher = StatsPublisher(
            self.client, STAGE, config.name, interval_s=config.stats_interval_s
        )
        self._watermark_key = watermark_key(config.name)
        self._watermark: dict[str, int] = {}
        self._watermark_due: dict[str, int] = {}  # confirmed marks not sent to Valkey yet
        # stream key -> session -> highest seq the server confirmed it holds (written or skipped
        # as a duplicate): compared with its marks after a reconnect (`_reconcile`).
        self._confirmed: dict[str, dict[str, int]] = {}
        self._run_id = self._server_run_id()
        self._last_server_check = 0.0
        self._replay_client: Any = None  # the writer thread's, for Refills
        self._feeds: dict[str, _FeedRun] = {}
        self._rate_base = 0
        self._rate_mono = time.monotonic()
        self._latencies: deque[int] = deque(maxlen=LATENCY_WINDOW)
        self._key_cache: dict[tuple[str, str], str] = {}
        self.deriver = _Deriver(self)
        self._outage_since: float | None = None
        self._conn: Any = None  # the writer's connection (see _connection)
        # Packs the writer's commands; never connected (packing needs no socket).
        self._packer: Any = self.writer.packer()
        self._closed = False
        self._watermark = self._load_watermark()
        # Subscribe now rather than in run(): a SUB socket misses what is published before its
        # subscription reaches the publisher, and a burst that ends before then has no later
        # message to reveal the gap. ZeroMQ inputs come first; the others open in run().
        try:
            for endpoint in self._endpoints:
                if endpoint.kind != "zmq":
                    break
                source = _open_input(config, endpoint, dict(self._watermark))
                self._inputs.append(_Input(endpoint, source))
        except BaseException:
            self.close()
            raise

    # -- lifecycle --

    def open(self) -> None:
        """Nothing left to open: construction connected Valkey and subscribed the ZeroMQ inputs
        (the others open in `run`)."""

    def stop(self, reason: str = "stopped") -> None:
        """Ask the bridge to finish: stop receiving, write what was received, return from run()."""
        if not self._stop.is_set():
            self.stats.stopped_by = self.stats.stopped_by or reason
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, on_progress: Callable[[BridgeStats], None] | None = None) -> BridgeStats:
        """Receive and write until stopped, `duration_s`, `stop_after` or the end of every input.

        `on_progress(stats)` is called about four times a second from this thread.
        """
        switch_interval = sys.getswitchinterval()
        # The receiver, the writer and the deriver share one interpreter lock; the default 5 ms
        # slices let the receiver keep the writer from handing Valkey its next batch. Shorter
        # slices keep the server busy (measured: ~80k -> ~90k ticks/s sustained).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        # Per-event objects die by reference counting; the automatic cycle collector only
        # walked the rows in flight, again and again (~2 us per tick, pauses of tens of ms).
        # What exists now is frozen out of its sight and `_run` collects every GC_EVERY_S.
        gc_enabled, gc_frozen = gc.isenabled(), gc.get_freeze_count()
        gc.freeze()
        gc.disable()
        try:
            return self._run(on_progress)
        finally:
            sys.setswitchinterval(switch_interval)
            if not gc_frozen:  # a caller's own freeze stays as it was
                gc.unfreeze()
            if gc_enabled:
                gc.enable()

    def _run(self, on_progress: Callable[[BridgeStats], None] | None) -> BridgeStats:
        for endpoint in self._endpoints[len(self._inputs) :]:
            source = _open_input(self.config, endpoint, dict(self._watermark))
            self._inputs.append(_Input(endpoint, source))
        self._catch_up_on_start()
        zmq_inputs = [i for i in self._inputs if i.endpoint.kind == "zmq"]
        if len(zmq_inputs) < 2:  # a single one reads (and waits) in its own read() call
            zmq_inputs = []
        if zmq_inputs:  # one thread polls every ZeroMQ input (receive.py `_receive_zmq`)
            thread = threading.Thread(
                target=self._receive_zmq, args=(zmq_inputs,), name="qt-bridge-in:zmq", daemon=True
            )
            for inp in zmq_inputs:
                inp.thread = thread
            thread.start()
        for inp in self._inputs:
            if inp.thread is not None:
                continue
            inp.thread = threading.Thread(
                target=self._receive, args=(inp,), name=f"qt-bridge-in:{inp.endpoint.uri}"
            )
            inp.thread.daemon = True
            inp.thread.start()
        self.deriver.start()
        writer = threading.Thread(target=self._write_loop, name="qt-bridge-writer", daemon=True)
        writer.start()
        deadline = self._started_mono + self.config.duration_s if self.config.duration_s else None
        last_progress = 0.0
        last_gc = time.monotonic()
        try:
            while not self._writer_done.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self.stop("duration")
                if now - last_gc >= GC_EVERY_S:
                    last_gc = now
                    gc.collect()
                if all(i.finished for i in self._inputs):
                    self._inputs_done.set()  # the writer drains the queue and returns
                if on_progress is not None and now - last_progress >= 0.25:
                    last_progress = now
                    on_progress(self.stats)
                self._writer_done.wait(0.05)
        finally:
            self._stop.set()
            for inp in self._inputs:
                if inp.thread is not None:
                    inp.thread.join(timeout=10)
            self._inputs_done.set()
            writer.join()
        self.stats.elapsed_s = time.monotonic() - self._started_mono
        if self._writer_error is not None:
            raise self._writer_error
        for inp in self._inputs:
            if inp.error is not None:
                raise inp.error
        if not self.stats.stopped_by:
            self.stats.stopped_by = "end of input"
        return self.stats

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for inp in self._inputs:
            try:
                inp.source.close()
            except Exception:  # closing must not hide the run's own outcome
                log.debug("closing %s failed", inp.endpoint.uri, exc_info=True)
        self.queue.close()
        try:
            self.client.close()
        except Exception:
            log.debug("closing the Valkey client failed", exc_info=True)

    def _guarded(self, fn: Callable[[], None]) -> None:
        """Run a Valkey step whose failure can wait for the next one (stats, partial candles)."""
        try:
            fn()
        except ConnectionFailure as exc:
            log.debug("deferred Valkey step failed: %s", exc)
        except valkey.ResponseError as exc:
            if not is_transient(exc):
                raise
            log.debug("deferred Valkey step refused: %s", exc)

    # -- gaps, feeds, stats --

    def _report_gap(self, gap: Gap) -> None:
        size = gap.to_seq - gap.from_seq + 1
        self.stats.gaps_detected += 1
        feed = self._feed(gap.session)
        if gap.recovered:
            self.stats.gaps_recovered += 1
            self.stats.messages_recovered += size
            feed.gaps_recovered += 1
            self.say(
                f"bridge: recovered seq {gap.from_seq}..{gap.to_seq} of {gap.session} "
                f"({size:,} messages) from {gap.endpoint}"
            )
        else:
            self.stats.gaps_lost += 1
            self.stats.messages_lost += size
            feed.gaps_lost += 1
            self.warn(
                f"bridge: LOST seq {gap.from_seq}..{gap.to_seq} of {gap.session} "
                f"({size:,} messages): {gap.reason}; recorded in stream:gaps"
            )

    def _feed(self, session: str) -> _FeedRun:
        run_id = session.split(".", 1)[0] or "unknown"
        feed = self._feeds.get(run_id)
        if feed is None:
            feed = self._feeds[run_id] = _FeedRun()
        return feed

    def _due_stats(self) -> bool:
        return self.publisher.due()

    def _update_rates(self) -> None:
        now = time.monotonic()
        interval = now - self._rate_mono
        if interval >= 0.5:
            self.stats.rate = (self.stats.written - self._rate_base) / interval
            self._rate_base = self.stats.written
            for feed in self._feeds.values():
                feed.rate = (feed.received - feed.rate_base) / interval
                feed.rate_base = feed.received
            self._rate_mono = now
        if self._latencies:
            ordered = sorted(self._latencies)
            self.stats.latency_p50_ms = ordered[len(ordered) // 2] / NS_PER_MS
            self.stats.latency_p99_ms = ordered[int(len(ordered) * 0.99)] / NS_PER_MS
        self.stats.spilled = self.queue.spilled_total

    def stats_fields(self) -> dict[str, str]:
        """The fields of `qt:stats:bridge:<name>` (docs/contracts.md)."""
        s = self.stats
        return {
            **self.publisher.common(
                received=s.received, written=s.written, rate=s.rate, lag_ms=s.lag_ms
            ),
            "duplicates": str(s.duplicates),
            "batches": str(s.batches),
            "gaps_detected": str(s.gaps_detected),
            "gaps_recovered": str(s.gaps_recovered),
            "gaps_lost": str(s.gaps_lost),
            "deadletters": str(s.deadletters),
            "late": str(s.late),
            "buffered": str(len(self.queue)),
            "spilled": str(s.spilled),
            "filtered": str(s.filtered),
            "candles": str(s.candles),
            "chunks": str(s.chunks),
            "latency_p50_ms": fmt_float(s.latency_p50_ms),
            "latency_p99_ms": fmt_float(s.latency_p99_ms),
            "valkey": "down" if self._outage_since is not None else "up",
            "inputs": ",".join(self.config.inputs),
            "output": self._out.uri,
        }

    def _publish_stats(self) -> None:
        self._update_rates()
        if self._outage_since is not None:
            self.publisher.skip()
            return
        now = str(now_ns())
        feeds: dict[str, dict[str, str]] = {}
        for run_id, feed in self._feeds.items():
            key = keys.stats_key("feed", run_id)
            fields = {
                "stage": "feed",
                "name": run_id,
                "received": str(feed.received),
                "last_seq": str(max(feed.last_seq.values(), default=0)),
                "rate": f"{feed.rate:.1f}",
                "updated_ns": now,
                "gaps_recovered": str(feed.gaps_recovered),
                "gaps_lost": str(feed.gaps_lost),
                "reported_by": self.publisher.key,
            }
            for channel, seq in feed.last_seq.items():
                fields[f"last_seq:{channel}"] = str(seq)
            feeds[key] = fields
        self.publisher.publish(self.stats_fields(), others=feeds)

    def totals(self) -> dict[str, Any]:
        """What `qt bridge` prints on exit (and with --json)."""
        self._update_rates()
        s = self.stats
        out: dict[str, Any] = {
            "name": self.config.name,
            "output": self._out.uri,
            "inputs": list(self.config.inputs),
            "received": s.received,
            "written": s.written,
            "duplicates": s.duplicates,
            "late": s.late,
            "filtered": s.filtered,
            "batches": s.batches,
            "deadletters": s.deadletters,
            "gaps_detected": s.gaps_detected,
            "gaps_recovered": s.gaps_recovered,
            "gaps_lost": s.gaps_lost,
            "messages_recovered": s.messages_recovered,
            "messages_lost": s.messages_lost,
            "candles": s.candles,
            "candle_skipped": s.candle_skipped,
            "chunks": s.chunks,
            "spilled": s.spilled,
            "spill_dropped": self.queue.dropped_total,
            "buffered": len(self.queue),
            "outages": s.outages,
            "outage_s": round(s.outage_s, 3),
            "elapsed_s": round(s.elapsed_s, 3),
            "rate": round(s.written / s.elapsed_s, 1) if s.elapsed_s > 0 else 0.0,
            "latency_p50_ms": _round(s.latency_p50_ms),
            "latency_p99_ms": _round(s.latency_p99_ms),
            "stopped_by": s.stopped_by,
        }
        return out


def run_bridge(config: BridgeConfig, *, say: Say = _log_say, warn: Say | None = None) -> Bridge:
    """Build a bridge (connects to Valkey; StoreUnavailable if it cannot)."""
    try:
        return Bridge(config, say=say, warn=warn)
    except ConnectionFailure as exc:
        raise StoreUnavailable(f"cannot reach Valkey at {config.output}: {_reason(exc)}") from None
