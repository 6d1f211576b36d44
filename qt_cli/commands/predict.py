"""`qt predict`: the live predict stage (--in) or a simulated backtest over stored history."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from qt_cli.core.records import DEFAULT_MAX_MESSAGE_BYTES
from qt_cli.options import (
    AsJson,
    CurveClients,
    CurveSecretKey,
    CurveServerKey,
    Duration,
    Inputs,
    Insecure,
    MaxMessageBytes,
    Outputs,
    Symbols,
    apply_security,
)
from qt_cli.output import emit_json, say, warn

HELP = """\
Score feature vectors with a model bundle: live (--in) or over stored history (--from/--to).

Live: reads the symbols' feature vectors (--in valkey://…: stream:features:{SYM} through consumer group --group, from the first stored vector; or the features stage's --in tcp://… output), checks each against the model's schema (set, names, order, catalog hash: a mismatch stops the stage with one error naming the differences), skips and counts vectors that are not warm or of another set, predicts through the compiled (ONNX) path and writes a Prediction and a Signal (BUY/SELL/HOLD; HOLD below --min-confidence or within --cooldown of the last signal) to stream:predictions:{SYM} / stream:signals:{SYM} and --out tcp://… (topics prediction_SYM, signal_SYM), exactly once. Workers sharing --group split the vectors. SIGHUP, or a new file at --model, reloads the bundle without stopping; a bundle that does not verify or needs other features is refused and the old one keeps serving.

History: reads the symbol's vectors in [--from, --to] and backtests the signals (simulated, not live trading): each BUY/SELL held for the model's label horizon (or --hold) at stored trade prices; hit rate and PnL in points and ticks, less --cost points per trade. --output writes the signals (.parquet, .csv or .jsonl).

Across hosts: --curve-secret-key FILE (or QT_CURVE_SECRET_KEY) encrypts the ZeroMQ inputs and outputs with CURVE; a tcp:// --out on a non-loopback address needs it or --insecure (docs/SECURITY.md).

Example: qt predict --model models/wdo.qtm --in valkey://127.0.0.1:6379 --symbol WDOQ25 --out valkey://127.0.0.1:6379 --out tcp://127.0.0.1:5558 --min-confidence 0.5 --cooldown 30s

Example (three workers of one group, on any hosts; a dead one's vectors are taken over after 5 s): qt predict --model models/wdo.qtm --in valkey://10.0.0.5:6379 --symbol WDOQ25 --symbol WINQ25 --group predict --consumer worker-2 --claim-idle 5s

Example: qt predict --model models/wdo.qtm --symbol WDOQ25 --from 2025-08-11 --to 2025-08-12 --cost 0.5 --output signals.parquet
"""


def _live(
    model: Path,
    inputs: list[str],
    outputs: list[str],
    symbols: list[str],
    *,
    name: str,
    group: str | None,
    consumer: str | None,
    min_confidence: float,
    cooldown: str | None,
    duration: str | None,
    replay: str | None,
    claim_idle: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> dict[str, Any]:
    from qt_cli.core import config
    from qt_cli.core.models.live import CLAIM_IDLE_S, open_live, summary_line
    from qt_cli.core.stage import run_stage
    from qt_cli.core.timeparse import parse_duration_ns, parse_duration_s

    settings = config.current()
    stage = open_live(
        model,
        inputs,
        outputs,
        symbols=symbols,
        name=name,
        group=group,
        consumer=consumer,
        min_confidence=min_confidence,
        cooldown_ns=parse_duration_ns(cooldown) if cooldown else 0,
        password=settings.valkey_password or "",
        maxlen=settings.maxlen,
        duration_s=parse_duration_s(duration) if duration else None,
        replay=None if (replay or "").strip().lower() in ("", "none", "off") else replay,
        claim_idle_s=parse_duration_s(claim_idle) if claim_idle else CLAIM_IDLE_S,
        max_message_bytes=max_message_bytes,
        warn=warn,
    )
    p = stage.slot.predictor
    say(
        f"predict {stage.name}: {', '.join(inputs)} -> {model} ({p.tag}, {p.serving}, "
        f"set {p.feature_set}) for {', '.join(symbols)}"
    )
    totals = run_stage(stage, totals=stage.totals, reload=stage.reload)
    say(summary_line(totals))
    return totals


def register(app: typer.Typer, *, name: str, summary: str) -> None:
    @app.command(name, help=HELP, short_help=summary)
    def predict(
        model: Annotated[Path, typer.Option("--model", "-m", help="The bundle (.qtm).")],
        symbols: Symbols = None,
        start: Annotated[
            str | None,
            typer.Option(
                "--from", help="History: start of the range to score.", show_default=False
            ),
        ] = None,
        end: Annotated[
            str | None,
            typer.Option(
                "--to", help="History: end of the range (default: now).", show_default=False
            ),
        ] = None,
        inputs: Inputs = None,
        outputs: Outputs = None,
        stage_name: Annotated[
            str, typer.Option("--name", help="Live: the stage's name in qt monitor.")
        ] = "predict",
        group: Annotated[
            str | None,
            typer.Option(
                "--group",
                help="Live, --in valkey://: the consumer group (default: predict); workers of one "
                "group share the vectors.",
                show_default=False,
            ),
        ] = None,
        consumer: Annotated[
            str | None,
            typer.Option(
                "--consumer",
                help="Live: this worker's name in the group (default: --name).",
                show_default=False,
            ),
        ] = None,
        replay: Annotated[
            str | None,
            typer.Option(
                "--replay",
                help="Live, --in tcp://…: a replay endpoint for gap recovery (default: none).",
                show_default=False,
            ),
        ] = None,
        claim_idle: Annotated[
            str | None,
            typer.Option(
                "--claim-idle",
                help="Live, --group: take over vectors pending this long on another worker "
                "(a dead one), e.g. 5s (default: 30s).",
                show_default=False,
            ),
        ] = None,
        max_message_bytes: MaxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES,
        duration: Duration = None,
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
        curve_secret_key: CurveSecretKey = None,
        curve_server_key: CurveServerKey = None,
        curve_clients: CurveClients = None,
        insecure: Insecure = False,
        as_json: AsJson = False,
    ) -> None:
        apply_security(curve_secret_key, curve_server_key, curve_clients, insecure)
        from qt_cli.core.errors import UsageError

        if inputs:
            if start is not None or output is not None or hold is not None or cost:
                raise UsageError(
                    "--in runs the live stage; --from/--to/--output/--hold/--cost a backtest"
                )
            totals = _live(
                model,
                inputs,
                outputs or [],
                symbols or [],
                name=stage_name,
                group=group,
                consumer=consumer,
                min_confidence=min_confidence,
                cooldown=cooldown,
                duration=duration,
                replay=replay,
                claim_idle=claim_idle,
                max_message_bytes=max_message_bytes,
            )
            if as_json:
                emit_json(totals)
            return
        if start is None:
            raise UsageError(
                "give --in valkey://… (live) or --from/--to (a backtest over stored history), "
                "e.g. qt predict --model m.qtm --symbol WDOQ25 --from -1d"
            )
        if len(symbols or []) != 1:
            raise UsageError("a backtest scores one --symbol")
        from qt_cli.core import config, store
        from qt_cli.core.models.predictor import backtest

        client = store.connect_settings(config.current())
        report = backtest(
            client,
            model=model,
            symbol=(symbols or [""])[0],
            start=start,
            end=end or "now",
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
