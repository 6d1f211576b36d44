"""Inputs of the derived stages besides a Valkey `StreamSource`.

`ZmqInput`: `--in tcp://…` (one or more) read as entries of the streams their events are stored
in, each keeping its own (session, seq) — the identity derived results come from, the same as
when read back from Valkey (a derived stage publishes with `keep_identity`). Messages lost at
the end of a burst (no later seq shows the gap) are asked of the replay endpoint once the input
is quiet (`TailCheck`, as the bridge does). It has the group
side of a `StreamSource` as no-ops (nothing to claim, acknowledge or wait for), so `GroupWorker`
drives it as it drives a consumer group.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import zmq

from qt_cli.core.store.reader import SourceEntry
from qt_cli.core.store.writer import event_key
from qt_cli.core.zmq_io.sub import OVERSIZED, TailCheck

log = logging.getLogger(__name__)


class ZmqInput:
    group: str | None = None
    consumer = ""
    claimed = 0

    def __init__(self, sources: Sequence[Any], symbols: Sequence[str]) -> None:
        self.sources = list(sources)
        self.symbols = set(symbols)
        self.rejected = 0
        self._warned = False
        self._n = 0
        self._keys: dict[tuple[str, str], str] = {}  # (stream kind, symbol) -> stream key
        self._poller: zmq.Poller | None = None
        self._tails = [TailCheck(x) for x in self.sources if getattr(x, "replay", None)]

    def read_entries(self, timeout_s: float) -> list[SourceEntry]:
        """The events heard, as entries with ids `<n>-0` in arrival order (no stream ids here).
        Waits up to `timeout_s` for the first message on any of the sources (polled together:
        a quiet channel does not hold back a busy one)."""
        if len(self.sources) == 1:  # one source waits by itself
            out = self._read_all(timeout_s)
        else:
            out = self._read_all()
            if not out:
                if self._poller is None:
                    self._poller = zmq.Poller()
                    for source in self.sources:
                        self._poller.register(source.socket, zmq.POLLIN)
                if self._poller.poll(max(int(timeout_s * 1000), 0)):
                    out = self._read_all()
        for tail in self._tails:  # the end of a burst lost: no later seq shows the gap
            tail.after_read(bool(out))
        return out

    def _read_all(self, timeout_s: float = 0.0) -> list[SourceEntry]:
        out: list[SourceEntry] = []
        keys_of = self._keys
        symbols = self.symbols
        for source in self.sources:
            for event in source.read(timeout_s):
                symbol = getattr(event, "symbol", "")
                if symbol in symbols:
                    self._n += 1
                    where = (event.stream_kind, symbol)
                    key = keys_of.get(where)
                    if key is None:
                        key = keys_of[where] = event_key(event)
                    out.append(SourceEntry(key, f"{self._n}-0", event))
            rejects = source.take_rejects()
            if rejects:
                self.rejected += len(rejects)
                # one line for the first undecodable message (an oversized one has had its own)
                plain = [r for r in rejects if OVERSIZED not in r.reason]
                if plain and not self._warned:
                    self._warned = True
                    log.warning(
                        "%s: rejected a message (%s); such messages are counted in 'rejected' "
                        "(qt monitor, the totals), not repeated here",
                        source.uri,
                        plain[0].reason,
                    )
        return out

    def claim(self) -> list[SourceEntry]:
        return []

    def ack(self, entries: Sequence[SourceEntry]) -> int:
        return 0

    def pending_ids(self, key: str, *, until: str, count: int) -> list[str]:
        return []

    def close(self) -> None:
        for source in self.sources:
            source.close()


__all__ = ["ZmqInput"]
