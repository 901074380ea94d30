"""`serkit evaluate`: a model's figures on speakers it never heard, with its report."""

from __future__ import annotations

from pathlib import Path

import typer

from serkit.commands._shared import HOP, SEGMENTS, WINDOW, console, print_note


def evaluate(
    model_dir: Path = typer.Argument(..., help="serkit model directory"),
    split: Path | None = typer.Option(None, help="split file; evaluates one part of it"),
    part: str = typer.Option("test", help="train, val or test"),
    fold: int | None = typer.Option(None, help="fold of a leave-one-speaker-out split"),
    manifest: Path | None = typer.Option(None, help="manifest (all rows, or the one the split names)"),
    out: Path | None = typer.Option(None, "-o", "--out", help="new folder for the results"),
    batch_size: int = typer.Option(16, help="utterances per batch (1 or more)"),
    allow_seen_speakers: bool = typer.Option(False, help="evaluate speakers the model was trained on too (the figures "
                                             "are then marked as not speaker-independent)"),
    long_after: float = typer.Option(30.0, "--long-after", help="rows longer than this (seconds) are long recordings: "
                                     "predicted segment by segment, streamed, and scored by the duration-weighted mean"),
    segments: str = SEGMENTS,
    window: float | None = WINDOW,
    hop: float | None = HOP,
):
    """Evaluate a model: metrics.json, predictions.csv, confusion.png and report.md."""
    from serkit.evaluation.rows import check_unseen, rows_to_evaluate
    from serkit.inference.long import check_segments, window_and_hop
    from serkit.inference.predict import check_batch_size
    from serkit.io import OutputDir
    from serkit.models import load_model

    check_batch_size(batch_size)
    check_segments(segments)
    saved = load_model(model_dir)
    window, hop = window_and_hop(saved, window, hop)
    long = dict(long_after=long_after, segments=segments, window=window, hop=hop)
    rows, source, name, split_parts = rows_to_evaluate(split, manifest, part, fold)
    seen = check_unseen(saved, rows, source, allow_seen_speakers, split_parts, note=print_note)
    out = out or model_dir.parent / f"{model_dir.name}-eval-{name}"
    with OutputDir(out, what="output folder") as output:  # taken or unwritable: fails before any audio is read
        regression = saved.task and saved.task.get("type") == "regression"
        (_evaluate_dimensions if regression else _evaluate_classes)(saved, rows, name, batch_size, output.staging(), source, seen, long)
        output.commit()
    console.print(f"wrote {out}/ (metrics.json, predictions.csv, {'' if regression else 'confusion.png, '}report.md)")


def _evaluate_classes(saved, rows, name: str, batch_size: int, folder: Path, source: str, seen, long: dict) -> None:
    from serkit.evaluation.classification import evaluate as run_eval
    from serkit.evaluation.classification import write_evaluation_files

    result = run_eval(saved, rows, name, batch_size, **long)
    write_evaluation_files(folder, result, saved.path, source, seen)
    s = result.summary
    console.print(f"{name}: UAR {s['uar']:.3f}, accuracy {s['war']:.3f}, macro-F1 {s['macro_f1']:.3f} on {s['n']} utterances")
    _print_long(s)


def _evaluate_dimensions(saved, rows, name: str, batch_size: int, folder: Path, source: str, seen, long: dict) -> None:
    from serkit.evaluation.regression import evaluate_regression, write_regression_eval_files

    result = evaluate_regression(saved, rows, name, batch_size, **long)
    write_regression_eval_files(folder, result, saved.path, source, seen)
    dims = result.summary["dimensions"]
    console.print(f"{name}: mean CCC {result.summary['mean_ccc']:.3f} ("
                  + ", ".join(f"{d} CCC {v['ccc']:.3f}, r {v['pearson_r']:.3f}, MAE {v['mae']:.3f}" for d, v in dims.items())
                  + f") on {result.summary['n']} utterances")
    _print_long(result.summary)


def _print_long(summary: dict) -> None:
    if "long_recordings" in summary:
        from serkit.inference.long import long_note

        console.print(long_note(summary["long_recordings"]) + " Their number of segments: column `segments` of predictions.csv.")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
