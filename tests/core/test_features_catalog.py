from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qt_cli.core.errors import UsageError
from qt_cli.core.features import catalog as cat
from qt_cli.core.features.doc import render

ROOT = Path(__file__).resolve().parents[2]
# shared/ sits beside the repository (as on the developers' machines and in CI)
SEED65_SPEC = ROOT.parent / "shared" / "docs" / "seed65-features.json"
BASIC11 = (
    "price_current, price_mean_5, price_mean_20, price_std_20, return_1, return_mean_5, "
    "return_std_5, volume_mean_5, volume_ratio, rsi_14, momentum_10"
).split(", ")


def test_sets_are_ordered_names_from_the_catalog() -> None:
    assert list(cat.SETS) == ["qt", "seed65", "basic11", "qt_history"]
    assert cat.DEFAULT_SET == "qt"
    for names in cat.SETS.values():
        assert len(set(names)) == len(names)
        assert all(name in cat.CATALOG for name in names)
    assert len(cat.SETS["qt"]) == 65
    assert len(cat.SETS["seed65"]) == 65
    assert list(cat.SETS["basic11"]) == BASIC11
    assert list(cat.SETS["qt"][:11]) == BASIC11  # basic names verbatim in the default set


def test_seed65_names_and_order_match_the_training_spec() -> None:
    names = [
        "returns_1", "returns_2", "returns_5", "returns_10", "returns_20", "returns_50",
        "returns_100", "log_returns_1", "log_returns_5", "log_returns_20", "volatility_10",
        "volatility_ratio_10", "volatility_20", "volatility_ratio_20", "volatility_50",
        "volatility_ratio_50", "volatility_100", "volatility_ratio_100", "volatility_gk",
        "momentum_5_20", "momentum_20_50", "sharpe_5", "sharpe_20", "volume_zscore_20",
        "volume_ratio_20", "volume_zscore_50", "volume_ratio_50", "volume_zscore_100",
        "volume_ratio_100", "volume_weighted_return", "trade_intensity",
        "trade_intensity_ratio", "is_buyer_aggressor", "is_seller_aggressor",
        "order_flow_imbalance_10", "order_flow_imbalance_20", "order_flow_imbalance_50",
        "order_flow_imbalance_100", "signed_volume", "cumulative_signed_volume",
        "top_buyer_0_active", "top_seller_0_active", "top_buyer_1_active",
        "top_seller_1_active", "top_buyer_2_active", "top_seller_2_active",
        "top_buyer_3_active", "top_seller_3_active", "top_buyer_4_active",
        "top_seller_4_active", "top_buyers_count", "top_sellers_count", "buyer_changed",
        "seller_changed", "agent_turnover", "ma_5_20_ratio", "ma_20_50_ratio", "bb_position",
        "hour", "minute", "day_of_week", "time_normalized", "is_opening_30min",
        "is_closing_30min", "is_lunch_hour",
    ]  # fmt: skip
    assert list(cat.SETS["seed65"]) == names
    if SEED65_SPEC.exists():  # the shared spec, when this machine has it
        spec = json.loads(SEED65_SPEC.read_text())
        assert [f["name"] for f in spec["features"]] == names


def test_every_feature_is_fully_declared() -> None:
    for f in cat.CATALOG.values():
        assert f.group and f.window and f.definition, f
        assert f.inputs and set(f.inputs) <= set(cat.INPUTS), f


def test_catalog_hash_is_stable_across_runs_and_follows_definitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = "from qt_cli.core.features.catalog import catalog_hash; print(catalog_hash())"
    other_run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other_run == cat.catalog_hash()
    assert len(other_run) == 16
    before = cat.catalog_hash()
    monkeypatch.setattr(cat, "ENGINE_VERSION", "changed")
    assert cat.catalog_hash() != before
    monkeypatch.undo()
    changed = dict(cat.CATALOG)
    f = changed["rsi_14"]
    changed["rsi_14"] = cat.Feature(f.name, f.group, f.inputs, f.window, f.definition + ".")
    monkeypatch.setattr(cat, "CATALOG", changed)
    assert cat.catalog_hash() != before


def test_unknown_set_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown feature set 'x': use one of qt, seed65"):
        cat.feature_set("x")


def test_features_doc_is_current() -> None:
    doc = ROOT / "docs" / "FEATURES.md"
    assert doc.exists(), "docs/FEATURES.md missing: run 'make docs'"
    assert doc.read_text() == render(), "docs/FEATURES.md is stale: run 'make docs'"
