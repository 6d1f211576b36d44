"""The live features stage with real processes: `qt feed --sim` -> `qt bridge` -> `qt features --in
valkey://…`; its stored vectors equal a backfill of the same stored range, once each, across a
SIGKILL and restart; `qt monitor` shows it."""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import valkey
import zmq

from qt_cli.core import keys, store
from qt_cli.core.events import FeatureVector, decode_fields
from qt_cli.core.features.backfill import backfill
from qt_cli.core.features.engine import FeatureEngine
from qt_cli.core.stage.derived import derived_session
from tests.e2e.test_bridge import Pipeline, run_feed, stop
from tests.helpers import QtProcesses, eventually, tcp_endpoint

pytestmark = pytest.mark.e2e

SYMBOL = "WDOQ25"
OUT_KEY = keys.stream_key("features", SYMBOL)
N = 6_000


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path)
    yield p
    p.close()


def running(vk: valkey.Valkey, *stages: tuple[str, str]) -> None:
    """Wait until each (stage, name) publishes its stats: a subscriber that hears nothing of a
    feed's session cannot know it missed it, so the feed starts once its subscribers run."""
    for stage, name in stages:
        eventually(lambda s=stage, n=name: vk.exists(keys.stats_key(s, n)), timeout=60)


def features_args(url: str, every: str, *extra: str) -> list[str]:
    return [
        "features", "--in", url, "--symbol", SYMBOL, "--set", "qt", "--every", every,
        "--json", *extra,
    ]  # fmt: skip


def bridge_written(vk: valkey.Valkey) -> int:
    return int(vk.hget(keys.stats_key("bridge", "default"), "written") or 0)


def backfilled(vk: valkey.Valkey, every: str) -> list:
    """The vectors a backfill of everything stored gives (the whole stored range)."""
    engine = FeatureEngine("qt", symbols=(SYMBOL,))
    return list(backfill(vk, [SYMBOL], 0, 2**62, engine=engine, every=every))


def stored(vk: valkey.Valkey) -> list[tuple[FeatureVector, dict]]:
    out = []
    for _, fields in vk.xrange(OUT_KEY):
        event = decode_fields(fields)
        assert isinstance(event, FeatureVector)
        out.append((event, fields))
    return out


def assert_same(live: list[tuple[FeatureVector, dict]], expected: list) -> None:
    """Same times, warm flags and values (within 1e-9, NaN where NaN), in the same order."""
    assert [e.ts_event for e, _ in live] == [v.ts_event for v in expected]
    assert [e.warm for e, _ in live] == [v.warm for v in expected]
    for (event, _), vector in zip(live, expected, strict=True):
        assert list(event.features) == list(vector.names)
        for name, want in zip(vector.names, vector.values, strict=True):
            got = event.features[name]
            if math.isnan(want):
                assert math.isnan(got), (event.ts_event, name, got)
            else:
                assert abs(got - want) <= 1e-9 * max(1.0, abs(want)), (name, got, want)


def assert_once_each(live: list[tuple[FeatureVector, dict]]) -> None:
    """Identities derived from the trades (session features.<ticks session>), strictly rising."""
    seqs = [int(f[b"seq"]) for _, f in live]
    assert seqs == sorted(set(seqs)), "a vector stored twice or out of order"
    sessions = {f[b"session"].decode() for _, f in live}
    assert len(sessions) == 1 and next(iter(sessions)).startswith(derived_session("features", ""))


def test_live_vectors_equal_the_backfill_of_the_same_stored_range(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str, ctx: zmq.Context
) -> None:
    pub = tcp_endpoint()
    bridge = qt.start(*pipeline.bridge_args(valkey_url))
    features = qt.start(*features_args(valkey_url, "1s", "--out", valkey_url, "--out", pub))
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, f"features_{SYMBOL}".encode())
    sub.connect(pub)
    running(vk, ("bridge", "default"))
    feed = run_feed(qt, pipeline, rate=10_000, n=N, seed=7)
    eventually(lambda: bridge_written(vk) == N, timeout=60, message=f"{N} events stored")
    stop(qt, bridge, signal.SIGINT)
    expected = backfilled(vk, "1s")
    assert len(expected) > 20
    # The last period of the range is still open for the live stage (no later event closed it).
    eventually(
        lambda: vk.xlen(OUT_KEY) >= len(expected) - 1, timeout=60, message="live vectors stored"
    )
    totals = stop(qt, features, signal.SIGINT)
    live = stored(vk)
    assert_same(live, expected[:-1])
    assert_once_each(live)
    assert totals["stopped_by"] == "SIGINT"
    assert totals["written"] == totals["vectors"] == len(live)
    # A backfill into the stream gives each vector the live stage's identity: nothing new.
    filled = qt.run(
        "features", "--from", "2000-01-01", "--to", "2100-01-01", "--symbol", SYMBOL,
        "--every", "1s", "--out", valkey_url, "--json",
    )  # fmt: skip
    assert filled.returncode == 0, filled.output
    summary = json.loads(filled.stdout)
    assert summary["written"] == 0 and summary["duplicates"] == len(live) == summary["vectors"]
    assert totals["trades"] == feed["by_kind"]["tick"]
    assert totals["not_warm"] == sum(1 for e, _ in live if not e.warm)
    assert totals["counters"]["trades"] == totals["trades"]
    # Seed compatibility: get_latest_features reads `features` (a JSON object) and timestamp_ms.
    _, last = live[-1]
    assert isinstance(json.loads(last[b"features"]), dict)
    assert int(last[b"timestamp_ms"]) == live[-1][0].ts_event // 1_000_000
    # qt monitor shows the stage and its lag.
    shown = qt.run("monitor", "--once", "--json")
    assert shown.returncode == 0, shown.output
    stages = [s for s in json.loads(shown.stdout)["stages"] if s.get("stage") == "features"]
    assert stages, shown.stdout
    assert stages[0]["seen"] and stages[0]["lag_ms"] is not None and stages[0]["lag_ms"] >= 0
    assert stages[0]["written"] == len(live) and stages[0]["fields"]["feature_set"] == "qt"
    stats = vk.hgetall(keys.stats_key("features", "features"))
    assert int(stats[b"written"]) == len(live) and stats[b"lag_ms"]
    # ZeroMQ: topic features_SYMBOL, the seed guide's {"type": "features", "symbol", "features"};
    # what the subscriber got (it may have joined late) is the stored vectors' tail.
    published = []
    while sub.poll(0):
        topic, payload = sub.recv_multipart()
        assert topic == f"features_{SYMBOL}".encode()
        published.append(orjson.loads(payload))
    sub.close(linger=0)
    assert published, "no vector published on ZeroMQ"
    assert {(m["type"], m["symbol"]) for m in published} == {("features", SYMBOL)}
    tail = live[len(live) - len(published) :]
    assert [m["ts_event"] for m in published] == [e.ts_event for e, _ in tail]
    assert [m["features"]["price_current"] for m in published] == [
        e.features["price_current"] for e, _ in tail
    ]
    # Each message carries the identity the vector is stored under (origin/origin_seq), so a
    # stage reading it from ZeroMQ derives the same identities as one reading it from Valkey.
    assert [(m["origin"], m["origin_seq"]) for m in published] == [
        (f[b"session"].decode(), int(f[b"seq"])) for _, f in tail
    ]


def children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie nobody reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_features_stage_killed_and_restarted_stores_no_duplicate_and_no_gap(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str
) -> None:
    bridge = qt.start(*pipeline.bridge_args(valkey_url))
    first = qt.start(*features_args(valkey_url, "trade"))
    feed = qt.start(*pipeline.feed_args(rate=3_000, n=N, seed=9))
    eventually(lambda: vk.xlen(OUT_KEY) >= 50, timeout=30, message="some vectors stored")
    helpers = children(first.pid)  # its reading helper process (live.AsideReader)
    assert len(helpers) == 1
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    killed_at = vk.xlen(OUT_KEY)
    # the helper does not outlive the stage (its pipe breaks, or it sees its parent gone)
    eventually(lambda: not alive(helpers[0]), timeout=10, message="the helper process ended")
    second = qt.start(*features_args(valkey_url, "trade"))
    out, err = feed.communicate(timeout=60)
    assert feed.returncode == 0, err
    eventually(lambda: bridge_written(vk) == N, timeout=60, message=f"{N} events stored")
    stop(qt, bridge, signal.SIGINT)
    expected = backfilled(vk, "trade")
    assert killed_at < len(expected) - 10, "the run was over before the kill"
    # Trades after the book stream's last event wait for it: all but those few are stored.
    eventually(
        lambda: vk.xlen(OUT_KEY) >= len(expected) - 5, timeout=60, message="vectors after restart"
    )
    totals = stop(qt, second, signal.SIGTERM)
    live = stored(vk)
    assert_same(live, expected[: len(live)])  # no gap: the same vectors as one uninterrupted run
    assert_once_each(live)  # no duplicate
    assert totals["stopped_by"] == "SIGTERM"
    assert totals["duplicates"] >= killed_at  # what the first run stored was recomputed, skipped
    assert totals["written"] == len(live) - killed_at


def test_zeromq_input_gives_the_same_vectors_as_the_stored_history(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str
) -> None:
    bridge = qt.start(*pipeline.bridge_args(valkey_url))
    features = qt.start(
        "features", "--in", pipeline.ticks, "--in", pipeline.book, "--replay", pipeline.replay,
        "--symbol", SYMBOL, "--every", "1s", "--out", valkey_url, "--json",
    )  # fmt: skip
    running(vk, ("features", "features"), ("bridge", "default"))
    feed = run_feed(qt, pipeline, rate=10_000, n=N, seed=3)
    eventually(lambda: bridge_written(vk) == N, timeout=60, message=f"{N} events stored")
    stop(qt, bridge, signal.SIGINT)
    expected = backfilled(vk, "1s")
    eventually(
        lambda: vk.xlen(OUT_KEY) >= len(expected) - 1, timeout=60, message="live vectors stored"
    )
    totals = stop(qt, features, signal.SIGINT)
    live = stored(vk)
    assert_same(live, expected[:-1])
    assert_once_each(live)
    ticks_session = feed["channels"]["ticks"]["session"]
    assert live[0][1][b"session"].decode() == derived_session("features", ticks_session)
    assert totals["trades"] == feed["by_kind"]["tick"]


@pytest.mark.parametrize("server", ["valkey_url", "cluster_url"])
def test_a_group_shares_symbols_and_takes_over_a_killed_workers(
    qt: QtProcesses, pipeline: Pipeline, request: pytest.FixtureRequest, server: str
) -> None:
    """Leases and vectors on one server, and on a 3-primary cluster (the two symbols' keys on
    two primaries)."""
    valkey_url = request.getfixturevalue(server)
    vk = store.connect(valkey_url)
    symbols = (SYMBOL, "WINQ25")
    bridge = qt.start(*pipeline.bridge_args(valkey_url))
    running(vk, ("bridge", "default"))
    feed = run_feed_args(qt, [*pipeline.feed_args(rate=10_000, n=N, seed=5), *sym_args(symbols)])
    eventually(lambda: bridge_written(vk) == N, timeout=60, message=f"{N} events stored")
    stop(qt, bridge, signal.SIGINT)
    args = ["features", "--in", valkey_url, *sym_args(symbols), "--every", "trade", "--json"]
    a = qt.start(*args, "--group", "g", "--consumer", "a")
    b = qt.start(*args, "--group", "g", "--consumer", "b")

    def holders() -> set[bytes]:
        return {vk.get(keys.lease_key("features", "g", s)) for s in symbols}

    eventually(lambda: holders() == {b"a", b"b"}, timeout=30, message="one symbol each")
    a_symbol = next(s for s in symbols if vk.get(keys.lease_key("features", "g", s)) == b"a")
    a_key = keys.stream_key("features", a_symbol)
    eventually(lambda: vk.xlen(a_key) > 0, timeout=30, message="a stored vectors")
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=10)
    eventually(lambda: holders() == {b"b"}, timeout=30, message="b took a's symbol over")
    expected = {}
    for symbol in symbols:
        engine = FeatureEngine("qt", symbols=(symbol,))
        expected[symbol] = list(backfill(vk, [symbol], 0, 2**62, engine=engine, every="trade"))
    key_of = {s: keys.stream_key("features", s) for s in symbols}
    eventually(
        lambda: all(vk.xlen(key_of[s]) >= len(expected[s]) - 5 for s in symbols),
        timeout=60,
        message="every symbol's vectors stored",
    )
    totals = stop(qt, b, signal.SIGINT)
    for symbol in symbols:
        live = []
        for _, fields in vk.xrange(key_of[symbol]):
            event = decode_fields(fields)
            assert isinstance(event, FeatureVector)
            live.append((event, fields))
        assert_same(live, expected[symbol][: len(live)])
        assert_once_each(live)
    assert sorted(totals["held"]) == sorted(symbols)  # b computed both at the end
    assert holders() == {None}  # and gave the leases back when it stopped
    assert totals["duplicates"] > 0  # a's stored vectors recomputed by b and skipped
    assert feed["events"] == N
    vk.close()


def sym_args(symbols: tuple[str, ...]) -> list[str]:
    return [arg for s in symbols for arg in ("--symbol", s)]


def run_feed_args(qt: QtProcesses, args: list[str]) -> dict:
    result = qt.run(*args, timeout=120)
    assert result.returncode == 0, result.output
    return json.loads(result.stdout)
