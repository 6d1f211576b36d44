"""`qt predict`: score stored history with a model bundle (a simulated backtest)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from qt_cli.options import AsJson
from qt_cli.output import emit_json, say

HELP = """\
Score stored feature history with a model and backtest its signals (simulated, not live trading).

Reads the symbol's feature vectors in [--from, --to] through the query API, checks each against the model's schema (set, names, order, catalog hash), skips vectors that are not warm, predicts through the compiled (ONNX) path and turns the most probable class into BUY/SELL/HOLD (HOLD below --min-confidence or within --cooldown of the last signal). Each BUY/SELL is held for the model's label horizon (or --hold) at stored trade prices: hit rate and PnL in points and ticks, less --cost points per trade. --output writes the signals (.parquet, .csv or .jsonl).

The live stage (qt predict --in …) comes with the stage runtime.

Example: qt predict --model models/wdo.qtm --symbol WDOQ25 --from 2025-08-11 --to 2025-08-12 --cost 0.5 --output signals.parquet
"""


def register(app: typer.Typer, *, name: str, summary: str) -> None:
    @app.command(name, help=HELP, short_help=summary)
    def predict(
        model: Annotated[Path, typer.Option("--model", "-m", help="The bundle (.qtm).")],
        symbol: Annotated[str, typer.Option("--symbol", "-s", help="Ticker, e.g. WDOQ25.")],
        start: Annotated[str, typer.Option("--from", help="Start of the range to score.")],
        end: Annotated[str, typer.Option("--to", help="End of the range to score.")],
        min_confidence: Annotated[
            float, typer.Option("--min-confidence", help="HOLD below this probability.")
        ] = 0.0,
        cooldown: Annotated[
            str | None,
            typer.Option(
                "--cooldown", help="Quiet time after a BUY/SELL, e.g. 30s.", show_default=False
            ),
        ] = None,
        hold: Annotated[
            str | None,
            typer.Option(
                "--hold",
                help="Holding time of a trade (default: the label horizon).",
                show_default=False,
            ),
        ] = None,
        cost: Annotated[float, typer.Option("--cost", help="Cost per trade in points.")] = 0.0,
        output: Annotated[
            Path | None,
            typer.Option(
                "--output", "-o", help="Signals file: .parquet, .csv or .jsonl.", show_default=False
            ),
        ] = None,
        as_json: AsJson = False,
    ) -> None:
        from qt_cli.core import config, store
        from qt_cli.core.models.predictor import backtest

        client = store.connect_settings(config.current())
        report = backtest(
            client,
            model=model,
            symbol=symbol,
            start=start,
            end=end,
            min_confidence=min_confidence,
            cooldown=cooldown,
            hold=hold,
            cost_points=cost,
            output=output,
        )
        if as_json:
            emit_json(report)
            return
        hit = "—" if report["hit_rate"] is None else f"{report['hit_rate']:.1%}"
        sys.stdout.write(
            f"BACKTEST (simulated) {report['symbol']} {report['horizon']}: "
            f"{report['trades']} trades ({report['buys']} buy, {report['sells']} sell), "
            f"hit rate {hit}, PnL {report['pnl_points']:.1f} points = "
            f"{report['pnl_ticks']:.0f} ticks after {report['cost_points_per_trade']:g} points "
            "per trade\n"
        )
        say(
            f"{report['vectors']} vectors, {report['not_warm']} not warm (skipped), serving "
            f"{report['serving']}" + (f"; signals in {report['output']}" if output else "")
        )
