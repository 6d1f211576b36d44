"""Symbols shared between the workers of a group: `qt features --group G --consumer C`.

A vector depends on its symbol's whole past, so workers share symbols, not entries. Each symbol
has a lease (`keys.lease_key`: the holder's name, expiring after `ttl_s` unless renewed); each
worker heartbeats in the group's members set (`keys.members_key`) and holds at most its fair
share, ceil(symbols / live workers): it takes free symbols up to its share and gives back those
over it. A dead worker's leases expire and the others take its symbols; a worker that takes a
symbol computes it from the start of its streams, so what the previous holder stored is skipped
(the vectors' identities come from the input) and nothing is skipped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from qt_cli.core import keys

STAGE = "features"
DEFAULT_TTL_S = 3.0

# KEYS[1] lease, ARGV[1] me, ARGV[2] ttl ms: renew when mine (1), else 0.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1
end
return 0
"""
# KEYS[1] lease, ARGV[1] me: delete when mine.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SymbolShare:
    """This worker's leases among `symbols` in `group`; `update()` every `ttl_s / 3` returns the
    symbols held now."""

    def __init__(
        self,
        client: Any,
        group: str,
        consumer: str,
        symbols: Sequence[str],
        *,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Any = time.time,
    ) -> None:
        self.client = client
        self.group = group
        self.consumer = consumer
        self.symbols = list(symbols)
        self.ttl_ms = int(ttl_s * 1000)
        self.clock = clock
        self.held: list[str] = []  # in the order taken
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._members = keys.members_key(STAGE, group)

    def _lease(self, symbol: str) -> str:
        return keys.lease_key(STAGE, self.group, symbol)

    def live_workers(self) -> int:
        now_ms = int(self.clock() * 1000)
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self._members, {self.consumer: now_ms + self.ttl_ms})
        pipe.zremrangebyscore(self._members, "-inf", now_ms)
        pipe.zcard(self._members)
        pipe.pexpire(self._members, self.ttl_ms * 10)
        return max(int(pipe.execute()[2]), 1)

    def update(self) -> list[str]:
        share = math.ceil(len(self.symbols) / self.live_workers())
        self.held = [
            s
            for s in self.held
            if self._renew(keys=[self._lease(s)], args=[self.consumer, self.ttl_ms])
        ]
        while len(self.held) > share:
            self.release(self.held[-1])
        for symbol in self.symbols:
            if len(self.held) >= share:
                break
            if symbol not in self.held and self.client.set(
                self._lease(symbol), self.consumer, nx=True, px=self.ttl_ms
            ):
                self.held.append(symbol)
        return list(self.held)

    def holds(self, symbol: str) -> bool:
        """Renewed just now: still this worker's (checked before writing its vectors)."""
        return bool(self._renew(keys=[self._lease(symbol)], args=[self.consumer, self.ttl_ms]))

    def release(self, symbol: str) -> None:
        self._release(keys=[self._lease(symbol)], args=[self.consumer])
        if symbol in self.held:
            self.held.remove(symbol)

    def leave(self) -> None:
        for symbol in list(self.held):
            self.release(symbol)
        self.client.zrem(self._members, self.consumer)
