"""The compiled serving path: a fitted pipeline as an ONNX graph, run by ONNX Runtime on one thread.

The scaler runs in double precision; tree ensembles take float32 input (ONNX Runtime's tree
operators compare in float32, and skl2onnx 1.20 cannot build a double HistGradientBoosting graph),
so their pipelines hold a `CastTransformer` step before the trees, in scikit-learn as in ONNX. Save time checks the graph against `predict_proba` on the
validation rows (`MAX_PROBABILITY_DIFF`); a graph that disagrees is not stored.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from qt_cli.core.models.errors import MissingExtra, ModelError

MAX_PROBABILITY_DIFF = 1e-6
INPUT_NAME = "X"
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def needs_float32(estimator: Any) -> bool:
    """Tree ensembles compare in float32 in ONNX Runtime: their pipelines cast before them."""
    name = type(estimator).__name__
    return "Forest" in name or "Tree" in name or "Boosting" in name or "XGB" in name


def float32_cast() -> Any:
    """The pipeline step that casts to float32, understood by scikit-learn and skl2onnx alike."""
    from skl2onnx.sklapi import CastTransformer

    return CastTransformer(dtype=np.float32)


def to_onnx_bytes(pipeline: Any, n_features: int) -> bytes:
    """The pipeline as one ONNX graph, input `X` (double), output the class probabilities."""
    from skl2onnx import to_onnx

    final = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    sample = np.zeros((1, n_features), dtype=np.float64)
    try:
        with warnings.catch_warnings():
            # skl2onnx 1.20 passes numpy booleans where protobuf wants ints (tree "missing value
            # tracks true" flags); protobuf 6 warns, the values are right. protobuf 7 refuses
            # them, hence the pin protobuf<7 in pyproject.toml.
            warnings.filterwarnings(
                "ignore", message=".*Expected an int, got a boolean.*", category=DeprecationWarning
            )
            model = to_onnx(
                pipeline,
                sample,
                options={id(final): {"zipmap": False}},
                target_opset=TARGET_OPSET,
            )
    except Exception as exc:  # skl2onnx raises many types for an estimator it cannot convert
        cause = exc.__cause__ or exc
        raise ModelError(
            f"cannot compile {type(final).__name__} to ONNX: {str(cause).splitlines()[0][:200]}"
        ) from None
    return model.SerializeToString()


class OnnxRunner:
    """An ONNX Runtime session on one thread; `proba(X)` returns (n, classes) float64."""

    def __init__(self, onnx_bytes: bytes) -> None:
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - a dependency of qt
            raise MissingExtra("onnxruntime is not installed: pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                onnx_bytes, options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's own errors (InvalidProtobuf, Fail, …)
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelError(f"the ONNX graph does not load ({text})") from None
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        prob = [n for n in names if "prob" in n]
        self.output = prob[-1] if prob else names[-1]
        self.input = self.session.get_inputs()[0].name
        self._run = self.session.run
        self._outs = [self.output]
        # The binding's own run, without the Python wrapper's per-call checks (graph capture,
        # missing inputs, OrtValue ownership, EP fallback): none applies to one numpy input of
        # the graph's input name on the CPU provider. About 1 µs a call; the wrapper when an
        # onnxruntime version has no such binding.
        sess = getattr(self.session, "_sess", None)
        bound = getattr(sess, "run", None)
        if bound is None:  # pragma: no cover - onnxruntime's layout since 1.x
            self._bound = lambda outs, feed, _options: self._run(outs, feed)
        else:
            self._bound = bound

    def proba(self, rows: np.ndarray) -> np.ndarray:
        out = self._run(self._outs, {self.input: rows})[0]
        return np.asarray(out, dtype=np.float64)

    def first(self, rows: np.ndarray) -> list[float]:
        """`proba(rows)[0].tolist()` (the first row's probabilities as Python floats, the same
        values: a float32 output widens exactly), without the float64 copy."""
        return self._bound(self._outs, {self.input: rows}, None)[0][0].tolist()


def check_onnx(onnx_bytes: bytes, pipeline: Any, rows: np.ndarray) -> float:
    """Max |ONNX − predict_proba| over `rows`; ModelError when above MAX_PROBABILITY_DIFF."""
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    expected = pipeline.predict_proba(rows)
    got = OnnxRunner(onnx_bytes).proba(rows)
    if got.shape != expected.shape:
        raise ModelError(f"the ONNX graph gives shape {got.shape}, scikit-learn {expected.shape}")
    diff = float(np.max(np.abs(got - expected))) if len(rows) else 0.0
    if diff > MAX_PROBABILITY_DIFF:
        raise ModelError(
            f"the ONNX graph's probabilities differ from scikit-learn's by {diff:.2e} "
            f"(> {MAX_PROBABILITY_DIFF:g}) on the validation rows"
        )
    return diff
