"""`serkit evaluate`: a model's figures on speakers it never heard, with its report."""

from __future__ import annotations

from pathlib import Path

import typer

from serkit.commands._shared import console, print_note
from serkit.errors import SerkitError


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
):
    """Evaluate a model: metrics.json, predictions.csv, confusion.png and report.md."""
    from serkit.inference.predict import check_batch_size
    from serkit.io import OutputDir
    from serkit.models import load_model

    check_batch_size(batch_size)
    saved = load_model(model_dir)
    rows, source, name, split_parts = _rows_to_evaluate(split, manifest, part, fold)
    seen = _check_unseen(saved, rows, source, allow_seen_speakers, split_parts)
    out = out or model_dir.parent / f"{model_dir.name}-eval-{name}"
    with OutputDir(out, what="output folder") as output:  # taken or unwritable: fails before any audio is read
        regression = saved.task and saved.task.get("type") == "regression"
        (_evaluate_dimensions if regression else _evaluate_classes)(saved, rows, name, batch_size, output.staging(), source, seen)
        output.commit()
    console.print(f"wrote {out}/ (metrics.json, predictions.csv, {'' if regression else 'confusion.png, '}report.md)")


def _rows_to_evaluate(split: Path | None, manifest: Path | None, part: str, fold: int | None):
    """The rows `serkit evaluate` scores, where they come from (for the report), the results' name, and the
    split's parts (None without a split)."""
    from serkit.data.manifest import read_manifest
    from serkit.data.splits import load_split

    if split is not None:
        loaded = load_split(split, manifest, fold)
        rows, source, name = loaded.part(part), f"{part} part of {split}", part
        if len(rows) == 0:
            raise SerkitError(f"the {part} part of {split} has no utterances")
        return rows, source, name, loaded.parts()
    if manifest is not None:
        return read_manifest(manifest), str(manifest), "all", None
    raise SerkitError("give --split SPLIT.json (with --part) or --manifest MANIFEST.csv")


def _check_unseen(saved, rows, source: str, allow_seen: bool, split_parts: dict | None = None) -> list[str] | None:
    """Refuse to score speakers the model trained on as if unseen; say so when it cannot be checked."""
    from serkit.evaluation.classification import seen_speakers

    seen = seen_speakers(saved, rows.speakers, split_parts)
    if seen is None:
        print_note("note", f"model {saved.path} does not list the speakers it was trained on; serkit cannot check "
                   "that the evaluated speakers are unseen")
    elif seen and not allow_seen:
        raise SerkitError(f"model {saved.path} was trained on speaker(s) {', '.join(seen)}, and the {source} includes them: "
                          "its figures on them are not speaker-independent; evaluate speakers it never heard (e.g. the test "
                          "part of its own split), or pass --allow-seen-speakers to evaluate them anyway")
    elif seen:
        print_note("warning", f"model {saved.path} was trained on speaker(s) {', '.join(seen)}: these figures include "
                   "them and are NOT speaker-independent (marked in metrics.json and report.md)")
    return seen


def _evaluate_classes(saved, rows, name: str, batch_size: int, folder: Path, source: str, seen) -> None:
    from serkit.evaluation.classification import evaluate as run_eval
    from serkit.evaluation.classification import write_evaluation_files

    result = run_eval(saved, rows, name, batch_size)
    write_evaluation_files(folder, result, saved.path, source, seen)
    s = result.summary
    console.print(f"{name}: UAR {s['uar']:.3f}, accuracy {s['war']:.3f}, macro-F1 {s['macro_f1']:.3f} on {s['n']} utterances")


def _evaluate_dimensions(saved, rows, name: str, batch_size: int, folder: Path, source: str, seen) -> None:
    from serkit.evaluation.regression import evaluate_regression, write_regression_eval_files

    result = evaluate_regression(saved, rows, name, batch_size)
    write_regression_eval_files(folder, result, saved.path, source, seen)
    dims = result.summary["dimensions"]
    console.print(f"{name}: mean CCC {result.summary['mean_ccc']:.3f} ("
                  + ", ".join(f"{d} CCC {v['ccc']:.3f}, r {v['pearson_r']:.3f}, MAE {v['mae']:.3f}" for d, v in dims.items())
                  + f") on {result.summary['n']} utterances")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
