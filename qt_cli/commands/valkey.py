"""`qt valkey start|stop|status`: the managed local Valkey server."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from qt_cli.options import AsJson
from qt_cli.output import emit_json, out_console, say


def _managed(require_password: bool = True) -> Any:
    from qt_cli.core import config
    from qt_cli.core.store.managed import ManagedValkey

    return ManagedValkey(config.current().valkey_dir, require_password=require_password)


def _render(status: Any, as_json: bool) -> None:
    if as_json:
        emit_json(status.as_dict())
        return
    console = out_console()
    if not status.running:
        console.print(f"stopped   data in {status.directory}", markup=False)
        return
    console.print(
        f"running   pid {status.pid}  {status.url}  socket {status.socket}\n"
        f"          valkey {status.version}  AOF {'on' if status.aof_enabled else 'off'} "
        f"(appendfsync {status.appendfsync})  memory {status.used_memory_human}  keys {status.keys}\n"
        f"          data in {status.directory}"
        + (
            f"\n          password in {status.password_file} (0600)" if status.password_file else ""
        ),
        markup=False,
    )


def register(app: typer.Typer, *, name: str, summary: str) -> None:
    group = typer.Typer(help=summary, no_args_is_help=True)

    @group.command("start")
    def start(
        no_password: Annotated[
            bool,
            typer.Option(
                "--no-password",
                help="Run without the generated password (any local user can then connect).",
            ),
        ] = False,
        as_json: AsJson = False,
    ) -> None:
        """Start the managed server (AOF on, loopback and a 0700 unix socket) with a generated
        password in <data dir>/valkey/password (0600), which qt commands read by themselves.
        Example: qt valkey start"""
        managed = _managed(require_password=not no_password)
        was_running = managed.status().running
        status = managed.start()
        if not as_json:
            say("already running" if was_running else "started")
        _render(status, as_json)

    @group.command("stop")
    def stop(as_json: AsJson = False) -> None:
        """Stop the managed server; its data stays. Example: qt valkey stop"""
        managed = _managed()
        was_running = managed.status().running
        status = managed.stop()
        if not as_json:
            say("stopped" if was_running else "was not running")
        _render(status, as_json)

    @group.command("status")
    def status(as_json: AsJson = False) -> None:
        """Show whether the managed server runs, with AOF and memory. Example: qt valkey status --json"""
        _render(_managed().status(), as_json)

    app.add_typer(group, name=name, help=summary)
