"""The serving core: feature vector -> Prediction and Signal, and a backtest over stored history.

`Predictor(bundle)` checks every vector's schema against the model (set, names, order, catalog
hash: one SchemaMismatch naming the missing and extra features), skips and counts vectors that
are not warm, predicts class probabilities through the compiled path (ONNX Runtime, one thread;
a legacy model without a converter natively), and builds a `Prediction` and a `Signal`. Their
identities derive from the input vector's (session, seq) and the model's hash, so scoring the
same vector with the same model twice gives the same events (the bridge stores them once).

Signal: the most probable class's action (classes' actions come from the bundle, which took them
from `classes_`), HOLD when its probability is below `min_confidence` or a BUY/SELL came less
than `cooldown_ns` earlier for the symbol.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from qt_cli.core.events import FeatureVector, Prediction, Signal, _flat_value, values_maker
from qt_cli.core.models.bundle import Bundle, load
from qt_cli.core.models.errors import ModelError, ModelUsageError, SchemaMismatch


def missing_and_extra(found: Sequence[str], expected: Sequence[str]) -> list[str]:
    """`missing …` and `extra …` (six names at most each), for the names that differ."""
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:6])}" + (" …" if len(missing) > 6 else ""))
    if extra:
        parts.append(f"extra {', '.join(extra[:6])}" + (" …" if len(extra) > 6 else ""))
    return parts


def schema_difference(found: tuple[str, ...], expected: tuple[str, ...]) -> str:
    parts = missing_and_extra(found, expected)
    if not parts:
        first = next(i for i, (a, b) in enumerate(zip(found, expected, strict=True)) if a != b)
        parts.append(f"same names in another order (first at {first}: {found[first]})")
    return "; ".join(parts)


@dataclass
class Predictor:
    """Scores feature vectors with one bundle."""

    bundle: Bundle
    min_confidence: float = 0.0
    cooldown_ns: int = 0
    name: str = ""
    live: bool = False  # stamp each Prediction's latency_us (from the vector's ts_init)
    counters: dict[str, int] = field(
        default_factory=lambda: {"vectors": 0, "not_warm": 0, "predictions": 0, "signals": 0}
    )

    def __post_init__(self) -> None:
        meta = self.bundle.metadata
        self.names = tuple(meta["features"]["names"])
        self.n = len(self.names)
        self.feature_set = meta["features"]["set"]
        self.catalog_hash = meta["features"].get("catalog_hash", "")
        self.model_hash = self.bundle.content_hash
        self.name = self.name or (
            self.bundle.path.stem if self.bundle.path else str(meta.get("model"))
        )
        classes = sorted(self.bundle.classes, key=lambda c: c["index"])
        self.labels = tuple(c["label"] for c in classes)
        self.actions = tuple(c["action"] for c in classes)
        self.up = next((i for i, c in enumerate(classes) if c["label"] == "UP"), None)
        self.down = next((i for i, c in enumerate(classes) if c["label"] == "DOWN"), None)
        self.tag = self.model_hash[:12]
        self._last_signal: dict[str, int] = {}
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ModelUsageError("--min-confidence must be between 0 and 1")
        self.serving = "native"
        if self.bundle.onnx is not None:
            from qt_cli.core.models.compiled import OnnxRunner

            try:
                runner = OnnxRunner(self.bundle.onnx)
            except ModelError as exc:
                raise ModelError(f"{self.bundle.path or 'the bundle'}: {exc}") from None
            self.proba = runner.proba
            self.first = runner.first
            self.serving = "onnx"
        else:
            if self.bundle.native is not None:
                from qt_cli.core.models.legacy import native_proba

                model = self.bundle.native
                pre = self.bundle.pipeline  # the scaler, when the model had one
                if pre is not None:
                    self.proba = lambda rows: native_proba(model, pre.transform(rows))
                else:
                    self.proba = lambda rows: native_proba(model, rows)
            else:
                self.proba = self.bundle.pipeline.predict_proba
            self.first = lambda rows: self.proba(rows)[0].tolist()
        # The stream-field texts that are the same for every vector (as `to_fields` writes them)
        self._model_text = _text(self.name)
        self._hash_text = _text(self.model_hash)
        self._set_text = _text(self.feature_set)
        self._label_texts = tuple(_text(label) for label in self.labels)
        self._matched = self.names  # the last vector's names that matched `names`

    def check(self, vector: FeatureVector) -> None:
        """SchemaMismatch unless the vector has the model's set, names, order and catalog hash."""
        if vector.feature_set != self.feature_set:
            raise SchemaMismatch(
                f"feature vectors of set {vector.feature_set!r}, the model needs {self.feature_set!r}"
            )
        if self.catalog_hash and vector.catalog_hash != self.catalog_hash:
            raise SchemaMismatch(
                f"feature vectors of catalog {vector.catalog_hash or '(none)'}, the model was "
                f"trained on catalog {self.catalog_hash}: retrain or recompute the features"
            )
        keys = tuple(vector.features)
        # Against the last names that matched first: orjson hands out the same name objects
        # again (its key cache), which compare by identity
        if keys != self._matched:
            if keys != self.names:
                raise SchemaMismatch(
                    f"feature vector does not match the model: {schema_difference(keys, self.names)}"
                )
            self._matched = keys

    def row(self, vector: FeatureVector) -> np.ndarray:
        return np.fromiter(vector.features.values(), np.float64, self.n).reshape(1, self.n)

    def predict(
        self, vector: FeatureVector, *, price: float = math.nan
    ) -> tuple[Prediction, Signal] | None:
        """The Prediction and Signal for one vector; None (counted) when it is not warm."""
        q = self.score(vector)
        if q is None:
            return None
        return self.events(self.decide(vector, q, price))

    def predict_fields(
        self, vector: FeatureVector, *, price: float = math.nan, events: bool = True
    ) -> Decision | None:
        """What `predict` decides for one vector (`fields` turns it into the Prediction's and
        Signal's stream field values), with the two events only when `events`; None (counted)
        when it is not warm. The live stage's path: no event is built to be turned into
        fields."""
        q = self.score(vector)
        if q is None:
            return None
        decision = self.decide(vector, q, price)
        if events:
            decision.prediction, decision.signal = self.events(decision)
        return decision

    def score(self, vector: FeatureVector) -> list[float] | None:
        """The vector's class probabilities (schema checked); None (counted) when not warm."""
        self.counters["vectors"] += 1
        self.check(vector)
        if not vector.warm:
            self.counters["not_warm"] += 1
            return None
        return self.first(self.row(vector))

    def build(
        self, vector: FeatureVector, p: np.ndarray | list[float], price: float = math.nan
    ) -> tuple[Prediction, Signal]:
        """The Prediction and Signal for a vector's class probabilities `p`."""
        q = p.tolist() if isinstance(p, np.ndarray) else p  # Python floats: no numpy scalars
        return self.events(self.decide(vector, q, price))

    def decide(self, vector: FeatureVector, q: list[float], price: float = math.nan) -> Decision:
        """The most probable class and the signal's action for probabilities `q` (the cooldown
        and the counters move here), stamped now."""
        best = q.index(max(q))  # the first of equal maxima, as np.argmax
        confidence = q[best]
        up = q[self.up] if self.up is not None else 0.0
        down = q[self.down] if self.down is not None else 0.0
        now = time.time_ns()
        action = self.actions[best]
        reason = f"{self.labels[best]} {confidence:.3f}"
        if action != "hold":
            if confidence < self.min_confidence:
                action, reason = "hold", f"confidence {confidence:.3f} < {self.min_confidence:g}"
            else:
                last = self._last_signal.get(vector.symbol)
                if last is not None and vector.ts_event - last < self.cooldown_ns:
                    action, reason = "hold", "cooldown"
                else:
                    self._last_signal[vector.symbol] = vector.ts_event
        self.counters["predictions"] += 1
        if action != "hold":
            self.counters["signals"] += 1
        return Decision(
            vector,
            q,
            best,
            up - down,
            (now - vector.ts_init) / 1e3 if self.live and vector.ts_init else math.nan,
            now,
            f"{vector.session}/{self.tag}",
            action,
            confidence,
            reason,
            price,
        )

    def events(self, d: Decision) -> tuple[Prediction, Signal]:
        """The Prediction and Signal of a decision (made as `values_maker` makes events: the
        values in field order, a frozen dataclass's __init__ costs twice as much)."""
        vector = d.vector
        prediction = _make_prediction(
            (
                vector.symbol,  # symbol
                vector.ts_event,  # ts_event
                self.name,  # model
                self.model_hash,  # model_hash
                self.feature_set,  # feature_set
                d.value,  # value
                self.labels[d.best],  # label
                dict(zip(self.labels, d.q, strict=True)),  # probabilities
                vector.ts_event,  # ts_features
                d.latency_us,  # latency_us
                d.now,  # ts_init
                d.session,  # session
                vector.seq,  # seq
            )
        )
        signal = _make_signal(
            (
                vector.symbol,  # symbol
                vector.ts_event,  # ts_event
                d.action,  # action
                d.confidence,  # confidence
                d.price,  # price
                self.name,  # model
                d.reason,  # reason
                d.now,  # ts_init
                f"{d.session}.signal",  # session
                vector.seq,  # seq
            )
        )
        return prediction, signal

    def fields(self, d: Decision) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The values of `events(d)`'s stream fields (`PREDICTION_FIELDS`, `SIGNAL_FIELDS`),
        each the text `Event.to_fields` gives, built without the events (tests check they
        are the same)."""
        vector = d.vector
        symbol = vector.symbol
        if type(symbol) is not str:
            symbol = _flat_value(symbol)
        stamp = vector.ts_event
        ts = int.__repr__(stamp) if type(stamp) is int else _flat_value(stamp)
        seq = int.__repr__(vector.seq) if type(vector.seq) is int else _flat_value(vector.seq)
        now = int.__repr__(d.now)
        value = d.value
        latency = d.latency_us
        price = d.price
        confidence = d.confidence
        return (
            "prediction",
            symbol,
            ts,
            self._model_text,
            self._hash_text,
            self._set_text,
            ("" if value != value else _frepr(value)) if type(value) is float else _flat_value(value),
            self._label_texts[d.best],
            _dumps(dict(zip(self.labels, d.q, strict=True))).decode(),
            ts,
            ("" if latency != latency else _frepr(latency)) if type(latency) is float else _flat_value(latency),
            now,
            d.session,
            seq,
        ), (
            "signal",
            symbol,
            ts,
            d.action,
            ("" if confidence != confidence else _frepr(confidence)) if type(confidence) is float else _flat_value(confidence),
            ("" if price != price else _frepr(price)) if type(price) is float else _flat_value(price),
            self._model_text,
            d.reason,
            now,
            f"{d.session}.signal",
            seq,
        )  # fmt: skip


# The stream fields of a Prediction and of a Signal, in `to_fields` order (`Predictor.fields`)
PREDICTION_FIELDS = ("type", *(name for name, _, _ in Prediction._spec))
SIGNAL_FIELDS = ("type", *(name for name, _, _ in Signal._spec))
_frepr = float.__repr__
_dumps = orjson.dumps
_make_prediction = values_maker(Prediction)
_make_signal = values_maker(Signal)


def _text(value: Any) -> str:
    return value if type(value) is str else _flat_value(value)


class Decision:
    """What `Predictor.decide` made of one vector's probabilities (`events` and `fields` turn
    it into the Prediction and Signal, or their stream fields)."""

    __slots__ = (
        "action",
        "best",
        "confidence",
        "latency_us",
        "now",
        "prediction",
        "price",
        "q",
        "reason",
        "session",
        "signal",
        "value",
        "vector",
    )

    def __init__(
        self,
        vector: FeatureVector,
        q: list[float],
        best: int,
        value: float,
        latency_us: float,
        now: int,
        session: str,
        action: str,
        confidence: float,
        reason: str,
        price: float,
    ) -> None:
        self.vector = vector
        self.q = q
        self.best = best
        self.value = value
        self.latency_us = latency_us
        self.now = now
        self.session = session
        self.action = action
        self.confidence = confidence
        self.reason = reason
        self.price = price
        self.prediction: Prediction | None = None
        self.signal: Signal | None = None


# --- backtest over stored history ---------------------------------------------------------------

_VECTOR_FIELDS = {f.name for f in fields(FeatureVector)} | {"type", "late", "features"}


def vectors_of(frame: Any) -> list[FeatureVector]:
    """FeatureVector events back from a `query("features")` frame (feature columns in order)."""
    names = [c for c in frame.columns if c not in _VECTOR_FIELDS]
    values = frame[names].to_numpy(dtype=np.float64)
    out = []
    cols = {
        c: frame[c].to_numpy()
        for c in ("symbol", "ts_event", "feature_set", "catalog_hash", "warm", "session", "seq")
    }
    for i in range(len(frame)):
        out.append(
            FeatureVector(
                symbol=str(cols["symbol"][i]),
                ts_event=int(cols["ts_event"][i]),
                feature_set=str(cols["feature_set"][i]),
                catalog_hash=str(cols["catalog_hash"][i]),
                features=dict(zip(names, values[i].tolist(), strict=True)),
                warm=bool(cols["warm"][i]),
                session=str(cols["session"][i]),
                seq=int(cols["seq"][i]),
            )
        )
    return out


def backtest(
    client: Any,
    *,
    model: Path | str,
    symbol: str,
    start: Any,
    end: Any,
    min_confidence: float = 0.0,
    cooldown: str | None = None,
    hold: str | None = None,
    cost_points: float = 0.0,
    output: Path | None = None,
    tz: Any = None,
) -> dict[str, Any]:
    """Score stored vectors and trade each BUY/SELL for the model's horizon (simulated)."""
    from qt_cli.core.models.training import parse_horizon
    from qt_cli.core.query import query
    from qt_cli.core.sources.sim import profile_for
    from qt_cli.core.timeparse import parse_duration_ns

    bundle = load(model)
    label = bundle.metadata.get("label", {})
    if hold is not None:
        horizon = parse_horizon(hold)
    elif label.get("horizon_ns") or label.get("horizon_trades"):
        horizon = parse_horizon(str(label["horizon"]))
    else:
        raise ModelUsageError(
            "this model has no label horizon: give --hold (e.g. 60s or 100trades)"
        )
    if cost_points < 0:
        raise ModelUsageError("--cost must be 0 or positive (points per trade)")
    predictor = Predictor(
        bundle,
        min_confidence=min_confidence,
        cooldown_ns=parse_duration_ns(cooldown) if cooldown else 0,
    )
    frame = query("features", symbols=[symbol], start=start, end=end, tz=tz, client=client)
    frame = frame[frame["feature_set"].astype(str).to_numpy() == predictor.feature_set]
    ticks = query("ticks", symbols=[symbol], start=start, end=end, tz=tz, client=client)
    tick_ts = ticks["ts_event"].to_numpy(dtype=np.int64)
    tick_price = ticks["price"].to_numpy(dtype=np.float64)
    rows = []
    for vector in vectors_of(frame):
        i = int(np.searchsorted(tick_ts, vector.ts_event, side="right")) - 1
        price = float(tick_price[i]) if i >= 0 else math.nan
        out = predictor.predict(vector, price=price)
        if out is None:
            continue
        prediction, signal = out
        if signal.action == "hold" or i < 0:
            continue
        if horizon.trades:
            j = i + horizon.trades
            if j >= len(tick_ts):
                continue
        else:
            exit_ns = vector.ts_event + horizon.ns
            if exit_ns > tick_ts[-1]:
                continue
            j = int(np.searchsorted(tick_ts, exit_ns, side="right")) - 1
        exit_price = float(tick_price[j])
        direction = 1 if signal.action == "buy" else -1
        gross = (exit_price - price) * direction
        rows.append(
            {
                "ts_event": vector.ts_event,
                "symbol": symbol,
                "action": signal.action,
                "confidence": signal.confidence,
                "label": prediction.label,
                "entry_price": price,
                "exit_ns": int(tick_ts[j]),
                "exit_price": exit_price,
                "pnl_points": gross - cost_points,
                "hit": gross > 0,
                "session": signal.session,
                "seq": signal.seq,
            }
        )
    tick = profile_for(symbol).tick
    pnl = np.array([r["pnl_points"] for r in rows]) if rows else np.zeros(0)
    hits = sum(1 for r in rows if r["hit"])
    report = {
        "kind": "backtest (simulated: each BUY/SELL held for the horizon, 1 contract, no slippage)",
        "model": str(model),
        "model_hash": bundle.content_hash,
        "serving": predictor.serving,
        "symbol": symbol,
        "horizon": horizon.text,
        "cost_points_per_trade": cost_points,
        "vectors": predictor.counters["vectors"],
        "not_warm": predictor.counters["not_warm"],
        "predictions": predictor.counters["predictions"],
        "trades": len(rows),
        "buys": sum(1 for r in rows if r["action"] == "buy"),
        "sells": sum(1 for r in rows if r["action"] == "sell"),
        "hit_rate": hits / len(rows) if rows else None,
        "pnl_points": float(pnl.sum()),
        "pnl_ticks": float(pnl.sum() / tick),
        "mean_pnl_points": float(pnl.mean()) if rows else None,
        "tick_size": tick,
    }
    if output is not None:
        write_signals(rows, Path(output))
        report["output"] = str(output)
    return report


def write_signals(rows: list[dict[str, Any]], path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(
        rows,
        columns=[
            "ts_event",
            "symbol",
            "action",
            "confidence",
            "label",
            "entry_price",
            "exit_ns",
            "exit_price",
            "pnl_points",
            "hit",
            "session",
            "seq",
        ],
    )
    frame["simulated"] = True
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix in (".jsonl", ".ndjson"):
        frame.to_json(path, orient="records", lines=True)
    else:
        raise ModelUsageError(f"--output {path}: use a .parquet, .csv or .jsonl file")
