"""Inputs of the derived stages besides a Valkey `StreamSource`.

`ZmqInput`: `--in tcp://…` (one or more) read as entries of the streams their events are stored
in, each keeping its own (session, seq) — the identity derived results come from, the same as
when read back from Valkey (a derived stage publishes with `keep_identity`). It has the group
side of a `StreamSource` as no-ops (nothing to claim, acknowledge or wait for), so `GroupWorker`
drives it as it drives a consumer group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qt_cli.core.store.reader import SourceEntry
from qt_cli.core.store.writer import event_key


class ZmqInput:
    group: str | None = None
    consumer = ""
    claimed = 0

    def __init__(self, sources: Sequence[Any], symbols: Sequence[str]) -> None:
        self.sources = list(sources)
        self.symbols = set(symbols)
        self.rejected = 0
        self._n = 0

    def read_entries(self, timeout_s: float) -> list[SourceEntry]:
        """The events heard, as entries with ids `<n>-0` in arrival order (no stream ids here)."""
        out: list[SourceEntry] = []
        wait = timeout_s / max(len(self.sources), 1)
        for source in self.sources:
            for event in source.read(wait):
                if getattr(event, "symbol", "") in self.symbols:
                    self._n += 1
                    out.append(SourceEntry(event_key(event), f"{self._n}-0", event))
            self.rejected += len(source.take_rejects())
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
