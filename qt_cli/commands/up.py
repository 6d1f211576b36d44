"""`qt up`: feed, bridge, features (and predict) as supervised child processes, in one command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from qt_cli.options import (
    AsJson,
    CurveClients,
    CurveSecretKey,
    CurveServerKey,
    Duration,
    Insecure,
    Symbols,
    apply_security,
)
from qt_cli.output import emit_json, is_terminal, say

HELP = """\
Run the whole pipeline in one command: qt feed, qt bridge, qt features (live, reading Valkey) and, with --model, qt predict, each a supervised child process.

Every stage gets the same Valkey URL (--valkey, QT_VALKEY_URL, the file's `valkey`, else localhost:6379 or the managed server, started once); a password goes to the stages through QT_VALKEY_PASSWORD, never their command line. Their log lines are prefixed with the stage's name ([bridge] …); qt up's own lines start with [up] (`started bridge pid N`). A stage that crashes is started again after a backoff (0.5 s doubling to 10 s); its restarts are counted. Ctrl+C or SIGTERM stops the stages in order: the feed first, then each stage once it has drained what its upstream produced (a second signal skips the drains). When the feed ends by itself (--duration, the end of a replay) qt up drains and stops everything the same way and exits 0. --json prints a summary: each stage's restarts, exit code and totals.

--print prints the equivalent shell commands, one per stage, to run them by hand on several hosts; -f pipeline.toml reads the pipeline from a file (flags override it; format in docs/up.md); --check validates it and every endpoint (grammar, ports free, Valkey answers, the model verifies) without starting anything. --monitor runs qt monitor in the foreground; the stages' logs then go to files (the directory is said on stderr).

--curve-secret-key, --curve-server-key, --curve-clients and --insecure reach every stage through its environment (key paths only, docs/SECURITY.md); endpoints on 0.0.0.0 need a key or --insecure.

Example: qt up --sim --symbol WDOQ25 --symbol WINQ25 --duration 60s

Example: qt up -f pipeline.toml --check

Example: qt up --sim --curve-secret-key keys/qt.key_secret
"""


def register(app: typer.Typer, *, name: str, summary: str) -> None:
    @app.command(name, help=HELP, short_help=summary)
    def up(
        sim: Annotated[bool, typer.Option("--sim", help="Source: a simulated B3 market.")] = False,
        dll: Annotated[
            str | None,
            typer.Option("--dll", help="Source: ProfitDLL at this path.", show_default=False),
        ] = None,
        replay: Annotated[
            str | None,
            typer.Option("--replay", help="Source: replay this file.", show_default=False),
        ] = None,
        symbols: Symbols = None,
        model: Annotated[
            str | None,
            typer.Option(
                "--model", "-m", help="Add qt predict with this bundle (.qtm).", show_default=False
            ),
        ] = None,
        monitor: Annotated[
            bool,
            typer.Option("--monitor", help="Show qt monitor; the stages' logs go to files."),
        ] = False,
        duration: Duration = None,
        rate: Annotated[
            float | None,
            typer.Option(
                "--rate", help="--sim: events/s (0 = as fast as possible).", show_default=False
            ),
        ] = None,
        seed: Annotated[
            int | None,
            typer.Option("--seed", help="--sim: random seed.", show_default=False),
        ] = None,
        alpha: Annotated[
            float | None,
            typer.Option(
                "--alpha",
                help="--sim: plant an order-flow signal of this strength (as qt feed --alpha).",
                show_default=False,
            ),
        ] = None,
        set_name: Annotated[
            str | None,
            typer.Option("--set", help="Feature set (default qt).", show_default=False),
        ] = None,
        every: Annotated[
            str | None,
            typer.Option(
                "--every", help="Which vectors features keeps (default 1s).", show_default=False
            ),
        ] = None,
        file: Annotated[
            Path | None,
            typer.Option("--file", "-f", help="Pipeline file (TOML).", show_default=False),
        ] = None,
        print_only: Annotated[
            bool, typer.Option("--print", help="Print the stages' shell commands; start nothing.")
        ] = False,
        check_only: Annotated[
            bool,
            typer.Option("--check", help="Validate the pipeline and its endpoints; start nothing."),
        ] = False,
        curve_secret_key: CurveSecretKey = None,
        curve_server_key: CurveServerKey = None,
        curve_clients: CurveClients = None,
        insecure: Insecure = False,
        as_json: AsJson = False,
    ) -> None:
        apply_security(curve_secret_key, curve_server_key, curve_clients, insecure)
        import os

        from qt_cli.core import config, pipeline
        from qt_cli.core.errors import UsageError

        sources = [s for s, given in (("sim", sim), ("dll", dll), ("replay", replay)) if given]
        if len(sources) > 1:
            raise UsageError(
                f"choose one source: --sim, --dll PATH or --replay FILE (got {sources})"
            )
        source: dict[str, Any] = {}
        if sources:
            source = {"source": sources[0], "path": dll or replay or ""}
        settings = config.current()
        spec = pipeline.load_spec(
            file,
            **source,
            symbols=tuple(symbols or ()),
            model=model,
            duration=duration,
            rate=rate,
            seed=seed,
            alpha=alpha,
            set_name=set_name,
            every=every,
        )
        if monitor and as_json:
            raise UsageError("--monitor draws on stdout; --json would mix with it: choose one")
        if spec.source != "sim" and (
            spec.rate is not None or spec.seed is not None or spec.alpha is not None
        ):
            raise UsageError("--rate, --seed and --alpha apply to --sim only")
        if not check_only:  # --check lists this beside its other checks
            pipeline.checked_symbols(spec)
        if print_only:
            for line in pipeline.shell_lines(spec, settings):
                sys.stdout.write(line + "\n")
            return
        if check_only:
            _check(spec, settings, as_json)
            return
        if spec.source == "dll":
            from qt_cli.commands.feed import _credentials

            names = ("PROFIT_ACTIVATION_KEY", "PROFIT_USER", "PROFIT_PASSWORD")
            os.environ.update(dict(zip(names, _credentials(), strict=True)))
        log_dir = settings.data_dir / "up" / "logs" if monitor else None
        sink = pipeline.LineSink(sys.stderr, colour=is_terminal(sys.stderr), log_dir=log_dir)
        if log_dir is not None:
            say(f"stage logs: {log_dir}/<stage>.log")
        try:
            summary = pipeline.run(spec, settings, emit=sink, monitor=monitor, say=say)
        finally:
            sink.close()
        if log_dir is not None:
            summary["log_dir"] = str(log_dir)
        if as_json:
            emit_json(summary)
        else:
            lines = pipeline.LineSink(sys.stderr, colour=is_terminal(sys.stderr))
            for stage, info in summary["stages"].items():
                lines(
                    "up",
                    f"{stage}: exit {info['exit_code']}, restarts {info['restarts']}"
                    + _totals_text(info.get("totals")),
                )
        if summary["exit_code"]:
            raise typer.Exit(summary["exit_code"])


def _totals_text(totals: Any) -> str:
    if not isinstance(totals, dict):
        return ""
    shown = [
        f"{key} {totals[key]:,}"
        for key in ("events", "received", "written", "vectors", "signals")
        if isinstance(totals.get(key), int)
    ]
    return (", " + ", ".join(shown)) if shown else ""


def _check(spec: Any, settings: Any, as_json: bool) -> None:
    from qt_cli.core import pipeline
    from qt_cli.output import err_console

    url = pipeline.valkey_url(spec, settings, start=False)
    ok, problems = pipeline.check(spec, settings, url)
    if as_json:
        emit_json({"ok": not problems, "checked": ok, "problems": [p.message for p in problems]})
    else:
        for line in ok:
            say(f"ok: {line}")
        for problem in problems:
            err_console().print(f"Error: {problem.message}", markup=False, style="bold red")
    if problems:
        raise typer.Exit(problems[0].exit_code)
    if not as_json:
        say(
            f"{spec.origin}: the pipeline is ready to start (qt up"
            + (f" -f {spec.origin})" if spec.origin != "flags" else ")")
        )
