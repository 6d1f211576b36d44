"""`qt models list|show|verify` on real bundle files."""

from __future__ import annotations

import json
from pathlib import Path

from qt_cli.app import app
from qt_cli.core.models import bundle as bundles
from tests.core.test_models_bundle import rewrite_member, write


def test_list_show_verify_json(cli, tmp_path: Path) -> None:
    path, _, _ = write(tmp_path, "logreg")
    result = cli.invoke(app, ["models", "list", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["model"] == "logreg" and row["feature_set"] == "qt"
    result = cli.invoke(app, ["models", "show", str(path), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["features"]["names"][:2] == ["price_current", "price_mean_5"]
    assert shown["content_hash"] == bundles.load(path).content_hash
    result = cli.invoke(app, ["models", "verify", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["onnx_max_diff"] <= 1e-6


def test_verify_refuses_a_tampered_bundle_in_one_line(cli, tmp_path: Path) -> None:
    path, _, _ = write(tmp_path, "logreg")
    members, _ = bundles.read_members(path)
    rewrite_member(path, bundles.PIPELINE, members[bundles.PIPELINE][:-1] + b"x", rehash=False)
    result = cli.invoke(app, ["models", "verify", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {path}: content hash mismatch")
    assert len(result.stderr.strip().splitlines()) == 1
