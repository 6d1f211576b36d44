"""Rich renderables of a `Snapshot` (`render`); no I/O, no live display."""

from __future__ import annotations

import math
from datetime import datetime, tzinfo

from rich.console import Group, RenderableType
from rich.text import Text

from qt_cli.core.events import (
    EXCHANGE_TZ,
    NS_PER_MS,
    NS_PER_S,
)
from qt_cli.core.monitor.collect import sparkline
from qt_cli.core.monitor.snapshot import NS_PER_MIN, Snapshot
from qt_cli.core.tables import Column, fit_table

# --- rendering ---------------------------------------------------------------------------------


def fmt_age(seconds: float) -> str:
    """0.25 -> 250ms, 3.2 -> 3.2s, 312 -> 5m12s, 7500 -> 2h05m; NaN -> —."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 1:
        return f"{sign}{s * 1000:.0f}ms"
    if s < 60:
        return f"{sign}{s:.1f}s"
    if s < 3600:
        return f"{sign}{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{sign}{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{sign}{s / 86400:.1f}d"


def fmt_compact(value: float | int | None) -> str:
    """1234 -> 1,234; 1_234_567 -> 1.23M; None/NaN -> —."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    magnitude = abs(value)
    for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if magnitude >= limit:
            return f"{value / limit:.2f}{suffix}"
    if isinstance(value, float) and not value.is_integer() and magnitude < 1000:
        return f"{value:,.1f}"
    return f"{round(value):,}"


def fmt_price(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:,.2f}"


def _lag_text(lag_ms: float, stale_ns: int) -> Text:
    if not math.isfinite(lag_ms):
        return Text("—", style="dim")
    if -1.0 < lag_ms < 0:  # less than a millisecond ahead: clock jitter, not "-0ms"
        lag_ms = 0.0
    if lag_ms < 0:  # event clock ahead of ours (simulation, replay, skew)
        return Text(fmt_age(lag_ms / 1000), style="yellow")
    stale = lag_ms * NS_PER_MS > stale_ns
    return Text(fmt_age(lag_ms / 1000), style="bold red" if stale else "green")


STATE_STYLE = {
    "ACTIVE": "bold green",
    "WARMING": "yellow",
    "WAITING": "cyan",
    "STALE": "bold red",
    "NO DATA": "dim",
}


def _symbol_rows(snapshot: Snapshot) -> tuple[list[Column], list[list[Text]]]:
    minutes = snapshot.window_ns / NS_PER_MIN
    span = f"{minutes:g}m" if minutes >= 1 else fmt_age(snapshot.window_ns / NS_PER_S)
    columns = [
        Column("Symbol", 0, "left"),
        Column("Last", 0),
        Column("Chg %", 1),
        Column(f"Vol {span}", 2),
        Column(f"Trades {span}", 2),
        Column("Lag", 1),
        Column("State", 0, "left"),
        Column("Spread", 3),
        Column("Signal", 3, "left"),
        Column(f"Price {span}", 4, "left"),
        Column("Features", 5),
        Column("Bid / Ask", 5),
        Column("Feat lag", 6),
        Column("Pred lag", 6),
        Column(f"Qty {span}", 7),
    ]
    rows = []
    for view in snapshot.symbols:
        change = round(view.change_pct, 2) + 0.0  # + 0.0: no "-0.00%"
        change_text = (
            Text(f"{change:+.2f}%", style="green" if change > 0 else "red" if change < 0 else "")
            if math.isfinite(change)
            else Text("—", style="dim")
        )
        trades = f"{'≥' if not view.window_complete else ''}{view.trades:,}"
        volume = f"{'≥' if not view.window_complete else ''}{fmt_compact(view.volume)}"
        if view.signal_action:
            confidence = (
                f" {view.signal_confidence:.2f}" if math.isfinite(view.signal_confidence) else ""
            )
            action_style = {"buy": "green", "sell": "red"}.get(view.signal_action, "")
            signal = Text(view.signal_action.upper(), style=action_style)
            signal.append(f"{confidence} {fmt_age(view.signal_age_s)} ago")
        else:
            signal = Text("—", style="dim")
        features = f"{view.features_valid}/{view.feature_count}" if view.feature_count else "—"
        state = Text(view.state, style=STATE_STYLE.get(view.state, ""))
        if not snapshot.reachable:
            state = Text(f"{view.state}?", style="dim")
        rows.append(
            [
                Text(view.symbol, style="cyan"),
                Text(fmt_price(view.last_price)),
                change_text,
                Text(volume),
                Text(trades),
                _lag_text(view.lag_ticks_ms, snapshot.stale_ns),
                state,
                Text(fmt_price(view.spread)),
                signal,
                Text(sparkline(view.sparkline), style="blue"),
                Text(features),
                Text(f"{fmt_price(view.bid)} / {fmt_price(view.ask)}"),
                _lag_text(view.lag_features_ms, snapshot.stale_ns),
                _lag_text(view.lag_predictions_ms, snapshot.stale_ns),
                Text(fmt_compact(view.quantity)),
            ]
        )
    return columns, rows


def _stage_rows(snapshot: Snapshot) -> tuple[list[Column], list[list[Text]]]:
    columns = [
        Column("Stage", 0, "left"),
        Column("Status", 0, "left"),
        Column("Seen", 1),
        Column("Rate/s", 1),
        Column("Received", 2),
        Column("Written", 2),
        Column("Pending", 2),
        Column("Dead", 3),
        Column("Gaps rec.", 3),
        Column("Gaps lost", 3),
        Column("Name", 4, "left"),
        Column("Lag", 5),
    ]
    rows = []
    for view in snapshot.stages:
        if not view.seen:
            status = Text("not seen", style="dim")
        elif view.stale:
            status = Text(f"STALE {fmt_age(view.age_s)}", style="bold red")
        else:
            status = Text("ok", style="green")
        lost = Text(fmt_compact(view.gaps_lost), style="red" if (view.gaps_lost or 0) > 0 else "")
        dead = Text(
            fmt_compact(view.deadletters), style="yellow" if (view.deadletters or 0) > 0 else ""
        )
        rows.append(
            [
                Text(view.stage, style="dim" if not view.seen else "bold"),
                status,
                Text(fmt_age(view.age_s) if view.seen else "—"),
                Text("—" if not math.isfinite(view.rate) else f"{view.rate:,.1f}"),
                Text(fmt_compact(view.received)),
                Text(fmt_compact(view.written)),
                Text(fmt_compact(view.pending)),
                dead,
                Text(fmt_compact(view.gaps_recovered)),
                lost,
                Text(view.name),
                Text(fmt_age(view.lag_ms / 1000) if math.isfinite(view.lag_ms) else "—"),
            ]
        )
    return columns, rows


def _group_rows(snapshot: Snapshot) -> tuple[list[Column], list[list[Text]]]:
    columns = [
        Column("Stream", 0, "left"),
        Column("Group", 0, "left"),
        Column("Pending", 0),
        Column("Lag", 1),
        Column("Consumers", 2),
    ]
    rows = [
        [
            Text(group.stream),
            Text(group.group),
            Text(f"{group.pending:,}", style="yellow" if group.pending else ""),
            Text(fmt_compact(group.lag)),
            Text(str(group.consumers)),
        ]
        for group in snapshot.groups
    ]
    return columns, rows


def _health_text(snapshot: Snapshot) -> Text:
    health = snapshot.valkey
    text = Text("Valkey ", style="bold")
    if health.version:
        text.append(f"{health.version} ")
    text.append(snapshot.url)
    if health.used_memory is not None:
        text.append(" · memory ")
        used = health.used_memory_human or fmt_compact(health.used_memory)
        if health.maxmemory:
            ratio = health.memory_ratio
            style = "bold red" if ratio > 0.9 else "yellow" if ratio > 0.75 else "green"
            text.append(f"{used} of {fmt_compact(health.maxmemory)}B ({ratio:.0%})", style=style)
        else:
            text.append(f"{used} (no maxmemory)")
    if health.aof_enabled is not None:
        text.append(" · AOF ")
        if health.aof_enabled:
            ok = health.aof_status == "ok"
            text.append(
                "on" if ok else f"on, last write {health.aof_status}",
                style="green" if ok else "bold red",
            )
        else:
            text.append("off", style="yellow")
    if health.connected_clients is not None:
        plural = "" if health.connected_clients == 1 else "s"
        text.append(f" · {health.connected_clients} client{plural}")
    if health.ops_per_sec is not None:
        text.append(f" · {health.ops_per_sec:,} ops/s")
    if health.deadletters is not None:
        text.append(
            f" · {health.deadletters:,} dead letters",
            style="yellow" if health.deadletters else "",
        )
    if health.gaps is not None:
        text.append(f" · {health.gaps:,} gap{'' if health.gaps == 1 else 's'}")
    return text


def render(
    snapshot: Snapshot, *, width: int = 100, tz: tzinfo | None = None, live: bool = True
) -> RenderableType:
    """The whole frame: header, Valkey health (or why it is unreachable), symbols, pipeline.

    `live` is false for a one-off frame (`--once`), which does not retry.
    """
    width = max(width, 20)
    when = datetime.fromtimestamp(snapshot.now_ns / NS_PER_S, tz=tz or EXCHANGE_TZ)
    header = Text("qt monitor", style="bold")
    header.append(f"  {when:%Y-%m-%d %H:%M:%S %Z}")
    header.append(
        f"  refresh {fmt_age(snapshot.refresh_ns / NS_PER_S)}"
        f"  stale after {fmt_age(snapshot.stale_ns / NS_PER_S)}",
        style="dim",
    )
    parts: list[RenderableType] = [_one_line(header, width)]
    if snapshot.reachable:
        parts.append(_health_text(snapshot))
    else:
        problem = Text("VALKEY UNREACHABLE: ", style="bold red")
        problem.append(snapshot.error)
        if live:
            problem.append(
                f" — retrying every {fmt_age(snapshot.refresh_ns / NS_PER_S)}"
                f" (attempt {snapshot.attempts})",
                style="red",
            )
        parts.append(problem)
        if snapshot.data_ns is not None:
            age = (snapshot.now_ns - snapshot.data_ns) / NS_PER_S
            parts.append(Text(f"showing data last read {fmt_age(age)} ago", style="dim"))
    parts.append(Text(""))
    if snapshot.symbols:
        columns, rows = _symbol_rows(snapshot)
        parts.append(fit_table(columns, rows, width, title="Symbols", title_justify="left"))
    elif snapshot.reachable:
        parts.append(Text("no symbols: no stream:ticks:* streams yet", style="dim"))
    if snapshot.stages:
        parts.append(Text(""))
        columns, rows = _stage_rows(snapshot)
        parts.append(fit_table(columns, rows, width, title="Pipeline", title_justify="left"))
    if snapshot.groups:
        parts.append(Text(""))
        columns, rows = _group_rows(snapshot)
        parts.append(fit_table(columns, rows, width, title="Consumer groups", title_justify="left"))
    return Group(*parts)


def _one_line(text: Text, width: int) -> Text:
    text.no_wrap = True
    text.overflow = "ellipsis"
    text.truncate(width, overflow="ellipsis")
    return text
