"""After a reconnect: reconcile with the server and refill what it lost from the feed's
replay endpoint."""

from __future__ import annotations

import logging
import time

import valkey

from qt_cli.core.bridge.rows import Item, Refill, _add_range
from qt_cli.core.bridge.state import _BridgeState
from qt_cli.core.events import (
    now_ns,
)
from qt_cli.core.records import Gap
from qt_cli.core.store import cluster

log = logging.getLogger(__name__)


class _Reconciler(_BridgeState):
    """The bridge's reconcile step (a part of `Bridge`)."""

    def _recovered_from_outage(self) -> Refill | None:
        """Valkey answers again: reload the library, reconcile, rebuild derived data. Returns
        the Refill of what the server lost (to write before anything else), if anything."""
        assert self._outage_since is not None
        down_s = time.monotonic() - self._outage_since
        self.stats.outage_s += down_s
        self._outage_since = None
        self.writer.ensure_library()
        refill = self._reconcile()
        # What we wrote just before the failure may or may not be stored: rebuild derived state
        # from what the server holds (the retried batch's repeats are skipped by the marks).
        self.deriver.reset()
        self.say(
            f"bridge: Valkey is back after {down_s:.1f}s; writing {len(self.queue):,} buffered events"
        )
        return refill

    def _check_server(self) -> None:
        """While idle (about once a second): a server that restarted meanwhile made no send
        fail, so compare its `run_id` and reconcile when it changed."""
        now = time.monotonic()
        if now - self._last_server_check < self.config.stats_interval_s:
            return
        self._last_server_check = now
        if self._server_run_id() == self._run_id:
            return
        if self._conn is not None:
            self._conn.disconnect()  # it was cut by the restart: reconnect on the next send
        self.writer.ensure_library()
        refill = self._reconcile()
        self.deriver.reset()
        if refill is not None:
            self.queue.push_front([refill])

    def _server_run_id(self) -> str:
        """The server's `run_id` (new at each start; a cluster's primaries' together); '' where
        INFO is not allowed."""
        try:
            return cluster.server_identity(self.client)
        except valkey.ResponseError:
            return ""

    def _reconcile(self) -> Refill | None:
        """After a reconnect: does the server still hold what it acknowledged?

        A server can come back with less (killed with the last second of its append-only file
        not on disk, which `appendfsync everysec` allows; a failover to a replica that lagged).
        Each stream's marks (`hwm:<stream>`, stored with the entries in one atomic call) are
        read back and compared with what this bridge saw confirmed; for every session, what a
        stream lost (its mark on the server, confirmed by the server before] becomes a Refill:
        fetched again from the replay endpoint and written before anything later. A changed
        server `run_id` (a restart) is said. At start the server's own marks are the reference
        (the watermark is written after the entries it covers, so it is lost with them).
        """
        previous, run_id = self._run_id, self._server_run_id()
        restarted = bool(previous) and run_id != previous
        if restarted:
            self.say(
                f"bridge: Valkey restarted (run_id {previous[:8]}… is now {run_id[:8]}…); "
                "checking that it still holds what it acknowledged"
            )
        streams = list(self._confirmed)
        # The server's watermark is written after the entries it covers: what it names is held
        # (a stream whose marks are gone entirely need not be fetched again from seq 1).
        stored = self._load_watermark()
        lost: dict[str, list[int]] = {}
        for key, held in zip(streams, self.writer.high_waters(streams), strict=True):
            mine = self._confirmed[key]
            for session, seq in mine.items():
                have = held.get(session, 0)
                if have < seq:
                    low = max(have, stored.get(session, 0))
                    _add_range(lost, session, (low if low < seq else have) + 1, seq)
                    mine[session] = have  # the refill raises it again
        self._run_id = run_id  # checked: a failure before here checks again
        if not lost:
            return None
        for session in lost:
            # Not sent yet, it would claim what is gone; the refill's batches move it again.
            self._watermark_due.pop(session, None)
        reason = "Valkey lost seqs it had acknowledged" + (" (it restarted)" if restarted else "")
        refill = Refill(lost, reason)
        size = sum(last - first + 1 for first, last in lost.values())
        where = (
            f"fetching them again from {self.config.replay}"
            if self.config.replay
            else "no replay endpoint (--replay none): recorded as lost in stream:gaps"
        )
        self.warn(
            f"bridge: Valkey no longer holds what it acknowledged: seq {refill.describe()} "
            f"(up to {size:,} messages); {where}"
        )
        return refill

    def _refill_step(self, refill: Refill) -> None:
        """Fetch one page of a Refill's first range and put it in front of the queue, followed
        by the Refill with the rest (so it is written in its place of the order, a page at a
        time); a session's range done, its recovered and lost parts go with it to stream:gaps."""
        from qt_cli.core.errors import UnavailableError
        from qt_cli.core.zmq_io import ReplayClient, missing_ranges

        session = min(refill.ranges)
        first, last = refill.ranges[session]
        replay = self.config.replay
        items: list[Item] = []
        page = None
        if not replay:
            refill.lost.setdefault(session, []).append([first, last, "no replay endpoint"])
        else:
            if self._replay_client is None:
                self._replay_client = ReplayClient(replay, timeout_s=self.config.replay_timeout_s)
            try:
                page = self._replay_client.page(session, first, last)
            except UnavailableError as exc:
                refill.lost.setdefault(session, []).append([first, last, str(exc)])
        done = True
        if page is not None:
            messages = [m for m in page.messages if first <= m[0] <= last]
            seqs = [m[0] for m in messages]
            end = last if page.next is None else page.next - 1
            runs = refill.recovered.setdefault(session, [])
            for seq in seqs:
                if runs and seq == runs[-1][1] + 1:
                    runs[-1][1] = seq
                else:
                    runs.append([seq, seq])
            why = (
                f"the journal behind {replay} does not hold this session"
                if page.last is None and page.next is None and not seqs
                else f"not in the journal behind {replay}"
            )
            for a, b in missing_ranges(first, end, seqs):
                refill.lost.setdefault(session, []).append([a, b, why])
            assert replay  # the page came from it
            items = self._decode_messages(messages, replay)
            if page.next is not None and first < page.next <= last:
                refill.ranges[session][0] = page.next
                done = False
        if done:
            del refill.ranges[session]
            now = now_ns()
            endpoint = replay or "none"
            items += [
                Gap(session, a, b, True, f"{refill.reason}; fetched again", endpoint, now)
                for a, b in refill.recovered.pop(session, [])
            ]
            items += [
                Gap(session, a, b, False, f"{refill.reason}; lost: {why}", endpoint, now)
                for a, b, why in refill.lost.pop(session, [])
            ]
        if refill.ranges:
            items.append(refill)
        self.queue.push_front(items)
