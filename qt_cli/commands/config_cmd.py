"""`qt config`: the settings a command would use (flags > QT_* env > .env > defaults)."""

from __future__ import annotations

import typer

from qt_cli.options import AsJson
from qt_cli.output import emit_json, out_console


def register(app: typer.Typer, *, name: str, summary: str) -> None:
    @app.command(
        name, help=f"{summary}\n\nExample: qt --valkey valkey://10.0.0.5:6379/0 config --json"
    )
    def show(as_json: AsJson = False) -> None:
        from qt_cli.core import config

        settings = config.current().describe()
        if as_json:
            emit_json(settings)
            return
        console = out_console()
        width = max(len(k) for k in settings)
        for key, value in settings.items():
            console.print(f"{key.ljust(width)}  {value}", markup=False)
