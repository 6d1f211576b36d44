"""`qt models import`: the users' existing models (shared/docs/legacy-models.md) as bundles.

Their artifacts: joblib pickles of a RandomForest (classes −1/0/1) or an XGBClassifier (0/1/2 =
y + 1), a LightGBM Booster text file (0/1/2), a separate StandardScaler pickle, sometimes a dict
`{"model": …, "label_map": {-1: 0, 0: 1, 1: 2}}` or a sidecar `{"features": [...]}`. A pickle
runs code when loaded: it is opened only with `trust_pickle`, and never when a pinned sha256 does
not match. Feature order comes from the fitted objects (`feature_names_in_`, the booster's names)
or the sidecar, and must equal the set's. Class directions come from `classes_` (or the label
map), never from a column position.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from qt_cli.core.features.catalog import catalog_hash, feature_set
from qt_cli.core.models import bundle as bundles
from qt_cli.core.models.errors import (
    MissingExtra,
    ModelError,
    ModelUsageError,
    SchemaMismatch,
    UntrustedModel,
)
from qt_cli.core.models.predictor import missing_and_extra

LEGACY_EXTRA = "pip install 'qt-cli[legacy]'"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _parse_classes(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise ModelUsageError(f"--classes {text!r}: expected integers like -1,0,1") from None
    if not values or any(v not in (-1, 0, 1) for v in values) or len(set(values)) != len(values):
        raise ModelUsageError(f"--classes {text!r}: distinct directions among -1, 0, 1")
    return values


def _parse_agents(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        ids = [int(v) for v in text.split(",")]
    except ValueError:
        raise ModelUsageError(
            f"{option} {text!r}: expected 5 agent ids like 3,85,120,308,72"
        ) from None
    if len(ids) != 5:
        raise ModelUsageError(f"{option}: expected the 5 most frequent agent ids, got {len(ids)}")
    return ids


def load_pickle(path: Path, *, trust: bool, pinned: str | None) -> Any:
    """Unpickle only when trusted and the pinned hash (if any) matches."""
    if not path.exists():
        raise ModelUsageError(f"{path}: no such file")
    if not trust:
        raise UntrustedModel(
            f"{path} is a pickle, and loading a pickle runs code: pass --trust-pickle if you "
            "trust where it came from (and --sha256 to pin it)"
        )
    if pinned is not None:
        actual = sha256_of(path)
        if actual != pinned.lower():
            raise UntrustedModel(
                f"{path}: sha256 {actual} does not match the pinned {pinned}; not loaded"
            )
    import joblib

    try:
        return joblib.load(path)  # trusted: --trust-pickle given, pinned sha256 checked above
    except ModuleNotFoundError as exc:
        raise MissingExtra(f"{path} needs the {exc.name} package to load: {LEGACY_EXTRA}") from None
    except Exception as exc:
        raise ModelError(f"{path}: cannot be unpickled ({type(exc).__name__}: {exc})") from None


def load_lightgbm_text(text: str) -> Any:
    """A LightGBM Booster from its text model (no code runs)."""
    try:
        import lightgbm
    except ImportError:
        raise MissingExtra(f"a LightGBM model needs the lightgbm package: {LEGACY_EXTRA}") from None
    return lightgbm.Booster(model_str=text)


def load_xgboost_json(data: bytes) -> Any:
    """An XGBoost booster from its JSON model (no code runs)."""
    try:
        import xgboost
    except ImportError:
        raise MissingExtra(f"an XGBoost model needs the xgboost package: {LEGACY_EXTRA}") from None
    if not data.strip():  # XGBoost aborts the whole process on an empty buffer
        raise ModelError("the XGBoost model is empty")
    booster = xgboost.Booster(params={"nthread": 1})
    booster.load_model(bytearray(data))
    return booster


def lightgbm_text_features(text: str) -> list[str]:
    match = re.search(r"^feature_names=(.*)$", text, re.M)
    return match[1].split() if match else []


def check_order(found: list[str], expected: tuple[str, ...], source: str) -> None:
    """SchemaMismatch naming the missing, extra and moved features."""
    if list(found) == list(expected):
        return
    parts = missing_and_extra(found, expected)
    if not parts:
        moved = [
            f"{n} at {i} (set: {expected.index(n)})"
            for i, n in enumerate(found)
            if expected[i] != n
        ]
        parts.append(f"same names in another order: {', '.join(moved[:4])}")
    raise SchemaMismatch(f"feature order of {source} differs from the set: {'; '.join(parts)}")


def _names_of(obj: Any) -> list[str] | None:
    names = getattr(obj, "feature_names_in_", None)
    if names is not None:
        return [str(n) for n in names]
    booster = getattr(obj, "get_booster", None)
    if booster is not None:
        try:
            names = booster().feature_names
        except Exception:
            names = None
        if names:
            return list(names)
    return None


def _sidecar(path: Path) -> list[str]:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ModelUsageError(f"--features {path}: not a JSON feature list ({exc})") from None
    if isinstance(data, dict):
        data = data.get("features")
    if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
        raise ModelUsageError(f'--features {path}: expected a list or {{"features": [...]}}')
    return data


def import_model(
    *,
    estimator: Path,
    output: Path,
    feature_set: str = "seed65",
    classes: str = "-1,0,1",
    scaler: Path | None = None,
    features: Path | None = None,
    trust_pickle: bool = False,
    sha256: list[str] | None = None,
    top_buyers: str | None = None,
    top_sellers: str | None = None,
) -> dict[str, Any]:
    """Wrap a legacy model into a bundle; returns a summary."""
    names = feature_set_names(feature_set)
    directions = _parse_classes(classes)
    buyers = _parse_agents(top_buyers, "--top-buyers")
    sellers = _parse_agents(top_sellers, "--top-sellers")
    if (buyers is None) != (sellers is None):
        raise ModelUsageError("give both --top-buyers and --top-sellers")
    pins = list(sha256 or [])
    if len(pins) > 2:
        raise ModelUsageError("--sha256: at most two (the estimator's, then the scaler's)")
    estimator = Path(estimator)
    if not estimator.exists():
        raise ModelUsageError(f"--estimator {estimator}: no such file")
    sources: dict[str, Any] = {
        "estimator": {"file": estimator.name, "sha256": sha256_of(estimator)}
    }
    native_text = None
    native_xgb: bytes | None = None
    label_map: dict[int, int] | None = None
    if estimator.suffix == ".txt":
        native_text = estimator.read_text()
        if pins and sha256_of(estimator) != pins[0].lower():
            raise UntrustedModel(f"{estimator}: sha256 does not match the pinned {pins[0]}")
        found = lightgbm_text_features(native_text)
        model: Any = load_lightgbm_text(native_text)
        class_values = list(range(int(model.num_model_per_iteration())))
        kind = "lightgbm"
    else:
        obj = load_pickle(estimator, trust=trust_pickle, pinned=pins[0] if pins else None)
        if isinstance(obj, dict) and "model" in obj:
            label_map = {int(k): int(v) for k, v in (obj.get("label_map") or {}).items()} or None
            model = obj["model"]
        else:
            model = obj
        if not hasattr(model, "predict_proba"):
            raise ModelError(f"{estimator}: {type(model).__name__} has no predict_proba")
        found = _names_of(model) or []
        class_values = [int(c) for c in getattr(model, "classes_", [])]
        kind = type(model).__name__
        if type(model).__module__.startswith("xgboost"):
            # stored as the booster's JSON model: loading it later runs no code
            native_xgb = bytes(model.get_booster().save_raw("json"))
    if features is not None:
        side = _sidecar(Path(features))
        if found and found != side:
            check_order(side, tuple(found), f"--features {features} against the estimator")
        found = side
    if not found:
        raise SchemaMismatch(
            f"{estimator} does not record its feature order: give --features F.json "
            "(the list in training column order)"
        )
    check_order(found, names, str(estimator))
    scaler_obj = None
    if scaler is not None:
        scaler_obj = load_pickle(
            Path(scaler), trust=trust_pickle, pinned=pins[1] if len(pins) > 1 else None
        )
        sources["scaler"] = {"file": Path(scaler).name, "sha256": sha256_of(Path(scaler))}
        scaler_names = _names_of(scaler_obj)
        if scaler_names is not None:
            check_order(scaler_names, names, str(scaler))
    # Class directions: from classes_ (or the label map), in classes_ order.
    if label_map is not None:
        inverse = {v: k for k, v in label_map.items()}
        mapped = [inverse.get(c) for c in class_values]
        if any(m is None for m in mapped):
            raise ModelError(
                f"{estimator}: label_map {label_map} does not cover classes {class_values}"
            )
        class_directions = [int(m) for m in mapped]  # type: ignore[arg-type]
    elif sorted(class_values) == sorted(directions) and set(class_values) <= {-1, 0, 1}:
        class_directions = class_values  # the classes are the directions themselves
    elif len(class_values) == len(directions):
        class_directions = [directions[i] for i in range(len(class_values))]
    else:
        raise ModelError(
            f"{estimator}: classes_ {class_values} do not match --classes {directions}"
        )
    classes_meta = [
        {
            "index": j,
            "value": int(cv),
            "label": bundles.CLASS_NAMES[d],
            "action": bundles.ACTIONS[d],
        }
        for j, (cv, d) in enumerate(zip(class_values, class_directions, strict=True))
    ]
    # The order is checked and stored in the bundle; rows are served as arrays in that order.
    for fitted in (model, scaler_obj):
        if fitted is not None and "feature_names_in_" in getattr(fitted, "__dict__", {}):
            del fitted.feature_names_in_
    pipeline = None
    onnx_bytes = None
    serving = "native"
    note = ""
    if native_text is not None or native_xgb is not None:
        from sklearn.pipeline import Pipeline

        # a native model: the bundle's pipeline is the preprocessing only
        pipeline = Pipeline([("scaler", scaler_obj)]) if scaler_obj is not None else None
        note = "served natively (no ONNX converter installed for this model type)"
    else:
        from sklearn.pipeline import Pipeline

        from qt_cli.core.models.compiled import float32_cast, needs_float32

        steps: list[tuple[str, Any]] = []
        if scaler_obj is not None:
            steps.append(("scaler", scaler_obj))
        if needs_float32(model):
            steps.append(("cast", float32_cast()))
        steps.append(("model", model))
        pipeline = Pipeline(steps)
        onnx_bytes, note = _try_onnx(pipeline, len(names))
        serving = "onnx" if onnx_bytes is not None else "native"
    metadata = bundles.new_metadata(
        model=f"legacy:{kind}",
        estimator=kind,
        features={"set": feature_set, "names": list(names), "catalog_hash": catalog_hash()},
        label={
            "horizon": "unknown (legacy)",
            "classes": classes_meta,
            "label_map": {str(k): v for k, v in label_map.items()} if label_map else None,
        },
        training={"symbols": [], "source": sources},
        agent_ranking={"top_buyers": buyers, "top_sellers": sellers} if buyers else None,
        serving={"path": serving, "threads": 1, "note": note},
    )
    digest = _save(output, pipeline, metadata, onnx_bytes, native_text, native_xgb)
    return {
        "path": str(output),
        "estimator": kind,
        "feature_set": feature_set,
        "classes": classes_meta,
        "serving": serving,
        "note": note,
        "content_hash": digest,
    }


def _try_onnx(pipeline: Any, n: int) -> tuple[bytes | None, str]:
    """The ONNX graph when a converter exists and agrees within 1e-6 on probe rows."""
    from qt_cli.core.models.bundle import _probe_rows
    from qt_cli.core.models.compiled import check_onnx, to_onnx_bytes

    try:
        data = to_onnx_bytes(pipeline, n)
        check_onnx(data, pipeline, _probe_rows(pipeline, n))
    except ModelError as exc:
        return None, f"served natively: {exc}"
    return data, ""


def _save(
    output: Path,
    pipeline: Any,
    metadata: dict[str, Any],
    onnx_bytes: bytes | None,
    native_text: str | None,
    native_xgb: bytes | None = None,
) -> str:
    import skops.io as sio

    members: dict[str, bytes] = {}
    if native_text is not None:
        members[bundles.NATIVE] = native_text.encode()
    if native_xgb is not None:
        members[bundles.NATIVE_XGB] = native_xgb
    if onnx_bytes is not None:
        members[bundles.ONNX] = onnx_bytes
    try:
        if pipeline is not None:
            members[bundles.PIPELINE] = sio.dumps(pipeline)
        return bundles.write_members(output, members, metadata)
    except Exception as exc:
        raise ModelError(
            f"cannot write {type(pipeline.steps[-1][1]).__name__} with skops: {exc}"
        ) from None


def feature_set_names(name: str) -> tuple[str, ...]:
    return feature_set(name)


def native_proba(model: Any, rows: np.ndarray) -> np.ndarray:
    """Probabilities of a native model: a LightGBM booster's predict, an XGBoost booster's
    inplace_predict (multi:softprob gives one column per class)."""
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(rows), dtype=np.float64)
    if hasattr(model, "inplace_predict"):
        out = model.inplace_predict(rows)
    else:
        out = model.predict(rows, num_threads=1)  # a LightGBM booster
    return np.asarray(out, dtype=np.float64).reshape(len(rows), -1)
