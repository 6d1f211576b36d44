"""The interface every market-data source of `qt feed` implements.

A source produces events in batches. Sources with their own threads (the DLL's callbacks) keep
their callbacks minimal: copy the data, stamp it with the shared receive clock, put it on a queue;
`read()` runs on the feed's publishing thread and turns queued raw records into events there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from qt_cli.core.events import Event

# A paced source (`--sim --rate N`, `--replay --speed S`) hands out what is due at most once per
# PACE_S of wall time: at 23,000 events/s one read per due event meant ~3 events per batch and a
# per-batch cost (read loop, sleep, journal commit, ZeroMQ wake-up) several times the events' own.
# An event leaves at most PACE_S after its due time (its ts_init is stamped when it leaves); a
# source quieter than one event per PACE_S is not delayed at all.
PACE_S = 0.001


@dataclass
class SourceStats:
    """Counters a source keeps; the feed prints them with its totals."""

    produced: int = 0
    rejected: int = 0  # records that could not become events (bad lines, zero trades, …)
    problems: list[str] = field(default_factory=list)  # first few rejection reasons, for the user

    def reject(self, reason: str, *, keep: int = 20) -> None:
        self.rejected += 1
        if len(self.problems) < keep:
            self.problems.append(reason)


class MarketSource(Protocol):
    """What `qt feed` drives. `read` returns [] on timeout; `finished` turns true at the end."""

    stats: SourceStats

    def open(self) -> None: ...

    def read(self, timeout_s: float) -> list[Event]: ...

    @property
    def finished(self) -> bool: ...

    def close(self) -> None: ...
