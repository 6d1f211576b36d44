"""Model serving latency: one feature vector in, class probabilities (and a Signal) out.

For hgb, logreg and rf trained by qt (`training.make_pipeline`) on the qt set's vectors of a
seeded simulated session (the real features engine over `qt feed --sim`'s market, labels 100
trades ahead), in the same run:
- bare scikit-learn: `pipeline.predict_proba` on a pre-built 1×65 array;
- bare ONNX Runtime: `session.run` of the bundle's graph on the same array (one thread);
- the Predictor: schema check -> row -> ONNX Runtime -> Prediction and Signal from a
  `FeatureVector` event;
- the live stage's path per vector (`models.live.Scorer`, as `qt predict --out valkey://…`
  runs it: the Prediction's and Signal's stream fields, no event objects, which only ZeroMQ/file
  outputs need): the entry's fields as XREADGROUP returns them -> decode -> schema check ->
  predict -> Prediction and Signal stream fields;
  and the write (`qt_append` through `StreamWriter`, batches of 100 vectors, wall time per
  vector) into a valkey-server of the benchmark's own.
Then the users' kind of legacy models, imported as `qt models import` does (seed65 set): a
random forest pickle (converted to ONNX at import), an XGBoost pickle and a LightGBM booster text
file (both served natively), each through the stage path, beside their bare `predict_proba`.
Each is timed per call as this thread's CPU time (`time.thread_time_ns`; ONNX Runtime runs on
the calling thread with one intra-op thread) over the same vectors, p50 / p99.

Run: `python -m benchmarks.bench_models` (about two minutes).
"""

from __future__ import annotations

import gc
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.bench_bridge import own_server
from benchmarks.report import record, write_section
from qt_cli.core import keys
from qt_cli.core.events import BookUpdate, FeatureVector, Trade, decode_fields
from qt_cli.core.features.catalog import catalog_hash, feature_set
from qt_cli.core.features.engine import FeatureEngine
from qt_cli.core.models import bundle as bundles
from qt_cli.core.models.compiled import OnnxRunner, check_onnx, to_onnx_bytes
from qt_cli.core.models.live import ModelSlot, Scorer
from qt_cli.core.models.predictor import Predictor
from qt_cli.core.models.training import choose_threshold, label, make_pipeline
from qt_cli.core.store.reader import SourceEntry
from qt_cli.core.store.writer import StreamWriter, event_values

SYMBOL = "WDOQ25"
SECONDS = 1800
HORIZON_TRADES = 100
CALLS = 2000
WARMUP = 300
WRITE_BATCH = 100
# The bare scikit-learn and legacy calls take milliseconds each (a forest's joblib dispatch
# ~17 ms): fewer of them, after a shorter warm-up.
SLOW_WARMUP = 50
SLOW_CALLS = 500


def vectors(seconds: int = SECONDS) -> tuple[np.ndarray, np.ndarray, list[FeatureVector]]:
    from qt_cli.core.sources.sim import SimConfig, SimulatedMarket

    sim = SimulatedMarket(
        SimConfig(
            symbols=(SYMBOL,), seed=11, rate=0, duration_s=seconds, start_ns=1754308800 * 10**9
        )
    )
    engine = FeatureEngine("qt")
    rows, prices, events = [], [], []
    sim.open()
    seq = 0
    while not sim.finished:
        for event in sim.read(timeout_s=1.0):
            if isinstance(event, BookUpdate):
                engine.on_book(event)
            elif isinstance(event, Trade):
                v = engine.on_trade(event)
                prices.append(event.price)
                if v is not None and v.warm:
                    seq += 1
                    rows.append((len(prices) - 1, v.values))
                    if len(events) < CALLS + WARMUP:
                        events.append(
                            FeatureVector(
                                symbol=SYMBOL,
                                ts_event=v.ts_event,
                                feature_set="qt",
                                catalog_hash=v.catalog_version,
                                features=dict(zip(v.names, v.values, strict=True)),
                                warm=True,
                                session="bench",
                                seq=seq,
                            )
                        )
    sim.close()
    price = np.asarray(prices)
    idx = np.array([i for i, _ in rows])
    X = np.array([r for _, r in rows], dtype=np.float64)
    ok = idx + HORIZON_TRADES < len(price)
    returns = price[idx[ok] + HORIZON_TRADES] / price[idx[ok]] - 1
    return X[ok], returns, events


def percentile_us(samples: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q)) / 1000.0


def timed(call, args: list, warmup: int = WARMUP) -> list[int]:
    for a in args[:warmup]:
        call(a)
    out = []
    clock = time.thread_time_ns  # CPU time: other processes on a shared machine do not count
    gc.disable()
    try:
        for a in args[warmup:]:
            t0 = clock()
            call(a)
            out.append(clock() - t0)
    finally:
        gc.enable()
    return out


def slow_timed(call, args: list) -> list[int]:
    """`timed` for the calls of milliseconds: SLOW_CALLS after SLOW_WARMUP."""
    return timed(call, args[: SLOW_WARMUP + SLOW_CALLS], warmup=SLOW_WARMUP)


def main() -> None:
    from threadpoolctl import threadpool_limits

    # The bare legacy baselines pass arrays to a scaler fitted on named columns, as their live
    # code did; scikit-learn warns about it each call.
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    with threadpool_limits(limits=1):  # every path on one thread, as qt serves and trains
        run()


def save_bundle(path: Path, pipe: object, model: str, check_rows: np.ndarray) -> float:
    """Save a fitted qt-set pipeline as a bundle with its ONNX graph; the graph's max difference
    from `predict_proba` on `check_rows`."""
    names = feature_set("qt")
    onnx_bytes = to_onnx_bytes(pipe, len(names))
    diff = check_onnx(onnx_bytes, pipe, check_rows)
    meta = bundles.new_metadata(
        model=model,
        features={"set": "qt", "names": list(names), "catalog_hash": catalog_hash()},
        label={
            "horizon": f"{HORIZON_TRADES}trades",
            "classes": [
                {
                    "index": j,
                    "value": int(c),
                    "label": bundles.CLASS_NAMES[int(c)],
                    "action": bundles.ACTIONS[int(c)],
                }
                for j, c in enumerate(pipe.classes_)  # type: ignore[attr-defined]
            ],
        },
        serving={"path": "onnx", "onnx_max_diff": diff},
    )
    bundles.save(path, pipeline=pipe, metadata=meta, onnx_bytes=onnx_bytes)
    return diff


def stage_path(path: Path) -> tuple[Scorer, object]:
    """The live stage's per-vector call for the bundle at `path`: fields -> derived entries
    (the Scorer `LivePredict` makes for a Valkey output: stream fields, no events)."""
    scorer = Scorer(ModelSlot(path), events=False)
    key = keys.stream_key("features", SYMBOL)

    def call(fields: dict[bytes, bytes]) -> list:
        return scorer(SourceEntry(key, "1-0", decode_fields(fields)), "", 0)

    return scorer, call


def stored_fields(event: FeatureVector) -> dict[bytes, bytes]:
    """An entry's fields as the features stage stores them and XREADGROUP returns them."""
    names, values = event_values(event)
    return {n.encode(): str(v).encode() for n, v in zip(names, values, strict=True)}


def write_us(client: object, call, fields: list[dict[bytes, bytes]], tag: str) -> float:
    """Wall µs per vector to store its Prediction and Signal with `qt_append`, batches of 100."""
    writer = StreamWriter(client)
    derived = [call(f) for f in fields]
    total = 0
    for start in range(0, len(derived), WRITE_BATCH):
        batches: dict[str, object] = {}
        for group in derived[start : start + WRITE_BATCH]:
            for out in group:
                batch = batches.get(out.key)
                if batch is None:
                    batch = batches[out.key] = writer.batch(out.key)
                batch.add(out.names, out.values, out.event_ms)
        t0 = time.perf_counter_ns()
        results = writer.append_many(list(batches.values()))
        total += time.perf_counter_ns() - t0
        assert sum(r.written for r in results) == 2 * len(derived[start : start + WRITE_BATCH]), tag
    return total / len(derived) / 1000.0


def legacy_models(X: np.ndarray, y: np.ndarray, tmp: Path) -> list[tuple[str, Path, object]]:
    """A random forest and an XGBoost pickle (with a pickled StandardScaler) and a LightGBM
    booster text file, trained on seed65-named columns, imported as `qt models import` does."""
    import pickle

    import lightgbm
    import pandas as pd
    import xgboost
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.preprocessing import StandardScaler

    from qt_cli.core.models.legacy import import_model

    names = list(feature_set("seed65"))
    frame = pd.DataFrame(X, columns=names)
    scaler = StandardScaler().fit(frame)
    scaled = pd.DataFrame(scaler.transform(frame), columns=names)
    (tmp / "scaler.pkl").write_bytes(pickle.dumps(scaler))
    out = []
    rf = RandomForestClassifier(n_estimators=100, max_depth=10, n_jobs=1, random_state=0)
    rf.fit(scaled, y)
    xgb = xgboost.XGBClassifier(n_estimators=200, max_depth=6, tree_method="hist", n_jobs=1)
    xgb.fit(scaled, y + 1)  # their XGBoost models encode the classes as 0/1/2
    for name, model, classes in (("legacy rf", rf, "-1,0,1"), ("legacy xgboost", xgb, "-1,0,1")):
        pkl = tmp / f"{name.split()[1]}.pkl"
        pkl.write_bytes(pickle.dumps(model))
        qtm = tmp / f"{name.split()[1]}.qtm"
        import_model(
            estimator=pkl, scaler=tmp / "scaler.pkl", output=qtm, classes=classes,
            trust_pickle=True,
        )  # fmt: skip
        out.append((name, qtm, lambda a, m=model: m.predict_proba(scaler.transform(a))))
    booster = lightgbm.train(
        {"objective": "multiclass", "num_class": 3, "num_threads": 1, "verbose": -1},
        lightgbm.Dataset(scaled, label=y + 1, feature_name=names),
        num_boost_round=200,
    )
    txt = tmp / "lgbm.txt"
    txt.write_text(booster.model_to_string())
    qtm = tmp / "lgbm.qtm"
    import_model(
        estimator=txt, scaler=tmp / "scaler.pkl", output=qtm, classes="-1,0,1", trust_pickle=True
    )
    out.append(
        ("legacy lightgbm", qtm, lambda a: booster.predict(scaler.transform(a), num_threads=1))
    )
    return out


def run() -> None:
    X, returns, events = vectors()
    y = label(returns, choose_threshold(returns))
    arrays = [np.asarray([list(e.features.values())], dtype=np.float64) for e in events]
    fields = [stored_fields(e) for e in events]
    seed_names = feature_set("seed65")
    seed_events = [
        replace(
            e,
            feature_set="seed65",
            features=dict(zip(seed_names, e.features.values(), strict=True)),
        )
        for e in events
    ]
    seed_fields = [stored_fields(e) for e in seed_events]
    results = []
    legacy = []
    with tempfile.TemporaryDirectory() as tmp, own_server(Path(tmp) / "valkey") as (client, _):
        for model in ("hgb", "logreg", "rf"):
            pipe = make_pipeline(model).fit(X, y)
            path = Path(tmp) / f"{model}.qtm"
            diff = save_bundle(path, pipe, model, X[-2000:])
            loaded = bundles.load(path)
            runner = OnnxRunner(loaded.onnx)
            session, out_names, in_name = runner.session, [runner.output], runner.input
            predictor = Predictor(loaded)
            sk = slow_timed(loaded.pipeline.predict_proba, arrays)
            run = session.run
            ort = timed(
                lambda a, run=run, outs=out_names, name=in_name: run(outs, {name: a}), arrays
            )
            pred = timed(predictor.predict, events)
            scorer, call = stage_path(path)
            stage = timed(call, fields)
            assert scorer.counters["predictions"] == len(fields), model
            write = write_us(client, call, fields[WARMUP:], model)
            results.append((model, sk, ort, pred, stage, write, diff))
        for name, path, bare in legacy_models(X, y, Path(tmp)):
            scorer, call = stage_path(path)
            native = slow_timed(bare, arrays)
            stage = timed(call, seed_fields)
            assert scorer.counters["predictions"] == len(seed_fields), name
            write = write_us(client, call, seed_fields[WARMUP:], name)
            legacy.append((name, scorer.slot.predictor.serving, native, stage, write))
    p = percentile_us
    lines = [
        "## Models",
        "",
        f"`python -m benchmarks.bench_models`: hgb, logreg and rf trained by qt "
        f"(`training.make_pipeline`) on {len(X):,} warm qt-set vectors of a seeded simulated "
        f"half hour (the features engine over the simulator), labels {HORIZON_TRADES} trades "
        f"ahead. Per call, {CALLS:,} vectors after {WARMUP} warm-up calls (the bare scikit-learn and "
        f"legacy calls, milliseconds each: {SLOW_CALLS:,} after {SLOW_WARMUP}), this thread's CPU "
        "time (`thread_time_ns`, GC off; wall time on a busy shared machine adds preemptions to "
        "the tail): bare scikit-learn `predict_proba` on a pre-built 1×65 array (OpenMP limited "
        "to one thread); bare ONNX Runtime `session.run` on the same array (one thread); the "
        "Predictor from a `FeatureVector` event (schema check, row, ONNX Runtime, Prediction and "
        "Signal); the live stage's path (`models.live.Scorer`: the stored entry's fields -> "
        "decode -> schema check -> predict -> the Prediction's and Signal's stream fields, "
        "built without the events a Valkey output does not need); "
        f"the write of both with `qt_append` (batches of {WRITE_BATCH} vectors, wall time per "
        "vector, a valkey-server of the benchmark's own with AOF on).",
        "",
        "| model | sklearn p50 / p99 µs | ONNX Runtime p50 / p99 µs | Predictor p50 / p99 µs "
        "| stage path p50 / p99 µs | stage overhead over ONNX p50 µs | write per vector µs "
        "| stage + write p99 µs | ONNX vs sklearn max diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, sk, ort, pred, stage, write, diff in results:
        lines.append(
            f"| {model} | {p(sk, 50):.0f} / {p(sk, 99):.0f} "
            f"| {p(ort, 50):.1f} / {p(ort, 99):.1f} "
            f"| {p(pred, 50):.1f} / {p(pred, 99):.1f} "
            f"| {p(stage, 50):.1f} / {p(stage, 99):.1f} | {p(stage, 50) - p(ort, 50):.1f} "
            f"| {write:.1f} | {p(stage, 99) + write:.0f} | {diff:.1e} |"
        )
    lines += [
        "",
        "Legacy models (the users' kind: seed65 set, pickled StandardScaler, imported with "
        "`qt models import … --trust-pickle`), bare `predict_proba` / booster predict after the "
        "scaler beside the stage path:",
        "",
        "| model | served | bare p50 / p99 µs | stage path p50 / p99 µs | write per vector µs "
        "| stage + write p99 µs |",
        "|---|---|---|---|---|---|",
    ]
    for name, serving, native, stage, write in legacy:
        lines.append(
            f"| {name} | {serving} | {p(native, 50):.0f} / {p(native, 99):.0f} "
            f"| {p(stage, 50):.1f} / {p(stage, 99):.1f} | {write:.1f} "
            f"| {p(stage, 99) + write:.0f} |"
        )
    lines += [
        "",
        "Targets: models trained by qt p99 ≤ 200 µs per vector end to end in the stage "
        "(stage path + write); legacy models p99 ≤ 2 ms; stage overhead over the bare compiled "
        "call ≤ 30 µs at p50.",
    ]
    text = "\n".join(lines)
    print(text)
    write_section("models", text)
    for model, _sk, ort, _pred, stage, write, _diff in results:
        end_to_end = p(stage, 99) + write
        record("models", f"{model}: stage + write p99 per vector", end_to_end, "µs",
               ceiling=p(ort, 99), target="≤ 200 µs", met=end_to_end <= 200)  # fmt: skip
        overhead = p(stage, 50) - p(ort, 50)
        record("models", f"{model}: stage overhead over ONNX p50", overhead, "µs",
               target="≤ 30 µs", met=overhead <= 30)  # fmt: skip
    for name, _serving, native, stage, write in legacy:
        end_to_end = p(stage, 99) + write
        record("models", f"{name}: stage + write p99 per vector", end_to_end, "µs",
               ceiling=p(native, 99), target="≤ 2 ms", met=end_to_end <= 2000)  # fmt: skip


if __name__ == "__main__":
    main()
