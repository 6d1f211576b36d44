"""`qt features`: vectors over stored history, and the feature catalog (later, the live stage)."""

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
from qt_cli.output import emit_json, is_terminal, out_console, say, warn

BACKFILL_HELP = """\
Compute feature vectors over stored history (trades and price-book events read back from Valkey).

`qt features --from T --to T --symbol SYM --output FILE` reads the symbols' (default: every symbol with stored trades) stored trades and price-book events in [--from, --to] through the query API, merges them in the order the live stage receives them (event time; trades before book events at equal times; stored order), feeds the incremental engine and writes the vectors of --set (default qt) to --output: .parquet or .csv (one row per vector: symbol, ts_event, time, feature_set, catalog_version, warm, then one column per feature in the set's order) or .jsonl (the wire FeatureVector event, one per line). With --out valkey://HOST:6379 instead of --output, the vectors go to stream:features:{SYMBOL} exactly once, under the identities the live stage gives them (so a backfill and a live stage over the same range store each vector once; the last period's vector is written once a later trade closes it, as live).

--every picks which vectors are kept: trade (every trade's vector, the training granularity), candle (the last vector of each 1-minute period), or a period such as 250ms, 1s (the default: at most one vector per symbol and second), 5s, 1m. Times as in qt query (--tz, default America/Sao_Paulo). A progress bar shows on a terminal (stderr); --json prints the summary (counts, bytes, seconds).

Live: `qt features --in tcp://127.0.0.1:5555 --in tcp://127.0.0.1:5556 --symbol WDOQ25 --out valkey://HOST:6379` computes from the feed's ZeroMQ channels instead (from now, gaps recovered from --replay; each vector's identity from its trade's own session and seq, as the bridge stores it). `qt features --in valkey://HOST:6379 --symbol WDOQ25 --set qt --every 1s --out valkey://HOST:6379 --out tcp://127.0.0.1:5560` reads the symbols' stored trades and book events (from the start of their streams, so its state is warm and a restart recomputes the same vectors), keeps the vectors --every keeps (the backfill's rule) and writes each to stream:features:{SYMBOL} exactly once (its identity derived from the trade that produced it: a restart rewrites nothing and skips nothing); a tcp:// --out publishes them on ZeroMQ (topic features_SYMBOL). Default --out: the input's Valkey. --group G --consumer C shares the --symbol list between workers (each symbol computed by one worker, a dead worker's symbols taken over by the others). Stats go to qt:stats:features:<name> (qt monitor); Ctrl+C prints one line, --json the totals. See docs/FEATURES.md ("The live stage").

Subcommands: catalog (the feature catalog and its sets).

Across hosts: --curve-secret-key FILE (or QT_CURVE_SECRET_KEY) encrypts the ZeroMQ inputs and a tcp:// --out with CURVE; a tcp:// --out on a non-loopback address needs it or --insecure (docs/SECURITY.md).

Example: qt features --in valkey://127.0.0.1:6379 --symbol WDOQ25 --every 1s

Example: qt features --from 2025-08-04T09:00 --to 2025-08-04T18:00 --symbol WDOQ25 --every 1s --output features.parquet

Example: qt features --from 2025-08-04 --to 2025-08-05 --symbol WDOQ25 --out valkey://127.0.0.1:6379   (then qt train reads them)
"""

CATALOG_HELP = """\
Print the feature catalog and its feature sets.

Every feature's name, group, inputs, window and definition; the catalog version (a hash of the definitions and the engine version); the sets: qt (the default), seed65 (the users' trained models, in their column order), basic11 (the seed production system's 11) and qt_history (qt and the five time-travel features, which need stored history).

A table on a terminal, tab-separated lines otherwise; --json for scripts (a `sets` object maps each set name to its ordered names); --markdown prints docs/FEATURES.md. --set NAME lists only that set, in its order.

Example: qt features catalog --set seed65 --json
"""


def _render_table(rows: list[dict[str, Any]], version: str) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=f"feature catalog {version}",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in ("name", "group", "inputs", "window", "sets", "definition"):
        table.add_column(column, no_wrap=column != "definition")
    for row in rows:
        table.add_row(
            Text(row["name"]),
            Text(row["group"]),
            Text(",".join(row["inputs"])),
            Text(row["window"]),
            Text(",".join(row["sets"])),
            Text(row["definition"]),
        )
    out_console().print(table)


def _live(
    inputs: list[str],
    outputs: list[str],
    symbols: list[str],
    set_name: str,
    every: str,
    name: str,
    duration: str | None,
    replay: str | None,
    group: str | None,
    consumer: str | None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> dict[str, Any]:
    from qt_cli.core import config
    from qt_cli.core.features.live import open_live, summary_line
    from qt_cli.core.stage import run_stage
    from qt_cli.core.timeparse import parse_duration_s

    settings = config.current()
    endpoint = replay if replay is not None else settings.replay_endpoint
    if endpoint and endpoint.strip().lower() in ("none", "off", ""):
        endpoint = None
    stage = open_live(
        inputs,
        outputs,
        symbols=symbols,
        set_name=set_name,
        every=every,
        name=name,
        password=settings.valkey_password or "",
        maxlen=settings.maxlen,
        duration_s=parse_duration_s(duration) if duration else None,
        replay=endpoint,
        group=group,
        consumer=consumer,
        max_message_bytes=max_message_bytes,
        warn=warn,
    )
    say(f"features {name}: {', '.join(inputs)} -> {set_name} every {every} ({', '.join(symbols)})")
    totals = run_stage(stage, totals=stage.totals)
    say(summary_line(totals))
    return totals


def register(app: typer.Typer, *, name: str, summary: str) -> None:
    group = typer.Typer(help=summary)

    @group.callback(invoke_without_command=True, help=BACKFILL_HELP)
    def features_command(
        ctx: typer.Context,
        start: Annotated[
            str | None,
            typer.Option(
                "--from", help="Start of the range (as qt query --from).", show_default=False
            ),
        ] = None,
        end: Annotated[
            str | None,
            typer.Option("--to", help="End of the range (default: now).", show_default=False),
        ] = None,
        symbols: Symbols = None,
        set_name: Annotated[
            str, typer.Option("--set", help="Feature set: qt, seed65, basic11, qt_history.")
        ] = "qt",
        every: Annotated[
            str,
            typer.Option(
                "--every", help="Which vectors to keep: trade, candle, or a period (250ms, 1s, 5s)."
            ),
        ] = "1s",
        output: Annotated[
            Path | None,
            typer.Option(
                "--output",
                "-o",
                help="File to write: .parquet, .csv or .jsonl.",
                show_default=False,
            ),
        ] = None,
        tz: Annotated[
            str | None,
            typer.Option(
                "--tz", help="Time zone of local times (env QT_TIMEZONE).", show_default=False
            ),
        ] = None,
        inputs: Inputs = None,
        outputs: Outputs = None,
        stage_name: Annotated[
            str, typer.Option("--name", help="Live: the stage's name in qt monitor.")
        ] = "features",
        replay: Annotated[
            str | None,
            typer.Option(
                "--replay",
                help="Live, --in tcp://…: the feed's replay endpoint for gap recovery ('none' "
                "to disable). Default: the settings' replay endpoint.",
                show_default=False,
            ),
        ] = None,
        group: Annotated[
            str | None,
            typer.Option(
                "--group",
                help="Live, --in valkey://: share the --symbol list between the workers of this "
                "group (each symbol computed by one of them; a dead one's taken over).",
                show_default=False,
            ),
        ] = None,
        consumer: Annotated[
            str | None,
            typer.Option(
                "--consumer", help="With --group: this worker's name.", show_default=False
            ),
        ] = None,
        max_message_bytes: MaxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES,
        duration: Duration = None,
        curve_secret_key: CurveSecretKey = None,
        curve_server_key: CurveServerKey = None,
        curve_clients: CurveClients = None,
        insecure: Insecure = False,
        as_json: AsJson = False,
    ) -> None:
        apply_security(curve_secret_key, curve_server_key, curve_clients, insecure)
        if ctx.invoked_subcommand is not None:
            return
        from qt_cli.core.errors import UsageError

        if inputs:
            if start is not None or output is not None:
                raise UsageError("--in runs the live stage; --from/--output run a backfill")
            totals = _live(
                inputs,
                outputs or [],
                symbols or [],
                set_name,
                every,
                stage_name,
                duration,
                replay,
                group,
                consumer,
                max_message_bytes,
            )
            if as_json:
                emit_json(totals)
            return

        if start is None and output is None and not outputs:
            typer.echo(ctx.get_help())
            raise typer.Exit(0)
        if start is None or (output is None) == (not outputs):
            raise UsageError(
                "a backfill needs --from and one of --output FILE or --out valkey://…, e.g. qt "
                "features --from 2025-08-04 --to 2025-08-05 --symbol WDOQ25 --output features.parquet"
            )
        from qt_cli.commands.query import _Bar
        from qt_cli.core import config, store
        from qt_cli.core.features import backfill

        settings = config.current()
        writer = None
        if outputs:
            from qt_cli.core.endpoints import parse_endpoint
            from qt_cli.core.store.writer import StreamWriter

            eps = [parse_endpoint(x) for x in outputs]
            if len(eps) != 1 or eps[0].kind != "valkey":
                raise UsageError("a backfill writes to one --out valkey://… (or --output FILE)")
            writer = StreamWriter(
                store.connect(eps[0], password=settings.valkey_password or ""),
                maxlen=settings.maxlen,
            )
        client = store.connect_settings(settings, say=say)
        bar = _Bar(is_terminal(sys.stderr), "features")
        try:
            summary = backfill.run(
                client,
                symbols=symbols or (),
                start=start,
                end=end,
                output=output,
                writer=writer,
                set_name=set_name,
                every=every,
                tz=tz or settings.timezone,
                progress=bar,
            )
        finally:
            bar.stop()
            client.close()
        if as_json:
            emit_json(summary)
        else:
            where = (
                f"to {output} ({summary['bytes']:,} bytes)"
                if output is not None
                else f"to {summary['output']} (written {summary['written']:,}, duplicates "
                f"{summary['duplicates']:,})"
            )
            say(
                f"{summary['vectors']:,} vectors ({summary['warm_vectors']:,} warm) of "
                f"{summary['feature_set']} from {summary['trades']:,} trades and "
                f"{summary['book_events']:,} book events {where}, {summary['seconds']:.2f} s"
            )

    @group.command("catalog", help=CATALOG_HELP)
    def catalog(
        as_json: AsJson = False,
        markdown: Annotated[
            bool, typer.Option("--markdown", help="Print docs/FEATURES.md (Markdown).")
        ] = False,
        set_name: Annotated[
            str | None,
            typer.Option(
                "--set",
                help="Only this feature set, in its order (qt, seed65, basic11, qt_history).",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        from qt_cli.core.features import catalog as cat

        if markdown:
            from qt_cli.core.features.doc import render

            sys.stdout.write(render())
            return
        data = cat.catalog_dict()
        rows: list[dict[str, Any]] = data["features"]  # type: ignore[assignment]
        if set_name is not None:
            names = cat.feature_set(set_name)
            by_name = {row["name"]: row for row in rows}
            rows = [by_name[n] for n in names]
            data = {**data, "features": rows, "sets": {set_name: list(names)}}
        if as_json:
            emit_json(data)
        elif is_terminal():
            _render_table(rows, str(data["version"]))
        else:
            for row in rows:
                sys.stdout.write(
                    "\t".join(
                        [
                            row["name"],
                            row["group"],
                            ",".join(row["inputs"]),
                            row["window"],
                            ",".join(row["sets"]),
                            row["definition"],
                        ]
                    )
                    + "\n"
                )

    app.add_typer(group, name=name, help=BACKFILL_HELP, short_help=summary)
