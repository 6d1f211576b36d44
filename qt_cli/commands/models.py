"""`qt models`: list, show, verify and import model bundles (`.qtm`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from qt_cli.options import AsJson
from qt_cli.output import emit_json, is_terminal, out_console, say

LIST_HELP = """\
List model bundles: the files named, or every .qtm under the folders named (default: models/).

Per bundle: model, feature set, symbols, horizon, validated balanced accuracy, serving path, content hash. A bundle that cannot be read says why.

Example: qt models list models/ --json
"""

SHOW_HELP = """\
Show a bundle's metadata: feature set, names and order, catalog hash, label definition, training range, validation metrics, library versions, creation time, content hash.

The content hash is checked first; nothing in the file is run.

Example: qt models show models/wdo.qtm --json
"""

VERIFY_HELP = """\
Verify a bundle the way serving loads it: content hash, trusted types only (skops), and the ONNX graph's probabilities against the scikit-learn pipeline's (within 1e-6).

Exit 0 when every check passes; one line `Error: …` otherwise.

Example: qt models verify models/wdo.qtm
"""

IMPORT_HELP = """\
Wrap a model trained elsewhere (the users' legacy pickles, a LightGBM text file) into a bundle.

A pickle runs code when it is loaded, so it is never loaded without --trust-pickle, and never when --sha256 is given and does not match. The feature order (the fitted objects' feature_names_in_, the LightGBM file's feature names, or --features F.json) must equal the feature set's; the differences are named otherwise. Class labels come from the estimator's classes_ mapped through --classes (the direction of each class, in classes_ order), never from a column position. --top-buyers/--top-sellers store the agent ranking the seed65 top_* features were computed with (it was never saved with those models). XGBoost and LightGBM need the optional extra: pip install 'qt-cli[legacy]'.

Example: qt models import --estimator rf.pkl --scaler scaler.pkl --feature-set seed65 --classes=-1,0,1 --trust-pickle --output models/rf.qtm
"""


def _list_table(rows: list[dict[str, Any]]) -> None:
    from rich import box
    from rich.table import Table

    table = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    columns = ("path", "model", "feature_set", "symbols", "horizon", "balanced_accuracy", "serving")
    for column in columns:
        table.add_column(column.replace("_", " "))
    for row in rows:
        if "error" in row:
            table.add_row(row["path"], f"[red]{row['error']}[/red]", *[""] * 5)
            continue
        table.add_row(*[_cell(row.get(c)) for c in columns])
    out_console().print(table)


def _metric(metrics: dict[str, Any], name: str, places: int) -> str:
    """A validation figure with `places` decimals ('?' when the bundle lacks it)."""
    value = metrics.get(name)
    return f"{value:.{places}f}" if isinstance(value, int | float) else "?"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def register(app: typer.Typer, *, name: str, summary: str) -> None:
    group = typer.Typer(help=summary, no_args_is_help=True)

    @group.command("list", help=LIST_HELP)
    def list_(
        paths: Annotated[
            list[Path] | None,
            typer.Argument(help="Bundle files or folders (default: models/).", show_default=False),
        ] = None,
        as_json: AsJson = False,
    ) -> None:
        from qt_cli.core.models.bundle import list_bundles

        rows = list_bundles(list(paths or [Path("models")]))
        if as_json:
            emit_json(rows)
        elif is_terminal():
            _list_table(rows)
        else:
            for row in rows:
                sys.stdout.write(
                    "\t".join(
                        _cell(row.get(c))
                        for c in ("path", "model", "feature_set", "symbols", "horizon")
                    )
                    + ("\t" + row["error"] if "error" in row else "")
                    + "\n"
                )

    @group.command("show", help=SHOW_HELP)
    def show(
        path: Annotated[Path, typer.Argument(help="The bundle (.qtm).")],
        as_json: AsJson = False,
    ) -> None:
        from qt_cli.core.models.bundle import metadata_of

        data = metadata_of(path)
        if as_json:
            emit_json(data)
            return
        label = data["label"]  # checked when read (bundle.metadata_problem)
        validation = data.get("validation", {})
        lines = [
            f"model         {data.get('model')} ({data.get('estimator', '')})",
            f"features      {data['features']['set']}: {len(data['features']['names'])} "
            f"(catalog {data['features'].get('catalog_hash', '')})",
            f"label         {label.get('horizon', '')}, threshold {label.get('threshold', '')}, "
            f"classes {', '.join(c['label'] + '=' + str(c['value']) for c in label.get('classes', []))}",
            f"training      {data.get('training', {}).get('symbols', '')} "
            f"{data.get('training', {}).get('rows', '')} rows",
            f"serving       {data.get('serving', {}).get('path', '')}",
            f"content hash  {data.get('content_hash', '')}",
        ]
        for who in ("model", "baseline"):
            m = validation.get(who) if isinstance(validation, dict) else None
            if isinstance(m, dict) and m:
                lines.append(
                    f"{who:<13} accuracy {_metric(m, 'accuracy', 3)}  "
                    f"balanced {_metric(m, 'balanced_accuracy', 3)}  "
                    f"log loss {_metric(m, 'log_loss', 4)}"
                )
        sys.stdout.write("\n".join(lines) + "\n")

    @group.command("verify", help=VERIFY_HELP)
    def verify(
        path: Annotated[Path, typer.Argument(help="The bundle (.qtm).")],
        as_json: AsJson = False,
    ) -> None:
        from qt_cli.core.models.bundle import verify as verify_bundle

        report = verify_bundle(path)
        if as_json:
            emit_json(report)
        else:
            say(f"{path}: ok ({', '.join(report['checks'])}; serving {report['serving']})")

    @group.command("import", help=IMPORT_HELP)
    def import_(
        estimator: Annotated[
            Path,
            typer.Option("--estimator", help="The model: a joblib pickle or a LightGBM .txt."),
        ],
        output: Annotated[Path, typer.Option("--output", "-o", help="The bundle to write.")],
        feature_set: Annotated[
            str, typer.Option("--feature-set", help="The feature set it was trained on.")
        ] = "seed65",
        classes: Annotated[
            str,
            typer.Option(
                "--classes",
                help="Direction of each of the estimator's classes_, in order (-1 down, 0 flat, "
                "1 up), e.g. --classes=-1,0,1.",
            ),
        ] = "-1,0,1",
        scaler: Annotated[
            Path | None,
            typer.Option("--scaler", help="A separate fitted scaler (pickle).", show_default=False),
        ] = None,
        features: Annotated[
            Path | None,
            typer.Option(
                "--features",
                help='A sidecar feature list (JSON list or {"features": [...]}).',
                show_default=False,
            ),
        ] = None,
        trust_pickle: Annotated[
            bool,
            typer.Option("--trust-pickle", help="Allow loading pickles (they run code)."),
        ] = False,
        sha256: Annotated[
            list[str] | None,
            typer.Option(
                "--sha256",
                help="Pinned sha256 of the estimator (then the scaler), repeatable.",
                show_default=False,
            ),
        ] = None,
        top_buyers: Annotated[
            str | None,
            typer.Option(
                "--top-buyers",
                help="The 5 top buyer agent ids, e.g. 3,85,120,308,72.",
                show_default=False,
            ),
        ] = None,
        top_sellers: Annotated[
            str | None,
            typer.Option("--top-sellers", help="The 5 top seller agent ids.", show_default=False),
        ] = None,
        as_json: AsJson = False,
    ) -> None:
        from qt_cli.core.models.legacy import import_model

        result = import_model(
            estimator=estimator,
            scaler=scaler,
            features=features,
            feature_set=feature_set,
            classes=classes,
            trust_pickle=trust_pickle,
            sha256=list(sha256 or []),
            top_buyers=top_buyers,
            top_sellers=top_sellers,
            output=output,
        )
        if as_json:
            emit_json(result)
        else:
            say(
                f"wrote {output} ({result['estimator']}, {result['feature_set']}, serving "
                f"{result['serving']}, content hash {result['content_hash'][:16]})"
            )

    app.add_typer(group, name=name, help=summary)
