"""Retention on seeded streams with known ages: dry run versus real, steps, history and its index."""

from __future__ import annotations

import pytest

from qt_cli.core import keys
from qt_cli.core.chunks import ChunkBuilder
from qt_cli.core.cleanup import Policy, cleanup, find_streams, kind_of, parse_policy
from qt_cli.core.errors import UsageError
from qt_cli.core.events import NS_PER_MS
from tests.core.test_chunks import make_trades

DAY_MS = 86_400_000
NOW_MS = 1_800_000_000_000
NOW_NS = NOW_MS * NS_PER_MS
TICKS = keys.stream_key("ticks", "WDOQ25")
BOOK = keys.stream_key("book", "WDOQ25")
CANDLES = keys.stream_key("candles:1m", "WDOQ25")


def seed_ages(vk, key: str, ages_days: dict[float, int]) -> None:
    """`count` entries at each age (days before NOW), oldest first, ids in event time."""
    pipe = vk.pipeline(transaction=False)
    for age, count in sorted(ages_days.items(), reverse=True):
        base = NOW_MS - int(age * DAY_MS)
        for i in range(count):
            pipe.xadd(key, {"price": "5432.5", "n": str(i)}, id=f"{base + i}-*")
    pipe.execute()


@pytest.fixture
def seeded(vk):
    seed_ages(vk, TICKS, {40: 300, 20: 200, 1: 100})
    seed_ages(vk, BOOK, {10: 150, 1: 50})
    seed_ages(vk, CANDLES, {400: 10, 100: 10, 1: 10})
    vk.set("not-a-stream", "x")
    return vk


def test_dry_run_changes_nothing_and_real_run_removes_the_same(seeded) -> None:
    policy = parse_policy(["30d", "book=5d", "candles=365d"])
    dry = cleanup(seeded, policy, dry_run=True, now_ns=NOW_NS)
    by_key = {s.key: s for s in dry.streams}
    assert by_key[TICKS].removed == 300
    assert by_key[TICKS].entries_after == 300
    assert by_key[BOOK].removed == 150
    assert by_key[CANDLES].removed == 10
    assert dry.removed == 460
    assert not any(s.estimated for s in dry.streams)
    assert seeded.xlen(TICKS) == 600
    assert seeded.xlen(BOOK) == 200

    real = cleanup(seeded, policy, now_ns=NOW_NS)
    assert [(s.key, s.removed) for s in real.streams] == [(s.key, s.removed) for s in dry.streams]
    assert seeded.xlen(TICKS) == 300
    assert seeded.xlen(BOOK) == 50
    assert seeded.xlen(CANDLES) == 20
    first = seeded.xrange(TICKS, count=1)[0][0].decode()
    assert int(first.split("-")[0]) == NOW_MS - 20 * DAY_MS
    ticks = {s.key: s for s in real.streams}[TICKS]
    assert ticks.memory_after < ticks.memory_before
    assert ticks.freed_bytes == ticks.memory_before - ticks.memory_after
    assert ticks.cutoff == f"{NOW_MS - 30 * DAY_MS}-0"
    assert ticks.policy == "older than 30d"
    # again: nothing left to do
    assert cleanup(seeded, policy, now_ns=NOW_NS).removed == 0


def test_only_kinds_with_a_policy_are_trimmed(seeded) -> None:
    report = cleanup(seeded, parse_policy(["book=5d"]), now_ns=NOW_NS)
    assert [s.key for s in report.streams] == [BOOK]
    assert set(report.skipped) == {TICKS, CANDLES}
    assert seeded.xlen(TICKS) == 600


def test_pattern_limits_the_streams(seeded) -> None:
    report = cleanup(seeded, parse_policy(["1d"]), pattern="stream:book:*", now_ns=NOW_NS)
    assert [s.key for s in report.streams] == [BOOK]
    assert seeded.xlen(TICKS) == 600


def test_max_entries(seeded) -> None:
    dry = cleanup(seeded, parse_policy(max_entries=100), dry_run=True, now_ns=NOW_NS)
    assert {s.key: s.entries_after for s in dry.streams} == {TICKS: 100, BOOK: 100, CANDLES: 30}
    cleanup(seeded, parse_policy(max_entries=100), now_ns=NOW_NS)
    assert seeded.xlen(TICKS) == 100
    # both policies: the stricter wins
    seed_ages(seeded, BOOK, {0.5: 10})
    both = cleanup(seeded, parse_policy(["5d"], max_entries=55), dry_run=True, now_ns=NOW_NS)
    assert {s.key: s.entries_after for s in both.streams}[BOOK] == 55


def test_trims_in_steps(vk) -> None:
    seed_ages(vk, TICKS, {40: 2500, 1: 10})
    report = cleanup(vk, parse_policy(["30d"]), now_ns=NOW_NS, step=200)
    assert report.streams[0].removed == 2500
    assert report.streams[0].steps >= 10  # 2,500 entries, at most 200 a call
    assert vk.xlen(TICKS) == 10


def test_scan_is_used_never_keys(seeded) -> None:
    seeded.config_resetstat()
    cleanup(seeded, parse_policy(["30d"]), now_ns=NOW_NS)
    stats = seeded.info("commandstats")
    assert "cmdstat_scan" in stats
    assert "cmdstat_keys" not in stats
    assert find_streams(seeded) == sorted([TICKS, BOOK, CANDLES])


def test_dry_run_estimates_beyond_the_count_limit(vk) -> None:
    seed_ages(vk, TICKS, {40: 1000, 1: 1000})
    report = cleanup(vk, parse_policy(["30d"]), dry_run=True, now_ns=NOW_NS, count_limit=100)
    stream = report.streams[0]
    assert stream.estimated
    assert 100 <= stream.removed <= 2000
    assert vk.xlen(TICKS) == 2000


def test_history_chunks_and_their_late_index(vk) -> None:
    hist = keys.history_key("ticks", "WDOQ25")
    index = keys.late_index_key("ticks", "WDOQ25")
    old = make_trades(200, start_ms=NOW_MS - 400 * DAY_MS)
    new = make_trades(200, start_ms=NOW_MS - DAY_MS)

    def add(trades) -> None:
        builder = ChunkBuilder(max_events=100)
        for n, t in enumerate(trades):
            if chunk := builder.add(t, f"{t.ts_event // NS_PER_MS}-{n}"):
                vk.xadd(hist, chunk.fields, id=f"{chunk.t_min_ms}-*")

    add(old)
    # a late chunk appended (clamped) on day -300, holding events of day -380
    clamped = vk.xadd(hist, {"v": "1", "n": "0", "src": "1-0"}, id=f"{NOW_MS - 300 * DAY_MS}-*")
    vk.zadd(index, {clamped: NOW_MS - 380 * DAY_MS})
    add(new)
    # a late chunk that stays (id recent, events old)
    kept = vk.xadd(hist, {"v": "1", "n": "0", "src": "2-0"}, id=f"{NOW_MS}-*")
    vk.zadd(index, {kept: NOW_MS - 380 * DAY_MS})
    policy = parse_policy(["30d", "hist=365d"])
    dry = cleanup(vk, policy, dry_run=True, now_ns=NOW_NS)
    assert dry.streams[0].kind == "hist:ticks"
    assert dry.streams[0].removed == 2
    assert dry.streams[0].late_index_removed == 0
    real = cleanup(vk, policy, now_ns=NOW_NS)
    assert real.streams[0].removed == 2
    assert vk.xlen(hist) == 4
    # both late chunks have ids within a year: the index keeps both
    assert vk.zcard(index) == 2
    cleanup(vk, parse_policy(["hist=200d"]), now_ns=NOW_NS)
    assert vk.zrange(index, 0, -1) == [kept]


def test_kind_of_keys() -> None:
    assert kind_of("stream:ticks:{WDOQ25}") == "ticks"
    assert kind_of("stream:candles:1m:{WDOQ25}") == "candles:1m"
    assert kind_of("stream:hist:ticks:{WDOQ25}") == "hist:ticks"
    assert kind_of("stream:gaps") == "gaps"
    assert kind_of("stream:deadletter") == "deadletter"
    policy = Policy(default_ns=1, per_kind_ns={"candles": 2, "hist": 3, "candles:5m": 4})
    assert policy.retention_for("candles:1m") == 2
    assert policy.retention_for("candles:5m") == 4
    assert policy.retention_for("hist:ticks") == 3
    assert policy.retention_for("book") == 1


def test_policy_errors() -> None:
    with pytest.raises(UsageError, match="say what to keep"):
        parse_policy([])
    with pytest.raises(UsageError, match="unknown kind 'trades'"):
        parse_policy(["trades=5d"])
    with pytest.raises(UsageError, match=r"--retention 'soon': expected a duration"):
        parse_policy(["soon"])
    with pytest.raises(UsageError, match="longer than zero"):
        parse_policy(["0d"])
    assert parse_policy(["7"]).default_ns == 7 * DAY_MS * NS_PER_MS  # bare number: days
