"""Faults with real processes, bounded in time (issue 17; the table is docs/RELIABILITY.md).

Each test runs `qt feed --sim` -> `qt bridge` -> a real valkey-server, injects one fault, and
checks what was lost (measured), that nothing was stored twice, and what the operator saw (one
clear line on stderr, never a traceback). The rows already covered elsewhere (bridge, features,
predict and `qt up` SIGKILLed; Valkey stopped; the AOF tail cut; a full spill disk) are listed in
docs/RELIABILITY.md with their own tests.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import valkey

from qt_cli.core import keys
from qt_cli.core.journal import JournalReader
from qt_cli.core.store.managed import ManagedValkey
from tests.e2e import test_bridge as base
from tests.e2e import test_bridge_faults as faults
from tests.e2e.test_bridge import (
    N,
    Pipeline,
    assert_candles_and_chunks_match,
    event_streams,
    expected_pairs,
    load_replay,
    stop,
    stored_count,
    stored_pairs,
)
from tests.helpers import QtProcesses, eventually, kill_valkey, mount_small_tmpfs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The figures docs/RELIABILITY.md quotes: pytest … -o log_cli=true --log-cli-level=INFO
measured = logging.getLogger("qt.tests.faults")

pipeline = base.pipeline  # endpoints, journal and a replay endpoint of the test's own
own_server = faults.own_server  # a valkey-server of the test's own (AOF on, appendfsync everysec)

RECOVERED = re.compile(r"^bridge: recovered seq \d+\.\.\d+ of \S+ \([\d,]+ messages\) from ", re.M)
RECOVERED_UP = re.compile(r"^\[bridge\] bridge: recovered .*$", re.M)
LOST = re.compile(r"no longer holds what it acknowledged: .*\(up to ([\d,]+) messages\)")


def acknowledged_then_lost(stderr: str) -> int:
    """What the bridge says Valkey lost of what it had acknowledged (0 when it says nothing)."""
    return sum(int(m.group(1).replace(",", "")) for m in LOST.finditer(stderr))


def journal_pairs(journal: Path) -> list[tuple[str, int]]:
    """Every (session, seq) a feed journal holds, readable records only."""
    return sorted((r.session, r.seq) for r in JournalReader(journal).records())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def test_valkey_sigkilled_mid_stream_with_aof_everysec_loses_nothing_acknowledged(
    qt: QtProcesses, pipeline: Pipeline, own_server: ManagedValkey
) -> None:
    """A killed server process (no OS crash) keeps what it wrote to its AOF: the kernel has it
    even before the everysec fsync. What it lost of what it acknowledged is measured by the
    bridge (it compares the server's marks with what it saw confirmed) and refilled."""
    status = own_server.status()
    assert status.appendfsync == "everysec"
    client = valkey.Valkey(host="127.0.0.1", port=status.port)
    try:
        bridge = qt.start(*pipeline.bridge_args(status.url, "--buffer", "2000"))
        feed_proc = qt.start(*pipeline.feed_args(rate=5_000))
        eventually(lambda: stored_count(client) >= 5_000, timeout=30, message="some stored")
        kill_valkey(own_server)  # SIGKILL mid-stream
        own_server.start()
        feed_out, feed_err = feed_proc.communicate(timeout=60)
        assert feed_proc.returncode == 0, feed_err
        feed = json.loads(feed_out)
        eventually(lambda: stored_count(client) == N, timeout=60, message="all stored")
        finished = qt.stop(bridge, signal.SIGTERM)
        assert finished.returncode == 0, finished.output
        assert "Traceback" not in finished.stderr
        totals = json.loads(finished.stdout)
        lost = acknowledged_then_lost(finished.stderr)
        measured.info(f"valkey SIGKILL: acknowledged then lost {lost}, outages {totals['outages']}")
        assert lost == 0, finished.stderr  # a process kill: the AOF's writes were in the kernel
        assert "unreachable" in finished.stderr and "Valkey is back" in finished.stderr
        assert totals["outages"] >= 1 and totals["gaps_lost"] == 0
        assert stored_pairs(client) == expected_pairs(feed)  # none lost, none twice
        assert_candles_and_chunks_match(client)
    finally:
        client.close()


def test_the_feed_killed_and_restarted_stores_both_sessions_whole_without_overlap(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str
) -> None:
    bridge = qt.start(*pipeline.bridge_args(valkey_url))
    first = qt.start(*pipeline.feed_args(rate=4_000, n=10 * N, seed=5))
    eventually(lambda: stored_count(vk) >= 4_000, timeout=30, message="first session flowing")
    first.send_signal(signal.SIGKILL)  # no totals, no goodbye: the journal says what it sent
    first.wait(timeout=10)
    journaled = journal_pairs(pipeline.journal)
    first_sessions = {s for s, _ in journaled}
    # What the killed feed journaled but never got out (its last batch) is fetched by the
    # bridge from the replay endpoint once the input is quiet: everything journaled is stored.
    eventually(lambda: stored_pairs(vk) == journaled, timeout=30, message="first session whole")
    second = qt.run(*pipeline.feed_args(rate=4_000, n=4_000, seed=6), timeout=60)
    assert second.returncode == 0, second.output
    assert "Traceback" not in second.stderr
    feed = json.loads(second.stdout)
    assert not first_sessions & {c["session"] for c in feed["channels"].values()}  # a new one
    expected = sorted(journaled + expected_pairs(feed))
    eventually(lambda: stored_pairs(vk) == expected, timeout=60, message="both sessions stored")
    finished = qt.stop(bridge, signal.SIGTERM)
    assert finished.returncode == 0 and "Traceback" not in finished.stderr, finished.output
    assert "lost" not in finished.stderr, finished.stderr
    totals = json.loads(finished.stdout)
    assert totals["gaps_lost"] == 0 and totals["late"] == 0
    # No overlap in event time: the second run continues after what Valkey holds.
    for key in event_streams(vk):
        entries = vk.xrange(key)
        firsts = [
            int(f[b"ts_event"]) for _, f in entries if f[b"session"].decode() in first_sessions
        ]
        seconds = [
            int(f[b"ts_event"]) for _, f in entries if f[b"session"].decode() not in first_sessions
        ]
        if firsts and seconds:
            assert max(firsts) < min(seconds), key
        assert not [f for _, f in entries if f.get(b"late") == b"1"]
    assert_candles_and_chunks_match(vk)


def test_a_bridge_started_late_catches_up_from_the_journal(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str
) -> None:
    feed_proc = qt.start(*pipeline.feed_args(rate=5_000))

    def journaled() -> int:
        return len(journal_pairs(pipeline.journal))

    eventually(lambda: journaled() >= 5_000, timeout=30, message="the feed published 5,000")
    bridge = qt.start(*pipeline.bridge_args(valkey_url))
    feed_out, feed_err = feed_proc.communicate(timeout=60)
    assert feed_proc.returncode == 0, feed_err
    feed = json.loads(feed_out)
    eventually(lambda: stored_count(vk) == N, timeout=60, message="all stored")
    finished = qt.stop(bridge, signal.SIGTERM)
    assert finished.returncode == 0 and "Traceback" not in finished.stderr, finished.output
    # what the operator sees: the range it missed, fetched from the journal
    assert RECOVERED.search(finished.stderr) and "lost" not in finished.stderr, finished.stderr
    totals = json.loads(finished.stdout)
    assert totals["messages_recovered"] >= 5_000 and totals["gaps_lost"] == 0
    assert stored_pairs(vk) == expected_pairs(feed)
    assert_candles_and_chunks_match(vk)


def test_a_bridge_started_after_the_feed_ended_loads_the_journal(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    """A bridge that never heard a session cannot know it exists: the operator loads the
    journal (docs/bridge.md); what is already stored is skipped."""
    feed = base.run_feed(qt, pipeline, rate=0)
    late = qt.start(*pipeline.bridge_args(valkey_url))
    stats = keys.stats_key("bridge", "default")
    eventually(lambda: vk.hget(stats, "pid"), timeout=30, message="the late bridge running")
    assert stop(qt, late)["written"] == 0  # nothing to hear: the run is over
    totals = load_replay(qt, pipeline.journal, valkey_url, tmp_path / "j2", "--replay-journal")
    assert (totals["written"], totals["duplicates"]) == (N, 0)
    assert stored_pairs(vk) == expected_pairs(feed)
    totals = load_replay(qt, pipeline.journal, valkey_url, tmp_path / "j3", "--replay-journal")
    assert (totals["written"], totals["duplicates"]) == (0, N)


def test_a_stopped_bridge_at_20k_events_per_second_recovers_every_event(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str
) -> None:
    n = 60_000  # three seconds at 20,000/s; queues of 2,000 a side overflow at once
    bridge = qt.start(*pipeline.bridge_args(valkey_url, "--hwm", "2000"))
    feed_proc = qt.start(*pipeline.feed_args(rate=20_000, n=n, hwm=2_000))

    def both_channels() -> bool:
        kinds = {keys.parse_stream_key(k)[0] for k in event_streams(vk) if vk.xlen(k)}
        return {"ticks", "book"} <= kinds

    eventually(both_channels, timeout=30, message="bridge receiving ticks and book")
    bridge.send_signal(signal.SIGSTOP)
    try:
        feed_out, feed_err = feed_proc.communicate(timeout=60)
    finally:
        bridge.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    assert feed_proc.returncode == 0, feed_err
    feed = json.loads(feed_out)
    eventually(lambda: stored_count(vk) == n, timeout=60, message="all stored after SIGCONT")
    recovery_s = time.monotonic() - resumed
    finished = qt.stop(bridge, signal.SIGTERM)
    assert finished.returncode == 0 and "Traceback" not in finished.stderr, finished.output
    assert RECOVERED.search(finished.stderr) and "lost" not in finished.stderr, finished.stderr
    totals = json.loads(finished.stdout)
    measured.info(
        f"SIGSTOP at {feed['rate']:,.0f} events/s: {totals['messages_recovered']:,} recovered "
        f"from the journal in {totals['gaps_recovered']} gaps; all stored {recovery_s:.1f}s "
        "after SIGCONT"
    )
    assert feed["rate"] > 10_000  # the machine kept up with most of the asked rate
    assert totals["gaps_recovered"] >= 1 and totals["messages_recovered"] > 0
    assert totals["gaps_lost"] == 0
    assert stored_pairs(vk) == expected_pairs(feed)
    assert recovery_s < 30


def test_a_full_journal_disk_stops_the_feed_with_one_line_and_nothing_published_is_lost(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str
) -> None:
    try:
        unmount = mount_small_tmpfs(pipeline.journal, size="1m")
    except AssertionError as exc:
        pytest.skip(str(exc))
    try:
        bridge = qt.start(*pipeline.bridge_args(valkey_url))
        feed = qt.run(*pipeline.feed_args(rate=2_000, n=10 * N), timeout=60)  # ~1.5 s to fill
        assert feed.returncode == 3, feed.output  # unavailable: the journal's disk
        assert "Traceback" not in feed.stderr
        errors = error_lines(feed.stderr)
        assert len(errors) == 1, feed.stderr
        assert "No space left on device" in errors[0] and str(pipeline.journal) in errors[0]
        assert "--journal" in errors[0]  # what to do
        measured.info(f"full journal disk, the feed said: {errors[0]}")
        journaled = journal_pairs(pipeline.journal)
        assert 0 < len(journaled) < 10 * N
        # Published only after journaled: the bridge stores exactly what the journal holds.
        eventually(lambda: stored_pairs(vk) == journaled, timeout=30, message="journal stored")
        totals = stop(qt, bridge)
        assert totals["gaps_lost"] == 0
    finally:
        unmount()


def future_open() -> str:
    """The next business day's 09:00 São Paulo: event time hours ahead of the wall clock."""
    day = datetime.now(UTC) + timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day.strftime("%Y-%m-%d")


@pytest.mark.parametrize("start", ["2025-07-01", "future"], ids=["behind", "ahead"])
def test_event_time_far_from_the_wall_clock_is_stored_by_event_time(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str, start: str
) -> None:
    first = future_open() if start == "future" else start
    n = 5_000
    bridge = qt.start(*pipeline.bridge_args(valkey_url))
    result = qt.run(*pipeline.feed_args(rate=5_000, n=n), "--start", first, timeout=60)
    assert result.returncode == 0, result.output
    feed = json.loads(result.stdout)
    eventually(lambda: stored_count(vk) == n, timeout=60, message="all stored")
    totals = stop(qt, bridge)
    assert totals["late"] == 0 and totals["gaps_lost"] == 0
    assert stored_pairs(vk) == expected_pairs(feed)
    wall_ms = time.time() * 1000
    skews = []
    for key in event_streams(vk):
        for entry_id, fields in vk.xrange(key):
            ms = int(entry_id.split(b"-")[0])
            assert ms == int(fields[b"ts_event"]) // 1_000_000  # the id is the event time
            skews.append(ms - wall_ms)
    hours = max(abs(s) for s in skews) / 3_600_000
    assert hours > 2, hours
    if start == "future":
        assert min(skews) > 0
    else:
        assert max(skews) < 0
    shown = qt.run("monitor", "--json", timeout=30)
    assert shown.returncode == 0, shown.output
    assert "Traceback" not in shown.stderr
    (symbol,) = json.loads(shown.stdout)["symbols"]
    lag_hours = symbol["lag_ticks_ms"] / 3_600_000  # the monitor shows the skew as the lag
    measured.info(f"clock skew {start}: monitor lag {lag_hours:+.1f} h; {symbol['reasons']}")
    if start == "future":
        assert (
            lag_hours < -2 and "ahead of this machine's clock" in symbol["reasons"]["lag_ticks_ms"]
        )
    else:
        assert lag_hours > 2


def test_qt_up_sigkilled_and_started_again_stores_every_journaled_event_once(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str, isolated_settings: Path
) -> None:
    """`qt up` killed with its stages (none outlives it: tests/e2e/test_up.py), then started
    again on the same data directory: the killed run's sessions are whole (what its feed
    journaled and the bridge had not stored yet is fetched from the journal), the new run's
    too, and nothing is stored twice."""
    from tests.e2e.test_up import endpoints_env, up_args

    env = endpoints_env()
    first = qt.start(*up_args(duration=None, rate=1_000), env=env)
    stats = keys.stats_key("bridge", "default")
    eventually(lambda: int(vk.hget(stats, "written") or 0) > 500, timeout=30, message="flowing")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    journal = isolated_settings / "journal"
    eventually(
        lambda: (
            vk.hget(stats, "pid") is None
            or not Path(f"/proc/{int(vk.hget(stats, 'pid'))}").exists()
        ),
        timeout=20,
        message="the killed run's bridge gone",
    )
    killed = journal_pairs(journal)
    unstored = len(set(killed) - set(stored_pairs(vk)))
    second = qt.run(*up_args(duration="3s", rate=1_000), env=env, timeout=90)
    assert second.returncode == 0, second.output
    assert "Traceback" not in second.stderr
    summary = json.loads(second.stdout)
    expected = sorted(killed + expected_pairs(summary["stages"]["feed"]["totals"]))
    stored = stored_pairs(vk)
    assert len(stored) == len(set(stored)), "an event stored twice"
    missing = sorted(set(expected) - set(stored))
    measured.info(
        f"qt up SIGKILL: {unstored} journaled events not stored at the kill; after the restart "
        f"{len(missing)}; the second run said {RECOVERED_UP.findall(second.stderr)}"
    )
    assert not missing, (len(missing), missing[:5])
