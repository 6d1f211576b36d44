"""`qt features`: the feature catalog (and, later, the live feature stage)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from qt_cli.options import AsJson
from qt_cli.output import emit_json, is_terminal, out_console

CATALOG_HELP = """\
Print the feature catalog and its feature sets.

Every feature's name, group, inputs, window and definition; the catalog version (a hash of the definitions and the engine version); the sets: qt (the default), seed65 (the users' trained models, in their column order) and basic11 (the seed production system's 11).

A table on a terminal, tab-separated lines otherwise; --json for scripts (a `sets` object maps each set name to its ordered names); --markdown prints docs/FEATURES.md. --set NAME lists only that set, in its order.

Example: qt features catalog --set seed65 --json
"""


def _render_table(rows: list[dict[str, Any]], version: str) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=f"feature catalog {version}",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in ("name", "group", "inputs", "window", "sets", "definition"):
        table.add_column(column, no_wrap=column != "definition")
    for row in rows:
        table.add_row(
            Text(row["name"]),
            Text(row["group"]),
            Text(",".join(row["inputs"])),
            Text(row["window"]),
            Text(",".join(row["sets"])),
            Text(row["definition"]),
        )
    out_console().print(table)


def register(app: typer.Typer, *, name: str, summary: str) -> None:
    group = typer.Typer(help=summary, no_args_is_help=True)

    @group.command("catalog", help=CATALOG_HELP)
    def catalog(
        as_json: AsJson = False,
        markdown: Annotated[
            bool, typer.Option("--markdown", help="Print docs/FEATURES.md (Markdown).")
        ] = False,
        set_name: Annotated[
            str | None,
            typer.Option(
                "--set",
                help="Only this feature set, in its order (qt, seed65, basic11).",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        from qt_cli.core.features import catalog as cat

        if markdown:
            from qt_cli.core.features.doc import render

            sys.stdout.write(render())
            return
        data = cat.catalog_dict()
        rows: list[dict[str, Any]] = data["features"]  # type: ignore[assignment]
        if set_name is not None:
            names = cat.feature_set(set_name)
            by_name = {row["name"]: row for row in rows}
            rows = [by_name[n] for n in names]
            data = {**data, "features": rows, "sets": {set_name: list(names)}}
        if as_json:
            emit_json(data)
        elif is_terminal():
            _render_table(rows, str(data["version"]))
        else:
            for row in rows:
                sys.stdout.write(
                    "\t".join(
                        [
                            row["name"],
                            row["group"],
                            ",".join(row["inputs"]),
                            row["window"],
                            ",".join(row["sets"]),
                            row["definition"],
                        ]
                    )
                    + "\n"
                )

    app.add_typer(group, name=name, help=summary)
