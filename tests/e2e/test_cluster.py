"""The whole pipeline on a real 3-primary Valkey Cluster, with real processes: `qt feed --sim` of
six symbols (two per primary) -> `qt bridge` -> `qt features` (a group of two workers sharing the
symbols) -> `qt predict` (a consumer group of two workers) -> `qt query`, `qt cleanup`,
`qt monitor --once`. qt is given one node's URL and finds the others; every event, vector,
prediction and signal is stored exactly once."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from qt_cli.core import keys, store
from qt_cli.core.events import FeatureVector, decode_fields
from qt_cli.core.features.backfill import backfill
from qt_cli.core.features.engine import FeatureEngine
from tests.core.test_models_bundle import write as write_model
from tests.core.test_store_cluster import SYMBOLS
from tests.e2e.test_bridge import Pipeline, stop
from tests.helpers import QtProcesses, eventually
from tests.valkey_cluster import LocalCluster

pytestmark = pytest.mark.e2e

N = 12_000


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path)
    yield p
    p.close()


@pytest.fixture
def client(cluster_url: str):
    c = store.connect(cluster_url)
    yield c
    c.close()


def sym_args() -> list[str]:
    return [arg for s in SYMBOLS for arg in ("--symbol", s)]


def stat(client, stage: str, name: str, field: str) -> int:
    return int(client.hget(keys.stats_key(stage, name), field) or 0)


def vectors(client, symbol: str) -> list[tuple[FeatureVector, dict]]:
    out = []
    for _, fields in client.xrange(keys.stream_key("features", symbol)):
        event = decode_fields(fields)
        assert isinstance(event, FeatureVector)
        out.append((event, fields))
    return out


def test_feed_to_monitor_on_a_cluster_stores_everything_once(
    qt: QtProcesses,
    pipeline: Pipeline,
    client,
    cluster_url: str,
    valkey_cluster: LocalCluster,
    tmp_path: Path,
) -> None:
    model, _, _ = write_model(tmp_path, "logreg")
    bridge = qt.start(*pipeline.bridge_args(cluster_url))
    features_args = ["features", "--in", cluster_url, *sym_args(), "--every", "trade", "--json"]
    feats = [qt.start(*features_args, "--group", "g", "--consumer", c) for c in ("fa", "fb")]
    predict_args = ["predict", "--model", str(model), "--in", cluster_url, *sym_args(), "--json"]
    preds = [qt.start(*predict_args, "--group", "p", "--consumer", c) for c in ("pa", "pb")]
    for stage, name in [("bridge", "default"), ("features", "fa"), ("features", "fb")]:
        eventually(lambda s=stage, n=name: client.exists(keys.stats_key(s, n)), timeout=60)
    for name in ("pa", "pb"):
        eventually(lambda n=name: client.exists(keys.stats_key("predict", n)), timeout=60)

    fed = qt.run(*pipeline.feed_args(rate=20_000, n=N, seed=5), *sym_args(), timeout=120)
    assert fed.returncode == 0, fed.output
    assert json.loads(fed.stdout)["events"] == N
    eventually(lambda: stat(client, "bridge", "default", "written") == N, timeout=60)
    bridge_totals = stop(qt, bridge, signal.SIGINT)
    assert bridge_totals["written"] == N and bridge_totals["duplicates"] == 0

    # The streams of the six symbols live on all three primaries.
    holders = {valkey_cluster.node_of(keys.stream_key("ticks", s)) for s in SYMBOLS}
    assert holders == set(valkey_cluster.ports)
    stored_ticks = {s: client.xlen(keys.stream_key("ticks", s)) for s in SYMBOLS}
    assert all(stored_ticks.values())
    for symbol in SYMBOLS:  # the bridge's derived data (qt_chunk and candles) in the same slot
        assert client.xlen(keys.history_key("ticks", symbol)) > 0
        # (under a minute of market time: the candle still forming)
        assert client.exists(keys.partial_candle_key(keys.candle_kind("1m"), symbol))

    # Features: each symbol's vectors are those of a backfill of what is stored, once each
    # (the last few trades wait for a later book event, as on one server).
    expected = {}
    for symbol in SYMBOLS:
        engine = FeatureEngine("qt", symbols=(symbol,))
        expected[symbol] = list(backfill(client, [symbol], 0, 2**62, engine=engine, every="trade"))
    eventually(
        lambda: all(
            client.xlen(keys.stream_key("features", s)) >= len(expected[s]) - 5 for s in SYMBOLS
        ),
        timeout=90,
        message="every symbol's vectors stored",
    )
    f_totals = [stop(qt, p, signal.SIGINT) for p in feats]
    warm = 0
    for symbol in SYMBOLS:
        live = vectors(client, symbol)
        assert [e.ts_event for e, _ in live] == [v.ts_event for v in expected[symbol]][: len(live)]
        seqs = [int(f[b"seq"]) for _, f in live]
        assert seqs == sorted(set(seqs)), f"{symbol}: a vector stored twice or out of order"
        warm += sum(1 for e, _ in live if e.warm)
    assert sum(t["written"] for t in f_totals) == sum(
        client.xlen(keys.stream_key("features", s)) for s in SYMBOLS
    )
    assert warm > 0

    # Predict: every warm vector scored once by one of the two workers.
    def predicted() -> int:
        return sum(client.xlen(keys.stream_key("signals", s)) for s in SYMBOLS)

    eventually(lambda: predicted() == warm, timeout=90, message="every warm vector scored")
    p_totals = [stop(qt, p, signal.SIGINT) for p in preds]
    assert sum(t["predictions"] for t in p_totals) == warm
    for symbol in SYMBOLS:
        seqs = [int(f[b"seq"]) for _, f in client.xrange(keys.stream_key("predictions", symbol))]
        assert seqs == sorted(set(seqs))
        assert client.xpending(keys.stream_key("features", symbol), "p")["pending"] == 0

    # Query reads two symbols held by different primaries.
    pair = ["MGLU3", "WDOQ25"]
    assert len({valkey_cluster.node_of(keys.stream_key("ticks", s)) for s in pair}) == 2
    queried = qt.run(
        "query", "--symbol", pair[0], "--symbol", pair[1], "--from", "2000-01-01",
        "--to", "2100-01-01", "--format", "jsonl",
    )  # fmt: skip
    assert queried.returncode == 0, queried.output
    rows = [json.loads(line) for line in queried.stdout.splitlines() if line]
    assert len(rows) == stored_ticks[pair[0]] + stored_ticks[pair[1]]
    assert {r["symbol"] for r in rows} == set(pair)

    # Monitor: one snapshot shows every symbol and the stages.
    shown = qt.run("monitor", "--once", "--json")
    assert shown.returncode == 0, shown.output
    snapshot = json.loads(shown.stdout)
    assert sorted(s["symbol"] for s in snapshot["symbols"]) == sorted(SYMBOLS)
    assert {s["name"] for s in snapshot["stages"] if s.get("stage") == "predict"} >= {"pa", "pb"}

    # Cleanup finds the ticks streams on every primary and trims them.
    cleaned = qt.run("cleanup", "--pattern", "stream:ticks:*", "--max-entries", "10", "--json")
    assert cleaned.returncode == 0, cleaned.output
    report = json.loads(cleaned.stdout)
    assert sorted(s["key"] for s in report["streams"]) == sorted(
        keys.stream_key("ticks", s) for s in SYMBOLS
    )
    assert all(client.xlen(keys.stream_key("ticks", s)) < stored_ticks[s] for s in SYMBOLS)
