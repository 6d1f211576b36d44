"""`qt keys generate`: a ZeroMQ CURVE key pair for endpoints that cross hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qt_cli.options import AsJson
from qt_cli.output import emit_json, out_console

GENERATE_HELP = """\
Write a new CURVE key pair: DIR/NAME.key (the public key, to copy to the other hosts) and DIR/NAME.key_secret (the secret key, mode 0600, never shared). Existing files are never overwritten.

Give the secret file to every qt that binds or connects ZeroMQ (--curve-secret-key or QT_CURVE_SECRET_KEY); the public one to clients of another key pair (--curve-server-key) or to a server's --curve-clients directory. Guide: docs/SECURITY.md.

Example: qt keys generate --out ~/.config/qt/keys && export QT_CURVE_SECRET_KEY=~/.config/qt/keys/qt.key_secret
"""


def register(app: typer.Typer, *, name: str, summary: str) -> None:
    group = typer.Typer(help=summary, no_args_is_help=True)

    @group.command("generate", help=GENERATE_HELP)
    def generate(
        out: Annotated[
            Path, typer.Option("--out", "-o", help="Directory to write the two key files to.")
        ] = Path("."),
        key_name: Annotated[
            str, typer.Option("--name", help="File name of the pair (NAME.key, NAME.key_secret).")
        ] = "qt",
        as_json: AsJson = False,
    ) -> None:
        from qt_cli.core.zmq_io import curve

        public, secret = curve.generate(out, key_name)
        if as_json:
            emit_json({"public_key_file": str(public), "secret_key_file": str(secret)})
            return
        console = out_console()
        console.print(f"public key  {public}  (copy to the other hosts)", markup=False)
        console.print(f"secret key  {secret}  (mode 0600, keep it here)", markup=False)

    app.add_typer(group, name=name, help=summary)
