"""`serkit train`: a model from a recipe, into a run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from serkit.commands._shared import console


def train(
    recipe: Path = typer.Argument(..., help="recipe YAML (see configs/)"),
    set_: list[str] = typer.Option([], "--set", help="override a recipe value, e.g. --set train.max_epochs=5"),
):
    """Train a model from a recipe; writes a run folder with the model, metrics and a report."""
    from serkit.config import load_recipe
    from serkit.training import train as run_training

    r = load_recipe(recipe, set_)
    result = run_training(r, log=console.print)
    if result is None:  # a non-zero DDP rank
        return
    for e in result.evaluations:
        if "mean_ccc" in e.summary:
            continue  # dimensional: printed by the training itself
        console.print(f"{e.name}: UAR {e.summary['uar']:.3f}, accuracy {e.summary['war']:.3f} "
                      f"({e.summary['n']} utterances, {len(e.summary['speakers'])} speakers)")
    console.print(f"run folder: {result.output_dir}  (model: {result.model_dir}, report: {result.output_dir / 'report.md'})")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
