"""Receiving: one thread per input (`SubSource` for ZeroMQ, files, stdin), decoding into Rows
and events, the tail check, catching up on start."""

from __future__ import annotations

import logging
import threading
from typing import Any

import orjson

from qt_cli.core.bridge.config import BridgeConfig
from qt_cli.core.bridge.rows import Item, _symbol_of, tick_row
from qt_cli.core.bridge.state import _BridgeState
from qt_cli.core.endpoints import Endpoint
from qt_cli.core.errors import DecodeError, UsageError
from qt_cli.core.events import (
    decode_dict,
    now_ns,
)
from qt_cli.core.records import DeadLetter, Gap
from qt_cli.core.zmq_io.sub import TailCheck

log = logging.getLogger(__name__)


class _Input:
    """One input endpoint and its receiver thread."""

    def __init__(self, endpoint: Endpoint, source: Any) -> None:
        self.endpoint = endpoint
        self.source = source
        self.thread: threading.Thread | None = None
        self.finished = False
        self.error: BaseException | None = None


def _open_input(config: BridgeConfig, endpoint: Endpoint, known: dict[str, int]) -> Any:
    if endpoint.kind == "zmq":
        from qt_cli.core.zmq_io import SubSource

        return SubSource(
            endpoint,
            decode=tick_row,
            symbols=config.symbols,
            replay=config.replay if config.replay else None,
            catch_up=config.catch_up,
            known=known,
            replay_timeout_s=config.replay_timeout_s,
            rcvhwm=config.rcvhwm,
            max_message_bytes=config.max_message_bytes,
        )
    if endpoint.kind == "valkey":
        raise UsageError(
            f"--in {endpoint.uri}: the bridge reads ZeroMQ endpoints, '-' or files; "
            "Valkey is where it writes (--out)"
        )
    from qt_cli.core.io import open_source

    return open_source(endpoint, time_unit=config.time_unit)


class _Receiver(_BridgeState):
    """The bridge's receiving half (a part of `Bridge`)."""

    # The replay endpoint did not answer at start (e.g. `qt up` starts the feed and the bridge
    # together, and the feed is still starting): the catch-up runs when an input first hears.
    _catch_up_again = False
    _catch_up_lock = threading.Lock()

    # -- receiving --

    def _catch_up_on_start(self) -> None:
        """Fetch what the sessions this bridge wrote before published while it was away.

        The subscribers would also notice on their first live message, but a feed may be quiet
        (or done) by now. Only sessions in the watermark are asked for: a fresh bridge takes the
        sessions it hears (and their start, with catch-up) from the subscribers.
        """
        zmq_sources = [i.source for i in self._inputs if i.endpoint.kind == "zmq"]
        if not (self.config.replay and self.config.catch_up and zmq_sources and self._watermark):
            return
        from qt_cli.core import zmq_io
        from qt_cli.core.errors import UnavailableError

        client = zmq_io.ReplayClient(self.config.replay, timeout_s=self.config.replay_timeout_s)
        try:
            try:
                held = client.info()
            except UnavailableError as exc:
                log.info("no catch-up on start yet (%s): again once an input hears the feed", exc)
                self._catch_up_again = True
                return
            for session, info in held.items():
                done = self._watermark.get(session)
                last = int(info.get("last_seq") or 0)
                if done is None or last <= done:
                    continue
                try:
                    self.fetch_into_queue(client, session, done + 1, last, reason="bridge restart")
                except UnavailableError as exc:
                    self.warn(f"bridge: catch-up of {session} after seq {done} failed: {exc}")
                    continue
                for source in zmq_sources:
                    source.set_known(session, last)
        finally:
            client.close()

    def fetch_into_queue(
        self, client: Any, session: str, from_seq: int, to_seq: int, *, reason: str
    ) -> None:
        """Fetch a range from the replay endpoint a page at a time into the write queue (memory
        stays bounded: the queue spills), then record it in stream:gaps (recovered and lost
        parts)."""
        from qt_cli.core.zmq_io import missing_ranges, not_journaled

        endpoint = client.endpoint.uri
        runs: list[list[int]] = []
        missing: list[tuple[int, int]] = []
        first: int | None = None  # the lowest seq the journal holds (retention trims the rest)
        start = from_seq
        while start <= to_seq:
            page = client.page(session, start, to_seq)
            first = page.first if page.first is not None else first
            seqs = [m[0] for m in page.messages if start <= m[0] <= to_seq]
            end = to_seq if page.next is None else page.next - 1
            missing += missing_ranges(start, end, seqs)
            for seq in seqs:
                if runs and seq == runs[-1][1] + 1:
                    runs[-1][1] = seq
                else:
                    runs.append([seq, seq])
            self._queue_messages(page.messages, endpoint)
            if page.next is None:
                break
            start = page.next
        now = now_ns()
        gaps: list[Item] = [Gap(session, a, b, True, reason, endpoint, now) for a, b in runs]
        gaps += [
            Gap(
                session,
                a,
                b,
                False,
                f"{reason}; {not_journaled(first, b, endpoint)}",
                endpoint,
                now,
            )
            for a, b in missing
        ]
        self.queue.put(gaps)

    def _queue_messages(self, messages: list[tuple[int, bytes, bytes]], endpoint: str) -> None:
        self.queue.put(self._decode_messages(messages, endpoint))

    def _decode_messages(
        self, messages: list[tuple[int, bytes, bytes]], endpoint: str
    ) -> list[Item]:
        """Replayed messages as queue items (events, Rows, dead letters), counted as received."""
        items: list[Item] = []
        now = now_ns()
        filtered = 0
        for _seq, topic, payload in messages:
            try:
                data = orjson.loads(payload)
                event = (tick_row(data) if isinstance(data, dict) else None) or decode_dict(data)
            except (orjson.JSONDecodeError, DecodeError) as exc:
                field_ = exc.field if isinstance(exc, DecodeError) else None
                items.append(
                    DeadLetter(
                        str(exc),
                        payload,
                        endpoint,
                        topic.decode(errors="replace"),
                        field_ or "",
                        now,
                    )
                )
                continue
            symbol = _symbol_of(event)
            if self._symbols and symbol not in self._symbols and symbol != "*":
                filtered += 1
                continue
            items.append(event)
        with self._count_lock:
            self.stats.received += sum(1 for i in items if not isinstance(i, DeadLetter))
            self.stats.filtered += filtered
        return items

    def _take_in(self, inp: _Input, events: list[Any], tail: TailCheck | None) -> list[Item]:
        """What one read of an input gives the queue: its gaps, rejects and (kept) events."""
        source = inp.source
        if tail is not None:
            tail.after_read(bool(events))
        items: list[Item] = []
        take_gaps = getattr(source, "take_gaps", None)
        if take_gaps is not None:
            items += take_gaps()
        take_rejects = getattr(source, "take_rejects", None)
        if take_rejects is not None:
            items += take_rejects()
        if events and self._catch_up_again and inp.endpoint.kind == "zmq":
            with self._catch_up_lock:  # once, by the first input to hear something
                if self._catch_up_again:
                    self._catch_up_again = False
                    self._catch_up_on_start()
        if events:
            if self._symbols:
                wanted = self._symbols
                kept = [e for e in events if _symbol_of(e) in wanted or _symbol_of(e) == "*"]
                with self._count_lock:
                    self.stats.filtered += len(events) - len(kept)
                events = kept
            stop_after = self.config.stop_after
            if stop_after is not None:
                with self._count_lock:
                    room = stop_after - self.stats.received
                    if room <= 0:
                        events = []
                    elif len(events) >= room:
                        events = events[:room]
                        self.stop("stop-after")
                    self.stats.received += len(events)
            else:
                with self._count_lock:
                    self.stats.received += len(events)
            items.extend(events)
        return items

    def _tail_check(self, inp: _Input) -> TailCheck | None:
        return TailCheck(inp.source) if inp.endpoint.kind == "zmq" and self.config.replay else None

    def _receive(self, inp: _Input) -> None:
        """One input's thread (a file, stdin)."""
        source = inp.source
        tail = self._tail_check(inp)
        try:
            while not self._stop.is_set():
                items = self._take_in(inp, source.read(0.1), tail)
                if items:
                    self.queue.put(items)
                if source.finished:
                    if inp.endpoint.kind == "file" and not self._stop.is_set():
                        from qt_cli.core.sources.replay import check_read

                        check_read(source, inp.endpoint.path)  # nothing valid: not a success
                    break
        except BaseException as exc:  # a receiver failing must stop the bridge, loudly
            inp.error = exc
            self.stop("input error")
        finally:
            inp.finished = True

    def _receive_zmq(self, inputs: list[_Input]) -> None:
        """The ZeroMQ inputs' one thread: their sockets polled together, each ready one read.

        A thread per input woke per message batch of its channel (the feed's ticks and book
        channels: twice per feed batch), each wake-up a context switch and a turn of the
        interpreter lock; one thread reads whatever is ready in one turn and queues it in one put.
        """
        import zmq

        poller = zmq.Poller()
        for inp in inputs:
            poller.register(inp.source.socket, zmq.POLLIN)
        tails = [self._tail_check(inp) for inp in inputs]
        current: _Input | None = None
        try:
            while not self._stop.is_set():
                busy = any(inp.source.recovering for inp in inputs)
                ready = dict(poller.poll(0 if busy else 100))
                items: list[Item] = []
                for inp, tail in zip(inputs, tails, strict=True):
                    current = inp
                    source = inp.source
                    events = source.read(0) if source.socket in ready or source.recovering else []
                    items += self._take_in(inp, events, tail)
                current = None
                if items:
                    self.queue.put(items)
        except BaseException as exc:  # a receiver failing must stop the bridge, loudly
            (current or inputs[0]).error = exc
            self.stop("input error")
        finally:
            for inp in inputs:
                inp.finished = True
