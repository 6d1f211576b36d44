"""The feed runner: one market source -> journal -> publishers, with a replay endpoint beside.

Events are routed to three channels, each its own publisher session (`<run id>.<channel>`):

| channel  | events                                  | default endpoint       |
|----------|-----------------------------------------|------------------------|
| ticks    | Trade (live), State, Daily (and others) | tcp://127.0.0.1:5555   |
| book     | BookUpdate, TopOfBook                   | tcp://127.0.0.1:5556   |
| history  | Trade with history=True                 | tcp://127.0.0.1:5557   |

Per batch and channel: stamp session/seq, append to the journal, commit, then send. The source's
own threads (the DLL's callbacks) only queue; `run()` reads and publishes on the calling thread.
A ReplayServer (its own thread) serves journaled ranges while the feed runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qt_cli.core import config
from qt_cli.core.endpoints import Endpoint, parse_endpoint
from qt_cli.core.errors import UsageError
from qt_cli.core.events import BookUpdate, Event, TopOfBook, Trade
from qt_cli.core.files import JsonLinesSink, OutputClosed
from qt_cli.core.journal import (
    FSYNC_POLICIES,
    JournalTrimReport,
    JournalWriter,
    RetentionThread,
    Sequencer,
    parse_retention,
)
from qt_cli.core.sources.base import MarketSource
from qt_cli.core.stage.lifecycle import run_stage

CHANNELS = ("ticks", "book", "history")
OUT_KINDS = (*CHANNELS, "replay")
SOURCES = ("dll", "sim", "replay", "replay-journal")
CHANNEL_TYPES = {"ticks": ("tick", "state", "daily"), "book": ("book", "tob"), "history": ("tick",)}
_ROUTE: dict[type, str] = {BookUpdate: "book", TopOfBook: "book"}


def channel_of(event: Event) -> str:
    """The channel an event is published on."""
    if type(event) is Trade:
        return "history" if event.history else "ticks"
    return _ROUTE.get(type(event), "ticks")


# --- options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedOutputs:
    """Where each channel goes (an endpoint URI) and the replay endpoint ("" = none)."""

    channels: dict[str, str]
    replay: str

    @property
    def any_zmq(self) -> bool:
        return any(parse_endpoint(uri).kind == "zmq" for uri in self.channels.values())


def parse_outputs(
    values: Sequence[str] = (), settings: config.Settings | None = None
) -> FeedOutputs:
    """`--out` values -> FeedOutputs.

    `KIND=URI` (KIND ticks, book, history or replay) sets one channel; a bare URI (`-`, a file,
    valkey://…) takes every channel not set by KIND=URI. `replay=none` turns the replay endpoint
    off. Default: the ZeroMQ endpoints of `settings` (5555/5556/5557, replay 5559).
    """
    settings = settings or config.Settings()
    explicit: dict[str, str] = {}
    bare: str | None = None
    for value in values:
        kind, sep, uri = value.partition("=")
        if sep and kind.strip().lower() in OUT_KINDS:
            kind = kind.strip().lower()
            if kind in explicit:
                raise UsageError(f"--out {kind}= given twice")
            explicit[kind] = uri.strip()
            continue
        if bare is not None:
            raise UsageError(
                f"--out {value!r}: only one output for every channel; "
                "give the others as ticks=URI, book=URI or history=URI"
            )
        bare = value.strip()
    channels: dict[str, str] = {}
    for name in CHANNELS:
        uri = explicit.get(name) or bare or getattr(settings, f"{name}_endpoint")
        ep = parse_endpoint(uri)
        if ep.kind == "zmq" and name not in explicit and bare is not None:
            raise UsageError(
                f"--out {bare}: a ZeroMQ endpoint binds one channel; use ticks=…, book=…, history=…"
            )
        channels[name] = ep.uri if ep.kind != "valkey" else uri
    zmq_uris = [u for u in channels.values() if parse_endpoint(u).kind == "zmq"]
    replay = explicit.get("replay")
    if replay is not None and replay.lower() in ("none", "off", ""):
        replay = ""
    elif replay is None:
        replay = settings.replay_endpoint if zmq_uris else ""
    if replay:
        if parse_endpoint(replay).kind != "zmq":
            raise UsageError(f"--out replay={replay}: the replay endpoint is tcp://… or ipc://…")
        zmq_uris.append(replay)
    addresses = [parse_endpoint(u).zmq_address for u in zmq_uris]
    for address in addresses:
        if addresses.count(address) > 1:
            raise UsageError(f"--out: {address} is given to two outputs; each binds its own port")
    return FeedOutputs(channels=channels, replay=replay)


@dataclass(frozen=True)
class FeedOptions:
    """Everything `qt feed` was asked to do (the command fills it from its options)."""

    source: str  # dll | sim | replay | replay-journal
    path: str = ""  # the DLL, the replay file or the journal directory
    symbols: tuple[str, ...] = ()  # as given: WDOQ25 or WDOQ25:F
    history_from: str | None = None
    history_to: str | None = None
    rate: float | None = None
    seed: int | None = None
    alpha: float = 0.0  # --sim: planted signal strength (docs/sim.md)
    start: str | None = None  # --sim: first venue time (see core/sim_start.py)
    speed: float = 1.0
    strict: bool = False
    time_unit: str | None = None  # --replay: unit of the file's ts_* columns (s, ms, us, ns)
    duration_s: float | None = None
    stop_after: int | None = None
    outputs: tuple[str, ...] = ()
    journal_dir: Path | None = None
    fsync: str = "batch"
    journal_retention: str | None = None  # e.g. 7d: trim the journal while running
    sndhwm: int = 200_000
    linger_s: float = 0.0
    credentials: tuple[str, str, str] | None = field(default=None, repr=False)
    settings: config.Settings = field(default_factory=config.Settings, repr=False)  # resolved

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise UsageError(f"source {self.source!r}: choose one of {', '.join(SOURCES)}")
        if self.fsync not in FSYNC_POLICIES:
            raise UsageError(f"--fsync {self.fsync!r}: choose one of {', '.join(FSYNC_POLICIES)}")
        if self.speed < 0:
            raise UsageError(f"--speed {self.speed:g}: 0 (as fast as possible) or positive")
        if self.duration_s is not None and self.duration_s <= 0:
            raise UsageError("--duration must be positive")
        if self.stop_after is not None and self.stop_after < 1:
            raise UsageError("--stop-after must be at least 1")
        if self.linger_s < 0:
            raise UsageError("--linger must be 0 or positive")
        if self.sndhwm < 1:
            raise UsageError("--hwm must be at least 1 message")
        if self.journal_retention is not None:
            parse_retention(self.journal_retention)  # a bad value fails before anything opens
        if self.time_unit is not None and self.source != "replay":
            raise UsageError("--time-unit applies to --replay FILE only")
        from qt_cli.core.files import time_unit_factor

        time_unit_factor(self.time_unit)  # an unknown unit is a usage error before anything opens
        from qt_cli.core.sources.profitdll import parse_symbol

        for item in self.symbols:
            parse_symbol(item)  # the one rule for tickers (keys.valid_symbol), for every source

    @property
    def tickers(self) -> tuple[str, ...]:
        """Symbols without the exchange suffix."""
        return tuple(dict.fromkeys(s.partition(":")[0].strip().upper() for s in self.symbols))


def build_source(
    options: FeedOptions, *, on_notice: Callable[[str], None] | None = None
) -> MarketSource:
    """The one market source of a run (not opened yet); `on_notice` hears where a sim starts."""
    if options.source == "sim":
        from qt_cli.core.sim_start import plan_start
        from qt_cli.core.sources.sim import SimConfig, SimulatedMarket

        say = on_notice or (lambda _text: None)
        sim_config = SimConfig(
            symbols=options.tickers or ("WDOQ25",),
            seed=options.seed,
            alpha=options.alpha,
            rate=options.rate,
            duration_s=options.duration_s,
        )
        start = plan_start(
            options.start,
            rate=options.rate,
            symbols=sim_config.symbols,
            say=say,
            settings=options.settings,
        )
        sim = SimulatedMarket(
            dataclasses.replace(sim_config, start_ns=start.start_ns, levels=start.levels)
        )
        say(sim.describe())
        return sim
    if options.source == "replay":
        from qt_cli.core.sources.replay import open_replay

        return open_replay(
            options.path,
            speed=options.speed,
            symbols=options.tickers,
            strict=options.strict,
            time_unit=options.time_unit,
        )
    if options.source == "replay-journal":
        from qt_cli.core.sources.replay import JournalSource

        return JournalSource(
            options.path, speed=options.speed, symbols=options.tickers, strict=options.strict
        )
    from qt_cli.core.sources.profitdll import ProfitDllSource

    if options.credentials is None:
        raise UsageError("--dll needs PROFIT_ACTIVATION_KEY, PROFIT_USER and PROFIT_PASSWORD")
    key, user, password = options.credentials
    return ProfitDllSource(
        options.path,
        key,
        user,
        password,
        options.symbols or ("WDOQ25:F",),
        options.history_from,
        options.history_to,
    )


# --- channels ------------------------------------------------------------------------------------


class _Channel:
    """One channel's session: stamps, journals and delivers to its output."""

    def __init__(self, name: str, session: str, uri: str, journal: JournalWriter | None) -> None:
        self.name = name
        self.uri = uri
        self.endpoint: Endpoint = parse_endpoint(uri)
        # A replayed record arrives with its storage identity as session/seq (see
        # sources/replay.py); live sources leave both empty.
        self.sequencer = Sequencer(session, journal, keep_identity=True)
        self.published = 0
        self.sink: Any = None

    @property
    def session(self) -> str:
        return self.sequencer.session

    def publish(self, events: list[Event]) -> None:
        self.sink.deliver(self.sequencer, events)
        self.published += len(events)


class _PubOut:
    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def deliver(self, sequencer: Sequencer, events: list[Event]) -> None:
        self.sink.send_encoded(sequencer.encode(events))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.sink.close()


class _LinesOut:
    """JSON lines (stdout or a .jsonl file): the wire payload as is."""

    def __init__(self, sink: JsonLinesSink) -> None:
        self.sink = sink

    def deliver(self, sequencer: Sequencer, events: list[Event]) -> None:
        self.sink.write_payloads([payload for _, payload in sequencer.encode(events)])

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()


class _EventOut:
    """Any other Sink (CSV, Parquet, Valkey): stamped event copies."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def deliver(self, sequencer: Sequencer, events: list[Event]) -> None:
        self.sink.send(sequencer.stamp(events))

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()


# --- the feed ------------------------------------------------------------------------------------


@dataclass
class FeedStatus:
    """A snapshot for the status line."""

    events: int
    rate: float  # events/s over the last interval
    by_kind: dict[str, int]
    journal_bytes: int
    elapsed_s: float
    progress: tuple[int, int] | None  # (done, total) of a replay, bytes or rows


class Feed:
    """Runs one source into the channels. `open()`, `run()` (blocks), `stop()` (any thread), `close()`."""

    def __init__(
        self,
        source: MarketSource,
        outputs: FeedOutputs,
        *,
        journal_dir: Path | str,
        fsync: str = "batch",
        journal_retention: str | None = None,
        retention_interval_s: float = 600.0,
        journal_segment_bytes: int = 1 << 30,
        duration_s: float | None = None,
        stop_after: int | None = None,
        sndhwm: int = 200_000,
        linger_s: float = 0.0,
        run_id: str | None = None,
        source_name: str = "",
        on_status: Callable[[FeedStatus], None] | None = None,
        on_notice: Callable[[str], None] | None = None,
        status_interval_s: float = 0.5,
        settings: config.Settings | None = None,
    ) -> None:
        from qt_cli.core.zmq_io import new_run_id

        self.source = source
        self.outputs = outputs
        self.settings = settings or config.Settings()  # a Valkey output's password and maxlen
        self.journal_dir = Path(journal_dir).expanduser()
        self.fsync = fsync
        self.journal_retention = journal_retention
        self.retention_interval_s = retention_interval_s
        self.journal_segment_bytes = journal_segment_bytes
        self.retention: RetentionThread | None = None
        self.duration_s = duration_s
        self.stop_after = stop_after
        self.sndhwm = sndhwm
        self.linger_s = linger_s
        self.lingered_s = 0.0
        self.run_id = run_id or new_run_id()
        self.source_name = source_name
        self.on_status = on_status
        self.on_notice = on_notice
        self.status_interval_s = status_interval_s
        self.journal: JournalWriter | None = None
        self.channels: dict[str, _Channel] = {}
        self.replay_server: Any = None
        self.by_kind: dict[str, int] = {}
        self.events = 0
        self.stopped_by = ""
        self._outs: list[Any] = []
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._opened = False
        self._closed = False
        self._started = 0.0
        self._ended = 0.0
        self._last_status = (0.0, 0)

    # -- lifecycle --

    def open(self) -> None:
        """Open the journal, bind the outputs and the replay endpoint, then open the source."""
        if self._opened:
            return
        self._opened = True
        try:
            if self.journal_retention:
                self.retention = RetentionThread(
                    self.journal_dir,
                    parse_retention(self.journal_retention),
                    retention_text=self.journal_retention,
                    interval_s=self.retention_interval_s,
                    on_trim=self._trimmed,
                )
            self.journal = JournalWriter(
                self.journal_dir,
                fsync=self.fsync,
                segment_bytes=self.journal_segment_bytes,
                on_roll=self.retention.nudge if self.retention is not None else None,
            )
            if self.retention is not None:
                self.retention.start()
            shared: dict[str, Any] = {}
            for name in CHANNELS:
                uri = self.outputs.channels[name]
                channel = _Channel(name, f"{self.run_id}.{name}", uri, self.journal)
                channel.sink = shared.get(uri) or self._open_out(channel, uri)
                shared[uri] = channel.sink
                self.channels[name] = channel
            if self.outputs.replay:
                from qt_cli.core.zmq_io import ReplayServer

                self.replay_server = ReplayServer(self.journal_dir, self.outputs.replay).start()
            self.source.open()
        except BaseException:
            self.close()
            raise

    def _trimmed(self, report: JournalTrimReport) -> None:
        if self.on_notice is not None:
            self.on_notice(
                f"journal retention {report.retention}: removed {report.removed:,} segments "
                f"({report.freed_bytes / 1e6:,.1f} MB) last written before {report.cutoff}"
            )

    def _open_out(self, channel: _Channel, uri: str) -> Any:
        ep = channel.endpoint
        if ep.kind == "zmq":
            from qt_cli.core.zmq_io import PubSink

            out: Any = _PubOut(
                PubSink(ep, channel=channel.name, session=channel.session, sndhwm=self.sndhwm)
            )
        elif ep.kind == "stdio":
            out = _LinesOut(JsonLinesSink(None))
        elif ep.kind == "file" and ep.format == "jsonl":
            out = _LinesOut(JsonLinesSink(ep.path))
        elif ep.kind == "file":
            from qt_cli.core.files import open_file_sink

            shared = [n for n, u in self.outputs.channels.items() if u == uri]
            types = [t for n in shared for t in CHANNEL_TYPES[n]]
            out = _EventOut(
                open_file_sink(Path(ep.path), ep.format, types=list(dict.fromkeys(types)))
            )
        else:
            from qt_cli.core.io import open_sink

            out = _EventOut(
                open_sink(uri, password=self.settings.valkey_password, maxlen=self.settings.maxlen)
            )
        self._outs.append(out)
        return out

    def stop(self, reason: str = "signal") -> None:
        """Ask `run()` to finish after the current batch (safe from a signal handler); the
        totals say `stopped_by: signal` whatever the `reason` (the signal's name).

        A second call while the feed lingers (serving replays) ends the linger.
        """
        if self._stop.is_set():
            self._abort.set()
            return
        if not self.stopped_by:
            self.stopped_by = "signal"
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _linger(self) -> None:
        """Keep the replay endpoint up until `linger_s` pass without a replay request."""
        server = self.replay_server
        if server is None or self.linger_s <= 0:
            return
        if self.on_notice is not None:
            self.on_notice(
                f"serving replays until {self.linger_s:g} s pass without a request "
                "(Ctrl+C to end now)"
            )
        started = time.monotonic()
        while not self._abort.wait(0.05):
            now = time.monotonic()
            last = max(server.last_request_at, started)
            if now - last >= self.linger_s:
                break
        self.lingered_s = time.monotonic() - started

    def close(self) -> None:
        """Close the source, outputs, replay endpoint and journal (flushed and fsynced)."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for closer in (
            self.source.close,
            *(out.close for out in self._outs),
            self.replay_server.close if self.replay_server is not None else None,
            self.retention.close if self.retention is not None else None,
            self.journal.close if self.journal is not None else None,
        ):
            if closer is None:
                continue
            try:
                closer()
            except OutputClosed:
                pass
            except Exception as exc:  # close everything, then report the first failure
                errors.append(exc)
        if errors:
            raise errors[0]

    # -- running --

    def run(self) -> dict[str, Any]:
        """Read and publish until the source ends, --duration, --stop-after or stop(); totals."""
        self.open()
        source = self.source
        take_notices = getattr(source, "take_notices", None)
        self._started = time.monotonic()
        self._last_status = (self._started, 0)
        deadline = self._started + self.duration_s if self.duration_s else None
        if self.source_name == "sim":
            deadline = None  # the simulator applies --duration itself (simulated time at --rate 0)
        next_status = self._started
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self.stopped_by = "duration"
                    break
                timeout = 0.2 if deadline is None else max(min(0.2, deadline - now), 0.0)
                events = source.read(timeout)
                if take_notices is not None and self.on_notice is not None:
                    for text in take_notices():
                        self.on_notice(text)
                if events:
                    if self.stop_after is not None:
                        events = events[: self.stop_after - self.events]
                    self._publish(events)
                    if self.stop_after is not None and self.events >= self.stop_after:
                        self.stopped_by = "stop_after"
                        break
                elif source.finished:
                    sim_timed = self.source_name == "sim" and self.duration_s is not None
                    self.stopped_by = self.stopped_by or ("duration" if sim_timed else "end")
                    break
                if self.on_status is not None and now >= next_status:
                    self.on_status(self.status())
                    next_status = now + self.status_interval_s
        except OutputClosed:
            self.stopped_by = "output_closed"
        finally:
            self._ended = time.monotonic()
            for out in self._outs:
                with contextlib.suppress(OutputClosed):
                    out.flush()
            if self.journal is not None:
                self.journal.commit()
        if take_notices is not None and self.on_notice is not None:
            for text in take_notices():
                self.on_notice(text)
        if self.on_status is not None:
            self.on_status(self.status())
        self._stop.set()  # from now on, stop() ends the linger
        if self.stopped_by != "output_closed":
            self._linger()
        return self.totals()

    def _publish(self, events: list[Event]) -> None:
        buckets: dict[str, list[Event]] = {"ticks": [], "book": [], "history": []}
        kinds: dict[str, dict[str, int]] = {"ticks": {}, "book": {}, "history": {}}
        for event in events:
            cls = type(event)
            if cls is Trade and event.history:  # type: ignore[attr-defined]
                name, kind = "history", "history"
            else:
                name, kind = _ROUTE.get(cls, "ticks"), cls.TYPE
            buckets[name].append(event)
            counts = kinds[name]
            counts[kind] = counts.get(kind, 0) + 1
        totals = self.by_kind
        for name, bucket in buckets.items():
            if bucket:
                self.channels[name].publish(bucket)  # counted only once delivered
                self.events += len(bucket)
                for kind, n in kinds[name].items():
                    totals[kind] = totals.get(kind, 0) + n

    # -- reporting --

    def status(self) -> FeedStatus:
        now = time.monotonic()
        last_t, last_n = self._last_status
        rate = (self.events - last_n) / (now - last_t) if now > last_t else 0.0
        self._last_status = (now, self.events)
        progress = getattr(self.source, "progress", None)
        return FeedStatus(
            events=self.events,
            rate=rate,
            by_kind=dict(self.by_kind),
            journal_bytes=self.journal.bytes_written if self.journal is not None else 0,
            elapsed_s=now - self._started if self._started else 0.0,
            progress=progress if isinstance(progress, tuple) else None,
        )

    def totals(self) -> dict[str, Any]:
        """Final (or current) counts, as `qt feed --json` prints them."""
        end = self._ended or time.monotonic()
        elapsed = max(end - self._started, 0.0) if self._started else 0.0
        stats = getattr(self.source, "stats", None)
        return {
            "run_id": self.run_id,
            "source": self.source_name,
            "events": self.events,
            "by_kind": dict(sorted(self.by_kind.items())),
            "channels": {
                name: {
                    "session": ch.session,
                    "last_seq": ch.sequencer.seq,
                    "published": ch.published,
                    "out": ch.endpoint.uri,
                }
                for name, ch in self.channels.items()
            },
            "rejected": stats.rejected if stats is not None else 0,
            "problems": list(stats.problems) if stats is not None else [],
            "journal": {
                "dir": str(self.journal_dir),
                "bytes": self.journal.bytes_written if self.journal is not None else 0,
                "records": self.journal.records_written if self.journal is not None else 0,
                "fsync": self.fsync,
                "retention": self.retention.totals() if self.retention is not None else None,
            },
            "replay": {
                "endpoint": self.outputs.replay or None,
                "requests": self.replay_server.requests if self.replay_server else 0,
                "messages": self.replay_server.messages_served if self.replay_server else 0,
            },
            "elapsed_s": round(elapsed, 3),
            "lingered_s": round(self.lingered_s, 3),
            "rate": round(self.events / elapsed, 1) if elapsed > 0 else 0.0,
            "stopped_by": self.stopped_by or "end",
        }


# --- one call for the command --------------------------------------------------------------------


def run_feed(
    options: FeedOptions,
    *,
    on_status: Callable[[FeedStatus], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
    on_start: Callable[[Feed], None] | None = None,
    handle_signals: bool = True,
) -> dict[str, Any]:
    """Build the source and the feed, run it to the end (or SIGINT/SIGTERM), close; totals."""
    outputs = parse_outputs(options.outputs, options.settings)
    source = build_source(options, on_notice=on_notice)
    feed = Feed(
        source,
        outputs,
        journal_dir=options.journal_dir or options.settings.journal_dir,
        settings=options.settings,
        fsync=options.fsync,
        journal_retention=options.journal_retention,
        duration_s=options.duration_s,
        stop_after=options.stop_after,
        sndhwm=options.sndhwm,
        linger_s=options.linger_s,
        source_name=options.source,
        on_status=on_status,
        on_notice=on_notice,
    )
    totals: dict[str, Any] = run_stage(
        feed,
        handle_signals=handle_signals,
        on_start=(lambda: on_start(feed)) if on_start is not None else None,
    )
    if options.source == "replay" and totals["stopped_by"] == "end":
        from qt_cli.core.sources.replay import check_read

        check_read(source, options.path)
    return totals
