"""The serving core: schema checks, warm-up skipping, identities, confidence and cooldown."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from qt_cli.core.events import FeatureVector
from qt_cli.core.features.catalog import catalog_hash
from qt_cli.core.models.bundle import load
from qt_cli.core.models.errors import SchemaMismatch
from qt_cli.core.models.predictor import Predictor
from tests.core.test_models_bundle import NAMES, write


def vector(
    values, *, names=NAMES, warm=True, seq=1, ts=1_754_308_800_000_000_000, **kw
) -> FeatureVector:
    return FeatureVector(
        symbol="WDOQ25",
        ts_event=ts,
        feature_set=kw.get("feature_set", "qt"),
        catalog_hash=kw.get("catalog", catalog_hash()),
        features=dict(zip(names, list(values), strict=True)),
        warm=warm,
        session="feat1",
        seq=seq,
    )


@pytest.fixture
def bundle(tmp_path: Path):
    path, pipe, rows = write(tmp_path, "logreg")
    return load(path), pipe, rows


def test_prediction_and_signal_from_one_vector(bundle) -> None:
    b, pipe, rows = bundle
    predictor = Predictor(b)
    prediction, signal = predictor.predict(vector(rows[0], seq=42), price=5000.5)
    expected = pipe.predict_proba(rows[:1])[0]
    assert [prediction.probabilities[k] for k in ("DOWN", "FLAT", "UP")] == pytest.approx(
        expected, abs=1e-6
    )
    assert prediction.value == pytest.approx(expected[2] - expected[0], abs=1e-6)
    assert prediction.model_hash == b.content_hash and prediction.ts_features == prediction.ts_event
    # identities derive from the vector's (session, seq) and the model: re-scoring gives the same
    assert (prediction.session, prediction.seq) == (f"feat1/{b.content_hash[:12]}", 42)
    assert (signal.session, signal.seq) == (f"feat1/{b.content_hash[:12]}.signal", 42)
    again, _ = Predictor(b).predict(vector(rows[0], seq=42))
    assert (again.session, again.seq) == (prediction.session, prediction.seq)
    assert signal.price == 5000.5 and signal.confidence == pytest.approx(expected.max(), abs=1e-6)


def test_not_warm_vectors_are_skipped_and_counted(bundle) -> None:
    b, _, rows = bundle
    predictor = Predictor(b)
    assert predictor.predict(vector(rows[0], warm=False)) is None
    assert predictor.predict(vector(rows[1])) is not None
    assert predictor.counters == {
        "vectors": 2,
        "not_warm": 1,
        "predictions": 1,
        "signals": predictor.counters["signals"],
    }


def test_schema_mismatch_names_missing_and_extra(bundle) -> None:
    b, _, rows = bundle
    predictor = Predictor(b)
    names = list(NAMES)
    names[3] = "returns_999"
    with pytest.raises(SchemaMismatch, match="missing price_std_20; extra returns_999"):
        predictor.predict(vector(rows[0], names=tuple(names)))
    swapped = list(NAMES)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(SchemaMismatch, match="same names in another order"):
        predictor.predict(vector(rows[0], names=tuple(swapped)))
    with pytest.raises(SchemaMismatch, match="trained on catalog"):
        predictor.predict(vector(rows[0], catalog="0123456789abcdef"))
    with pytest.raises(SchemaMismatch, match="set 'seed65', the model needs 'qt'"):
        predictor.predict(vector(rows[0], feature_set="seed65"))


def test_min_confidence_and_cooldown_hold(bundle) -> None:
    b, pipe, rows = bundle
    proba = pipe.predict_proba(rows)
    directional = [i for i in range(len(rows)) if np.argmax(proba[i]) != 1]
    strict = Predictor(b, min_confidence=1.0)
    _, signal = strict.predict(vector(rows[directional[0]]))
    assert signal.action == "hold" and signal.reason.startswith("confidence")
    cooled = Predictor(b, cooldown_ns=10 * 10**9)
    t0 = 1_754_308_800_000_000_000
    actions = [
        cooled.predict(vector(rows[i], ts=t0 + k * 10**9, seq=k + 1))[1]
        for k, i in enumerate(directional[:3])
    ]
    assert actions[0].action in ("buy", "sell")
    assert [a.reason for a in actions[1:]] == ["cooldown", "cooldown"]
    assert not math.isnan(actions[0].confidence)
