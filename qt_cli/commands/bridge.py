"""`qt bridge`: ZeroMQ (or stdin, or files) -> Valkey streams, exactly once, with candles."""

from __future__ import annotations

import sys
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
    StopAfter,
    Symbols,
    TimeUnit,
    apply_security,
)
from qt_cli.output import emit_json, is_terminal, say, warn

HELP = """\
Store what the feed publishes in Valkey streams, each event exactly once.

Subscribes to the --in endpoints (default: the ticks and book endpoints of the settings), writes every event to stream:<kind>:{SYMBOL} with ids from event time, recovers gaps from the feed's replay endpoint, builds OHLCV candles (--timeframe) and columnar history chunks, and keeps receiving while Valkey is down (buffered in memory, then spilled to disk). Counters go to qt:stats:bridge:<name> for qt monitor and are printed on exit. See docs/bridge.md.

Files are read as qt feed --replay reads them (recorded events or a Nelogica tick export); times before 2000 or over a day ahead are dead-lettered unless --time-unit gives the file's unit, and a file with nothing valid in it exits 4.

Across hosts: --curve-secret-key FILE (or QT_CURVE_SECRET_KEY; --curve-server-key for a feed with another key pair) makes the ZeroMQ inputs and the replay requests CURVE clients; Valkey over TLS with an ACL user is valkeys://USER@HOST:PORT/0 with QT_VALKEY_PASSWORD and QT_VALKEY_CA (docs/SECURITY.md).

Example: qt bridge --in tcp://127.0.0.1:5555 --in tcp://127.0.0.1:5556 --timeframe 1m,5m

Example: QT_CURVE_SECRET_KEY=keys/qt.key_secret qt bridge --in tcp://feedhost:5555 --replay tcp://feedhost:5559 --out valkeys://qt@valkeyhost:6379/0
"""


def register(app: typer.Typer, *, name: str, summary: str) -> None:
    @app.command(name, help=HELP, short_help=summary)
    def bridge(
        inputs: Inputs = None,
        outputs: Outputs = None,
        symbols: Symbols = None,
        replay: Annotated[
            str | None,
            typer.Option(
                "--replay",
                help="The feed's replay endpoint for gap recovery ('none' to disable). "
                "Default: QT_REPLAY_ENDPOINT or tcp://127.0.0.1:5559.",
                show_default=False,
            ),
        ] = None,
        timeframes: Annotated[
            list[str] | None,
            typer.Option(
                "--timeframe",
                "-t",
                help="Candle timeframes, repeatable or comma-separated (s, m, h), e.g. 1m,5m,15m.",
                show_default="1m",
            ),
        ] = None,
        maxlen: Annotated[
            int | None,
            typer.Option(
                "--maxlen",
                help="Approximate MAXLEN of each per-event stream (0 = unbounded). "
                "Default: QT_MAXLEN or 100000.",
                min=0,
                show_default=False,
            ),
        ] = None,
        batch_size: Annotated[
            int,
            typer.Option("--batch-size", help="Write at most this many events per batch.", min=1),
        ] = 2000,
        batch_ms: Annotated[
            float,
            typer.Option(
                "--batch-ms",
                help="Wait at most this long (ms) for a batch to fill before writing it.",
                min=0.0,
            ),
        ] = 1.0,
        buffer: Annotated[
            int,
            typer.Option(
                "--buffer",
                help="Events kept in memory while Valkey is slow or down; beyond that they spill "
                "to a file in the data directory.",
                min=1,
            ),
        ] = 200_000,
        bridge_name: Annotated[
            str,
            typer.Option(
                "--name",
                help="Name of this bridge: its stats hash, watermark and spill file.",
            ),
        ] = "default",
        candles: Annotated[
            bool, typer.Option("--candles/--no-candles", help="Build OHLCV candles from ticks.")
        ] = True,
        chunks: Annotated[
            bool,
            typer.Option(
                "--chunks/--no-chunks",
                help="Append columnar history chunks (stream:hist:ticks:{SYM}) for qt query.",
            ),
        ] = True,
        catch_up: Annotated[
            bool,
            typer.Option(
                "--catch-up/--no-catch-up",
                help="Ask the replay endpoint for what a session published before the bridge "
                "first heard it (a late join, or a restart).",
            ),
        ] = True,
        replay_timeout: Annotated[
            str,
            typer.Option(
                "--replay-timeout", help="Give up on a replay request after this long (e.g. 2s)."
            ),
        ] = "2s",
        hwm: Annotated[
            int,
            typer.Option(
                "--hwm",
                help="ZeroMQ receive high-water mark per input, in messages; beyond it messages "
                "are dropped and recovered from the replay endpoint.",
                min=1,
            ),
        ] = 200_000,
        max_message_bytes: MaxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES,
        time_unit: TimeUnit = None,
        duration: Duration = None,
        stop_after: StopAfter = None,
        curve_secret_key: CurveSecretKey = None,
        curve_server_key: CurveServerKey = None,
        curve_clients: CurveClients = None,
        insecure: Insecure = False,
        as_json: AsJson = False,
    ) -> None:
        apply_security(curve_secret_key, curve_server_key, curve_clients, insecure)
        from qt_cli.core import config, store
        from qt_cli.core.bridge import (
            BridgeConfig,
            check_file_inputs,
            check_time_unit,
            run_bridge,
        )
        from qt_cli.core.candles import parse_timeframes
        from qt_cli.core.endpoints import parse_endpoints
        from qt_cli.core.errors import UsageError
        from qt_cli.core.stage import run_stage
        from qt_cli.core.timeparse import parse_duration_s

        settings = config.current()
        ins = tuple(inputs or (settings.ticks_endpoint, settings.book_endpoint))
        outs = list(outputs or ())
        if len(outs) > 1:
            raise UsageError("give one --out valkey://… (the bridge writes to one Valkey)")
        parse_endpoints([*ins, *outs])  # bad input is reported before any server is started
        check_time_unit(time_unit, ins)
        check_file_inputs(ins)
        output = outs[0] if outs else store.resolve_url(settings, say=say)
        replay_endpoint: str | None = replay if replay is not None else settings.replay_endpoint
        if replay_endpoint and replay_endpoint.strip().lower() in ("none", "off", ""):
            replay_endpoint = None
        bridge_config = BridgeConfig(
            inputs=ins,
            output=output,
            symbols=tuple(symbols or ()),
            replay=replay_endpoint,
            timeframes=parse_timeframes(timeframes),
            maxlen=settings.maxlen if maxlen is None else maxlen,
            batch_size=batch_size,
            batch_ms=batch_ms,
            buffer_events=buffer,
            spill_dir=settings.data_dir / "bridge",
            name=bridge_name,
            candles=candles,
            chunks=chunks,
            catch_up=catch_up,
            replay_timeout_s=parse_duration_s(replay_timeout),
            rcvhwm=hwm,
            max_message_bytes=max_message_bytes,
            duration_s=parse_duration_s(duration) if duration else None,
            stop_after=stop_after,
            password=settings.valkey_password or None,
            time_unit=time_unit,
        )
        runner = run_bridge(bridge_config, say=say, warn=warn)
        progress = _progress() if is_terminal(sys.stderr) and not as_json else None

        def run() -> Any:
            say(
                f"bridge {bridge_name}: {', '.join(ins)} -> {bridge_config.output}"
                + (f" (symbols {', '.join(bridge_config.symbols)})" if symbols else "")
            )
            if progress is None:
                return runner.run()
            with progress:
                task = progress.add_task("bridge", total=None, status="starting")
                return runner.run(
                    on_progress=lambda s: progress.update(task, status=_status_line(s))
                )

        totals = run_stage(runner, run=run, totals=runner.totals)
        if as_json:
            emit_json(totals)
        else:
            say(_summary(totals))


def _progress() -> Any:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=Console(file=sys.stderr),
        transient=True,
    )


def _status_line(stats: Any) -> str:
    return (
        f"received {stats.received:,}  written {stats.written:,}  {stats.rate:,.0f}/s  "
        f"dup {stats.duplicates:,}  gaps {stats.gaps_recovered}/{stats.gaps_lost} lost  "
        f"dead {stats.deadletters:,}"
    )


def _summary(t: dict[str, Any]) -> str:
    latency = (
        f"; latency p50 {t['latency_p50_ms']:.2f} ms, p99 {t['latency_p99_ms']:.2f} ms"
        if t["latency_p50_ms"] is not None
        else ""
    )
    lines = [
        f"bridge {t['name']} stopped ({t['stopped_by']}) after {t['elapsed_s']:.1f}s: "
        f"received {t['received']:,}, written {t['written']:,} ({t['rate']:,.0f}/s), "
        f"duplicates {t['duplicates']:,}, late {t['late']:,}, batches {t['batches']:,}{latency}",
        f"  candles {t['candles']:,}, history chunks {t['chunks']:,}, dead letters "
        f"{t['deadletters']:,}, filtered {t['filtered']:,}",
        f"  gaps: {t['gaps_detected']} detected, {t['gaps_recovered']} recovered "
        f"({t['messages_recovered']:,} messages), {t['gaps_lost']} lost "
        f"({t['messages_lost']:,} messages)",
    ]
    if t["outages"] or t["spilled"] or t["buffered"] or t["spill_dropped"]:
        dropped = t["spill_dropped"]
        lines.append(
            f"  Valkey outages {t['outages']} ({t['outage_s']:.1f}s), spilled {t['spilled']:,}, "
            f"still buffered {t['buffered']:,}"
            + (
                f", {dropped:,} the spill file could not take (kept as seq ranges to fetch again)"
                if dropped
                else ""
            )
        )
    return "\n".join(lines)
