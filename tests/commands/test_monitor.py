"""`qt monitor --once` and `--json` through CliRunner against streams seeded per docs/contracts.md."""

from __future__ import annotations

import json
import re
import time

import pytest
import valkey as valkey_lib
from typer.testing import CliRunner

from qt_cli.app import app
from qt_cli.core.events import NS_PER_S, TopOfBook
from qt_cli.core.monitor import NS_PER_MIN
from tests.core.test_monitor import seed_stage, seed_trades, trade, xadd_event
from tests.helpers import free_port

SYM = "WDOQ25"
# Lag is measured against the wall clock at the moment qt runs: allow for a slow machine.
LAG_SLACK_MS = 10_000


def seed_live(vk: valkey_lib.Valkey) -> int:
    """Ticks ending 2 s ago, a top of book, a fresh bridge and a stale feed; returns the seed time."""
    now = time.time_ns()
    seed_trades(
        vk,
        [
            trade(now - 290 * NS_PER_S, 100.0, 1, trade_id=1),
            trade(now - 120 * NS_PER_S, 104.0, 2, trade_id=2),
            trade(now - 2 * NS_PER_S, 110.0, 3, trade_id=3),
        ],
    )
    xadd_event(
        vk,
        TopOfBook(symbol=SYM, ts_event=now - 2 * NS_PER_S, bid_price=109.5, ask_price=110.25),
    )
    seed_trades(vk, [trade(now - 10 * NS_PER_MIN, 50.0, 1, symbol="OLD3")])
    seed_stage(vk, "bridge", "default", updated_ns=now, received=3, written=3, rate=1.5)
    seed_stage(vk, "feed", "run1", updated_ns=now - 60 * NS_PER_S, received=3, rate=0.0)
    return now


def test_json_numbers_from_known_data(cli: CliRunner, vk: valkey_lib.Valkey) -> None:
    seed_live(vk)
    result = cli.invoke(app, ["monitor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["reachable"] is True
    symbols = {s["symbol"]: s for s in data["symbols"]}
    assert list(symbols) == ["OLD3", SYM]  # discovered with SCAN, sorted
    view = symbols[SYM]
    assert view["trades"] == 3
    assert view["quantity"] == 6
    assert view["volume"] == pytest.approx((100.0 * 1 + 104.0 * 2 + 110.0 * 3) * 10)
    assert view["change_pct"] == pytest.approx(10.0)  # (110 - 100) / 100: first is the oldest
    assert (view["bid"], view["ask"], view["spread"]) == (109.5, 110.25, 0.75)
    assert 2_000 <= view["lag_ticks_ms"] < 2_000 + LAG_SLACK_MS
    assert view["stale"] is False
    assert view["state"] == "WAITING"
    assert view["lag_features_ms"] is None
    assert "features" in view["reasons"]
    old = symbols["OLD3"]
    assert (old["stale"], old["state"]) == (True, "STALE")
    assert old["lag_ticks_ms"] >= 10 * 60_000
    stages = {s["stage"]: s for s in data["stages"]}
    assert (stages["bridge"]["status"], stages["bridge"]["stale"]) == ("ok", False)
    assert (stages["feed"]["status"], stages["feed"]["stale"]) == ("stale", True)
    assert stages["features"]["status"] == "not seen"
    assert data["valkey"]["connected_clients"] >= 1


def test_json_stale_threshold_is_an_option(cli: CliRunner, vk: valkey_lib.Valkey) -> None:
    seed_live(vk)
    result = cli.invoke(app, ["monitor", "--json", "--stale", "20m", "--symbol", "OLD3"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [s["symbol"] for s in data["symbols"]] == ["OLD3"]
    assert data["symbols"][0]["stale"] is False
    assert {s["stage"]: s["stale"] for s in data["stages"]}["feed"] is False
    assert data["stale_ns"] == 20 * NS_PER_MIN


def test_once_frame(cli: CliRunner, vk: valkey_lib.Valkey) -> None:
    seed_live(vk)
    result = cli.invoke(app, ["monitor", "--once"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    row = next(line for line in lines if line.startswith(SYM))
    for cell in ("110.00", "+10.00%", "6,380", "WAITING", "0.75", "109.50", "110.25"):
        assert cell in row, (cell, row)
    assert re.search(r"\s(2\.\d|[3-9]\.\d|1\d\.\d)s\s", row), row  # lag ~2 s
    assert "STALE" in next(line for line in lines if line.startswith("OLD3"))
    assert "STALE 1m" in next(line for line in lines if line.startswith("feed"))
    assert "ok" in next(line for line in lines if line.startswith("bridge"))
    assert result.stderr == ""


def test_narrow_terminal_drops_columns(cli: CliRunner, vk: valkey_lib.Valkey) -> None:
    seed_live(vk)
    result = cli.invoke(app, ["monitor", "--once"], env={"COLUMNS": "50"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 50 for line in lines), result.stdout
    row = next(line for line in lines if line.startswith(SYM))
    assert "110.00" in row
    assert "WAITING" in row
    assert "Spread" not in result.stdout  # a low-priority column went


def _colour_codes(text: str) -> list[str]:
    """SGR parameters that set a colour (30-37, 38;…, 40-47, 90-97)."""
    found = []
    for params in re.findall(r"\x1b\[([0-9;]*)m", text):
        for p in params.split(";"):
            if p and (30 <= int(p) <= 48 or 90 <= int(p) <= 107):
                found.append(params)
    return found


def test_no_color_is_respected(cli: CliRunner, vk: valkey_lib.Valkey) -> None:
    seed_live(vk)
    coloured = cli.invoke(app, ["monitor", "--once"], env={"FORCE_COLOR": "1", "COLUMNS": "160"})
    plain = cli.invoke(
        app, ["monitor", "--once"], env={"FORCE_COLOR": "1", "NO_COLOR": "1", "COLUMNS": "160"}
    )
    assert coloured.exit_code == 0 and plain.exit_code == 0, coloured.output + plain.output
    assert _colour_codes(coloured.stdout)
    assert _colour_codes(plain.stdout) == []
    assert "STALE" in plain.stdout  # stale stays visible in words


def test_unreachable_valkey_is_in_the_frame_and_exits_3(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"valkey://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("QT_VALKEY_URL", url)
    result = cli.invoke(app, ["monitor", "--once"])
    assert result.exit_code == 3, result.output
    assert "VALKEY UNREACHABLE" in result.stdout
    assert f"cannot reach Valkey at {url}" in result.stdout
    assert result.stderr.startswith(f"Error: cannot reach Valkey at {url}")

    result = cli.invoke(app, ["monitor", "--json"])
    assert result.exit_code == 3, result.output
    data = json.loads(result.stdout)
    assert data["reachable"] is False
    assert f"cannot reach Valkey at {url}" in data["error"]


def test_bad_options_are_usage_errors(cli: CliRunner, valkey_url: str) -> None:
    result = cli.invoke(app, ["monitor", "--once", "--symbol", "WDO Q25"])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: symbol 'WDO Q25'")
    result = cli.invoke(app, ["monitor", "--once", "--refresh", "soon"])
    assert result.exit_code == 2
    assert "Error: duration 'soon'" in result.stderr


def test_not_a_terminal_prints_a_frame_per_refresh(cli: CliRunner, vk: valkey_lib.Valkey) -> None:
    seed_live(vk)
    result = cli.invoke(app, ["monitor", "--refresh", "200ms", "--duration", "1s"])
    assert result.exit_code == 0, result.output
    frames = result.stdout.count("qt monitor ")
    assert 3 <= frames <= 6, result.stdout
    assert re.search(r"monitor stopped after \d+ frames", result.stderr)
