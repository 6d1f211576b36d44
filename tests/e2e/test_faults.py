"""Faults with real processes, bounded in time (issue 17, docs/RELIABILITY.md): a valkey-server
SIGKILLed mid-stream (AOF everysec), a bridge started late, a SIGSTOPped bridge at 20k events/s, a
full journal disk, event time far from wall time. Each says what was lost (measured), that
nothing was stored twice, and what the operator saw.

The figures each test measures are printed (`pytest -s`) and kept as user properties in a
junit report (`--junitxml`), the way docs/RELIABILITY.md quotes them.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import valkey

from qt_cli.core import keys
from qt_cli.core.store.managed import ManagedValkey
from qt_cli.core.zmq_io import ReplayClient
from tests.e2e import test_bridge as base
from tests.e2e.test_bridge import (
    N,
    Pipeline,
    assert_candles_and_chunks_match,
    expected_pairs,
    stored_count,
    stored_pairs,
)
from tests.helpers import QtProcesses, eventually, free_port, kill_valkey, mount_small_tmpfs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

pipeline = base.pipeline  # the fixture: endpoints, journal and replay endpoint of one run


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ManagedValkey]:
    server = ManagedValkey(tmp_path / "own-valkey", port=free_port())  # AOF on, everysec
    server.start()
    yield server
    server.stop()


def measured(record: Any, **figures: Any) -> None:
    for name, value in figures.items():
        record(name, value)
    print(f"measured: {json.dumps(figures)}")  # noqa: T201 - the figures docs/RELIABILITY.md quotes


def stop_json(qt: QtProcesses, proc: Any, sig: int = signal.SIGTERM) -> tuple[dict, str]:
    finished = qt.stop(proc, sig)
    assert finished.returncode == 0, finished.output
    assert "Traceback" not in finished.stderr
    return json.loads(finished.stdout), finished.stderr


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_valkey_stopped_mid_stream_loses_nothing_it_acknowledged(
    qt: QtProcesses,
    pipeline: Pipeline,
    own_server: ManagedValkey,
    record_property: Any,
    sig: str,
) -> None:
    """SIGTERM (the server flushes its AOF and exits) or SIGKILL of the server process (not of
    the machine: everything acknowledged was written to the AOF, everysec only fsyncs later and
    the kernel holds the writes): the restarted server holds all it acknowledged; what arrived
    meanwhile is buffered by the bridge and written after."""
    status = own_server.status()
    assert status.aof_enabled and status.appendfsync == "everysec"
    client = valkey.Valkey(host="127.0.0.1", port=status.port)
    try:
        bridge = qt.start(*pipeline.bridge_args(status.url))
        feed_proc = qt.start(*pipeline.feed_args(rate=5_000))
        eventually(lambda: stored_count(client) >= 5_000, timeout=30, message="some stored")
        acknowledged = stored_count(client)  # what the server has answered for
        if sig == "SIGKILL":
            kill_valkey(own_server)
        else:
            own_server.stop()  # SIGTERM, waits for the exit
        own_server.start()
        after_restart = stored_count(client)
        feed_out, feed_err = feed_proc.communicate(timeout=60)
        assert feed_proc.returncode == 0, feed_err
        feed = json.loads(feed_out)
        eventually(lambda: stored_count(client) == N, timeout=60, message="all stored")
        totals, stderr = stop_json(qt, bridge)
        measured(
            record_property,
            acknowledged_before_kill=acknowledged,
            stored_after_restart=after_restart,
            lost_by_the_server=max(acknowledged - after_restart, 0),
            outages=totals["outages"],
            outage_s=totals["outage_s"],
        )
        assert after_restart >= acknowledged  # the AOF kept every acknowledged write
        assert totals["outages"] >= 1 and totals["gaps_lost"] == 0
        assert "unreachable" in stderr and "Valkey is back" in stderr
        assert stored_pairs(client) == expected_pairs(feed)  # none lost, none twice
        assert_candles_and_chunks_match(client)
    finally:
        client.close()


def test_a_bridge_started_late_fetches_the_start_from_the_journal(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str, record_property: Any
) -> None:
    feed_proc = qt.start(*pipeline.feed_args(rate=5_000))
    client = ReplayClient(pipeline.replay, timeout_s=2.0)
    try:

        def journaled() -> int:
            return sum(int(s.get("last_seq") or 0) for s in client.info().values())

        eventually(lambda: journaled() >= 5_000, timeout=30, message="the feed ahead by 5,000")
        missed = journaled()
    finally:
        client.close()
    bridge = qt.start(*pipeline.bridge_args(valkey_url))
    feed_out, feed_err = feed_proc.communicate(timeout=60)
    assert feed_proc.returncode == 0, feed_err
    feed = json.loads(feed_out)
    eventually(lambda: stored_count(vk) == N, timeout=60, message="all stored")
    totals, _ = stop_json(qt, bridge)
    gaps = [f for _, f in vk.xrange(keys.stream_key("gaps"))]
    measured(
        record_property,
        published_before_the_bridge=missed,
        messages_recovered=totals["messages_recovered"],
        gaps_recovered=totals["gaps_recovered"],
    )
    assert totals["messages_recovered"] >= missed and totals["gaps_lost"] == 0
    assert gaps and all(g[b"recovered"] == b"1" for g in gaps)
    assert any(b"late join" in g[b"reason"] for g in gaps)
    assert stored_pairs(vk) == expected_pairs(feed)


def test_a_sigstopped_bridge_at_20k_events_per_second_recovers_every_dropped_message(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str, record_property: Any
) -> None:
    bridge = qt.start(*pipeline.bridge_args(valkey_url, "--hwm", "1000"))
    eventually(lambda: vk.exists(keys.stats_key("bridge", "default")), timeout=30)
    feed_proc = qt.start(*pipeline.feed_args(rate=20_000, n=2 * N, hwm=1000))
    eventually(lambda: stored_count(vk) >= 2_000, timeout=30, message="receiving")
    bridge.send_signal(signal.SIGSTOP)  # stops reading: both high-water marks overflow
    try:
        feed_out, feed_err = feed_proc.communicate(timeout=60)
    finally:
        bridge.send_signal(signal.SIGCONT)
    assert feed_proc.returncode == 0, feed_err
    feed = json.loads(feed_out)
    eventually(lambda: stored_count(vk) == 2 * N, timeout=90, message="all stored")
    totals, _ = stop_json(qt, bridge)
    measured(
        record_property,
        rate_per_s=feed["rate"] if "rate" in feed else None,
        events=2 * N,
        messages_recovered=totals["messages_recovered"],
        gaps_recovered=totals["gaps_recovered"],
        gaps_lost=totals["gaps_lost"],
    )
    assert totals["messages_recovered"] > 0 and totals["gaps_lost"] == 0
    assert stored_pairs(vk) == expected_pairs(feed)


def test_a_full_journal_disk_stops_the_feed_with_one_line_and_nothing_published_unjournaled(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str, record_property: Any
) -> None:
    """The journal on a 1 MiB tmpfs: the feed stops (exit 3) at the first batch the disk refuses,
    before publishing it; the bridge holds exactly what the journal holds."""
    pipeline.server.close()  # serve the journal again once it is on the small disk
    unmount = mount_small_tmpfs(pipeline.journal, "1m")
    try:
        from qt_cli.core.zmq_io import ReplayServer

        pipeline.server = ReplayServer(pipeline.journal, pipeline.replay).start()
        bridge = qt.start(*pipeline.bridge_args(valkey_url))
        eventually(lambda: vk.exists(keys.stats_key("bridge", "default")), timeout=30)
        feed = qt.run(*pipeline.feed_args(rate=20_000, n=200_000), timeout=120)
        assert feed.returncode == 3, feed.output
        errors = [line for line in feed.stderr.splitlines() if line.startswith("Error:")]
        assert errors == [
            f"Error: journal {pipeline.journal}: cannot write (No space left on device); the "
            "feed stops here: everything it published is journaled. Free space there or give "
            "--journal another disk"
        ], feed.stderr
        client = ReplayClient(pipeline.replay, timeout_s=2.0)
        try:
            held = {s: int(i.get("last_seq") or 0) for s, i in client.info().items()}
        finally:
            client.close()
        want = sorted((s, q) for s, last in held.items() for q in range(1, last + 1))
        eventually(lambda: stored_count(vk) == len(want), timeout=60, message="journal stored")
        totals, _ = stop_json(qt, bridge)
        measured(
            record_property, journaled=len(want), stored=stored_count(vk), lost=totals["gaps_lost"]
        )
        assert stored_pairs(vk) == want and totals["gaps_lost"] == 0
    finally:
        pipeline.server.close()
        unmount()


@pytest.mark.parametrize("start", ["+30d", "2021-03-01"], ids=["ahead", "behind"])
def test_event_time_far_from_wall_time_is_stored_exactly(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str, start: str
) -> None:
    """A venue clock 30 days ahead of ours, or years behind: stored exactly once, ids from event
    time; the lag the bridge reports is the skew (negative ahead), not an error."""
    bridge = qt.start(*pipeline.bridge_args(valkey_url))
    eventually(lambda: vk.exists(keys.stats_key("bridge", "default")), timeout=30)
    feed = qt.run(*pipeline.feed_args(rate=10_000, n=5_000), "--start", start, timeout=120)
    assert feed.returncode == 0, feed.output
    eventually(lambda: stored_count(vk) == 5_000, timeout=60, message="all stored")
    totals, stderr = stop_json(qt, bridge)
    assert stored_pairs(vk) == expected_pairs(json.loads(feed.stdout))
    assert totals["gaps_lost"] == 0 and totals["deadletters"] == 0
    assert "Error" not in stderr


def test_a_feed_killed_and_restarted_as_a_new_session_mid_stream_loses_nothing_journaled(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str, record_property: Any
) -> None:
    """kill -9 of the feed mid-stream, then a new run (new sessions) into the same bridge: what
    the first run journaled is stored (its unpublished tail fetched from the journal once the
    input is quiet), the second run's too, each once."""
    bridge = qt.start(*pipeline.bridge_args(valkey_url))
    eventually(lambda: vk.exists(keys.stats_key("bridge", "default")), timeout=30)
    first = qt.start(*pipeline.feed_args(rate=5_000))
    eventually(lambda: stored_count(vk) >= 3_000, timeout=30, message="the first run stored")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    client = ReplayClient(pipeline.replay, timeout_s=2.0)
    try:
        journaled = {s: int(i.get("last_seq") or 0) for s, i in client.info().items()}
    finally:
        client.close()
    want_first = [(s, q) for s, last in journaled.items() for q in range(1, last + 1)]
    eventually(lambda: stored_count(vk) == len(want_first), timeout=30, message="tail fetched")
    second = qt.run(*pipeline.feed_args(rate=5_000, n=5_000, seed=12), timeout=120)
    assert second.returncode == 0, second.output
    want = sorted(want_first + expected_pairs(json.loads(second.stdout)))
    eventually(lambda: stored_count(vk) == len(want), timeout=60, message="both runs stored")
    totals, _ = stop_json(qt, bridge)
    measured(
        record_property,
        first_run_journaled=len(want_first),
        second_run=len(want) - len(want_first),
        messages_recovered=totals["messages_recovered"],
        gaps_lost=totals["gaps_lost"],
    )
    assert stored_pairs(vk) == want and totals["gaps_lost"] == 0 and totals["late"] == 0
