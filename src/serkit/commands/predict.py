"""`serkit predict`: the emotion (or the dimensions) of audio files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from serkit.commands._shared import OutputFormat, console
from serkit.errors import SerkitError


def predict(
    model_dir: Path = typer.Argument(..., help="serkit model directory"),
    files: list[Path] = typer.Argument(..., help="audio files (any rate, mono or stereo)"),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json"),
    batch_size: int = typer.Option(16, help="files per batch (1 or more)"),
    text: list[str] = typer.Option([], "--text", help="audio+text models: the transcript of each file, in order (repeat)"),
    all_classes: bool = typer.Option(False, "--all", help="every class's probability (the table shows the 3 likeliest; "
                                     "json always has all)"),
):
    """Predict the emotion of audio files: label and class probabilities (or dimensions)."""
    from serkit.inference.predict import check_batch_size, predict_files
    from serkit.models import load_model

    check_batch_size(batch_size)
    saved = load_model(model_dir)
    if saved.task and saved.task.get("type") == "regression":
        _predict_dimensions(saved, files, format, batch_size, text)
        return
    results = predict_files(saved, files, batch_size)
    if format == OutputFormat.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
        return
    # file and label whole, in any terminal width: the probabilities wrap instead (an 80-column terminal
    # cut both to "03-0…" and "happ…" when every class had a column)
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("file", overflow="fold")
    table.add_column("label", no_wrap=True, min_width=max(len(lab) for lab in saved.labels) + 5)
    table.add_column("probabilities" if all_classes else "likeliest 3", overflow="fold")
    for r in results:
        ranked = sorted(r["probabilities"].items(), key=lambda item: -item[1])
        shown = ranked if all_classes else ranked[:3]
        table.add_row(Path(r["file"]).name, f"[bold]{r['label']}[/] {r['confidence']:.2f}",
                      ", ".join(f"{label} {p:.2f}" for label, p in shown))
    console.print(table)


def _predict_dimensions(saved, files, format, batch_size, texts) -> None:
    from serkit.data.dataset import load_waves
    from serkit.dimensional.text import reads_text
    from serkit.evaluation.regression import predict_dimensions
    from serkit.inference.predict import check_lengths

    names, (low, high) = saved.task["dimensions"], saved.task["scale"]
    if reads_text(saved.model) and len(texts) != len(files):
        raise SerkitError(f"this model reads transcripts: give --text once per file ({len(files)} files, {len(texts)} --text)")
    waves = load_waves([Path(f) for f in files], saved.preprocessing, named_in="command line")
    check_lengths(saved.model, waves, files, "command line")
    values = low + predict_dimensions(saved, waves, batch_size, list(texts) if texts else None) * (high - low)
    results = [{"file": str(f), **{n: round(float(v), 4) for n, v in zip(names, row)}} for f, row in zip(files, values)]
    if format == OutputFormat.json:
        sys.stdout.write(json.dumps({"scale": [low, high], "predictions": results}, indent=2) + "\n")
        return
    table = Table(title=f"predicted on the scale [{low:g}, {high:g}]")
    table.add_column("file")
    for n in names:
        table.add_column(n, justify="right")
    for r in results:
        table.add_row(Path(r["file"]).name, *(f"{r[n]:.2f}" for n in names))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
