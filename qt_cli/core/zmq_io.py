"""ZeroMQ: the feed's publisher, a gap-aware subscriber, and the replay protocol between them.

The only module that imports zmq.

Publishing (`PubSink`): a PUB socket binds the endpoint; every message is two frames
`[topic, payload]` (topic from `keys.topic`, payload the orjson wire dict) carrying `session`
(`<run id>.<channel>`, e.g. `9f2c61d4.ticks`) and `seq` (1, 2, 3, … gap-free per session). Given a
`JournalWriter`, a batch is appended to the journal and committed before any of it is sent.

Subscribing (`SubSource`): a SUB socket connects, decodes and tracks the last seq per session. A
jump in seq (or, with `catch_up`, a first message with seq > 1) is a gap: the source asks the
feed's replay endpoint for the missing range (`ReplayClient`), hands the recovered events out in
seq order *before* the message that revealed the gap, and records the gap as recovered or lost
(`take_gaps()`). Messages that do not decode are not raised: they are kept with the reason, the
bad field and the raw payload (`take_rejects()`), for a dead-letter stream.

Replay protocol (ROUTER at the feed, default tcp://127.0.0.1:5559; DEALER or REQ at the client).
Every integer is ASCII decimal unless said otherwise::

    request   [b"QTR1", request id, b"range", session, from_seq, to_seq]
              [b"QTR1", request id, b"info"]
    reply     [b"QTR1", request id, header (JSON), (seq as 8 bytes LE, topic, payload) * count]

The range reply header is `{"status": "ok", "session", "from", "to", "count", "next", "last"}`:
`next` is the seq to ask for next when the reply was cut at the page limit (else null), `last`
the highest seq the journal holds for the session (null: unknown session). Seqs in the range
that are absent from the reply and below `next` (or up to `to` when `next` is null) are not in
the journal. `info` answers `{"status": "ok", "sessions": {session: {"first_seq", "last_seq",
"segments", "bytes"}}}`. A bad request answers `{"status": "error", "error": "..."}`.
"""

from __future__ import annotations

import logging
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import zmq

from qt_cli.core import config
from qt_cli.core.endpoints import Endpoint, parse_endpoint
from qt_cli.core.errors import DecodeError, EndpointError, UnavailableError
from qt_cli.core.events import Event, decode_dict, now_ns
from qt_cli.core.files import MAX_RAW_BYTES, Reject
from qt_cli.core.journal import JournalReader, JournalWriter, Sequencer

log = logging.getLogger(__name__)

PROTOCOL = b"QTR1"
DEFAULT_SNDHWM = 200_000  # about 2 s at 100k msgs/s; a slower subscriber recovers via replay
DEFAULT_RCVHWM = 200_000
_SEQ = struct.Struct("<Q")

__all__ = [
    "PROTOCOL",
    "Gap",
    "PubSink",
    "Reject",
    "ReplayClient",
    "ReplayPage",
    "ReplayServer",
    "ReplayTimeout",
    "SubSource",
    "SubStats",
    "new_run_id",
]

_RUN_ID = secrets.token_hex(4)


def new_run_id() -> str:
    """A fresh random run id (8 hex digits)."""
    return secrets.token_hex(4)


def process_run_id() -> str:
    """The run id shared by every publisher of this process that is not given one."""
    return _RUN_ID


def _context() -> zmq.Context[Any]:
    return zmq.Context.instance()


def _endpoint(value: Endpoint | str) -> Endpoint:
    ep = parse_endpoint(value) if isinstance(value, str) else value
    if ep.kind != "zmq":
        raise EndpointError(f"endpoint {ep.uri!r} is not a ZeroMQ endpoint (tcp://… or ipc://…)")
    return ep


def _bind(sock: zmq.Socket[Any], ep: Endpoint, what: str) -> None:
    try:
        sock.bind(ep.zmq_address)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        hint = (
            " (another qt feed running? choose another port)" if exc.errno == zmq.EADDRINUSE else ""
        )
        raise UnavailableError(f"cannot bind {what} {ep.uri}: {exc.strerror}{hint}") from None


# --- publishing ------------------------------------------------------------------------------


class PubSink:
    """PUB socket that numbers, journals and sends events (implements the endpoints `Sink`).

    `PubSink(endpoint, channel="ticks", session=None, journal=None)`: binds at once; `session`
    defaults to `<process run id>.<channel>`. `send(events)` stamps session/seq, appends the batch
    to `journal` (if any) and commits it, then sends each `[topic, payload]`. A PUB never blocks:
    with no subscriber a message is dropped, past `sndhwm` queued messages per subscriber too
    (the subscriber recovers them from the replay endpoint).
    """

    def __init__(
        self,
        endpoint: Endpoint | str,
        *,
        channel: str = "pub",
        session: str | None = None,
        journal: JournalWriter | None = None,
        sndhwm: int = DEFAULT_SNDHWM,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.endpoint = _endpoint(endpoint)
        self.channel = channel
        self.sequencer = Sequencer(session or f"{process_run_id()}.{channel}", journal)
        self._sock = (context or _context()).socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.LINGER, 500)
        _bind(self._sock, self.endpoint, f"{channel} publisher")
        self.sent = 0
        self._closed = False

    @property
    def session(self) -> str:
        return self.sequencer.session

    @property
    def last_seq(self) -> int:
        return self.sequencer.seq

    def send(self, events: Sequence[Event]) -> None:
        self.send_encoded(self.sequencer.encode(events))

    def send_encoded(self, frames: Iterable[tuple[bytes, bytes]]) -> None:
        """Send already stamped and journaled `(topic, payload)` pairs."""
        send = self._sock.send
        more = zmq.SNDMORE
        n = 0
        for topic, payload in frames:
            send(topic, more)
            send(payload)
            n += 1
        self.sent += n

    def flush(self) -> None:
        if self.sequencer.journal is not None:
            self.sequencer.journal.commit()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()


# --- replay server -----------------------------------------------------------------------------


class ReplayServer:
    """ROUTER that serves journaled ranges; runs on its own thread between `start()` and `close()`.

    Binding happens in `start()` on the caller's thread, so a bad or busy endpoint raises there.
    """

    def __init__(
        self,
        journal_dir: Path | str,
        endpoint: Endpoint | str | None = None,
        *,
        page_messages: int = 10_000,
        page_bytes: int = 8 << 20,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.endpoint = _endpoint(endpoint or config.current().replay_endpoint)
        self.reader = JournalReader(journal_dir)
        self.page_messages = page_messages
        self.page_bytes = page_bytes
        self.requests = 0
        self.messages_served = 0
        self.last_request_at = 0.0  # time.monotonic() of the last request (0: none yet)
        self._context = context or _context()
        self._sock: zmq.Socket[Any] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> ReplayServer:
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # replies are bounded pages; never drop one
        _bind(sock, self.endpoint, "replay endpoint")
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="qt-replay", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                frames = sock.recv_multipart()
                try:
                    reply = self.handle(frames)
                except Exception as exc:  # one bad request must not stop the server
                    log.exception("replay request failed")
                    reply = _error_reply(frames, f"internal error: {exc}")
                if reply:
                    sock.send_multipart(reply)
        finally:
            sock.close(linger=0)

    def handle(self, frames: list[bytes]) -> list[bytes] | None:
        """Answer one request (frames as a ROUTER receives them); None to ignore it."""
        # ROUTER frames: identity, [empty delimiter from REQ], PROTOCOL, id, op, args…
        split = 2 if len(frames) > 1 and frames[1] == b"" else 1
        envelope, body = frames[:split], frames[split:]
        if len(body) < 3 or body[0] != PROTOCOL:
            log.debug("ignored a request that is not %s", PROTOCOL)
            return None
        request_id, op, args = body[1], body[2], body[3:]
        self.requests += 1
        head = [*envelope, PROTOCOL, request_id]
        if op != b"info":
            # Only range requests keep a lingering feed up: a subscriber polling `info` to check
            # it has everything must not keep the feed from ever stopping.
            self.last_request_at = time.monotonic()
        if op == b"info":
            self.reader.refresh()
            info = {"status": "ok", "sessions": self.reader.describe()}
            return [*head, orjson.dumps(info)]
        if op != b"range" or len(args) != 3:
            return [*head, orjson.dumps({"status": "error", "error": f"bad request {op!r}"})]
        try:
            session = args[0].decode()
            from_seq, to_seq = int(args[1]), int(args[2])
        except (UnicodeDecodeError, ValueError):
            return [*head, orjson.dumps({"status": "error", "error": "bad session or seq"})]
        return [*head, *self._range(session, max(from_seq, 1), to_seq)]

    def _range(self, session: str, from_seq: int, to_seq: int) -> list[bytes]:
        frames: list[bytes] = []
        size = 0
        count = 0
        next_seq: int | None = None
        for record in self.reader.read_range(session, from_seq, to_seq):
            if count >= self.page_messages or size >= self.page_bytes:
                next_seq = record.seq
                break
            frames += (_SEQ.pack(record.seq), record.topic, record.payload)
            size += len(record.payload) + len(record.topic) + 8
            count += 1
        self.messages_served += count
        last = None
        if next_seq is None:
            last = self.reader.last_seq(session)
        first = self.reader.first_seq(session)
        header = {
            "status": "ok",
            "session": session,
            "from": from_seq,
            "to": to_seq,
            "count": count,
            "next": next_seq,
            "last": last if next_seq is None else None,
            "first": first,
        }
        return [orjson.dumps(header), *frames]

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _error_reply(frames: list[bytes], message: str) -> list[bytes] | None:
    split = 2 if len(frames) > 1 and frames[1] == b"" else 1
    body = frames[split:]
    if len(body) < 2:
        return None
    return [*frames[:split], PROTOCOL, body[1], orjson.dumps({"status": "error", "error": message})]


# --- replay client -----------------------------------------------------------------------------


class ReplayTimeout(UnavailableError):
    """The replay endpoint did not answer in time (or is not running)."""


@dataclass
class ReplayPage:
    """One reply: messages as (seq, topic, payload), `next` seq to ask for (None: range done)."""

    session: str
    from_seq: int
    to_seq: int
    messages: list[tuple[int, bytes, bytes]]
    next: int | None
    last: int | None  # highest seq the journal holds for the session; None: unknown session
    first: int | None = None  # lowest seq it still holds (journal retention removes older ones)


class ReplayClient:
    """DEALER client of a `ReplayServer`. Not thread-safe: one per thread.

    `ReplayClient(endpoint=None, timeout_s=2.0)`; endpoint defaults to the configured replay
    endpoint (QT_REPLAY_ENDPOINT, tcp://127.0.0.1:5559).

    - `page(session, from_seq, to_seq) -> ReplayPage`: one request, at most one page.
    - `fetch(session, from_seq, to_seq) -> (messages, missing)`: every page of the range;
      `messages` are (seq, topic, payload) in seq order, `missing` the inclusive (a, b) ranges
      the journal does not hold.
    - `info() -> dict`: sessions the journal holds, with first/last seq.

    A request that gets no answer within `timeout_s` raises `ReplayTimeout` (an UnavailableError).
    """

    def __init__(
        self,
        endpoint: Endpoint | str | None = None,
        *,
        timeout_s: float = 2.0,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.endpoint = _endpoint(endpoint or config.current().replay_endpoint)
        self.timeout_s = timeout_s
        self._context = context or _context()
        self._sock: zmq.Socket[Any] | None = None
        self._counter = 0

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is None:
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint.zmq_address)
            self._sock = sock
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def request(self, op: bytes, *args: bytes) -> tuple[dict[str, Any], list[bytes]]:
        """Send one request and wait for its reply: (header, the frames after it)."""
        sock = self._socket()
        self._counter += 1
        request_id = str(self._counter).encode()
        sock.send_multipart([PROTOCOL, request_id, op, *args])
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not sock.poll(remaining_ms, zmq.POLLIN):
                self._reset()  # drop the stale request and any late answer
                raise ReplayTimeout(
                    f"replay endpoint {self.endpoint.uri} did not answer within {self.timeout_s:g} s"
                )
            frames = sock.recv_multipart()
            if len(frames) >= 3 and frames[0] == PROTOCOL and frames[1] == request_id:
                break  # anything else is a late answer to an earlier, timed-out request
        try:
            header = orjson.loads(frames[2])
        except orjson.JSONDecodeError:
            raise UnavailableError(
                f"replay endpoint {self.endpoint.uri} sent a reply that is not JSON"
            ) from None
        if header.get("status") != "ok":
            raise UnavailableError(
                f"replay endpoint {self.endpoint.uri}: {header.get('error', 'request refused')}"
            )
        return header, frames[3:]

    def page(self, session: str, from_seq: int, to_seq: int) -> ReplayPage:
        header, rest = self.request(
            b"range", session.encode(), str(from_seq).encode(), str(to_seq).encode()
        )
        unpack = _SEQ.unpack
        messages = [
            (unpack(rest[i])[0], rest[i + 1], rest[i + 2]) for i in range(0, len(rest) - 2, 3)
        ]
        return ReplayPage(
            session,
            from_seq,
            to_seq,
            messages,
            header.get("next"),
            header.get("last"),
            header.get("first"),
        )

    def fetch(
        self, session: str, from_seq: int, to_seq: int
    ) -> tuple[list[tuple[int, bytes, bytes]], list[tuple[int, int]]]:
        messages: list[tuple[int, bytes, bytes]] = []
        start = from_seq
        while start <= to_seq:
            page = self.page(session, start, to_seq)
            messages += page.messages
            if page.next is None:
                break
            start = page.next
        return messages, missing_ranges(from_seq, to_seq, [m[0] for m in messages])

    def info(self) -> dict[str, Any]:
        header, _ = self.request(b"info")
        return dict(header.get("sessions", {}))

    def close(self) -> None:
        self._reset()


def not_journaled(first: int | None, to_seq: int, endpoint: str) -> str:
    """Why seqs up to `to_seq` are missing from a replay: journal retention removed them (they
    lie below `first`, the lowest seq the journal still holds) or they were never journaled."""
    if first is not None and to_seq < first:
        return (
            f"removed from the journal behind {endpoint} by its retention (it holds seq {first} on)"
        )
    return f"not in the journal behind {endpoint}"


def missing_ranges(from_seq: int, to_seq: int, seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Inclusive (a, b) ranges of [from_seq, to_seq] absent from the sorted `seqs`."""
    out: list[tuple[int, int]] = []
    expected = from_seq
    for seq in seqs:
        if seq < expected or seq > to_seq:
            continue
        if seq > expected:
            out.append((expected, seq - 1))
        expected = seq + 1
    if expected <= to_seq:
        out.append((expected, to_seq))
    return out


# --- subscribing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    """A range of seqs a subscriber did not receive live: recovered from replay or lost.

    Fields match one `stream:gaps` entry (docs/contracts.md).
    """

    session: str
    from_seq: int
    to_seq: int
    recovered: bool
    reason: str
    endpoint: str
    ts_init: int

    @property
    def size(self) -> int:
        return self.to_seq - self.from_seq + 1

    def to_fields(self) -> dict[str, str]:
        return {
            "session": self.session,
            "from_seq": str(self.from_seq),
            "to_seq": str(self.to_seq),
            "recovered": "1" if self.recovered else "0",
            "reason": self.reason,
            "endpoint": self.endpoint,
            "ts_init": str(self.ts_init),
        }


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

    `SubSource(endpoint, symbols=(), replay=<configured replay endpoint>, catch_up=True,
    known=None, replay_timeout_s=2.0, max_batch=10_000)`

    - `read(timeout_s) -> list[Event]`: waits up to `timeout_s` for messages and returns a batch.
      Recovered events come out in seq order before the live message that revealed their gap;
      a large gap is recovered a page per call. Duplicates (seq at or below the last seen for
      the session) are dropped.
    - `take_rejects() -> list[Reject]`: undecodable messages since the last call (raw payload
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

    `replay=None` disables recovery (gaps are recorded as lost). `catch_up=False` takes the first
    message seen of a session as its start instead of recovering seqs 1..n-1. With `symbols`, the
    socket still subscribes to everything (seq counts every message of a session, so filtering
    at the socket would look like gaps) and other symbols are dropped after seq tracking; state
    messages for the whole connection (symbol "*") always pass.
    """

    def __init__(
        self,
        endpoint: Endpoint | str,
        *,
        symbols: Sequence[str] = (),
        replay: Endpoint | str | ReplayClient | None | bool = True,
        catch_up: bool = True,
        known: Mapping[str, int] | None = None,
        replay_timeout_s: float = 2.0,
        max_batch: int = 10_000,
        rcvhwm: int = DEFAULT_RCVHWM,
        context: zmq.Context[Any] | None = None,
        clock: Callable[[], int] = now_ns,
        decode: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.endpoint = _endpoint(endpoint)
        self.uri = self.endpoint.uri
        self.symbols = frozenset(symbols)
        self.catch_up = catch_up
        self.max_batch = max_batch
        self.stats = SubStats()
        self._clock = clock
        self._decode = decode
        self._last: dict[str, int] = dict(known or {})
        self._pending: dict[str, int] = {}  # session -> live messages not yet in stats.sessions
        self._rejects: list[Reject] = []
        self._gaps: list[Gap] = []
        self._jobs: deque[_Recovery] = deque()
        if replay is True:
            replay = config.current().replay_endpoint
        if replay is None or replay is False:
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
            sock.connect(self.endpoint.zmq_address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise EndpointError(f"cannot connect to {self.uri}: {exc.strerror}") from None
        self._sock = sock

    @property
    def finished(self) -> bool:
        return False

    def last_seqs(self) -> dict[str, int]:
        return dict(self._last)

    def set_known(self, session: str, seq: int) -> None:
        """Treat seqs up to `seq` of `session` as already received."""
        if seq > self._last.get(session, 0):
            self._last[session] = seq

    def take_rejects(self) -> list[Reject]:
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
        Returns how many seqs were queued (0 without a replay endpoint or while recovering).
        Raises UnavailableError when the replay endpoint does not answer.
        """
        if self.replay is None or self._jobs:
            return 0
        self._flush_counts()
        journaled = self.replay.info()
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
        if not sock.poll(max(int(timeout_s * 1000), 0), zmq.POLLIN):
            return out
        # Frames are taken one by one without copying the first: `Frame.more` tells a
        # [topic, payload] message from a single frame without a getsockopt per message
        # (recv_multipart costs about twice as much).
        recv = sock.recv
        nonblock = zmq.NOBLOCK
        accept = self._accept
        max_batch = self.max_batch
        received = 0
        try:
            while len(out) < max_batch:
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
                    accept(first.bytes, payload, out)
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
            Reject(
                raw=raw[:MAX_RAW_BYTES],
                topic=topic,
                reason=reason,
                field=field_,
                source=self.uri,
                ts_init=self._clock(),
            )
        )

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
            if symbol not in self.symbols and symbol != "*":
                self.stats.filtered += 1
                return
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
