"""Model bundles: save/verify/load round trip, content hash, trusted types, ONNX = scikit-learn."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator, TransformerMixin

from qt_cli.core.features.catalog import catalog_hash, feature_set
from qt_cli.core.models import bundle as bundles
from qt_cli.core.models.compiled import OnnxRunner, check_onnx, to_onnx_bytes
from qt_cli.core.models.errors import ModelError, UntrustedModel
from qt_cli.core.models.training import make_pipeline

NAMES = feature_set("qt")


def synthetic(n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(NAMES))) * np.geomspace(1e-4, 1e3, len(NAMES))
    score = X[:, 3] / 1e-4 * 0 + X[:, 10] / X[:, 10].std()
    y = np.where(score > 0.4, 1, np.where(score < -0.4, -1, 0))
    return X, y


def write(tmp_path: Path, model: str = "hgb") -> tuple[Path, object, np.ndarray]:
    X, y = synthetic()
    pipe = make_pipeline(model).fit(X[:1000], y[:1000])
    onnx_bytes = to_onnx_bytes(pipe, len(NAMES))
    diff = check_onnx(onnx_bytes, pipe, X[1000:])
    meta = bundles.new_metadata(
        model=model,
        features={"set": "qt", "names": list(NAMES), "catalog_hash": catalog_hash()},
        label={
            "horizon": "60s",
            "horizon_ns": 60_000_000_000,
            "classes": [
                {
                    "index": j,
                    "value": int(c),
                    "label": bundles.CLASS_NAMES[int(c)],
                    "action": bundles.ACTIONS[int(c)],
                }
                for j, c in enumerate(pipe.classes_)
            ],
        },
        training={"symbols": ["WDOQ25"]},
        serving={"path": "onnx", "onnx_max_diff": diff},
    )
    path = tmp_path / f"{model}.qtm"
    bundles.save(path, pipeline=pipe, metadata=meta, onnx_bytes=onnx_bytes)
    return path, pipe, X[1000:]


@pytest.mark.parametrize("model", ["hgb", "logreg", "rf"])
def test_onnx_probabilities_equal_sklearn_within_1e6(tmp_path: Path, model: str) -> None:
    path, pipe, rows = write(tmp_path, model)
    loaded = bundles.load(path)
    got = OnnxRunner(loaded.onnx).proba(rows)
    assert np.max(np.abs(got - pipe.predict_proba(rows))) <= 1e-6
    assert np.max(np.abs(loaded.pipeline.predict_proba(rows) - pipe.predict_proba(rows))) == 0


def test_round_trip_keeps_metadata_and_verifies(tmp_path: Path) -> None:
    path, _, _ = write(tmp_path)
    loaded = bundles.load(path)
    assert loaded.names == NAMES
    assert loaded.metadata["features"]["catalog_hash"] == catalog_hash()
    assert [c["value"] for c in loaded.classes] == [-1, 0, 1]
    assert len(loaded.content_hash) == 64
    report = bundles.verify(path)
    assert report["ok"] and report["onnx_max_diff"] <= 1e-6
    assert (
        "scikit-learn" in loaded.metadata["versions"]
        and "onnxruntime" in loaded.metadata["versions"]
    )


def rewrite_member(path: Path, name: str, data: bytes, *, rehash: bool) -> None:
    members, metadata = bundles.read_members(path)
    members[name] = data
    if rehash:
        bundles.write_members(path, members, metadata)
        return
    with zipfile.ZipFile(path, "w") as zf:  # keep the old metadata (and its hash)
        for member, blob in members.items():
            zf.writestr(member, blob)


def test_tampered_bundle_is_refused(tmp_path: Path) -> None:
    path, _, _ = write(tmp_path, "logreg")
    members, _ = bundles.read_members(path)
    rewrite_member(path, bundles.ONNX, members[bundles.ONNX] + b"\0", rehash=False)
    with pytest.raises(ModelError, match="content hash mismatch"):
        bundles.load(path)


class Sneaky(BaseEstimator, TransformerMixin):
    """A type no bundle may hold."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return X


def test_untrusted_type_is_refused_with_its_name(tmp_path: Path) -> None:
    path, pipe, _ = write(tmp_path, "logreg")
    pipe.steps.insert(0, ("sneaky", Sneaky()))
    rewrite_member(path, bundles.PIPELINE, sio.dumps(pipe), rehash=True)
    with pytest.raises(
        UntrustedModel, match=r"untrusted type tests\.core\.test_models_bundle\.Sneaky"
    ):
        bundles.load(path)


def test_list_names_each_bundle_and_the_broken_one(tmp_path: Path) -> None:
    write(tmp_path, "logreg")
    (tmp_path / "junk.qtm").write_bytes(b"not a zip")
    rows = bundles.list_bundles([tmp_path])
    assert [Path(r["path"]).name for r in rows] == ["junk.qtm", "logreg.qtm"]
    assert "not a qt model bundle" in rows[0]["error"]
    assert rows[1]["model"] == "logreg" and rows[1]["features"] == len(NAMES)
