"""The one stats publisher: the `qt:stats:<stage>:<name>` hash of docs/contracts.md ("Stats").

A stage gives its counters; the publisher adds the fields every stage shares (`COMMON_FIELDS`),
writes the hash with an expiry and registers its key in `qt:stages`, all in one round trip.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from qt_cli.core import keys
from qt_cli.core.events import now_ns

STATS_TTL_S = 300
STATS_INTERVAL_S = 1.0
# Fields of every stage's hash, in the order docs/contracts.md lists them.
COMMON_FIELDS = (
    "stage",
    "name",
    "pid",
    "host",
    "started_ns",
    "updated_ns",
    "received",
    "written",
    "rate",
    "lag_ms",
)


def fmt_float(value: float | None, digits: int = 3) -> str:
    """A float field: fixed digits, '' for unknown (None or NaN)."""
    if value is None or value != value:
        return ""
    return f"{value:.{digits}f}"


class RateMeter:
    """Events per second over the last interval of at least `min_interval_s`."""

    def __init__(self, min_interval_s: float = 0.5) -> None:
        self.min_interval_s = min_interval_s
        self.rate = 0.0
        self._base = 0
        self._mono = time.monotonic()

    def update(self, total: int) -> float:
        now = time.monotonic()
        interval = now - self._mono
        if interval >= self.min_interval_s:
            self.rate = (total - self._base) / interval
            self._base, self._mono = total, now
        return self.rate


class StatsPublisher:
    """Writes one stage's stats hash (and any it reports for others) with expiry, registered."""

    def __init__(
        self,
        client: Any,
        stage: str,
        name: str,
        *,
        ttl_s: int = STATS_TTL_S,
        interval_s: float = STATS_INTERVAL_S,
    ) -> None:
        self.client = client
        self.stage = stage
        self.name = name
        self.key = keys.stats_key(stage, name)
        self.ttl_s = ttl_s
        self.interval_s = interval_s
        self.started_ns = now_ns()
        self._pid = str(os.getpid())
        self._host = socket.gethostname()
        self._last_mono = 0.0

    def common(
        self, *, received: int, written: int, rate: float, lag_ms: float | None
    ) -> dict[str, str]:
        """The fields every stage's hash has (`COMMON_FIELDS`)."""
        return {
            "stage": self.stage,
            "name": self.name,
            "pid": self._pid,
            "host": self._host,
            "started_ns": str(self.started_ns),
            "updated_ns": str(now_ns()),
            "received": str(received),
            "written": str(written),
            "rate": f"{rate:.1f}",
            "lag_ms": fmt_float(lag_ms),
        }

    def due(self) -> bool:
        """True when `interval_s` passed since the last publish."""
        return time.monotonic() - self._last_mono >= self.interval_s

    def skip(self) -> None:
        """Count this interval as published (the store is down: try again next interval)."""
        self._last_mono = time.monotonic()

    def publish(
        self, fields: Mapping[str, str], *, others: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        """HSET the stage's hash (`fields`: `common(...)` plus the stage's own), EXPIRE it, add it
        to `qt:stages`; `others`: more hashes (key -> fields) the stage reports, the same way."""
        self._last_mono = time.monotonic()
        pipe = self.client.pipeline(transaction=False)
        for key, mapping in ((self.key, fields), *(others or {}).items()):
            pipe.hset(key, mapping=dict(mapping))
            pipe.expire(key, self.ttl_s)
            pipe.sadd(keys.STAGES_SET, key)
        pipe.execute()
