"""`qt query`: time travel over what Valkey holds, as a table, CSV, JSON lines, JSON or Parquet."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from qt_cli.options import AsJson, Symbols
from qt_cli.output import err_console, is_terminal, out_console, say

HELP = """\
Read stored market data back for a time range, in event-time order (late entries merged in).

Kinds: ticks (default), book, candles:1m (or candles:<tf>), features, predictions, signals, daily, state, gaps, deadletter.

Times (--from, --to, --as-of): ISO 8601 (2025-08-08T09:00, 2025-08-08 09:00:00.250, …Z or …-03:00), a date (2025-08-08, 08/08/2025, today, yesterday), a time of day today (09:00), relative (-15m, -2h, now) or epoch milliseconds. Local times are in --tz (default America/Sao_Paulo, env QT_TIMEZONE); the output shows the zone. Default range: today until now. --as-of T gives, per symbol, the latest entry at or before T.

Output: a table on a terminal (first --limit rows and a summary); otherwise, or with --format, csv, jsonl, json or parquet on stdout or --output FILE (format from the file's suffix), streamed page by page. Tick rows are the wire fields of trades, so `qt feed --replay` reads them back. An empty range prints nothing and says so on stderr (exit 0).

Candles: closed candles; --partial adds each symbol's candle still forming (closed false).

Features: --set NAME keeps only the vectors of that feature set (qt, seed65, basic11, qt_history), their values in the set's order (a table or DataFrame has one column per feature).

Example: qt query --symbol WDOQ25 --from 2025-08-08T09:00 --to 2025-08-08T10:00 --format csv > ticks.csv
Example: qt query --kind candles:1m --symbol WDOQ25 --from 09:00 --partial
Example: qt query --kind features --set qt --symbol WDOQ25 --from 09:00 --output features.parquet
"""


def _format_for(fmt: str | None, output: Path | None, as_json: bool) -> str:
    from qt_cli.core.endpoints import SUFFIX_FORMATS
    from qt_cli.core.errors import UsageError
    from qt_cli.core.query import FORMATS

    if as_json:
        if fmt not in (None, "json"):
            raise UsageError(f"--json and --format {fmt} disagree: use one of them")
        return "json"
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageError(
                f"unknown format {fmt!r}: choose {', '.join(FORMATS[:-1])} or {FORMATS[-1]}"
            )
        if fmt == "table" and output is not None:
            raise UsageError("--format table is for the terminal: pick csv, jsonl, json or parquet")
        return fmt
    if output is not None:
        found = SUFFIX_FORMATS.get(output.suffix.lower())
        if found is None:
            raise UsageError(
                f"--output {output}: cannot tell the format from the suffix; add --format "
                "csv|jsonl|json|parquet"
            )
        return found
    return "table" if is_terminal() else "jsonl"


class _Bar:
    """A progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.progress: Any = None
        self.task: Any = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn(label),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%  {task.fields[rows]:,} rows"),
                TimeElapsedColumn(),
                console=err_console(),
                transient=True,
            )
            self.task = self.progress.add_task(label, total=1.0, rows=0)
            self.progress.start()

    def __call__(self, fraction: float, rows: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=fraction, rows=rows)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _render_table(result: Any) -> None:
    from rich.text import Text

    from qt_cli.core.query import table_priorities, table_rows
    from qt_cli.core.tables import Column, fit_table

    header, body = table_rows(result)
    columns = [
        Column(
            Text(name),
            priority,
            "right" if i > 0 and all(_looks_numeric(row[i]) for row in body) else "left",
        )
        for i, (name, priority) in enumerate(zip(header, table_priorities(result), strict=True))
    ]
    rows = [[Text(cell) for cell in row] for row in body]  # no markup or :emoji: in data
    console = out_console()
    console.print(fit_table(columns, rows, console.width, header_style="bold"))


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == ""
    return True


def register(app: typer.Typer, *, name: str, summary: str) -> None:
    @app.command(name, help=HELP, short_help=summary)
    def query_command(
        symbols: Symbols = None,
        kind: Annotated[
            str,
            typer.Option(
                "--kind",
                "-k",
                help="ticks, book, candles:1m, features, predictions, signals, "
                "daily, state, gaps or deadletter.",
            ),
        ] = "ticks",
        start: Annotated[
            str | None,
            typer.Option(
                "--from",
                help="Start (inclusive), e.g. 2025-08-08T09:00, 09:00, -15m.",
                show_default=False,
            ),
        ] = None,
        end: Annotated[
            str | None,
            typer.Option(
                "--to", help="End (inclusive), e.g. 2025-08-08T10:00, now.", show_default=False
            ),
        ] = None,
        as_of: Annotated[
            str | None,
            typer.Option(
                "--as-of",
                help="Latest entry at or before this time, per symbol.",
                show_default=False,
            ),
        ] = None,
        tz: Annotated[
            str | None,
            typer.Option(
                "--tz",
                help="Zone of local times and of the output (default America/Sao_Paulo; env QT_TIMEZONE).",
                show_default=False,
            ),
        ] = None,
        fmt: Annotated[
            str | None,
            typer.Option(
                "--format",
                "-f",
                help="table, csv, jsonl, json or parquet (default: table on a "
                "terminal, else jsonl; with --output, from its suffix).",
                show_default=False,
            ),
        ] = None,
        output: Annotated[
            Path | None,
            typer.Option(
                "--output", "-O", help="Write to this file instead of stdout.", show_default=False
            ),
        ] = None,
        limit: Annotated[
            int,
            typer.Option("--limit", "-n", min=1, help="Rows a table shows (files get every row)."),
        ] = 50,
        partial: Annotated[
            bool,
            typer.Option(
                "--partial",
                help="Candles: add each symbol's candle still forming, with closed false "
                "(e.g. qt query -k candles:1m --partial).",
            ),
        ] = False,
        set_name: Annotated[
            str | None,
            typer.Option(
                "--set",
                help="Features: only vectors of this set, in its order (e.g. qt, seed65).",
                show_default=False,
            ),
        ] = None,
        as_json: AsJson = False,
    ) -> None:
        from qt_cli.core import config, query, store

        settings = config.current()
        chosen = _format_for(fmt, output, as_json)
        request = query.make_request(
            kind,
            symbols=symbols or (),
            start=start,
            end=end,
            as_of=as_of,
            tz=tz or settings.timezone,
            partial=partial,
            feature_set=set_name,
        )
        client = store.connect_settings(settings, say=say)
        bar = _Bar(is_terminal(sys.stderr), f"{request.kind}")
        out = None
        try:
            if chosen != "table":
                out = _open_output(output)
            try:
                result = query.run(client, request, fmt=chosen, out=out, limit=limit, progress=bar)
            finally:
                bar.stop()
                if out is not None and output is not None:
                    out.close()
        except BrokenPipeError:
            # The reader went away (`qt query … | head`): stop quietly, as other tools do.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None
        finally:
            client.close()
        if chosen == "table" and result.rows:
            _render_table(result)
        _summarize(result, chosen, output, limit)

    _ = query_command


def _open_output(output: Path | None) -> Any:
    from qt_cli.core.errors import UsageError

    if output is None:
        return sys.stdout.buffer
    try:
        return output.open("wb")
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None


def _summarize(result: Any, fmt: str, output: Path | None, limit: int) -> None:
    described = result.request.describe()
    if not result.rows:
        say(f"no {described}")
    else:
        shown = ""
        if fmt == "table" and result.rows > limit:
            shown = f"; showing the first {limit} (--limit, or --format csv|jsonl for all)"
        where = f" to {output}" if output is not None else ""
        say(f"{result.rows:,} rows{where}: {described}, {result.seconds:.2f} s{shown}")
    for problem in result.stats.read.problems[:5]:
        say(f"skipped: {problem}")
