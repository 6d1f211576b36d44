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
# ZeroMQ security (docs/SECURITY.md), on every command that binds or connects ZeroMQ. Only paths
# travel on the command line, never a key.
CurveSecretKey = Annotated[
    str | None,
    typer.Option(
        "--curve-secret-key",
        metavar="FILE",
        help="CURVE: this process's key pair (a .key_secret file from 'qt keys generate'); "
        "every ZeroMQ socket is then encrypted. Env: QT_CURVE_SECRET_KEY.",
        show_default=False,
    ),
]
CurveServerKey = Annotated[
    str | None,
    typer.Option(
        "--curve-server-key",
        metavar="FILE",
        help="CURVE: the public key (.key) of the servers this process connects to "
        "(default: its own). Env: QT_CURVE_SERVER_KEY.",
        show_default=False,
    ),
]
CurveClients = Annotated[
    str | None,
    typer.Option(
        "--curve-clients",
        metavar="DIR",
        help="CURVE: accept only clients whose public key (.key) is in DIR. Env: QT_CURVE_CLIENTS.",
        show_default=False,
    ),
]
Insecure = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="Allow binding plain (unencrypted) TCP on a non-loopback address. Env: QT_INSECURE.",
    ),
]


def apply_security(
    curve_secret_key: str | None,
    curve_server_key: str | None,
    curve_clients: str | None,
    insecure: bool,
) -> None:
    """Fold the ZeroMQ security flags into the settings (over QT_* env) and check the key files
    now, before anything starts."""
    from dataclasses import replace

    from qt_cli.core import config
    from qt_cli.core.zmq_io import curve

    given: dict[str, object] = {
        "curve_secret_key": curve_secret_key,
        "curve_server_key": curve_server_key,
        "curve_clients": curve_clients,
        "insecure": insecure or None,
    }
    overrides = {name: value for name, value in given.items() if value is not None}
    if overrides:
        config.set_current(replace(config.current(), **overrides))
    s = config.current()
    curve.use(
        curve.load(s.curve_secret_key, s.curve_server_key, s.curve_clients, insecure=s.insecure)
    )
