"""`qt feed`: capture a market source, journal it, publish it over ZeroMQ (or stdout, files)."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from qt_cli.options import (
    AsJson,
    CurveClients,
    CurveSecretKey,
    CurveServerKey,
    Duration,
    Insecure,
    Outputs,
    StopAfter,
    Symbols,
    TimeUnit,
    apply_security,
)
from qt_cli.output import emit_json, err_console, is_terminal, say, warn

HELP = """\
Capture market data from exactly one source, journal every message to disk, and publish it.

Sources: --dll PATH (Nelogica ProfitDLL; credentials from PROFIT_ACTIVATION_KEY, PROFIT_USER, PROFIT_PASSWORD or a hidden prompt, never the command line), --sim (a synthetic B3 market), --replay FILE (JSON lines, CSV or Parquet of recorded events, or a Nelogica tick-export CSV, at --speed), --replay-journal DIR (a feed journal).

Channels and default outputs: ticks (trades, state, daily) tcp://127.0.0.1:5555, book (book updates, top of book) 5556, history (history trades) 5557; the replay endpoint 5559 serves any journaled range. --out KIND=URI moves one (KIND: ticks, book, history, replay; replay=none turns it off); --out - sends everything as JSON lines to stdout; --out file.jsonl|.csv|.parquet records to a file.

Every message carries session (<run id>.<channel>) and seq (gap-free from 1). The feed stops at the end of a replay, after --duration or --stop-after, or on Ctrl+C / SIGTERM (exit 0 after flushing, with totals; --json prints them as JSON). A replay that read nothing valid (every record bad, or none) exits 4. Replayed times before 2000 or over a day ahead are bad records; a file with times in another unit needs --time-unit (qt feed --replay ticks_us.csv --time-unit us).

--journal-retention 7d keeps the journal to about a week: at start, at every segment roll and every 10 minutes the feed removes whole segments last written more than 7 days ago (never the segment a feed still writes to); a subscriber asking for a removed range records it as a lost gap (docs/feed.md).

--sim runs never overlap in event time: a real-time run (no --rate) is stamped now; --rate 0 or N continues after what Valkey already holds of its symbols, at their last price; --start picks the first venue time.

Across hosts: a tcp:// output on 0.0.0.0 or a LAN address needs CURVE (--curve-secret-key FILE from 'qt keys generate', or QT_CURVE_SECRET_KEY), which encrypts every channel and the replay endpoint, or --insecure; loopback and ipc:// need nothing (docs/SECURITY.md).

Example: qt feed --sim --symbol WDOQ25 --rate 0 --duration 60s --out - | head

Example: qt feed --sim --start 2025-07-01 --duration 270h --rate 0   (30 sessions)

Example: qt feed --sim --out ticks=tcp://0.0.0.0:5555 --out replay=tcp://0.0.0.0:5559 --curve-secret-key keys/qt.key_secret
"""


def _credentials() -> tuple[str, str, str]:
    """PROFIT_* from the environment, else a hidden prompt on a terminal, else a clear error."""
    from qt_cli.core.errors import UsageError

    names = ("PROFIT_ACTIVATION_KEY", "PROFIT_USER", "PROFIT_PASSWORD")
    values = {name: os.environ.get(name, "") for name in names}
    missing = [name for name, value in values.items() if not value]
    if missing and not is_terminal(sys.stdin):
        raise UsageError(
            f"--dll needs {', '.join(missing)} in the environment (credentials are never taken "
            "from the command line); or run on a terminal to be prompted"
        )
    for name in missing:
        label = {"PROFIT_ACTIVATION_KEY": "Activation key", "PROFIT_USER": "User"}.get(
            name, "Password"
        )
        values[name] = typer.prompt(label, hide_input=name != "PROFIT_USER", err=True)
    return values[names[0]], values[names[1]], values[names[2]]


class _Status:
    """Status line (live sources) or progress bar (replays) on stderr, only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None
        self.console = err_console()

    def notice(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            say(text)

    def update(self, status: Any) -> None:
        if not self.enabled:
            return
        kinds = "  ".join(f"{k} {v:,}" for k, v in sorted(status.by_kind.items()))
        text = (
            f"{status.events:,} msgs  {status.rate:,.0f}/s  {kinds}  "
            f"journal {status.journal_bytes / 1e6:,.1f} MB"
        )
        if status.progress is not None:
            done, total = status.progress
            if self.progress is None:
                from rich.progress import (
                    BarColumn,
                    Progress,
                    TaskProgressColumn,
                    TextColumn,
                    TimeRemainingColumn,
                )

                self.progress = Progress(
                    BarColumn(),
                    TaskProgressColumn(),
                    TimeRemainingColumn(),
                    TextColumn("{task.description}"),
                    console=self.console,
                )
                self.progress.start()
                self.task = self.progress.add_task(text, total=max(total, 1))
            self.progress.update(self.task, completed=done, description=text)
        else:
            self.console.file.write(f"\r{text}\x1b[K")
            self.console.file.flush()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        elif self.enabled:
            self.console.file.write("\n")
            self.console.file.flush()


def _summary(totals: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {v:,}" for k, v in totals["by_kind"].items()) or "nothing"
    sessions = ", ".join(
        f"{name} {ch['session']} (last seq {ch['last_seq']:,})"
        for name, ch in totals["channels"].items()
        if ch["published"]
    )
    journal = totals["journal"]
    lines = [
        f"published {totals['events']:,} events ({kinds}) in {totals['elapsed_s']:,.1f} s "
        f"({totals['rate']:,.0f}/s); stopped by {totals['stopped_by'].replace('_', '-')}",
        f"journal {journal['bytes'] / 1e6:,.1f} MB in {journal['dir']} (fsync {journal['fsync']})",
    ]
    retention = journal.get("retention")
    if retention:
        lines[-1] += (
            f"; retention {retention['retention']} removed {retention['segments_removed']:,} "
            f"old segments ({retention['bytes_freed'] / 1e6:,.1f} MB)"
        )
    if sessions:
        lines.append(f"sessions: {sessions}")
    return "\n".join(lines)


def register(app: typer.Typer, *, name: str, summary: str) -> None:
    @app.command(name, help=HELP, short_help=summary)
    def feed(
        dll: Annotated[
            str | None,
            typer.Option("--dll", help="Path of ProfitDLL (.dll/.so).", show_default=False),
        ] = None,
        sim: Annotated[bool, typer.Option("--sim", help="Simulated B3 market.")] = False,
        replay: Annotated[
            str | None,
            typer.Option(
                "--replay",
                help="Replay a file: .jsonl/.csv/.parquet of events or a Nelogica tick CSV.",
                show_default=False,
            ),
        ] = None,
        replay_journal: Annotated[
            str | None,
            typer.Option(
                "--replay-journal", help="Republish a feed journal directory.", show_default=False
            ),
        ] = None,
        symbols: Symbols = None,
        history_from: Annotated[
            str | None,
            typer.Option(
                "--history-from",
                help="--dll: also request history trades from this time (ISO 8601, B3 time).",
                show_default=False,
            ),
        ] = None,
        history_to: Annotated[
            str | None,
            typer.Option(
                "--history-to", help="--dll: end of the history request.", show_default=False
            ),
        ] = None,
        rate: Annotated[
            float | None,
            typer.Option(
                "--rate",
                help="--sim: events/s (0 = as fast as possible; default: realistic).",
                show_default=False,
            ),
        ] = None,
        seed: Annotated[
            int | None,
            typer.Option(
                "--seed", help="--sim: random seed (same seed, same market).", show_default=False
            ),
        ] = None,
        alpha: Annotated[
            float,
            typer.Option(
                "--alpha",
                help="--sim: plant a learnable signal (0 = off): the next aggressors lean by "
                "alpha × the order-flow imbalance of the last 20 trades, e.g. --alpha 0.3.",
                min=0.0,
                max=1.0,
            ),
        ] = 0.0,
        start: Annotated[
            str | None,
            typer.Option(
                "--start",
                help="--sim: first venue time, as --from of qt query reads it (2025-07-01 = "
                "its 09:00 open; São Paulo time). Default: now in real time; with --rate just "
                "after what Valkey holds of the symbols, else today's open.",
                show_default=False,
            ),
        ] = None,
        speed: Annotated[
            float,
            typer.Option("--speed", help="Replays: 1 = real time, 0 = as fast as possible."),
        ] = 1.0,
        strict: Annotated[
            bool, typer.Option("--strict", help="Replays: stop at the first bad line (exit 4).")
        ] = False,
        time_unit: TimeUnit = None,
        duration: Duration = None,
        stop_after: StopAfter = None,
        outputs: Outputs = None,
        journal: Annotated[
            str | None,
            typer.Option(
                "--journal",
                help="Journal directory (default: <data dir>/journal; env QT_DATA_DIR).",
                show_default=False,
            ),
        ] = None,
        fsync: Annotated[
            str,
            typer.Option("--fsync", help="Journal durability: none, batch or always."),
        ] = "batch",
        journal_retention: Annotated[
            str | None,
            typer.Option(
                "--journal-retention",
                help="Trim the journal while running: remove whole segments last written longer "
                "ago than this (e.g. 7d), never one a feed still writes to.",
                show_default=False,
            ),
        ] = None,
        hwm: Annotated[
            int,
            typer.Option(
                "--hwm",
                help="ZeroMQ send high-water mark per subscriber, in messages; a subscriber "
                "further behind loses messages and recovers them from the replay endpoint.",
                min=1,
            ),
        ] = 200_000,
        linger: Annotated[
            str,
            typer.Option(
                "--linger",
                help="After stopping, keep the replay endpoint up until this long passes "
                "without a replay request, so subscribers still behind can recover (e.g. 10s).",
            ),
        ] = "0s",
        curve_secret_key: CurveSecretKey = None,
        curve_server_key: CurveServerKey = None,
        curve_clients: CurveClients = None,
        insecure: Insecure = False,
        as_json: AsJson = False,
    ) -> None:
        apply_security(curve_secret_key, curve_server_key, curve_clients, insecure)
        from pathlib import Path

        from qt_cli.core import config
        from qt_cli.core.errors import UsageError
        from qt_cli.core.feed import FeedOptions, run_feed
        from qt_cli.core.timeparse import parse_duration_s

        chosen = [
            (kind, value)
            for kind, value in (
                ("dll", dll),
                ("sim", "" if sim else None),
                ("replay", replay),
                ("replay-journal", replay_journal),
            )
            if value is not None
        ]
        if len(chosen) != 1:
            given = ", ".join(f"--{k}" for k, _ in chosen)
            raise UsageError(
                "choose exactly one source: --dll PATH, --sim, --replay FILE or --replay-journal DIR"
                + (f" (got {given})" if given else "")
            )
        kind, path = chosen[0]
        if kind != "dll" and (history_from or history_to):
            raise UsageError("--history-from/--history-to apply to --dll only")
        if kind != "sim" and (rate is not None or seed is not None or start is not None or alpha):
            raise UsageError("--rate, --seed, --start and --alpha apply to --sim only")
        if kind == "dll" and not Path(path).exists():
            raise UsageError(f"--dll {path}: no such file")
        options = FeedOptions(
            source=kind,
            path=path or "",
            symbols=tuple(symbols or ()),
            history_from=history_from,
            history_to=history_to,
            rate=rate,
            seed=seed,
            alpha=alpha,
            start=start,
            speed=speed,
            strict=strict,
            time_unit=time_unit,
            duration_s=parse_duration_s(duration) if duration else None,
            stop_after=stop_after,
            outputs=tuple(outputs or ()),
            journal_dir=Path(journal).expanduser() if journal else config.current().journal_dir,
            fsync=fsync,
            journal_retention=journal_retention,
            sndhwm=hwm,
            linger_s=parse_duration_s(linger),
            credentials=_credentials() if kind == "dll" else None,
            settings=config.current(),
        )
        status = _Status(is_terminal(sys.stderr) and not as_json)
        try:
            totals = run_feed(options, on_status=status.update, on_notice=status.notice)
        finally:
            status.close()
        data_on_stdout = any(o.strip() == "-" or o.endswith("=-") for o in options.outputs)
        if as_json:
            if data_on_stdout:  # stdout carries the events: keep the totals apart
                sys.stderr.write(_json_text(totals))
            else:
                emit_json(totals)
        else:
            say(_summary(totals))
        if totals["rejected"]:
            warn(
                f"{totals['rejected']:,} bad records skipped (first: {totals['problems'][0]})"
                if totals["problems"]
                else f"{totals['rejected']:,} bad records skipped"
            )


def _json_text(data: Any) -> str:
    import orjson

    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
