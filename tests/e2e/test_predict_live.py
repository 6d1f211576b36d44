"""The live predict stage with real processes and a real Valkey: `qt predict --model M --in …`.

Feature vectors are stored the way the features stage stores them (`models_data`: the real
engine over a simulated market); the stage scores each warm one exactly once, writes Predictions
and Signals whose identities trace back to the vector, reloads its bundle on a new file or
SIGHUP without losing a vector, refuses a bad bundle, and stops on a schema mismatch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import orjson
import pytest
import valkey
import zmq

from qt_cli.core import keys, store
from qt_cli.core.events import FeatureVector, Prediction, Signal, decode_fields
from qt_cli.core.models.bundle import load
from qt_cli.core.models.predictor import Predictor
from qt_cli.core.zmq_io import PubSink
from tests.core.models_data import START_NS, SYMBOL, simulate_and_store
from tests.core.test_models_bundle import write
from tests.helpers import QtProcesses, eventually, tcp_endpoint

pytestmark = pytest.mark.e2e

PRED_KEY = keys.stream_key("predictions", SYMBOL)
SIG_KEY = keys.stream_key("signals", SYMBOL)
FEAT_KEY = keys.stream_key("features", SYMBOL)
HOUR_NS = 3_600 * 10**9


def predict_args(model: Path, url: str, *extra: str) -> list[str]:
    return ["predict", "--model", str(model), "--in", url, "--symbol", SYMBOL, "--json", *extra]


def stopped(qt: QtProcesses, proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> dict:
    finished = qt.stop(proc, sig)
    assert finished.returncode == 0, finished.output
    assert "Traceback" not in finished.stderr
    return {"totals": json.loads(finished.stdout), "stderr": finished.stderr}


def events(vk: valkey.Valkey, key: str) -> list:
    return [decode_fields(fields) for _, fields in vk.xrange(key)]


def stats(vk: valkey.Valkey, name: str = "predict") -> dict[str, str]:
    raw = vk.hgetall(keys.stats_key("predict", name))
    return {k.decode(): v.decode() for k, v in raw.items()}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two bundles of the qt set (current catalog), built once for the module."""
    root = tmp_path_factory.mktemp("models")
    return {kind: write(root, kind)[0] for kind in ("logreg", "hgb")}


def test_every_warm_vector_is_scored_once_and_traces_back_to_it(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str, models: dict[str, Path]
) -> None:
    counts = simulate_and_store(vk, seconds=120, every=5)
    # Vectors of another feature set in the same stream are skipped and counted.
    other = simulate_and_store(
        vk, seconds=30, every=5, set_name="basic11", start_ns=START_NS + HOUR_NS, seed=8
    )
    proc = qt.start(*predict_args(models["logreg"], valkey_url, "--cooldown", "2s"))
    eventually(lambda: vk.xlen(SIG_KEY) == counts["warm"], timeout=60, message="all scored")
    out = stopped(qt, proc)
    t = out["totals"]
    assert t["vectors"] == counts["vectors"] + other["vectors"] == t["acked"]
    assert t["other_set"] == other["vectors"]
    assert t["not_warm"] == counts["vectors"] - counts["warm"]
    assert t["predictions"] == counts["warm"] and t["written"] == 2 * counts["warm"]
    assert t["duplicates"] == 0 and t["stopped_by"] == "SIGINT"

    # Each Prediction is the model's probabilities for its vector (the compiled path), its
    # identity the vector's plus the model's hash; its Signal has the same seq.
    vectors = {v.seq: v for v in events(vk, FEAT_KEY) if v.feature_set == "qt" and v.warm}
    predictions = events(vk, PRED_KEY)
    signals = events(vk, SIG_KEY)
    bundle = load(models["logreg"])
    tag = bundle.content_hash[:12]
    reference = Predictor(bundle)
    assert [p.seq for p in predictions] == sorted(vectors) == [s.seq for s in signals]
    for prediction, sig in zip(predictions, signals, strict=True):
        assert isinstance(prediction, Prediction) and isinstance(sig, Signal)
        vector = vectors[prediction.seq]
        assert prediction.session == f"{vector.session}/{tag}"
        assert sig.session == f"{vector.session}/{tag}.signal"
        assert prediction.ts_event == vector.ts_event == prediction.ts_features == sig.ts_event
        assert prediction.model_hash == bundle.content_hash
        want = reference.proba(reference.row(vector))[0]
        got = np.array([prediction.probabilities[label] for label in reference.labels])
        assert np.allclose(got, want, atol=1e-6)
        assert sig.price == vector.features["price_current"]
        assert prediction.latency_us > 0
    # The cooldown holds every BUY/SELL less than 2 s of event time after the previous one.
    acted = [s.ts_event for s in signals if s.action != "hold"]
    assert acted and all(b - a >= 2 * 10**9 for a, b in zip(acted, acted[1:], strict=False))
    assert any(s.reason == "cooldown" for s in signals)

    # A restarted worker of the group has nothing left; another group scores everything again
    # and stores nothing twice (the identities are the vectors').
    again = qt.run(*predict_args(models["logreg"], valkey_url, "--duration", "2s"))
    assert again.returncode == 0, again.output
    assert json.loads(again.stdout)["received"] == 0
    other_group = qt.run(
        *predict_args(models["logreg"], valkey_url, "--group", "g2", "--duration", "3s")
    )
    assert other_group.returncode == 0, other_group.output
    t2 = json.loads(other_group.stdout)
    assert t2["predictions"] == counts["warm"]
    assert t2["written"] == 0 and t2["duplicates"] == 2 * counts["warm"]
    assert vk.xlen(PRED_KEY) == vk.xlen(SIG_KEY) == counts["warm"]


def test_workers_of_one_group_share_the_vectors(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str, models: dict[str, Path]
) -> None:
    a = qt.start(*predict_args(models["logreg"], valkey_url, "--group", "g", "--consumer", "a"))
    b = qt.start(*predict_args(models["logreg"], valkey_url, "--group", "g", "--consumer", "b"))
    eventually(lambda: stats(vk, "a") and stats(vk, "b"), timeout=60, message="both running")
    counts = simulate_and_store(vk, seconds=120, every=2)
    eventually(lambda: vk.xlen(SIG_KEY) == counts["warm"], timeout=60, message="all scored")
    ta, tb = stopped(qt, a)["totals"], stopped(qt, b)["totals"]
    assert ta["received"] + tb["received"] == counts["vectors"]
    assert ta["predictions"] + tb["predictions"] == counts["warm"]
    seqs = [p.seq for p in events(vk, PRED_KEY)]
    assert seqs == sorted(set(seqs)) and len(seqs) == counts["warm"]


GROUP_SYMBOLS = ("MGLU3", "WEGE3", "WINQ25", "PETR4", "WDOQ25", "ITUB4")  # 2 per cluster primary


@pytest.mark.parametrize("server", ["valkey_url", "cluster_url"])
def test_a_killed_workers_vectors_over_six_symbols_are_claimed_by_the_others_once(
    qt: QtProcesses, request: pytest.FixtureRequest, server: str, models: dict[str, Path]
) -> None:
    """Three workers of one group over six symbols (on one server, and on a 3-primary cluster);
    one is SIGKILLed while it holds vectors it read and never acknowledged; the other two claim
    them (`--claim-idle`) and every warm vector is scored exactly once.

    So that the killed worker surely holds vectors when it dies, the test first reads the first
    vector of each stream as consumer `x` and never acknowledges it (a worker that died earlier):
    a worker then holds what it read (nothing of a stream is written before its older pending
    entries) until x's vectors are claimed. Worker a (which never claims) reads and is killed;
    b and c then start and claim."""
    url = request.getfixturevalue(server)
    client = store.connect(url)
    counts = {
        s: simulate_and_store(client, seconds=40, every=2, seed=i, symbol=s)
        for i, s in enumerate(GROUP_SYMBOLS)
    }
    feat_keys = {s: keys.stream_key("features", s) for s in GROUP_SYMBOLS}
    for key in feat_keys.values():
        client.xgroup_create(key, "g", id="0")
        assert len(client.xreadgroup("g", "x", {key: ">"}, count=1)[0][1]) == 1
    args = [
        "predict", "--model", str(models["logreg"]), "--in", url,
        *[a for s in GROUP_SYMBOLS for a in ("--symbol", s)],
        "--group", "g", "--json",
    ]  # fmt: skip
    # a never claims: it holds x's vectors back, and everything it reads behind them, until it
    # dies; then b and c start and claim what was idle 1 s.
    workers = {"a": qt.start(*args, "--consumer", "a", "--claim-idle", "5m")}

    def held_by_a() -> int:
        return sum(
            len(client.xpending_range(k, "g", "-", "+", 10_000, "a")) for k in feat_keys.values()
        )

    eventually(held_by_a, timeout=60, message="worker a holds vectors")
    workers["a"].send_signal(signal.SIGKILL)
    workers["a"].wait(timeout=10)
    pending_a = held_by_a()
    assert pending_a > 0
    workers.update({c: qt.start(*args, "--consumer", c, "--claim-idle", "1s") for c in "bc"})
    warm = sum(c["warm"] for c in counts.values())

    def signals() -> int:
        return sum(client.xlen(keys.stream_key("signals", s)) for s in GROUP_SYMBOLS)

    eventually(lambda: signals() == warm, timeout=90, message="every warm vector scored")
    tb, tc = (stopped(qt, workers[c])["totals"] for c in ("b", "c"))
    # Everything a held when killed was claimed (x's too: by a before it died, or by b and c).
    assert tb["claimed"] + tc["claimed"] >= pending_a
    # a wrote nothing (x's older vectors held everything back): b and c stored each result once.
    assert tb["predictions"] + tc["predictions"] == warm
    assert tb["written"] + tc["written"] == 2 * warm and tb["duplicates"] + tc["duplicates"] == 0
    for symbol, key in feat_keys.items():
        assert client.xpending(key, "g")["pending"] == 0  # a's and x's included
        seqs = [int(f[b"seq"]) for _, f in client.xrange(keys.stream_key("predictions", symbol))]
        assert seqs == sorted(set(seqs)) and len(seqs) == counts[symbol]["warm"]
    client.close()


def test_a_new_bundle_is_served_without_losing_a_vector_and_a_bad_one_is_refused(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str, models: dict[str, Path], tmp_path: Path
) -> None:
    served = tmp_path / "serving.qtm"
    shutil.copy(models["logreg"], served)
    first = simulate_and_store(vk, seconds=60, every=2, seed=1)
    proc = qt.start(*predict_args(served, valkey_url))
    eventually(lambda: vk.xlen(PRED_KEY) == first["warm"], timeout=60, message="first batch")

    # A new file at the path (written beside it, then renamed over it): reloaded and served.
    staged = tmp_path / "staged.qtm"
    shutil.copy(models["hgb"], staged)
    os.replace(staged, served)
    eventually(lambda: stats(vk).get("reloads") == "1", timeout=30, message="reloaded")
    second = simulate_and_store(vk, seconds=60, every=2, seed=2, start_ns=START_NS + HOUR_NS)
    total = first["warm"] + second["warm"]
    eventually(lambda: vk.xlen(PRED_KEY) == total, timeout=60, message="second batch")

    # A broken bundle is refused; the hgb model keeps serving. SIGHUP asks for a reload too.
    staged.write_bytes(b"not a bundle")
    os.replace(staged, served)
    eventually(lambda: stats(vk).get("reloads_refused") == "1", timeout=30, message="refused")
    proc.send_signal(signal.SIGHUP)
    eventually(lambda: stats(vk).get("reloads_refused") == "2", timeout=30, message="SIGHUP")
    third = simulate_and_store(vk, seconds=60, every=2, seed=3, start_ns=START_NS + 2 * HOUR_NS)
    total += third["warm"]
    eventually(lambda: vk.xlen(PRED_KEY) == total, timeout=60, message="third batch")
    out = stopped(qt, proc)

    t = out["totals"]
    assert t["predictions"] == total and t["duplicates"] == 0
    assert t["reloads"] == 1 and t["reloads_refused"] == 2
    assert "refused" in out["stderr"] and "not a bundle" not in out["stderr"]
    hashes = {}
    for p in events(vk, PRED_KEY):
        hashes.setdefault(p.session.split(".")[0].removeprefix("feat"), set()).add(p.model_hash)
    logreg, hgb = (load(models[k]).content_hash for k in ("logreg", "hgb"))
    assert hashes["1"] == {logreg} and hashes["2"] == hashes["3"] == {hgb}


def test_a_schema_mismatch_stops_the_stage_with_one_clear_error(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str, models: dict[str, Path]
) -> None:
    simulate_and_store(vk, seconds=30, every=5, catalog_hash="0123456789ab")
    done = qt.run(*predict_args(models["logreg"], valkey_url, "--duration", "20s"))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith("Error:")]
    assert len(lines) == 1 and "catalog 0123456789ab" in lines[0], done.output
    assert vk.xlen(PRED_KEY) == 0
    # Nothing was acknowledged: the vectors wait for a model that fits them.
    pending = vk.xpending(FEAT_KEY, "predict")
    assert pending["pending"] > 0


def test_bad_options_are_one_line_errors(
    qt: QtProcesses, valkey_url: str, models: dict[str, Path], tmp_path: Path
) -> None:
    model = str(models["logreg"])
    cases = [
        (["--model", model, "--in", valkey_url], 2, "--symbol"),
        (["--model", str(tmp_path / "none.qtm"), "--in", valkey_url, "-s", SYMBOL], 1, "no such"),
        (["--model", model, "--in", "tcp://127.0.0.1:1", "-s", SYMBOL, "--group", "g"], 2, "tcp"),
        (["--model", model, "-s", SYMBOL], 2, "--in"),
        (["--model", model, "--in", valkey_url, "-s", SYMBOL, "--from", "-1d"], 2, "backtest"),
    ]
    for args, code, needle in cases:
        done = qt.run("predict", *args)
        assert done.returncode == code, done.output
        assert "Traceback" not in done.stderr and needle in done.stderr, done.output


def test_over_zeromq_in_and_out_the_identities_are_the_stored_ones(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str, models: dict[str, Path], ctx: zmq.Context
) -> None:
    counts = simulate_and_store(vk, seconds=60, every=2)
    vectors = [v for v in events(vk, FEAT_KEY) if isinstance(v, FeatureVector)]
    vk.delete(FEAT_KEY)
    feed, out = tcp_endpoint(), tcp_endpoint()
    pub = PubSink(feed, channel="features", keep_identity=True)
    proc = qt.start(
        "predict", "--model", str(models["logreg"]), "--in", feed, "--symbol", SYMBOL,
        "--out", valkey_url, "--out", out, "--json",
    )  # fmt: skip
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(out)
    # Until the stage has subscribed, a published vector is lost: send the first (not warm) one
    # until it is counted. Until our subscriber is connected, a prediction is lost: send up to
    # the first warm vector until a prediction arrives (repeats are duplicates). Then the rest.
    eventually(
        lambda: pub.send(vectors[:1]) or int(stats(vk).get("received", 0)) > 0,
        timeout=30,
        message="the stage subscribed",
    )
    first_warm = next(i for i, v in enumerate(vectors) if v.warm)
    eventually(
        lambda: pub.send(vectors[1 : first_warm + 1]) or sub.poll(200),
        timeout=30,
        message="our subscriber connected",
    )
    pub.send(vectors[first_warm + 1 :])
    eventually(lambda: vk.xlen(SIG_KEY) == counts["warm"], timeout=60, message="all scored")
    messages = []  # read while the stage runs
    while sub.poll(1000):
        topic, payload = sub.recv_multipart()
        messages.append((topic.decode(), orjson.loads(payload)))
    totals = stopped(qt, proc)["totals"]
    pub.close()
    sub.close(linger=0)
    tag = load(models["logreg"]).content_hash[:12]
    session = vectors[0].session
    want = []
    for v in vectors:
        if v.warm:
            want.append((f"prediction_{SYMBOL}", f"{session}/{tag}", v.seq))
            want.append((f"signal_{SYMBOL}", f"{session}/{tag}.signal", v.seq))
    got = [(t, m["origin"], m["origin_seq"]) for t, m in messages]
    assert list(dict.fromkeys(got)) == want  # every one, in order (the first maybe repeated)
    repeats = totals["predictions"] - counts["warm"]
    assert totals["duplicates"] == 2 * repeats  # the repeated first vectors: stored once
    stored = [(p.session, p.seq) for p in events(vk, PRED_KEY)]
    assert stored == [(s, q) for t, s, q in want if t.startswith("prediction")]
