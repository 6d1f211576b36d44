"""Options shared by several commands, declared once: same name, default and help everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

Symbols = Annotated[
    list[str] | None,
    typer.Option(
        "--symbol", "-s", help="Ticker, repeatable (e.g. WDOQ25). Default: all.", show_default=False
    ),
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts).")
]


def _not_blank(value: str | None) -> str | None:
    """An option given as '' is an error, not the option left out (`--duration ''` is not
    'run forever')."""
    if value is not None and not value.strip():
        raise typer.BadParameter("is empty; give a value or leave the option out")
    return value


Duration = Annotated[
    str | None,
    typer.Option(
        "--duration",
        callback=_not_blank,
        help="Stop after this long, e.g. 30s, 5m (default: run until Ctrl+C).",
        show_default=False,
    ),
]
StopAfter = Annotated[
    int | None,
    typer.Option("--stop-after", help="Stop after this many events.", show_default=False, min=1),
]
Inputs = Annotated[
    list[str] | None,
    typer.Option(
        "--in",
        "-i",
        help="Input endpoint, repeatable: tcp://…, ipc://…, valkey://…, '-', or a file.",
        show_default=False,
    ),
]
Outputs = Annotated[
    list[str] | None,
    typer.Option(
        "--out",
        "-o",
        help="Output endpoint, repeatable: tcp://…, ipc://…, valkey://…, '-', or a file.",
        show_default=False,
    ),
]
MaxMessageBytes = Annotated[
    int,
    typer.Option(
        "--max-message-bytes",
        help="ZeroMQ inputs: the largest message decoded, in bytes; a longer one is dropped, "
        "counted and dead-lettered, with one warning (e.g. 1048576: 1 MiB).",
        min=1,
    ),
]
TimeUnit = Annotated[
    str | None,
    typer.Option(
        "--time-unit",
        help="Files: the unit of their ts_event/ts_init columns (s, ms, us, ns), converted to ns. "
        "Without it, times before 2000 or over a day ahead are rejected with the unit they look "
        "like.",
        show_default=False,
    ),
]
