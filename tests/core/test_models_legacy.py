"""`qt models import`: the users' legacy pickles and LightGBM text files become bundles safely."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
import types
import warnings
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.preprocessing import StandardScaler

from qt_cli.app import app
from qt_cli.core.events import FeatureVector
from qt_cli.core.features.catalog import catalog_hash, feature_set
from qt_cli.core.models.bundle import load
from qt_cli.core.models.predictor import Predictor

SEED65 = list(feature_set("seed65"))


def frame(
    n: int = 900, seed: int = 3, columns: list[str] | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, len(SEED65))), columns=columns or SEED65)
    score = X.iloc[:, 0].to_numpy()
    y = np.where(score > 0.5, 1, np.where(score < -0.5, -1, 0))
    return X, y


def legacy_files(
    tmp_path: Path, *, columns: list[str] | None = None, shift: int = 0
) -> tuple[Path, Path]:
    """Their layout: a RandomForest pickle (classes y + shift) and a separate scaler pickle."""
    X, y = frame(columns=columns)
    scaler = StandardScaler().fit(X)  # fitted on every row, as their training did
    rf = RandomForestClassifier(n_estimators=30, max_depth=6, random_state=0)
    rf.fit(pd.DataFrame(scaler.transform(X), columns=X.columns), y + shift)
    model, scaler_path = (
        tmp_path / "random_forest_balanced_20250807.pkl",
        tmp_path / "scaler_20250807.pkl",
    )
    joblib.dump(rf, model)
    joblib.dump(scaler, scaler_path)
    return model, scaler_path


def run_import(cli, model: Path, scaler: Path | None, out: Path, *extra: str):
    argv = [
        "models",
        "import",
        "--estimator",
        str(model),
        "--feature-set",
        "seed65",
        "--classes=-1,0,1",
        "--output",
        str(out),
        "--json",
        *extra,
    ]
    if scaler is not None:
        argv += ["--scaler", str(scaler)]
    return cli.invoke(app, argv)


def vector(values: np.ndarray, *, warm: bool = True) -> FeatureVector:
    return FeatureVector(
        symbol="WDOQ25",
        ts_event=1_754_308_800_000_000_000,
        feature_set="seed65",
        catalog_hash=catalog_hash(),
        features=dict(zip(SEED65, values.tolist(), strict=True)),
        warm=warm,
        session="feat1",
        seq=42,
    )


def test_rf_and_scaler_import_and_serve_like_the_originals(cli, tmp_path: Path) -> None:
    model, scaler = legacy_files(tmp_path)
    out = tmp_path / "rf.qtm"
    result = run_import(
        cli,
        model,
        scaler,
        out,
        "--trust-pickle",
        "--top-buyers",
        "3,85,120,308,72",
        "--top-sellers",
        "8,16,40,238,1",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["serving"] == "onnx"
    bundle = load(out)
    assert bundle.metadata["agent_ranking"] == {
        "top_buyers": [3, 85, 120, 308, 72],
        "top_sellers": [8, 16, 40, 238, 1],
    }
    rf, sc = joblib.load(model), joblib.load(scaler)
    X, _ = frame(seed=9)
    expected = rf.predict_proba(pd.DataFrame(sc.transform(X), columns=SEED65))
    predictor = Predictor(bundle)
    for i in range(20):
        prediction, _ = predictor.predict(vector(X.iloc[i].to_numpy()))
        got = [prediction.probabilities[k] for k in ("DOWN", "FLAT", "UP")]
        assert np.max(np.abs(np.array(got) - expected[i])) <= 1e-6


def test_column_one_is_hold_not_buy(cli, tmp_path: Path) -> None:
    """Their live code read proba[:, 1] as BUY; column 1 is FLAT/HOLD in both encodings."""
    for shift, classes in ((0, [-1, 0, 1]), (1, [0, 1, 2])):  # RF -1/0/1 and the XGBoost-style y+1
        model, scaler = legacy_files(tmp_path, shift=shift)
        out = tmp_path / f"m{shift}.qtm"
        assert run_import(cli, model, scaler, out, "--trust-pickle").exit_code == 0
        bundle = load(out)
        assert [c["value"] for c in bundle.classes] == classes
        assert [c["label"] for c in bundle.classes] == ["DOWN", "FLAT", "UP"]
        predictor = Predictor(bundle)
        X, _ = frame(seed=9)
        flat = X.iloc[:, 0].abs() < 0.1  # the model is confident: FLAT
        prediction, signal = predictor.predict(vector(X[flat].iloc[0].to_numpy()))
        assert prediction.label == "FLAT" and signal.action == "hold"
        up = X.iloc[:, 0] > 1.5
        prediction, signal = predictor.predict(vector(X[up].iloc[0].to_numpy()))
        assert prediction.label == "UP" and signal.action == "buy"
        down = X.iloc[:, 0] < -1.5
        _, signal = predictor.predict(vector(X[down].iloc[0].to_numpy()))
        assert signal.action == "sell"


def test_label_map_dict_layout(cli, tmp_path: Path) -> None:
    model, scaler = legacy_files(tmp_path, shift=1)
    wrapped = tmp_path / "xgb_like.pkl"
    joblib.dump({"model": joblib.load(model), "label_map": {-1: 0, 0: 1, 1: 2}}, wrapped)
    out = tmp_path / "mapped.qtm"
    result = run_import(cli, wrapped, scaler, out, "--trust-pickle", "--classes=1,0,-1")
    assert result.exit_code == 0, result.output  # the stored label map wins over --classes
    assert [c["label"] for c in load(out).classes] == ["DOWN", "FLAT", "UP"]


def test_pickle_without_trust_is_refused(cli, tmp_path: Path) -> None:
    model, scaler = legacy_files(tmp_path)
    result = run_import(cli, model, scaler, tmp_path / "x.qtm")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {model} is a pickle, and loading a pickle runs code")
    assert not (tmp_path / "x.qtm").exists()


def test_sha256_mismatch_is_refused(cli, tmp_path: Path) -> None:
    model, scaler = legacy_files(tmp_path)
    good = hashlib.sha256(model.read_bytes()).hexdigest()
    result = run_import(
        cli, model, scaler, tmp_path / "x.qtm", "--trust-pickle", "--sha256", "0" * 64
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {model}: sha256 {good} does not match the pinned")
    result = run_import(cli, model, scaler, tmp_path / "ok.qtm", "--trust-pickle", "--sha256", good)
    assert result.exit_code == 0, result.output


def test_feature_order_mismatch_names_the_differences(cli, tmp_path: Path) -> None:
    columns = list(SEED65)
    columns[0] = "returns_3"  # renamed
    model, _ = legacy_files(tmp_path, columns=columns)
    result = run_import(cli, model, None, tmp_path / "x.qtm", "--trust-pickle")
    assert result.exit_code == 1
    assert "missing returns_1; extra returns_3" in result.stderr
    columns = list(SEED65)
    columns[1], columns[2] = columns[2], columns[1]  # same names, another order
    model, _ = legacy_files(tmp_path, columns=columns)
    result = run_import(cli, model, None, tmp_path / "x.qtm", "--trust-pickle")
    assert result.exit_code == 1
    assert "same names in another order: returns_5 at 1 (set: 2)" in result.stderr


def test_sidecar_feature_list_for_a_model_fitted_on_arrays(cli, tmp_path: Path) -> None:
    X, y = frame()
    rf = RandomForestClassifier(n_estimators=5, random_state=0).fit(X.to_numpy(), y)
    model = tmp_path / "model.pkl"
    joblib.dump(rf, model)
    result = run_import(cli, model, None, tmp_path / "x.qtm", "--trust-pickle")
    assert "does not record its feature order: give --features" in result.stderr
    sidecar = tmp_path / "model.json"
    sidecar.write_text(json.dumps({"features": SEED65}))
    result = run_import(
        cli, model, None, tmp_path / "x.qtm", "--trust-pickle", "--features", str(sidecar)
    )
    assert result.exit_code == 0, result.output


def test_lightgbm_text_file_loads_without_a_pickle(cli, tmp_path: Path) -> None:
    import lightgbm  # in the dev extra: the users bring LightGBM text models

    X, y = frame()
    booster = lightgbm.train(
        {"objective": "multiclass", "num_class": 3, "verbose": -1, "num_threads": 1},
        lightgbm.Dataset(X, label=y + 1),
        num_boost_round=10,
    )
    text = tmp_path / "lightgbm_balanced_20250807.txt"
    booster.save_model(str(text))
    out = tmp_path / "lgb.qtm"
    result = run_import(cli, text, None, out)  # no --trust-pickle needed
    assert result.exit_code == 0, result.output
    bundle = load(out)
    assert [c["label"] for c in bundle.classes] == ["DOWN", "FLAT", "UP"]
    prediction, _ = Predictor(bundle).predict(vector(X.iloc[0].to_numpy()))
    expected = booster.predict(X.iloc[[0]])[0]
    assert np.allclose([prediction.probabilities[k] for k in ("DOWN", "FLAT", "UP")], expected)


def test_a_pickle_of_a_missing_package_says_which_extra(cli, tmp_path: Path, monkeypatch) -> None:
    module = types.ModuleType("qt_absent_booster")

    class Booster:
        pass

    Booster.__module__ = "qt_absent_booster"
    Booster.__qualname__ = "Booster"
    module.Booster = Booster
    monkeypatch.setitem(sys.modules, "qt_absent_booster", module)
    path = tmp_path / "xgboost_balanced.pkl"
    path.write_bytes(pickle.dumps(Booster()))
    monkeypatch.delitem(sys.modules, "qt_absent_booster")
    result = run_import(cli, path, None, tmp_path / "x.qtm", "--trust-pickle")
    assert result.exit_code == 3
    assert result.stderr.startswith(
        f"Error: {path} needs the qt_absent_booster package to load: pip install 'qt-cli[legacy]'"
    )


def test_xgboost_pickle_is_stored_as_its_json_model(cli, tmp_path: Path) -> None:
    import xgboost  # dev and [legacy] extras; their XGBClassifier encodes classes as y + 1

    X, y = frame()
    scaler = StandardScaler().fit(X)
    scaled = pd.DataFrame(scaler.transform(X), columns=SEED65)
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=3, tree_method="hist", n_jobs=1)
    model.fit(scaled, y + 1)
    model_path, scaler_path = tmp_path / "xgboost_balanced.pkl", tmp_path / "scaler.pkl"
    joblib.dump(model, model_path)
    joblib.dump(scaler, scaler_path)
    out = tmp_path / "xgb.qtm"
    result = run_import(cli, model_path, scaler_path, out, "--trust-pickle")
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["metadata.json", "native.json", "pipeline.skops"]
    bundle = load(out)
    assert [c["value"] for c in bundle.classes] == [0, 1, 2]
    assert [c["action"] for c in bundle.classes] == ["sell", "hold", "buy"]
    X2, _ = frame(seed=9)
    expected = model.predict_proba(pd.DataFrame(scaler.transform(X2), columns=SEED65))
    predictor = Predictor(bundle)
    with warnings.catch_warnings():  # the scaler's column names were checked at import: no
        warnings.simplefilter("error")  # "X does not have valid feature names" on every call
        for i in range(10):
            prediction, _ = predictor.predict(vector(X2.iloc[i].to_numpy()))
            got = [prediction.probabilities[k] for k in ("DOWN", "FLAT", "UP")]
            assert np.max(np.abs(np.array(got) - expected[i])) <= 1e-6
    result = cli.invoke(app, ["models", "verify", str(out)])
    assert result.exit_code == 0, result.output
