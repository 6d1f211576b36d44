"""Faults that used to lose data or stop the bridge (issue 12), with a real Valkey of the test's
own, real ZeroMQ sockets, a real journal and replay endpoint:

- a Valkey that comes back with less than it acknowledged (killed, the tail of its append-only
  file cut, as an operating-system crash under `appendfsync everysec` may leave it): the bridge
  reconciles on reconnect and re-fetches the lost range from the replay endpoint;
- a spill directory on a full filesystem (a 2 MiB tmpfs mounted by the test): the bridge keeps
  running, records the ranges it dropped and refills them from the replay endpoint; a restart
  with a full spill file works.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import valkey

from qt_cli.core import keys
from qt_cli.core.bridge import Bridge, Gap, Refill, SpillQueue, trade_row
from qt_cli.core.bridge import spill as bridge_module
from qt_cli.core.store.managed import ManagedValkey
from tests.core import test_bridge as base
from tests.core.test_bridge import (
    Feed,
    Running,
    _xlen,
    assert_derived_match,
    config_for,
    make_trades,
    send_until_stored,
    session_seqs,
)
from tests.helpers import eventually, kill_valkey, last_incr_aof, mount_small_tmpfs

# The fixtures of the bridge's tests: a feed with journal and replay endpoint, a Valkey of the
# test's own, the bridge's messages.
feed = base.feed
own_valkey = base.own_valkey
messages = base.messages

SYMBOLS = ("WDOQ25", "WINV25")


def stored_total(client: valkey.Valkey) -> int:
    return sum(_xlen(client, keys.stream_key("ticks", s)) for s in SYMBOLS)


def test_a_valkey_that_comes_back_with_less_than_it_acknowledged_is_refilled(
    own_valkey: ManagedValkey, tmp_path: Path, feed: Feed, messages: list[str]
) -> None:
    status = own_valkey.status()
    client = valkey.Valkey(host="127.0.0.1", port=status.port)
    config = config_for(status.url, tmp_path, feed.pub_uri, replay=feed.replay_uri)
    warnings: list[str] = []
    running = Running(Bridge(config, say=messages.append, warn=warnings.append))
    trades = make_trades(3000)
    try:
        sent = send_until_stored(client, feed, trades[:1000])
        feed.send(trades[sent:1000])
        eventually(lambda: stored_total(client) == 1000, message="first 1000 stored")
        aof = last_incr_aof(own_valkey)
        kept = aof.stat().st_size
        feed.send(trades[1000:2000])
        eventually(lambda: stored_total(client) == 2000, message="next 1000 acknowledged")
        eventually(
            lambda: running.bridge.stats.written == 2000, message="the bridge saw them stored"
        )
        kill_valkey(own_valkey)
        with aof.open("r+b") as handle:  # what an OS crash may leave: the last writes cut
            handle.truncate(kept)
        own_valkey.start()
        assert stored_total(client) < 2000, "the restarted server lost acknowledged entries"
        feed.send(trades[2000:])
        eventually(lambda: stored_total(client) == 3000, timeout=30, message="all stored")
        stats = running.finish()
        assert session_seqs(client, SYMBOLS) == [("testrun.ticks", s) for s in range(1, 3001)]
        assert stats.gaps_lost == 0 and stats.gaps_recovered >= 1
        assert any("no longer holds" in w for w in warnings), warnings
        assert any("Valkey restarted" in m for m in messages), messages
        gaps = client.xrange(keys.stream_key("gaps"))
        assert any(f[b"recovered"] == b"1" and b"Valkey lost" in f[b"reason"] for _, f in gaps), (
            gaps
        )
        for symbol in SYMBOLS:
            assert_derived_match(client, symbol, ended=False)  # stopped, not at an end
    finally:
        client.close()


def test_without_a_replay_endpoint_what_valkey_lost_is_recorded_loudly(
    own_valkey: ManagedValkey, tmp_path: Path, feed: Feed
) -> None:
    status = own_valkey.status()
    client = valkey.Valkey(host="127.0.0.1", port=status.port)
    config = config_for(status.url, tmp_path, feed.pub_uri, replay=None)
    warnings: list[str] = []
    running = Running(Bridge(config, warn=warnings.append))
    trades = make_trades(2000)
    try:
        sent = send_until_stored(client, feed, trades[:10])
        feed.send(trades[sent:1000])
        eventually(lambda: running.bridge.stats.written >= 990, message="first stored")
        aof = last_incr_aof(own_valkey)
        kept = aof.stat().st_size
        before = stored_total(client)
        feed.send(trades[1000:2000])
        eventually(lambda: running.bridge.stats.written == before + 1000, message="acknowledged")
        kill_valkey(own_valkey)
        with aof.open("r+b") as handle:
            handle.truncate(kept)
        own_valkey.start()
        eventually(lambda: running.bridge.stats.gaps_lost >= 1, timeout=30, message="recorded")
        running.finish()
        assert any("LOST seq" in w and "Valkey lost" in w for w in warnings), warnings
        lost = [f for _, f in client.xrange(keys.stream_key("gaps")) if f[b"recovered"] == b"0"]
        assert lost and all(b"Valkey lost" in f[b"reason"] for f in lost)
        missing = sum(int(f[b"to_seq"]) - int(f[b"from_seq"]) + 1 for f in lost)
        assert stored_total(client) + missing >= before + 1000
    finally:
        client.close()


# --- a full spill disk -------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (the test runs as root); unmounted at teardown."""
    path = tmp_path / "small-disk"
    unmount = mount_small_tmpfs(path)
    try:
        yield path
    finally:
        unmount()


def test_a_full_spill_disk_drops_into_ranges_refilled_when_valkey_is_back(
    own_valkey: ManagedValkey, tmp_path: Path, feed: Feed, small_disk: Path, messages: list[str]
) -> None:
    status = own_valkey.status()
    client = valkey.Valkey(host="127.0.0.1", port=status.port)
    config = replace(
        config_for(status.url, tmp_path, feed.pub_uri, replay=feed.replay_uri, buffer_events=200),
        spill_dir=small_disk,
    )
    warnings: list[str] = []
    running = Running(Bridge(config, say=messages.append, warn=warnings.append))
    n = 20_000  # ~400 bytes a spilled line: far more than 2 MiB
    trades = make_trades(n)
    try:
        sent = send_until_stored(client, feed, trades[:500])
        feed.send(trades[sent:500])
        eventually(lambda: stored_total(client) == 500, message="first 500 stored")
        own_valkey.stop()
        for start in range(500, n, 500):
            feed.send(trades[start : start + 500])
        eventually(lambda: running.bridge.stats.received == n, timeout=30, message="received")
        eventually(lambda: any("full" in w for w in warnings), message="the full disk reported")
        assert running.thread.is_alive() and running.error is None
        full = [w for w in warnings if str(config.spill_path) in w and "No space left" in w]
        assert len(full) == 1, warnings  # said once, naming the path
        own_valkey.start()
        eventually(lambda: stored_total(client) == n, timeout=60, message="all stored")
        stats = running.finish()
        assert session_seqs(client, SYMBOLS) == [("testrun.ticks", s) for s in range(1, n + 1)]
        assert stats.gaps_lost == 0
        gaps = client.xrange(keys.stream_key("gaps"))
        assert any(b"spill" in f[b"reason"] and f[b"recovered"] == b"1" for _, f in gaps), gaps
        for symbol in SYMBOLS:
            assert_derived_match(client, symbol, ended=False)  # stopped, not at an end
        assert not config.spill_path.exists()
    finally:
        client.close()


def test_a_restart_with_a_full_spill_file_works(
    own_valkey: ManagedValkey, tmp_path: Path, feed: Feed, small_disk: Path
) -> None:
    status = own_valkey.status()
    client = valkey.Valkey(host="127.0.0.1", port=status.port)
    config = replace(
        config_for(status.url, tmp_path, feed.pub_uri, replay=feed.replay_uri, buffer_events=200),
        spill_dir=small_disk,
    )
    warnings: list[str] = []
    running = Running(Bridge(config, warn=warnings.append))
    n = 20_000
    trades = make_trades(n)
    try:
        sent = send_until_stored(client, feed, trades[:500])
        feed.send(trades[sent:500])
        eventually(lambda: stored_total(client) == 500, message="first 500 stored")
        own_valkey.stop()
        for start in range(500, n, 500):
            feed.send(trades[start : start + 500])
        eventually(lambda: running.bridge.stats.received == n, timeout=30, message="received")
        stats = running.finish()  # stopping while Valkey is down: keeps what fits
        assert config.spill_path.exists()
        assert any("kept in" in w and "fetch again" in w for w in warnings), warnings
        own_valkey.start()
        # The spill disk is still full. No catch-up from the watermark: what the file could not
        # take comes back through the seq ranges recorded in it.
        later = Running(Bridge(replace(config, catch_up=False), warn=warnings.append))
        eventually(lambda: stored_total(client) == n, timeout=60, message="all stored")
        later_stats = later.finish()
        assert stats.written == 500 and later_stats.gaps_lost == 0
        assert session_seqs(client, SYMBOLS) == [("testrun.ticks", s) for s in range(1, n + 1)]
        assert not config.spill_path.exists()
    finally:
        client.close()


# --- the spill queue's part ---------------------------------------------------------------------


def numbered_rows(n: int) -> list:
    key = keys.stream_key("ticks", "WDOQ25")
    trades = make_trades(n, symbols=("WDOQ25",))
    return [trade_row(replace(t, session="s1.ticks", seq=i), key) for i, t in enumerate(trades, 1)]


def test_a_spill_file_that_cannot_be_written_drops_into_seq_ranges(tmp_path: Path) -> None:
    path = tmp_path / "q.spill"
    path.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    warnings: list[str] = []
    queue = SpillQueue(path, max_memory=2, warn=warnings.append)
    rows = numbered_rows(10)
    gap = Gap("s1.ticks", 1, 1, True, "test", "x", 1)
    queue.put(rows[:2])  # memory
    queue.put(rows[2:6])  # the spill file fails: dropped from here on
    queue.put([gap])  # a gap record is kept
    queue.put(rows[6:])
    assert len(warnings) == 1 and str(path) in warnings[0] and "No space left" in warnings[0]
    assert queue.dropping and queue.dropped_total == 8 and len(queue) == 4
    assert queue.take(10, wait_s=0) == [*rows[:2], gap]
    (refill,) = queue.take(10, wait_s=0)  # the writer reached the drop: its ranges
    assert isinstance(refill, Refill) and refill.ranges == {"s1.ticks": [3, 10]}
    assert "could not take" in refill.reason and not queue.dropping
    queue.put(rows[:1])  # accepted again
    assert queue.take(10, wait_s=0) == rows[:1]
    queue.close()


def test_a_refill_marker_is_taken_alone_and_kept_in_its_place_by_persist(
    tmp_path: Path,
) -> None:
    rows = numbered_rows(4)
    marker = Refill({"s1.ticks": [5, 9]}, "test")
    queue = SpillQueue(tmp_path / "q.spill", max_memory=10)
    queue.push_front([*rows[:2], marker, *rows[2:]])
    assert queue.take(10, wait_s=0) == rows[:2]
    assert queue.take(10, wait_s=0) == [marker]
    assert queue.take(10, wait_s=0) == rows[2:]
    queue.push_front([*rows[:2], marker, *rows[2:]])
    assert queue.persist() == 5
    again = SpillQueue(tmp_path / "q.spill", max_memory=10)
    assert again.take(10, wait_s=0) == rows[:2]
    assert again.take(10, wait_s=0) == [marker]
    assert again.take(10, wait_s=0) == rows[2:]


def test_a_torn_last_line_of_a_spill_file_is_cut_on_start(tmp_path: Path) -> None:
    path = tmp_path / "q.spill"
    rows = numbered_rows(3)
    lines = [bridge_module._item_to_line(r) for r in rows]
    path.write_bytes(lines[0] + b"\n" + lines[1] + b"\n" + lines[2][:20])  # a write cut short
    queue = SpillQueue(path, max_memory=1)
    assert queue.recovered_from_disk == 2
    assert path.read_bytes().endswith(b"\n")
    queue.put(rows[2:])  # behind the two, on a line of its own
    out = queue.take(10, wait_s=0) + queue.take(10, wait_s=0)
    assert out == rows
    queue.close()
