"""Subscribing (`SubSource`): a SUB socket connects, decodes, tracks seqs per session and
recovers gaps through the replay endpoint."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import zmq

from qt_cli.core.endpoints import Endpoint
from qt_cli.core.errors import DecodeError, EndpointError, QtError, UnavailableError
from qt_cli.core.events import EVENT_TYPES, MAX_TS_NS, Passed, decode_dict, now_ns
from qt_cli.core.records import DEFAULT_MAX_MESSAGE_BYTES, MAX_RAW_BYTES, DeadLetter, Gap
from qt_cli.core.zmq_io import curve
from qt_cli.core.zmq_io.base import DEFAULT_RCVHWM, _context, _endpoint
from qt_cli.core.zmq_io.replay import ReplayClient, ReplayPage, missing_ranges, not_journaled

log = logging.getLogger(__name__)

OVERSIZED = "is over --max-message-bytes"  # in the reason of an oversized message's dead letter

# --- subscribing -------------------------------------------------------------------------------


@dataclass
class SessionCounters:
    received: int = 0  # messages of this session handed out (live and recovered)
    last_seq: int = 0
    first_seen_ns: int = 0
    last_seen_ns: int = 0


@dataclass
class SubStats:
    """Counters of a SubSource."""

    received: int = 0  # messages taken off the socket
    decoded: int = 0  # events handed out by read() (live + recovered)
    rejected: int = 0
    oversized: int = 0  # of the rejected: longer than max_message_bytes
    duplicates: int = 0  # seq at or below the session's last seq: dropped
    filtered: int = 0  # not one of the wanted symbols
    gaps_detected: int = 0
    gaps_recovered: int = 0  # Gap records with recovered=True
    gaps_lost: int = 0
    messages_recovered: int = 0
    messages_lost: int = 0
    sessions: dict[str, SessionCounters] = field(default_factory=dict)


@dataclass
class _Recovery:
    session: str
    next_seq: int
    to_seq: int
    reason: str
    held: tuple[bytes, bytes, dict[str, Any]] | None  # the live message that revealed the gap
    recovered: list[tuple[int, int]] = field(default_factory=list)
    lost: list[tuple[int, int, str]] = field(default_factory=list)


class SubSource:
    """SUB socket reader with per-session seq tracking and gap recovery (endpoints `Source`).

    `SubSource(endpoint, symbols=(), replay=None, catch_up=True,
    known=None, replay_timeout_s=2.0, max_batch=10_000)`

    - `read(timeout_s) -> list[Event]`: waits up to `timeout_s` for messages and returns a batch.
      Recovered events come out in seq order before the live message that revealed their gap;
      a large gap is recovered a page per call. Duplicates (seq at or below the last seen for
      the session) are dropped.
    - `take_rejects() -> list[DeadLetter]`: undecodable messages since the last call (raw payload
      truncated to 64 KiB, reason, bad field or None, topic, source endpoint, ts_init).
    - `take_gaps() -> list[Gap]`: gaps since the last call, each recovered or lost (a partly
      recovered gap gives one Gap per recovered and per lost sub-range).
    - `last_seqs() -> dict[session, seq]`; `set_known(session, seq)` / `known=` seed the last seq
      (e.g. the bridge's high-water mark) so a restart recovers from there.
    - `stats`: SubStats. `finished` is always False (a live stream).

    `decode(wire dict)`, if given, turns a message into what `read()` hands out instead of an
    Event (e.g. the flat values a writer needs); it returns None to leave a message to the
    generic decoding (`decode_dict`) and raises DecodeError to reject it. It is called after seq
    tracking and the symbol filter.

    A message longer than `max_message_bytes` (payload frames together) is not decoded: it is
    rejected as a dead letter (its first 64 KiB kept), counted in `stats.oversized`, with one
    warning the first time. Carrying a seq, it then shows as a gap, which recovery fetches and
    rejects the same way: counted, never stored.

    `replay=None` disables recovery (gaps are recorded as lost). `catch_up=False` takes the first
    message seen of a session as its start instead of recovering seqs 1..n-1. With `symbols`, the
    socket still subscribes to everything (seq counts every message of a session, so filtering
    at the socket would look like gaps) and other symbols are dropped after seq tracking; state
    messages for the whole connection (symbol "*") always pass. Messages of a type in `skip`
    are not decoded: `read()` hands out an `events.Passed` (symbol, stream, event time).
    """

    def __init__(
        self,
        endpoint: Endpoint | str,
        *,
        symbols: Sequence[str] = (),
        replay: Endpoint | str | ReplayClient | None = None,
        catch_up: bool = True,
        known: Mapping[str, int] | None = None,
        replay_timeout_s: float = 2.0,
        max_batch: int = 10_000,
        rcvhwm: int = DEFAULT_RCVHWM,
        context: zmq.Context[Any] | None = None,
        clock: Callable[[], int] = now_ns,
        decode: Callable[[dict[str, Any]], Any] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        self.endpoint = _endpoint(endpoint)
        self.max_message_bytes = max_message_bytes
        self.uri = self.endpoint.uri
        self.symbols = frozenset(symbols)
        self.catch_up = catch_up
        self.max_batch = max_batch
        self.stats = SubStats()
        self._clock = clock
        self._decode = decode
        self._skip = {kind: EVENT_TYPES[kind].STREAM for kind in skip}
        self._last: dict[str, int] = dict(known or {})
        self._pending: dict[str, int] = {}  # session -> live messages not yet in stats.sessions
        self._rejects: list[DeadLetter] = []
        self._gaps: list[Gap] = []
        self._jobs: deque[_Recovery] = deque()
        if not replay:
            self.replay: ReplayClient | None = None
        elif isinstance(replay, ReplayClient):
            self.replay = replay
        else:
            self.replay = ReplayClient(replay, timeout_s=replay_timeout_s, context=context)
        sock = (context or _context()).socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            curve.connect(sock)
        except QtError:
            sock.close(linger=0)
            raise
        try:
            sock.connect(self.endpoint.zmq_address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise EndpointError(f"cannot connect to {self.uri}: {exc.strerror}") from None
        self._sock = sock
        self._poller = zmq.Poller()  # kept: Socket.poll makes a new one per call
        self._poller.register(sock, zmq.POLLIN)

    @property
    def finished(self) -> bool:
        return False

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The SUB socket, for a reader that polls several sources at once (never read it)."""
        return self._sock

    def last_seqs(self) -> dict[str, int]:
        return dict(self._last)

    def set_known(self, session: str, seq: int) -> None:
        """Treat seqs up to `seq` of `session` as already received."""
        if seq > self._last.get(session, 0):
            self._last[session] = seq

    def take_rejects(self) -> list[DeadLetter]:
        out, self._rejects = self._rejects, []
        return out

    def take_gaps(self) -> list[Gap]:
        out, self._gaps = self._gaps, []
        return out

    @property
    def recovering(self) -> bool:
        """True while a gap is being recovered (live messages wait in the socket meanwhile)."""
        return bool(self._jobs)

    def check_tail(self) -> int:
        """Queue recovery of messages lost at the end of a burst, which no later seq reveals.

        Asks the replay endpoint how far each session this source heard from is journaled and
        queues the missing seqs beyond what was received; the next `read()` calls fetch them.
        Returns how many seqs were queued (0 without a replay endpoint, while recovering, or
        before any session was heard: then there is nothing to compare and nothing is asked).
        Raises UnavailableError when the replay endpoint does not answer within
        TAIL_INFO_TIMEOUT_S (a short wait: the caller's loop is blocked meanwhile).
        """
        if self.replay is None or self._jobs:
            return 0
        self._flush_counts()
        if not self.stats.sessions:
            return 0
        journaled = self.replay.info(timeout_s=TAIL_INFO_TIMEOUT_S)
        queued = 0
        for session in self.stats.sessions:
            last = int((journaled.get(session) or {}).get("last_seq") or 0)
            heard = self._last.get(session, 0)
            if last > heard:
                reason = "end of a burst lost (no later message showed the gap)"
                self._jobs.append(_Recovery(session, heard + 1, last, reason, None))
                self.stats.gaps_detected += 1
                queued += last - heard
        return queued

    # -- reading --

    def read(self, timeout_s: float) -> list[Any]:
        out: list[Any] = []
        if self._jobs:
            self._recover_page(out)
            return out
        sock = self._sock
        if not self._poller.poll(max(int(timeout_s * 1000), 0)):
            return out
        # Frames are taken one by one without copying the first: `Frame.more` tells a
        # [topic, payload] message from a single frame without a getsockopt per message
        # (recv_multipart costs about twice as much).
        recv = sock.recv
        nonblock = zmq.NOBLOCK
        accept = self._accept
        max_batch = self.max_batch
        max_bytes = self.max_message_bytes
        received = 0
        get = sock.get
        events, pollin = zmq.EVENTS, zmq.POLLIN
        try:
            while len(out) < max_batch:
                # The end of what is queued: asked of the socket while the batch is small (a
                # failed recv raises zmq.Again, which costs what a few of these asks cost).
                if 0 < received < FEW_MESSAGES and not get(events) & pollin:
                    break
                try:
                    first = recv(nonblock, copy=False)
                except zmq.Again:
                    break
                received += 1
                if first.more:
                    part = recv(nonblock, copy=False)
                    payload = part.bytes
                    if part.more:  # more than two frames: the rest is the payload
                        parts = [payload]
                        while part.more:
                            part = recv(nonblock, copy=False)
                            parts.append(part.bytes)
                        payload = b"".join(parts)
                    if len(payload) > max_bytes:
                        self._reject_oversized(payload, first.bytes)
                    else:
                        accept(first.bytes, payload, out)
                elif len(first) > max_bytes:
                    self._reject_oversized(first.bytes, b"")
                else:
                    accept(b"", first.bytes, out)
                if self._jobs:
                    self._recover_page(out)
                    break
        finally:
            self.stats.received += received
            self._flush_counts()
        return out

    def _reject(self, raw: bytes, topic: str | bytes, reason: str, field_: str | None) -> None:
        if isinstance(topic, bytes):
            topic = topic.decode(errors="replace")
        self.stats.rejected += 1
        self._rejects.append(
            DeadLetter(
                reason=reason,
                raw=raw[:MAX_RAW_BYTES],
                source=self.uri,
                topic=topic,
                field=field_ or "",
                ts_init=self._clock(),
            )
        )

    def _reject_oversized(self, payload: bytes, topic: bytes) -> None:
        """A message over max_message_bytes: a dead letter, not decoded; warned about once."""
        self.stats.oversized += 1
        reason = f"message of {len(payload):,} bytes {OVERSIZED} {self.max_message_bytes:,}"
        if self.stats.oversized == 1:
            log.warning(
                "%s: %s; dropped and dead-lettered (counted; this warning is not repeated)",
                self.uri,
                reason,
            )
        self._reject(payload, topic, reason, None)

    def _accept(self, topic_b: bytes, payload: bytes, out: list[Any]) -> None:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            self._reject(payload, topic_b, f"not JSON: {exc}", None)
            return
        if type(data) is not dict:
            self._reject(
                payload, topic_b, f"expected a JSON object, got {type(data).__name__}", None
            )
            return
        session = data.get("session")
        seq = data.get("seq")
        if type(session) is str and session and type(seq) is int and seq > 0:
            last = self._last.get(session)
            if last is None:
                last = 0 if self.catch_up else seq - 1
                self._last[session] = last
            if seq <= last:
                self.stats.duplicates += 1
                return
            if seq > last + 1:
                self._flush_counts()
                reason = (
                    f"late join: first message seen was seq {seq}"
                    if last == 0 and session not in self.stats.sessions
                    else f"seq jumped from {last} to {seq}"
                )
                self.stats.gaps_detected += 1
                self._jobs.append(
                    _Recovery(session, last + 1, seq - 1, reason, (topic_b, payload, data))
                )
                return
            self._last[session] = seq
            pending = self._pending
            pending[session] = pending.get(session, 0) + 1
        self._emit(data, payload, topic_b, out)

    def _flush_counts(self) -> None:
        """Move the live messages counted per session into stats.sessions (once per read)."""
        if not self._pending:
            return
        now = self._clock()
        sessions = self.stats.sessions
        for session, n in self._pending.items():
            counters = sessions.get(session)
            if counters is None:
                counters = sessions[session] = SessionCounters(first_seen_ns=now)
            counters.received += n
            counters.last_seq = self._last[session]
            counters.last_seen_ns = now
        self._pending.clear()

    def _count_session(self, session: str, seq: int) -> None:
        counters = self.stats.sessions.get(session)
        now = self._clock()
        if counters is None:
            counters = self.stats.sessions[session] = SessionCounters(first_seen_ns=now)
        counters.received += 1
        counters.last_seq = seq
        counters.last_seen_ns = now

    def _emit(self, data: dict[str, Any], payload: bytes, topic: bytes, out: list[Any]) -> None:
        if self.symbols:
            symbol = data.get("symbol")
            # another ticker is filtered; a symbol that is not text goes on to be rejected
            if type(symbol) is str and symbol not in self.symbols and symbol != "*":
                self.stats.filtered += 1
                return
        if self._skip:
            kind = data.get("type")
            stream = self._skip.get(kind) if type(kind) is str else None
            stamp = data.get("ts_event")
            symbol = data.get("symbol")
            if (
                stream is not None
                and type(stamp) is int
                and 0 < stamp < MAX_TS_NS
                and type(symbol) is str
            ):
                self.stats.decoded += 1
                out.append(Passed(symbol, stream, stamp))
                return  # anything else is decoded: a bad one is rejected and counted
        decode = self._decode
        if decode is not None:
            try:
                item = decode(data)
            except DecodeError as exc:
                self._reject(payload, topic, str(exc), exc.field)
                return
            if item is not None:
                self.stats.decoded += 1
                out.append(item)
                return
        try:
            event = decode_dict(data)
        except DecodeError as exc:
            self._reject(payload, topic, str(exc), exc.field)
            return
        self.stats.decoded += 1
        out.append(event)

    # -- recovery --

    def _recover_page(self, out: list[Any]) -> None:
        job = self._jobs[0]
        page: ReplayPage | None = None
        if self.replay is None:
            job.lost.append((job.next_seq, job.to_seq, "no replay endpoint configured"))
        else:
            try:
                page = self.replay.page(job.session, job.next_seq, job.to_seq)
            except UnavailableError as exc:
                job.lost.append((job.next_seq, job.to_seq, str(exc)))
        if page is not None:
            seqs: list[int] = []
            for seq, topic_b, payload in page.messages:
                if seq < job.next_seq or seq > job.to_seq:
                    continue
                seqs.append(seq)
                self._last[job.session] = seq
                self._count_session(job.session, seq)
                self.stats.messages_recovered += 1
                if len(payload) > self.max_message_bytes:
                    self._reject_oversized(payload, topic_b)
                    continue
                try:
                    data = orjson.loads(payload)
                except orjson.JSONDecodeError as exc:
                    self._reject(payload, topic_b, f"not JSON: {exc}", None)
                    continue
                if not isinstance(data, dict):
                    self._reject(payload, topic_b, "expected a JSON object", None)
                    continue
                self._emit(data, payload, topic_b, out)
            end = job.to_seq if page.next is None else page.next - 1
            for a, b in _runs(seqs):
                job.recovered.append((a, b))
            where = self.replay.endpoint.uri if self.replay is not None else "?"
            unknown = page.last is None and page.next is None and not seqs
            why = (
                f"the journal behind {where} does not hold this session (never journaled "
                "there, or removed by its retention)"
            )
            for a, b in missing_ranges(job.next_seq, end, seqs):
                job.lost.append((a, b, not_journaled(page.first, b, where) if not unknown else why))
            if page.next is not None:
                job.next_seq = page.next
                return
        self._finish(job, out)

    def _finish(self, job: _Recovery, out: list[Any]) -> None:
        self._jobs.popleft()
        now = self._clock()
        source = self.replay.endpoint.uri if self.replay is not None else self.uri
        for a, b in job.recovered:
            self._gaps.append(
                Gap(job.session, a, b, True, f"{job.reason}; recovered from replay", source, now)
            )
            self.stats.gaps_recovered += 1
        for a, b, why in job.lost:
            self._gaps.append(
                Gap(job.session, a, b, False, f"{job.reason}; lost: {why}", source, now)
            )
            self.stats.gaps_lost += 1
            self.stats.messages_lost += b - a + 1
        self._last[job.session] = max(self._last.get(job.session, 0), job.to_seq)
        if job.held is not None:
            topic_b, payload, data = job.held
            seq = data["seq"]
            if seq > self._last[job.session]:
                self._last[job.session] = seq
                self._count_session(job.session, seq)
                self._emit(data, payload, topic_b, out)
            else:
                self.stats.duplicates += 1

    def close(self) -> None:
        self._sock.close(linger=0)
        if self.replay is not None:
            self.replay.close()


def _runs(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous inclusive runs of sorted seqs."""
    out: list[tuple[int, int]] = []
    for seq in seqs:
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


FEW_MESSAGES = 4  # SubSource.read: up to this many, look before reading (see there)
TAIL_IDLE_S = 1.0  # quiet this long before asking the replay endpoint
TAIL_CHECK_EVERY_S = 2.0  # and at most this often
TAIL_CHECK_MAX_S = 30.0  # while the endpoint does not answer, each wait doubles up to this
TAIL_INFO_TIMEOUT_S = 0.5  # an `info` answers in milliseconds; a feed that is down costs this


class TailCheck:
    """Finds messages lost at the end of a burst, which no later message reveals as a gap.

    When an input has been quiet for TAIL_IDLE_S, asks its SubSource (every TAIL_CHECK_EVERY_S
    at most) to compare what it received with what the feed journaled (`check_tail`); the
    missing seqs then arrive through the source's normal gap recovery. Runs on the thread that owns
    the SubSource (the bridge's input threads, a derived stage's ZeroMQ input), so a replay
    endpoint that does not answer (the feed is down) blocks that thread for TAIL_INFO_TIMEOUT_S
    per check: after each unanswered check the wait before the next doubles, up to
    TAIL_CHECK_MAX_S, and an answer (or a message) brings it back to TAIL_CHECK_EVERY_S.
    """

    def __init__(self, source: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self._clock = clock
        self.quiet_since = clock()
        self.last_check = -math.inf
        self.every_s = TAIL_CHECK_EVERY_S

    def after_read(self, got_events: bool) -> None:
        now = self._clock()
        if got_events:
            self.quiet_since = now
            self.every_s = TAIL_CHECK_EVERY_S
            return
        if now - self.quiet_since < TAIL_IDLE_S or now - self.last_check < self.every_s:
            return
        self.last_check = now
        try:
            self.source.check_tail()
        except UnavailableError as exc:
            self.every_s = min(self.every_s * 2, TAIL_CHECK_MAX_S)
            log.debug("tail check of %s: %s (next in %g s)", self.source.uri, exc, self.every_s)
        else:
            self.every_s = TAIL_CHECK_EVERY_S
