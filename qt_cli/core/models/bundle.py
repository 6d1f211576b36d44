"""Model bundles (`.qtm`): a fitted pipeline, its ONNX graph and metadata in one zip file.

Members: `metadata.json` (feature set, names and order, catalog hash, label definition,
training range, symbols, validation metrics, library versions, creation time, content hash),
`pipeline.skops` (the scikit-learn pipeline, scaler inside it, written with skops), optionally
`model.onnx` (the serving graph), `native.txt` (a LightGBM booster's text model) or
`native.json` (an XGBoost booster's JSON model); with a native model, `pipeline.skops` holds only
the preprocessing (the scaler), when there is one.

Loading never runs code from the file: skops rebuilds only the types in `TRUSTED_TYPES` (and the
plain scikit-learn/numpy types skops trusts itself), and a file that names any other type is
refused with that type's name. The content hash (sha256 over every member and the metadata
without the hash) is checked before anything is parsed.
"""

from __future__ import annotations

import hashlib
import platform
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from qt_cli.core.errors import QtError
from qt_cli.core.models.errors import ModelError, UntrustedModel

FORMAT = "qt-model"
FORMAT_VERSION = 1
SUFFIX = ".qtm"
METADATA = "metadata.json"
PIPELINE = "pipeline.skops"
ONNX = "model.onnx"
NATIVE = "native.txt"
NATIVE_XGB = "native.json"
MEMBERS = (METADATA, PIPELINE, ONNX, NATIVE, NATIVE_XGB)

# Types skops does not trust by default that a qt bundle may hold. Anything else is refused.
TRUSTED_TYPES = (
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.LogitLink",
    "skl2onnx.sklapi.cast_transformer.CastTransformer",
    "numpy.dtype",
    "builtins.slice",
)

# Signal actions by the sign of a class value (-1 down -> sell, 0 flat -> hold, 1 up -> buy).
CLASS_NAMES = {-1: "DOWN", 0: "FLAT", 1: "UP"}
ACTIONS = {-1: "sell", 0: "hold", 1: "buy"}


def library_versions() -> dict[str, str]:
    """Versions of the libraries a bundle depends on (those installed)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in (
        "qt-cli",
        "scikit-learn",
        "numpy",
        "skops",
        "skl2onnx",
        "onnx",
        "onnxruntime",
        "xgboost",
        "lightgbm",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def content_hash(members: dict[str, bytes], metadata: dict[str, Any]) -> str:
    """sha256 over the metadata (without its hash) and every other member, name by name."""
    digest = hashlib.sha256()
    meta = {k: v for k, v in metadata.items() if k != "content_hash"}
    digest.update(orjson.dumps(meta, option=orjson.OPT_SORT_KEYS))
    for name in sorted(members):
        if name == METADATA:
            continue
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256(members[name]).digest())
    return digest.hexdigest()


def write_members(path: Path, members: dict[str, bytes], metadata: dict[str, Any]) -> str:
    """Write a bundle file (metadata hashed here); returns the content hash."""
    metadata = dict(metadata)
    metadata["content_hash"] = content_hash(members, metadata)
    blobs = {
        METADATA: orjson.dumps(metadata, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS),
        **{k: v for k, v in members.items() if k != METADATA},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in MEMBERS:
            if name in blobs:
                info = zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, blobs[name])
    tmp.replace(path)
    return str(metadata["content_hash"])


def read_members(path: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The members and metadata of a bundle, its content hash checked (ModelError otherwise)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            unknown = [n for n in names if n not in MEMBERS]
            if unknown:
                raise ModelError(f"{path}: not a qt model bundle (unknown member {unknown[0]})")
            members = {n: zf.read(n) for n in names}
    except FileNotFoundError:
        raise ModelError(f"{path}: no such model file") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{path}: not a qt model bundle ({exc})") from None
    if METADATA not in members:
        raise ModelError(f"{path}: not a qt model bundle (no {METADATA})")
    try:
        metadata = orjson.loads(members[METADATA])
    except orjson.JSONDecodeError as exc:
        raise ModelError(f"{path}: unreadable {METADATA} ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ModelError(f"{path}: not a qt model bundle (format is not {FORMAT!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{path}: bundle format version {metadata.get('format_version')} is not "
            f"{FORMAT_VERSION}; re-create it with this qt"
        )
    expected = metadata.get("content_hash")
    actual = content_hash(members, metadata)
    if expected != actual:
        raise ModelError(
            f"{path}: content hash mismatch (stored {str(expected)[:16]}…, computed "
            f"{actual[:16]}…): the file was changed after it was written; do not use it"
        )
    problem = metadata_problem(metadata) or (
        None
        if PIPELINE in members or NATIVE in members or NATIVE_XGB in members
        else f"no model in it ({PIPELINE}, {NATIVE} or {NATIVE_XGB})"
    )
    if problem:
        raise ModelError(f"{path}: not a usable qt model bundle ({problem})")
    return members, metadata


def metadata_problem(metadata: dict[str, Any]) -> str | None:
    """What is missing or malformed in the metadata serving reads (feature names and set, the
    label's classes), or None. A bundle qt wrote always passes; a hand-made one may not."""
    features = metadata.get("features")
    if not isinstance(features, dict):
        return "metadata has no 'features' object"
    names = features.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return "metadata 'features.names' is not a list of feature names"
    if not isinstance(features.get("set"), str):
        return "metadata 'features.set' is not a feature set name"
    label = metadata.get("label")
    classes = label.get("classes") if isinstance(label, dict) else None
    if not isinstance(classes, list) or not classes:
        return "metadata 'label.classes' is not a list of classes"
    for c in classes:
        if not (
            isinstance(c, dict)
            and type(c.get("index")) is int
            and type(c.get("value")) is int
            and isinstance(c.get("label"), str)
            and c.get("action") in ACTIONS.values()
        ):
            return f"metadata class {c!r} lacks an index, a value, a label or an action (buy, sell, hold)"
    for section in ("serving", "training", "validation"):  # optional, objects when present
        if not isinstance(metadata.get(section, {}), dict):
            return f"metadata '{section}' is not an object"
    validation = metadata.get("validation", {})
    for name in ("model", "baseline"):  # the metrics read back (the rest: scheme, folds, …)
        if not isinstance(validation.get(name, {}), dict):
            return f"metadata 'validation.{name}' is not an object of metrics"
    return None


def check_types(data: bytes, where: str) -> None:
    """Refuse a skops blob that names a type outside TRUSTED_TYPES (UntrustedModel)."""
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:
        raise ModelError(f"{where}: unreadable skops data ({exc})") from None
    refused = [t for t in untrusted if t not in TRUSTED_TYPES]
    if refused:
        raise UntrustedModel(
            f"{where}: holds untrusted type {refused[0]}"
            + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else "")
            + "; qt loads only scikit-learn pipelines it knows"
        )


def load_skops(data: bytes, where: str) -> Any:
    import skops.io as sio

    check_types(data, where)
    untrusted = sio.get_untrusted_types(data=data)
    return sio.loads(data, trusted=list(untrusted))


@dataclass
class Bundle:
    """A loaded bundle: its pipeline, serving graph (or native model) and metadata."""

    path: Path | None
    metadata: dict[str, Any]
    pipeline: Any = None
    onnx: bytes | None = None
    native: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.metadata["features"]["names"])

    @property
    def content_hash(self) -> str:
        return str(self.metadata.get("content_hash", ""))

    @property
    def classes(self) -> list[dict[str, Any]]:
        """One entry per probability column: {index, value, label, action}."""
        return list(self.metadata["label"]["classes"])

    def serving(self) -> str:
        return str(self.metadata.get("serving", {}).get("path", "native"))


def new_metadata(**fields_: Any) -> dict[str, Any]:
    """The common metadata fields, filled in; callers add theirs."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_ns": time.time_ns(),
        "versions": library_versions(),
        **fields_,
    }


def save(
    path: Path,
    *,
    pipeline: Any,
    metadata: dict[str, Any],
    onnx_bytes: bytes | None = None,
    native_text: str | None = None,
) -> str:
    """Write a bundle; returns its content hash."""
    import skops.io as sio

    members: dict[str, bytes] = {PIPELINE: sio.dumps(pipeline)}
    if onnx_bytes is not None:
        members[ONNX] = onnx_bytes
    if native_text is not None:
        members[NATIVE] = native_text.encode()
    return write_members(path, members, metadata)


def load(path: Path | str) -> Bundle:
    """Load a bundle: content hash checked, trusted types only."""
    path = Path(path)
    members, metadata = read_members(path)
    pipeline = load_skops(members[PIPELINE], str(path)) if PIPELINE in members else None
    native = None
    try:
        if NATIVE in members:
            from qt_cli.core.models.legacy import load_lightgbm_text

            native = load_lightgbm_text(members[NATIVE].decode())
        elif NATIVE_XGB in members:
            from qt_cli.core.models.legacy import load_xgboost_json

            native = load_xgboost_json(members[NATIVE_XGB])
    except ModelError as exc:
        member = NATIVE if NATIVE in members else NATIVE_XGB
        raise ModelError(f"{path}: unreadable {member} ({exc})") from None
    except QtError:
        raise
    except Exception as exc:  # the libraries' own errors (LightGBMError, XGBoostError, …)
        member = NATIVE if NATIVE in members else NATIVE_XGB
        raise ModelError(f"{path}: unreadable {member} ({_first_line(exc)})") from None
    return Bundle(path, metadata, pipeline, members.get(ONNX), native)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def verify(path: Path | str) -> dict[str, Any]:
    """Check a bundle the way serving would: hash, types, and ONNX against scikit-learn.

    The ONNX graph is run on rows drawn around the scaler's mean (the validation rows are not
    stored) and compared with the pipeline's probabilities.
    """
    import numpy as np

    from qt_cli.core.models.compiled import MAX_PROBABILITY_DIFF, OnnxRunner

    bundle = load(path)
    report: dict[str, Any] = {
        "path": str(path),
        "ok": True,
        "content_hash": bundle.content_hash,
        "serving": bundle.serving(),
        "checks": ["content hash", "trusted types"],
    }
    if bundle.native is not None:
        report["checks"].append("native model loads")
    if bundle.onnx is not None:
        try:
            runner = OnnxRunner(bundle.onnx)  # what serving builds
        except ModelError as exc:
            raise ModelError(f"{path}: {exc}") from None
        report["checks"].append("onnx graph loads")
    if bundle.onnx is not None and bundle.pipeline is not None:
        n = len(bundle.names)
        rows = _probe_rows(bundle.pipeline, n)
        expected = bundle.pipeline.predict_proba(rows)
        got = runner.proba(rows)
        diff = float(np.max(np.abs(expected - got)))
        report["onnx_max_diff"] = diff
        report["checks"].append("onnx = scikit-learn")
        if diff > MAX_PROBABILITY_DIFF:
            raise ModelError(
                f"{path}: the ONNX graph differs from the pipeline by {diff:.2e} "
                f"(> {MAX_PROBABILITY_DIFF:g})"
            )
    return report


def _probe_rows(pipeline: Any, n: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(0)
    scaler = None
    for _, step in getattr(pipeline, "steps", []):
        if hasattr(step, "mean_") and hasattr(step, "scale_"):
            scaler = step
            break
    z = rng.standard_normal((256, n))
    if scaler is None:
        return z
    return z * np.asarray(scaler.scale_) + np.asarray(scaler.mean_)


def summary(path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """One line of `qt models list`."""
    training = metadata.get("training", {})
    validation = metadata.get("validation", {}).get("model", {})
    return {
        "path": str(path),
        "model": metadata.get("model", ""),
        "feature_set": metadata.get("features", {}).get("set", ""),
        "features": len(metadata.get("features", {}).get("names", [])),
        "symbols": training.get("symbols", []),
        "horizon": metadata.get("label", {}).get("horizon", ""),
        "balanced_accuracy": validation.get("balanced_accuracy"),
        "serving": metadata.get("serving", {}).get("path", ""),
        "created_ns": metadata.get("created_ns"),
        "content_hash": str(metadata.get("content_hash", ""))[:16],
    }


def find_bundles(paths: list[Path]) -> Iterator[Path]:
    """The `.qtm` files named, or inside the folders named (not recursive beyond one level)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob(f"*{SUFFIX}") if p.is_file())
        elif path.exists():
            yield path
        else:
            raise ModelError(f"{path}: no such file or folder")


def list_bundles(paths: list[Path]) -> list[dict[str, Any]]:
    """`qt models list`: one summary per readable bundle; unreadable ones say why."""
    rows = []
    for path in find_bundles(paths):
        try:
            _, metadata = read_members(path)
        except ModelError as exc:
            rows.append({"path": str(path), "error": str(exc)})
            continue
        rows.append(summary(path, metadata))
    return rows


def metadata_of(path: Path | str) -> dict[str, Any]:
    """`qt models show`: the metadata of a bundle (hash checked) plus its members' sizes."""
    members, metadata = read_members(Path(path))
    return {**metadata, "members": {k: len(v) for k, v in members.items()}}
