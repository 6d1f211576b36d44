"""The `qt` command: global options, subcommand registration, and the one place errors become exit codes."""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from qt_cli import __version__
from qt_cli.core import config
from qt_cli.core.errors import ExitCode, QtError
from qt_cli.output import err_console

HELP = """\
Real-time B3 market data from the shell: capture, store, travel back in time.

Each subcommand runs one stage; stages talk through ZeroMQ endpoints or Valkey streams.

Example: qt feed --sim --out - | qt bridge --in - --out valkey://127.0.0.1:6379/0
"""


class QtGroup(TyperGroup):
    """Turns QtError (and, below debug, any exception) into one line on stderr and an exit code."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # registration order, not alphabetical

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except QtError as exc:
            _report(str(exc))
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            _report("interrupted")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except (typer.Exit, typer.Abort, BrokenPipeError):
            raise  # a closed stdout is no error: main() ends quietly
        except OSError as exc:
            if exc.errno not in _PATH_ERRNOS or not exc.filename:
                _unexpected(exc)
            # a path the user gave that the system refuses: the path and why
            _report(f"{str(exc.filename)[:200]}: {exc.strerror}")
            raise typer.Exit(int(ExitCode.ERROR)) from None
        except Exception as exc:
            if getattr(exc, "exit_code", None) is not None and type(exc).__module__.startswith(
                ("click", "typer")
            ):
                raise
            _unexpected(exc)


# What a path given on the command line can meet: said as such, not as a crash.
_PATH_ERRNOS = frozenset(
    {errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.ELOOP}
)


def _unexpected(exc: BaseException) -> NoReturn:
    if config.current().log_level == "debug":
        traceback.print_exc()
    _report(f"unexpected {type(exc).__name__}: {exc} (run with --log-level debug for details)")
    raise typer.Exit(int(ExitCode.ERROR)) from None


def _report(message: str) -> None:
    err_console().print(f"Error: {message}", markup=False, style="bold red")


app = typer.Typer(
    cls=QtGroup,
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _install_access(settings: config.Settings) -> None:
    """What core's clients and sockets use when an endpoint does not say: the Valkey CA and the
    managed server's password from these settings; plain ZeroMQ until a command's CURVE options
    install keys (options.apply_security)."""
    from qt_cli.core import store
    from qt_cli.core.zmq_io import curve

    store.use_access(ca=settings.valkey_ca, managed_dir=settings.valkey_dir)
    curve.use(None)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"qt {__version__}\n")
        raise typer.Exit()


@app.callback()
def main_options(
    valkey: Annotated[
        str | None,
        typer.Option(
            "--valkey",
            help="Valkey URL (valkey://[user@]host:port/db). Env: QT_VALKEY_URL. Password: QT_VALKEY_PASSWORD.",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            help="debug, info, warning or error. Env: QT_LOG_LEVEL.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    settings = config.load_settings({"valkey_url": valkey, "log_level": log_level})
    config.set_current(settings)
    _install_access(settings)
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def _register() -> None:
    from qt_cli.commands import COMMANDS

    for name, module_name, summary in COMMANDS:
        module = __import__(f"qt_cli.commands.{module_name}", fromlist=["register"])
        module.register(app, name=name, summary=summary)


_register()


def main() -> None:
    """Console-script entry point.

    When the reader of stdout goes away (`qt … | head`), whatever was writing (help, a table,
    JSON, data), qt stops quietly with exit 0, as `--out -` and `qt query` always did.
    """
    stdout_before = _stdout_identity()
    try:
        app(prog_name="qt")
    except QtError as exc:  # raised while resolving settings, before a command runs
        _report(str(exc))
        sys.exit(int(exc.exit_code))
    except BrokenPipeError:
        _end_on_closed_stdout()
    except SystemExit as exc:
        # Click and rich turn a closed stdout into exit 1 themselves: click wraps sys.stdout in
        # a PacifyFlushWrapper, rich points fd 1 at /dev/null. Either mark means "reader gone".
        if exc.code not in (0, None) and (
            type(sys.stdout).__name__ == "PacifyFlushWrapper" or _stdout_identity() != stdout_before
        ):
            _end_on_closed_stdout()
        try:
            sys.stdout.flush()  # what is still buffered, before the interpreter's last flush
        except BrokenPipeError:
            _end_on_closed_stdout()
        raise


def _stdout_identity() -> tuple[int, int] | None:
    try:
        info = os.fstat(1)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _end_on_closed_stdout() -> None:
    """Exit 0 without a word; fd 1 goes to /dev/null so no later flush fails again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:
        pass
    sys.exit(int(ExitCode.OK))
