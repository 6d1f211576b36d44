"""`qt train`: a model from stored feature history, validated walk-forward, saved as a bundle."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from qt_cli.options import AsJson
from qt_cli.output import emit_json, is_terminal, say

HELP = """\
Train a classifier of the price direction (UP/DOWN/FLAT) from stored feature vectors and ticks.

The dataset is read through the query API: the symbol's warm feature vectors of --set in [--from, --to] and its ticks. Point in time: a vector at t holds data up to t; its label compares the last price at or before t with the price --horizon later (60s, 5m, or 100trades). Walk-forward validation in time order with a purge of at least the horizon and an embargo after each test fold; scaler and threshold are fitted inside each fold. Reports accuracy, balanced accuracy, log loss and per-class precision/recall beside a majority-class baseline; `skill` is true only when the balanced accuracy beats the baseline's by 0.05; `log_loss_beats_baseline` says whether the probabilities score better than the baseline's class frequencies (a note says when they do not: overconfident). Refuses too little data, one class only, features all NaN, a catalog hash that changes inside the range.

The bundle holds the scikit-learn pipeline, its ONNX graph (checked equal within 1e-6) and the metadata (qt models show).

Example: qt train --symbol WDOQ25 --from 2025-08-04 --to 2025-08-09 --set qt --horizon 60s --model hgb --output models/wdo.qtm
"""


class _Progress:
    """A rich progress bar on stderr, only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.bar: Any = None
        self.task: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(file=sys.stderr), transient=True)
            self.bar.start()

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task(what, total=total)
        self.bar.update(self.task, completed=done, description=what)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _line(name: str, m: dict[str, Any]) -> str:
    recalls = " ".join(
        f"{k} {v['precision']:.2f}/{v['recall']:.2f}" for k, v in m["per_class"].items()
    )
    return (
        f"{name:<9} accuracy {m['accuracy']:.3f}  balanced {m['balanced_accuracy']:.3f}  "
        f"log loss {m['log_loss']:.4f}  precision/recall {recalls}"
    )


def register(app: typer.Typer, *, name: str, summary: str) -> None:
    @app.command(name, help=HELP, short_help=summary)
    def train(
        symbol: Annotated[str, typer.Option("--symbol", "-s", help="Ticker, e.g. WDOQ25.")],
        start: Annotated[
            str, typer.Option("--from", help="Start of the training range (as qt query reads it).")
        ],
        end: Annotated[str, typer.Option("--to", help="End of the training range.")],
        output: Annotated[Path, typer.Option("--output", "-o", help="The bundle to write (.qtm).")],
        set_name: Annotated[str, typer.Option("--set", help="Feature set.")] = "qt",
        horizon: Annotated[
            str, typer.Option("--horizon", help="Label horizon: 60s, 5m, or 100trades.")
        ] = "60s",
        model: Annotated[str, typer.Option("--model", help="hgb, logreg or rf.")] = "hgb",
        threshold: Annotated[
            float | None,
            typer.Option(
                "--threshold",
                help="Return beyond which a move is UP/DOWN (default: chosen in each fold).",
                show_default=False,
            ),
        ] = None,
        folds: Annotated[int, typer.Option("--folds", help="Walk-forward test folds.")] = 4,
        embargo: Annotated[
            str | None,
            typer.Option(
                "--embargo",
                help="Embargo after each test fold (default: the horizon).",
                show_default=False,
            ),
        ] = None,
        as_json: AsJson = False,
    ) -> None:
        from qt_cli.core import config, store
        from qt_cli.core.models.training import train as run_train

        client = store.connect_settings(config.current())
        progress = _Progress(is_terminal(sys.stderr) and not as_json)
        try:
            result = run_train(
                client,
                symbol=symbol,
                start=start,
                end=end,
                set_name=set_name,
                horizon=horizon,
                model=model,
                output=output,
                threshold=threshold,
                folds=folds,
                embargo=embargo,
                progress=progress,
            )
        finally:
            progress.close()
        meta = result.metadata
        if as_json:
            emit_json(
                {
                    "path": str(result.path),
                    "content_hash": result.content_hash,
                    "model": meta["model"],
                    "features": meta["features"],
                    "label": meta["label"],
                    "training": meta["training"],
                    "validation": meta["validation"],
                    "serving": meta["serving"],
                }
            )
            return
        v = meta["validation"]
        sys.stdout.write(_line("model", v["model"]) + "\n")
        sys.stdout.write(_line("baseline", v["baseline"]) + "\n")
        say(
            f"wrote {result.path}: {meta['model']} on {meta['training']['rows']} rows, "
            f"{v['folds']} walk-forward folds, skill {'yes' if v['skill'] else 'no'} "
            f"({v['skill_rule']})"
        )
        if not v["log_loss_beats_baseline"]:
            say(
                f"note: its probabilities score worse than the baseline's class frequencies (log "
                f"loss {v['model']['log_loss']:.2f} against {v['baseline']['log_loss']:.2f}): "
                "overconfident out of sample, so a --min-confidence threshold on them means little"
            )
