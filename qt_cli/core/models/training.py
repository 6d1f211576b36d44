"""`qt train`: a labelled dataset from stored history, walk-forward validation, a bundle.

Dataset: the symbol's stored feature vectors of one set (`query("features")`, one column per
feature), warm ones only, and its stored ticks (`query("ticks")`). A vector at t carries only
data up to t (the engine's contract). Its label looks only at prices after t: the last trade
price at or before t against the last trade price at or before t + horizon (a time horizon), or
the price N trades later (a trade horizon). Rows whose horizon reaches past the last stored trade
of the range are dropped, never labelled FLAT.

Label: UP when the return exceeds the threshold, DOWN below minus it, FLAT otherwise. The
threshold is `--threshold` or, inside each training fold, the third quantile of |return| of that
fold's rows (so the three classes start about equal).

Validation: walk-forward. Rows are cut in time order into `folds + 1` blocks; fold k trains on
every row before block k+1 whose label window ends before the block starts (purge ≥ horizon) and
is not inside an embargo after an earlier test block, and tests on block k+1. The scaler and
threshold are fitted inside each fold. No shuffling anywhere. Metrics are those of the
concatenated out-of-fold predictions, beside a majority-class baseline (the training fold's most
frequent class, with its class frequencies as probabilities).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qt_cli.core.features.catalog import feature_set
from qt_cli.core.models import bundle as bundles
from qt_cli.core.models.errors import ModelUsageError, TrainingDataError
from qt_cli.core.timeparse import parse_duration_ns

MODELS = ("hgb", "logreg", "rf")
MIN_ROWS = 200
MIN_TEST_ROWS = 20
CLASS_VALUES = (-1, 0, 1)
SKILL_MARGIN = 0.05  # balanced accuracy over the baseline's before a model claims skill


@dataclass(frozen=True)
class Horizon:
    """A label horizon: `ns` of time or `trades` trades."""

    text: str
    ns: int = 0
    trades: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"horizon": self.text, "horizon_ns": self.ns, "horizon_trades": self.trades}


def parse_horizon(text: str) -> Horizon:
    """`60s`, `5m`, `500ms` (time) or `100trades` (trades)."""
    match = re.fullmatch(r"\s*(\d+)\s*trades?\s*", text)
    if match:
        n = int(match[1])
        if n < 1:
            raise ModelUsageError("--horizon: at least 1 trade")
        return Horizon(f"{n}trades", trades=n)
    try:
        ns = parse_duration_ns(text)
    except Exception:
        raise ModelUsageError(
            f"--horizon {text!r}: expected a duration (60s, 5m) or a trade count (100trades)"
        ) from None
    if ns <= 0:
        raise ModelUsageError("--horizon must be positive")
    return Horizon(text.strip(), ns=ns)


@dataclass
class Dataset:
    """Rows in time order: features X, event times, forward returns and the prices used."""

    names: tuple[str, ...]
    X: np.ndarray
    ts: np.ndarray
    horizon_end_ns: np.ndarray
    returns: np.ndarray
    price: np.ndarray
    catalog_hash: str
    counts: dict[str, int] = field(default_factory=dict)


def _ticks(
    client: Any, symbol: str, start: Any, end: Any, tz: Any
) -> tuple[np.ndarray, np.ndarray]:
    from qt_cli.core.query import query

    frame = query("ticks", symbols=[symbol], start=start, end=end, tz=tz, client=client)
    ts = frame["ts_event"].to_numpy(dtype=np.int64)
    price = frame["price"].to_numpy(dtype=np.float64)
    order = np.argsort(ts, kind="stable")
    return ts[order], price[order]


def load_dataset(
    client: Any,
    *,
    symbol: str,
    start: Any,
    end: Any,
    set_name: str,
    horizon: Horizon,
    tz: Any = None,
) -> Dataset:
    """Warm vectors of `set_name` with their forward returns (point in time, see module doc)."""
    from qt_cli.core.query import query

    names = feature_set(set_name)
    frame = query("features", symbols=[symbol], start=start, end=end, tz=tz, client=client)
    total = len(frame)
    if total == 0:
        raise TrainingDataError(
            f"no feature vectors of {symbol} stored in that range: run the features stage "
            "(or widen --from/--to; `qt query --kind features` shows what is stored)"
        )
    in_set = frame["feature_set"].astype(str).to_numpy() == set_name
    frame = frame[in_set]
    if len(frame) == 0:
        raise TrainingDataError(f"no stored vectors of feature set {set_name!r} in that range")
    hashes = sorted(set(frame["catalog_hash"].astype(str)))
    if len(hashes) > 1:
        raise TrainingDataError(
            f"the catalog hash changes inside the range ({', '.join(hashes)}): the features were "
            "computed by different definitions; train on a range with one hash"
        )
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise TrainingDataError(
            f"stored vectors lack {len(missing)} feature(s) of set {set_name}: "
            f"{', '.join(missing[:8])}"
        )
    # A feature NaN in every vector (no book, no agent ranking) keeps every vector cold: name it.
    all_nan = [n for n in names if frame[n].isna().all()]
    if all_nan:
        raise TrainingDataError(
            f"features all NaN in the range: {', '.join(all_nan[:8])}"
            + (f" (+{len(all_nan) - 8} more)" if len(all_nan) > 8 else "")
            + "; their inputs were never stored (e.g. no book events for the book features)"
        )
    warm = frame["warm"].to_numpy(dtype=bool)
    not_warm = int((~warm).sum())
    frame = frame[warm]
    X = frame[list(names)].to_numpy(dtype=np.float64)
    ts = frame["ts_event"].to_numpy(dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    X, ts = X[order], ts[order]
    tick_ts, tick_price = _ticks(client, symbol, start, end, tz)
    if len(tick_ts) == 0:
        raise TrainingDataError(f"no ticks of {symbol} stored in that range to label with")
    # The price at t: the last trade at or before t (all trades stamped t are known at t).
    now_i = np.searchsorted(tick_ts, ts, side="right") - 1
    if horizon.trades:
        fut_i = now_i + horizon.trades
        ok = (now_i >= 0) & (fut_i < len(tick_ts))
        fut_i = np.where(ok, fut_i, 0)
        end_ns = tick_ts[fut_i]
    else:
        end_ns = ts + horizon.ns
        fut_i = np.searchsorted(tick_ts, end_ns, side="right") - 1
        ok = (now_i >= 0) & (end_ns <= tick_ts[-1])
    rows_nan = np.isnan(X).any(axis=1)
    ok &= ~rows_nan
    now_price = tick_price[np.clip(now_i, 0, None)]
    fut_price = tick_price[fut_i]
    returns = fut_price / now_price - 1.0
    counts = {
        "vectors": total,
        "not_warm": not_warm,
        "nan_rows": int(rows_nan.sum()),
        "no_future": int((~ok).sum() - rows_nan.sum()),
        "rows": int(ok.sum()),
        "ticks": len(tick_ts),
    }
    return Dataset(names, X[ok], ts[ok], end_ns[ok], returns[ok], now_price[ok], hashes[0], counts)


def choose_threshold(returns: np.ndarray) -> float:
    """The third quantile of |return|: about a third of the rows FLAT."""
    if len(returns) == 0:
        return 0.0
    return float(np.quantile(np.abs(returns), 1 / 3))


def label(returns: np.ndarray, threshold: float) -> np.ndarray:
    return np.where(returns > threshold, 1, np.where(returns < -threshold, -1, 0)).astype(np.int64)


def make_pipeline(model: str, seed: int = 0) -> Any:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from qt_cli.core.models.compiled import float32_cast

    if model == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier

        # early_stopping off: its validation split is a random (shuffled) sample of the fold,
        # whose overlapping labels would leak into the stopping decision
        clf: Any = HistGradientBoostingClassifier(
            max_iter=150,
            learning_rate=0.05,
            max_leaf_nodes=15,
            early_stopping=False,
            random_state=seed,
        )
    elif model == "logreg":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(max_iter=500, C=1.0)
    elif model == "rf":
        from sklearn.ensemble import RandomForestClassifier

        clf = RandomForestClassifier(
            n_estimators=100, max_depth=8, min_samples_leaf=20, random_state=seed, n_jobs=1
        )
    else:
        raise ModelUsageError(f"--model {model!r}: use one of {', '.join(MODELS)}")
    steps: list[tuple[str, Any]] = [("scaler", StandardScaler())]
    if model != "logreg":
        steps.append(("cast", float32_cast()))
    steps.append(("model", clf))
    return Pipeline(steps)


def full_proba(pipeline: Any, X: np.ndarray) -> np.ndarray:
    """Probabilities over all three classes (a fold may lack one: its column is 0)."""
    proba = pipeline.predict_proba(X)
    out = np.zeros((len(X), len(CLASS_VALUES)))
    for j, c in enumerate(pipeline.classes_):
        out[:, CLASS_VALUES.index(int(c))] = proba[:, j]
    return out


def metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy, log loss and per-class precision/recall."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        log_loss,
        precision_recall_fscore_support,
    )

    pred = np.asarray(CLASS_VALUES)[np.argmax(proba, axis=1)]
    clipped = np.clip(proba, 1e-15, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    precision, recall, _, support = precision_recall_fscore_support(
        y, pred, labels=list(CLASS_VALUES), zero_division=0
    )
    with warnings.catch_warnings():
        # A test fold without one of the classes: balanced accuracy averages the recall of the
        # classes present (scikit-learn says so in a warning on every such fold).
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = float(balanced_accuracy_score(y, pred))
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": balanced,
        "log_loss": float(log_loss(y, clipped, labels=list(CLASS_VALUES))),
        "per_class": {
            bundles.CLASS_NAMES[c]: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(CLASS_VALUES)
        },
        "rows": len(y),
    }


@dataclass
class Fold:
    train: np.ndarray  # row indices
    test: np.ndarray


def walk_forward(
    ts: np.ndarray, horizon_end_ns: np.ndarray, *, folds: int, embargo_ns: int
) -> list[Fold]:
    """Time-ordered folds: purge (label ends before the test block), embargo after test blocks."""
    n = len(ts)
    edges = np.linspace(0, n, folds + 2).astype(int)
    out = []
    embargoed = np.zeros(n, dtype=bool)
    for k in range(1, folds + 1):
        lo, hi = edges[k], edges[k + 1]
        test = np.arange(lo, hi)
        test_start = ts[lo]
        before = np.arange(0, lo)
        keep = (horizon_end_ns[before] < test_start) & ~embargoed[before]
        out.append(Fold(before[keep], test))
        # rows just after this test block use features overlapping its labels
        test_end = horizon_end_ns[lo:hi].max()
        embargoed |= (ts > ts[hi - 1]) & (ts <= test_end + embargo_ns)
    return out


@dataclass
class TrainResult:
    metadata: dict[str, Any]
    path: Path
    content_hash: str


def train(
    client: Any,
    *,
    symbol: str,
    start: Any,
    end: Any,
    set_name: str,
    horizon: str,
    model: str,
    output: Path,
    threshold: float | None = None,
    folds: int = 4,
    embargo: str | None = None,
    tz: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> TrainResult:
    """Train, validate walk-forward, fit on everything, compile and save a bundle."""
    if model not in MODELS:
        raise ModelUsageError(f"--model {model!r}: use one of {', '.join(MODELS)}")
    if folds < 2:
        raise ModelUsageError("--folds must be at least 2")
    if threshold is not None and not threshold >= 0:
        raise ModelUsageError("--threshold must be 0 or positive (a return, e.g. 0.0002)")
    hz = parse_horizon(horizon)
    # One thread for the fits: on a busy machine OpenMP's spinning workers made one
    # HistGradientBoosting fit 14× slower (81 s against 6 s on 2 shared cores).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _train(
            client,
            symbol=symbol,
            start=start,
            end=end,
            set_name=set_name,
            hz=hz,
            model=model,
            output=output,
            threshold=threshold,
            folds=folds,
            embargo=embargo,
            tz=tz,
            progress=progress,
        )


def _train(
    client: Any,
    *,
    symbol: str,
    start: Any,
    end: Any,
    set_name: str,
    hz: Horizon,
    model: str,
    output: Path,
    threshold: float | None,
    folds: int,
    embargo: str | None,
    tz: Any,
    progress: Callable[[str, int, int], None] | None,
) -> TrainResult:
    data = load_dataset(
        client, symbol=symbol, start=start, end=end, set_name=set_name, horizon=hz, tz=tz
    )
    n = len(data.ts)
    if n < MIN_ROWS:
        raise TrainingDataError(
            f"too little data: {n} labelled warm vectors (need at least {MIN_ROWS}; "
            f"{data.counts['not_warm']} not warm, {data.counts['no_future']} without a full "
            "horizon); widen --from/--to"
        )
    horizon_span = int(np.median(data.horizon_end_ns - data.ts)) if n else 0
    embargo_ns = parse_duration_ns(embargo) if embargo else horizon_span
    steps = folds + 2
    report = progress or (lambda what, done, total: None)
    fold_results = []
    oof_y: list[np.ndarray] = []
    oof_p: list[np.ndarray] = []
    oof_b: list[np.ndarray] = []
    plan = walk_forward(data.ts, data.horizon_end_ns, folds=folds, embargo_ns=embargo_ns)
    for k, fold in enumerate(plan):
        report(f"fold {k + 1}/{folds}", k, steps)
        if len(fold.train) < MIN_ROWS // 2 or len(fold.test) < MIN_TEST_ROWS:
            raise TrainingDataError(
                f"too little data for {folds} folds (fold {k + 1}: {len(fold.train)} training, "
                f"{len(fold.test)} test rows); use fewer --folds or a wider range"
            )
        thr = threshold if threshold is not None else choose_threshold(data.returns[fold.train])
        y_train = label(data.returns[fold.train], thr)
        y_test = label(data.returns[fold.test], thr)
        if len(np.unique(y_train)) < 2:
            raise TrainingDataError(
                f"fold {k + 1}: one class only in the training rows ({bundles.CLASS_NAMES[int(y_train[0])]}); "
                "lower --threshold or widen the range"
            )
        pipe = make_pipeline(model).fit(data.X[fold.train], y_train)
        proba = full_proba(pipe, data.X[fold.test])
        freq = np.array([(y_train == c).mean() for c in CLASS_VALUES])
        base = np.tile(freq, (len(fold.test), 1))
        fold_results.append(
            {
                "train_rows": len(fold.train),
                "test_rows": len(fold.test),
                "threshold": thr,
                "test_from_ns": int(data.ts[fold.test[0]]),
                "test_to_ns": int(data.ts[fold.test[-1]]),
                "model": metrics(y_test, proba),
                "baseline": metrics(y_test, base),
            }
        )
        oof_y.append(y_test)
        oof_p.append(proba)
        oof_b.append(base)
    y_all = np.concatenate(oof_y)
    model_m = metrics(y_all, np.concatenate(oof_p))
    base_m = metrics(y_all, np.concatenate(oof_b))
    skill = model_m["balanced_accuracy"] >= base_m["balanced_accuracy"] + SKILL_MARGIN
    # Probabilities scoring worse than the class frequencies (a higher log loss out of sample):
    # overconfident, whatever the ranking's skill; a confidence threshold on them means little.
    beats = model_m["log_loss"] <= base_m["log_loss"]
    report("final fit", folds, steps)
    thr_final = threshold if threshold is not None else choose_threshold(data.returns)
    y_final = label(data.returns, thr_final)
    present = np.unique(y_final)
    if len(present) < 2:
        raise TrainingDataError(
            f"one class only ({bundles.CLASS_NAMES[int(present[0])]}) in the labelled rows: "
            "lower --threshold or widen the range"
        )
    pipe = make_pipeline(model).fit(data.X, y_final)
    report("compile", folds + 1, steps)
    from qt_cli.core.models.compiled import check_onnx, to_onnx_bytes

    onnx_bytes = to_onnx_bytes(pipe, len(data.names))
    diff = check_onnx(onnx_bytes, pipe, data.X[np.concatenate([f.test for f in plan])])
    classes = [
        {
            "index": j,
            "value": int(c),
            "label": bundles.CLASS_NAMES[int(c)],
            "action": bundles.ACTIONS[int(c)],
        }
        for j, c in enumerate(pipe.classes_)
    ]
    metadata = bundles.new_metadata(
        model=model,
        estimator=type(pipe.steps[-1][1]).__name__,
        features={"set": set_name, "names": list(data.names), "catalog_hash": data.catalog_hash},
        label={
            **hz.as_dict(),
            "threshold": thr_final,
            "threshold_rule": "given (--threshold)"
            if threshold is not None
            else "third quantile of |return| in each training fold",
            "definition": "return = price(t + horizon) / price(t) - 1; UP > threshold, "
            "DOWN < -threshold, else FLAT",
            "classes": classes,
        },
        training={
            "symbols": [symbol],
            "from_ns": int(data.ts[0]),
            "to_ns": int(data.ts[-1]),
            "rows": n,
            "counts": data.counts,
        },
        validation={
            "scheme": "walk-forward",
            "folds": folds,
            "purge": "label window ends before the test fold",
            "embargo_ns": embargo_ns,
            "model": model_m,
            "baseline": base_m,
            "skill": bool(skill),
            "skill_rule": f"balanced accuracy ≥ the baseline's + {SKILL_MARGIN}",
            "log_loss_beats_baseline": bool(beats),
            "per_fold": fold_results,
        },
        serving={"path": "onnx", "onnx_max_diff": diff, "threads": 1},
    )
    digest = bundles.save(output, pipeline=pipe, metadata=metadata, onnx_bytes=onnx_bytes)
    report("saved", steps, steps)
    metadata["content_hash"] = digest
    return TrainResult(metadata, output, digest)
