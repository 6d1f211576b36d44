"""The replay protocol: the feed's `ReplayServer` (ROUTER, answers from its journal) and the
`ReplayClient` (DEALER) a subscriber asks for missing ranges.

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
"segments", "bytes"}}}`. A bad request answers `{"status": "error", "error": "..."}`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import zmq

from qt_cli.core.endpoints import Endpoint
from qt_cli.core.errors import QtError, UnavailableError
from qt_cli.core.journal import JournalReader
from qt_cli.core.zmq_io import curve
from qt_cli.core.zmq_io.base import _SEQ, PROTOCOL, _bind, _context, _endpoint

log = logging.getLogger(__name__)

# --- replay server -----------------------------------------------------------------------------


class ReplayServer:
    """ROUTER that serves journaled ranges; runs on its own thread between `start()` and `close()`.

    Binding happens in `start()` on the caller's thread, so a bad or busy endpoint raises there.
    """

    def __init__(
        self,
        journal_dir: Path | str,
        endpoint: Endpoint | str,
        *,
        page_messages: int = 10_000,
        page_bytes: int = 8 << 20,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.endpoint = _endpoint(endpoint)
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

    `ReplayClient(endpoint, timeout_s=2.0)`; the command passes the configured replay endpoint
    (QT_REPLAY_ENDPOINT, tcp://127.0.0.1:5559).

    - `page(session, from_seq, to_seq) -> ReplayPage`: one request, at most one page.
    - `fetch(session, from_seq, to_seq) -> (messages, missing)`: every page of the range;
      `messages` are (seq, topic, payload) in seq order, `missing` the inclusive (a, b) ranges
      the journal does not hold.
    - `info(timeout_s=None) -> dict`: sessions the journal holds, with first/last seq.

    A request that gets no answer within `timeout_s` (or the call's own `timeout_s`) raises
    `ReplayTimeout` (an UnavailableError).
    """

    def __init__(
        self,
        endpoint: Endpoint | str,
        *,
        timeout_s: float = 2.0,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.endpoint = _endpoint(endpoint)
        self.timeout_s = timeout_s
        self._context = context or _context()
        self._sock: zmq.Socket[Any] | None = None
        self._counter = 0

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is None:
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            try:
                curve.connect(sock)
            except QtError:
                sock.close(linger=0)
                raise
            sock.connect(self.endpoint.zmq_address)
            self._sock = sock
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def request(
        self, op: bytes, *args: bytes, timeout_s: float | None = None
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Send one request and wait for its reply: (header, the frames after it)."""
        sock = self._socket()
        self._counter += 1
        request_id = str(self._counter).encode()
        sock.send_multipart([PROTOCOL, request_id, op, *args])
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not sock.poll(remaining_ms, zmq.POLLIN):
                self._reset()  # drop the stale request and any late answer
                raise ReplayTimeout(
                    f"replay endpoint {self.endpoint.uri} did not answer within {timeout_s:g} s"
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

    def info(self, timeout_s: float | None = None) -> dict[str, Any]:
        header, _ = self.request(b"info", timeout_s=timeout_s)
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
