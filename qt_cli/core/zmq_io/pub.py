"""Publishing (`PubSink`): a PUB socket binds the endpoint and sends numbered events."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import zmq

from qt_cli.core.endpoints import Endpoint
from qt_cli.core.events import Event
from qt_cli.core.journal import JournalWriter, Sequencer
from qt_cli.core.zmq_io.base import DEFAULT_SNDHWM, _bind, _context, _endpoint, process_run_id

log = logging.getLogger(__name__)

# --- publishing ------------------------------------------------------------------------------


class PubSink:
    """PUB socket that numbers, journals and sends events (implements the endpoints `Sink`).

    `PubSink(endpoint, channel="ticks", session=None, journal=None)`: binds at once; `session`
    defaults to `<process run id>.<channel>`. `send(events)` stamps session/seq, appends the batch
    to `journal` (if any) and commits it, then sends each `[topic, payload]`. With
    `keep_identity` an event's own (session, seq) travels as `origin`/`origin_seq` (a derived
    stage's vectors, predictions and signals: a reader gets the identity they are stored under). A PUB never blocks:
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
        keep_identity: bool = False,
        sndhwm: int = DEFAULT_SNDHWM,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.endpoint = _endpoint(endpoint)
        self.channel = channel
        self.sequencer = Sequencer(
            session or f"{process_run_id()}.{channel}", journal, keep_identity=keep_identity
        )
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
