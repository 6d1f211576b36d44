from __future__ import annotations

import json

from typer.testing import CliRunner

from qt_cli.app import app
from qt_cli.core.features import catalog as cat
from qt_cli.core.features.doc import render

runner = CliRunner()


def test_catalog_json_has_sets_in_order_and_the_version() -> None:
    result = runner.invoke(app, ["features", "catalog", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["version"] == cat.catalog_hash()
    assert data["sets"]["seed65"] == list(cat.SETS["seed65"])
    assert data["sets"]["qt"] == list(cat.SETS["qt"])
    assert data["sets"]["basic11"][0] == "price_current"
    assert len(data["features"]) == len(cat.CATALOG)
    rsi = next(f for f in data["features"] if f["name"] == "rsi_14")
    assert rsi["sets"] == ["qt", "basic11", "qt_history"] and rsi["inputs"] == ["trades"]


def test_catalog_one_set_lines_and_markdown() -> None:
    result = runner.invoke(app, ["features", "catalog", "--set", "basic11"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == list(cat.SETS["basic11"])
    md = runner.invoke(app, ["features", "catalog", "--markdown"])
    assert md.exit_code == 0 and md.stdout == render()


def test_catalog_unknown_set_is_one_line_error() -> None:
    result = runner.invoke(app, ["features", "catalog", "--set", "nope"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: unknown feature set 'nope': use one of qt, seed65, basic11, qt_history "
        "(qt features catalog lists them)"
    )


def test_live_stage_usage_errors_are_one_line() -> None:
    cases = [
        (["--in", "valkey://127.0.0.1:1"], "Error: the live stage needs --symbol"),
        (["--in", "valkey://127.0.0.1:1", "--symbol", "X", "--from", "2025-08-04"], "Error: --in"),
        (["--in", "tcp://127.0.0.1:1", "--symbol", "X"], "Error: with --in tcp://"),
        (["--in", "valkey://127.0.0.1:1", "--symbol", "X", "--every", "2x"], "Error: --every"),
        (["--in", "valkey://127.0.0.1:1", "--symbol", "X", "--group", "g"], "Error: --group"),
        (
            ["--in", "valkey://127.0.0.1:1", "--in", "tcp://127.0.0.1:2", "--symbol", "X"],
            "Error: the live features stage reads one --in valkey://",
        ),
    ]
    for args, start in cases:
        result = runner.invoke(app, ["features", *args])
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith(start), (args, result.stderr)
        assert "Traceback" not in result.output


def test_backfill_output_usage_errors_are_one_line() -> None:
    cases = [
        (["--from", "2025-08-04"], "Error: a backfill needs --from and one of --output"),
        (["--out", "valkey://127.0.0.1:1"], "Error: a backfill needs --from"),
        (
            ["--from", "2025-08-04", "--output", "f.parquet", "--out", "valkey://127.0.0.1:1"],
            "Error: a backfill needs --from and one of --output",
        ),
        (
            ["--from", "2025-08-04", "--out", "tcp://127.0.0.1:1"],
            "Error: a backfill writes to one --out valkey://",
        ),
    ]
    for args, start in cases:
        result = runner.invoke(app, ["features", *args])
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith(start), (args, result.stderr)
