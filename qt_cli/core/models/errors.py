"""The errors of the model layer: each says what is wrong and what to do."""

from __future__ import annotations

from qt_cli.core.errors import DataError, QtError, UnavailableError, UsageError


class ModelError(QtError):
    """A model bundle that cannot be used (tampered, unknown format, bad metadata)."""


class UntrustedModel(ModelError):
    """A model file that holds a type qt does not trust, or a pickle the user did not trust."""


class SchemaMismatch(ModelError):
    """Feature vectors whose set, names, order or catalog hash differ from the model's."""


class TrainingDataError(DataError):
    """The stored history cannot make a training set (too little, one class, all NaN, …)."""


class MissingExtra(UnavailableError):
    """An optional dependency (xgboost, lightgbm) is not installed."""


class ModelUsageError(UsageError):
    """A bad option for train, predict or import."""
