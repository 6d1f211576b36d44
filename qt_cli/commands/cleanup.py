"""`qt cleanup`: trim old stream entries by age or count, per kind, without blocking writers."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from qt_cli.core.keys import STREAM_PATTERN
from qt_cli.options import AsJson
from qt_cli.output import emit_json, err_console, is_terminal, out_console, say

HELP = """\
Trim old entries from the Valkey streams that match --pattern (found with SCAN, never KEYS).

--retention DURATION keeps that much history (XTRIM MINID: entries whose id, the event time, is older than now - DURATION go). Repeat it with KIND=DURATION for a kind of its own: ticks, book, candles (or candles:1m), features, predictions, signals, daily, state, gaps, deadletter, hist (the columnar tick history). A stream of a kind without a retention and no default is left alone. --max-entries N keeps at most the newest N entries of every matching stream (alone or with --retention).

Trimming goes in short steps (XTRIM ~ LIMIT), so a live system keeps writing. --dry-run changes nothing and shows what would go. Per stream: entries before and after, memory freed (MEMORY USAGE); --json for scripts.

--journal [PATH] trims the feed's on-disk journal instead (PATH defaults to <data dir>/journal): whole segments last written longer ago than --retention go, oldest first per session, never one a running feed still writes to (docs/feed.md, "Journal retention"); --dry-run and --json as for streams.

--rewrite-chunks instead rewrites the history chunks (stream:hist:ticks:{SYM}) written by an older codec version to the current one, which reads faster; ids, the late index and the bridge's marks stay as they are, and a live bridge may keep writing (docs/query.md). It needs about the stream's memory again while one stream is copied. With --dry-run it only counts the old chunks.

Example: qt cleanup --retention 30d --retention book=5d --retention hist=365d --dry-run

Example: qt cleanup --journal --retention 7d --dry-run

Example: qt cleanup --rewrite-chunks --dry-run --json
"""


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _render(report: Any) -> None:
    from rich.text import Text

    from qt_cli.core.tables import Column, fit_table

    # On a narrow terminal `after` (before - removed) goes first, then the policy.
    columns = [
        Column("stream", 0, "left"),
        Column("policy", 3, "left"),
        Column("before", 2),
        Column("after", 4),
        Column("removed", 1),
        Column("freed", 1),
    ]
    rows = []
    for s in report.streams:
        approx = "~" if s.estimated else ""
        rows.append(
            [
                Text(s.key),
                Text(s.policy),
                f"{s.entries_before:,}",
                f"{approx}{s.entries_after:,}",
                f"{approx}{s.removed:,}",
                f"{'~' if report.dry_run else ''}{_human_bytes(s.freed_bytes)}",
            ]
        )
    title = "would trim (dry run)" if report.dry_run else "trimmed"
    console = out_console()
    console.print(
        fit_table(columns, rows, console.width, title=title, header_style="bold"),
    )


def _render_journal(report: Any) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    title = "would remove (dry run)" if report.dry_run else "removed"
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column(
        "session", no_wrap=True, min_width=max(len(s.session) for s in report.sessions)
    )
    for name in ("segments", "kept", "removed", "first seq kept", "disk freed"):
        table.add_column(name, justify="right")
    for s in report.sessions:
        first = "-" if s.first_seq_after is None else f"{s.first_seq_after:,}"
        table.add_row(
            Text(s.session),
            f"{s.segments_before:,}",
            f"{s.segments_after:,}" + (" (in use)" if s.in_use else ""),
            f"{s.removed:,}",
            first,
            _human_bytes(s.freed_bytes),
        )
    out_console().print(table)


def _journal_cleanup(
    path: str | None, retention: list[str], max_entries: int | None, dry_run: bool, as_json: bool
) -> None:
    from qt_cli.core import cleanup, config

    report = cleanup.cleanup_journal(
        path or config.current().journal_dir, retention, max_entries=max_entries, dry_run=dry_run
    )
    if as_json:
        emit_json(report.as_dict())
        return
    if report.removed or report.in_use:
        _render_journal(report)
    verb = "would remove" if dry_run else "removed"
    freed = _human_bytes(report.freed_bytes)
    say(
        f"journal {report.directory}: {len(report.sessions)} sessions; {verb} "
        f"{report.removed:,} segments last written before {report.cutoff} (older than "
        f"{report.retention}), {freed} {'to free' if dry_run else 'freed'} "
        f"in {report.seconds:.2f} s"
        + (f"; {report.in_use} in use by a running feed kept" if report.in_use else "")
    )


def _bar(label: str) -> tuple[Any, Any]:
    """A transient progress bar on a terminal's stderr (None, None elsewhere)."""
    if not is_terminal(sys.stderr):
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[key]}"),
        console=err_console(),
        transient=True,
    )
    task = bar.add_task(label, total=None, key="")
    bar.start()

    def progress(done: int, total: int, key: str) -> None:
        bar.update(task, completed=done, total=total, key=key)

    return bar, progress


def _rewrite(*, dry_run: bool, as_json: bool) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from qt_cli.core import config, rewrite, store

    client = store.connect_settings(config.current(), say=say)
    bar, progress = _bar("rewrite")
    try:
        report = rewrite.rewrite_chunks(client, dry_run=dry_run, progress=progress)
    finally:
        if bar is not None:
            bar.stop()
        client.close()
    if as_json:
        emit_json(report.as_dict())
        return
    if report.streams:
        title = "old chunks (dry run)" if dry_run else "rewritten"
        table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
        for name, justify in (
            ("stream", "left"),
            ("chunks", "right"),
            ("old codec", "right"),
            ("memory before", "right"),
            ("after", "right"),
        ):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for s in report.streams:
            table.add_row(
                Text(s.key),
                f"{s.chunks:,}",
                f"{s.old:,}",
                _human_bytes(s.memory_before),
                _human_bytes(s.memory_after),
            )
        out_console().print(table)
    verb = "would rewrite" if dry_run else "rewrote"
    unreadable = sum(len(s.unreadable) for s in report.streams)
    say(
        f"{len(report.streams)} history streams: {verb} {report.rewritten:,} chunks to codec "
        f"version {report.as_dict()['codec_version']} in {report.seconds:.2f} s"
        + (f"; {unreadable} unreadable chunks copied as they were" if unreadable else "")
    )


def register(app: typer.Typer, *, name: str, summary: str) -> None:
    @app.command(name, help=HELP, short_help=summary)
    def cleanup_command(
        retention: Annotated[
            list[str] | None,
            typer.Option(
                "--retention",
                "-r",
                help="Keep this much: 30d, 12h; or per kind, KIND=DURATION (book=5d). Repeatable.",
                show_default=False,
            ),
        ] = None,
        max_entries: Annotated[
            int | None,
            typer.Option(
                "--max-entries",
                min=0,
                help="Keep at most the newest N entries per stream.",
                show_default=False,
            ),
        ] = None,
        pattern: Annotated[
            str, typer.Option("--pattern", "-p", help="Which streams (SCAN MATCH pattern).")
        ] = STREAM_PATTERN,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Show what would go; change nothing.")
        ] = False,
        journal: Annotated[
            bool,
            typer.Option(
                "--journal",
                help="Trim the feed's on-disk journal (at PATH, default <data dir>/journal) "
                "instead of streams.",
            ),
        ] = False,
        path: Annotated[
            str | None,
            typer.Argument(
                metavar="PATH", help="With --journal: the journal directory.", show_default=False
            ),
        ] = None,
        rewrite_chunks: Annotated[
            bool,
            typer.Option(
                "--rewrite-chunks",
                help="Rewrite history chunks of an older codec version to the current one.",
            ),
        ] = False,
        as_json: AsJson = False,
    ) -> None:
        from qt_cli.core import cleanup, config, store
        from qt_cli.core.errors import UsageError

        if path is not None and not journal:
            raise UsageError(f"unexpected argument {path!r}: a PATH goes with --journal [PATH]")
        if journal and pattern != STREAM_PATTERN:
            raise UsageError("--pattern applies to streams; --journal trims the whole journal")
        if rewrite_chunks and journal:
            raise UsageError("--rewrite-chunks works on streams; --journal trims the journal")
        if journal:
            _journal_cleanup(path, retention or [], max_entries, dry_run, as_json)
            return

        if rewrite_chunks:
            if retention or max_entries is not None:
                raise UsageError(
                    "--rewrite-chunks does not trim: run it without --retention/--max-entries"
                )
            _rewrite(dry_run=dry_run, as_json=as_json)
            return
        policy = cleanup.parse_policy(retention or (), max_entries=max_entries)
        client = store.connect_settings(config.current(), say=say)
        bar, progress = _bar("cleanup")
        try:
            report = cleanup.cleanup(
                client, policy, pattern=pattern, dry_run=dry_run, progress=progress
            )
        finally:
            if bar is not None:
                bar.stop()
            client.close()
        if as_json:
            emit_json(report.as_dict())
            return
        if report.streams:
            _render(report)
        verb = "would remove" if dry_run else "removed"
        freed = _human_bytes(report.freed_bytes)
        say(
            f"{len(report.streams)} streams matching {pattern!r}: {verb} {report.removed:,} "
            f"entries, {'about ' if dry_run else ''}{freed} {'to free' if dry_run else 'freed'} "
            f"in {report.seconds:.2f} s"
            + (f"; {len(report.skipped)} without a policy left alone" if report.skipped else "")
        )

    _ = cleanup_command
