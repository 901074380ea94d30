"""`serkit predict`: the emotion (or the dimensions) of audio files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from serkit.commands._shared import HOP, SEGMENTS, WINDOW, OutputFormat, console, progress_bar
from serkit.errors import SerkitError


def predict(
    model_dir: Path = typer.Argument(..., help="serkit model directory"),
    files: list[Path] = typer.Argument(..., help="audio files (any rate, mono or stereo)"),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json"),
    batch_size: int = typer.Option(16, help="files per batch (1 or more)"),
    text: list[str] = typer.Option([], "--text", help="audio+text models: the transcript of each file, in order (repeat)"),
    all_classes: bool = typer.Option(False, "--all", help="every class's probability (the table shows the 3 likeliest; "
                                     "json always has all)"),
    long_after: float = typer.Option(30.0, "--long-after", help="files longer than this (seconds) are long recordings: "
                                     "predicted segment by segment, streamed"),
    segments: str = SEGMENTS,
    window: float | None = WINDOW,
    hop: float | None = HOP,
    out: Path | None = typer.Option(None, "-o", "--out", help="new folder for long recordings: per-segment CSV, timeline "
                                    "PNG and summary JSON per file"),
):
    """Predict the emotion of audio files: label and class probabilities (or dimensions); long recordings segment by segment."""
    from serkit.data.audio import audio_info
    from serkit.inference.long import check_segments
    from serkit.inference.predict import check_batch_size, predict_files
    from serkit.models import load_model

    check_batch_size(batch_size)
    check_segments(segments)
    if out is not None:
        from serkit.io import refuse_existing

        refuse_existing(out, "output folder")
    saved = load_model(model_dir)
    if saved.task and saved.task.get("type") == "regression":
        _predict_dimensions(saved, files, format, batch_size, text)
        return
    durations = [(lambda i: i.frames / i.samplerate)(audio_info(f, "command line")) for f in files]
    long = {f for f, d in zip(files, durations) if d > long_after}
    utterances = [f for f in files if f not in long]
    short = predict_files(saved, utterances, batch_size) if utterances else []
    recordings = _predict_recordings(saved, [f for f in files if f in long], segments, window, hop, batch_size, out)
    by_file = {r["file"]: r for r in short + recordings}
    results = [by_file[str(f)] for f in files]
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
        name = Path(r["file"]).name + (f" ({len(r['segments'])} segments, {r['duration']:.0f} s)" if "segments" in r else "")
        table.add_row(name, f"[bold]{r['label']}[/] {r['confidence']:.2f}", ", ".join(f"{label} {p:.2f}" for label, p in shown))
    console.print(table)
    if recordings:
        where = f"per-segment rows and timelines in {out}/" if out else "give -o DIR for the per-segment rows and a timeline"
        console.print(f"long recordings: label and probabilities over all their segments (weighted by duration); {where}")


def _predict_recordings(saved, files, segments, window, hop, batch_size, out) -> list[dict]:
    """Each long file segment by segment (serkit.inference.long); with `out`, its rows, timeline and summary."""
    if not files:
        return []
    from serkit.inference.long import no_segments, predict_long, timeline_png, window_and_hop

    window, hop = window_and_hop(saved, window, hop)
    results, predictions = [], []
    for f in files:
        with progress_bar(f"{Path(f).name} (s)") as update:
            pred = predict_long(saved, f, window, hop, segments, batch_size, progress=update)
        predictions.append(pred)
        agg = pred.aggregate
        if agg["label"] is None:
            raise no_segments(f, segments, pred.duration)
        results.append({"file": str(f), "label": agg["label"], "confidence": agg["probabilities"][agg["label"]],
                        "probabilities": agg["probabilities"], "duration": round(pred.duration, 3),
                        "time_share": agg["time_share"], "window": window, "hop": hop, "segmenter": segments,
                        "segments": pred.rows()})
    if out is not None:
        import pandas as pd

        from serkit.io import atomic_dir

        with atomic_dir(out) as tmp:
            for pred in predictions:
                stem = Path(pred.file).stem
                pd.DataFrame(pred.rows()).to_csv(tmp / f"{stem}.segments.csv", index=False)
                timeline_png(tmp / f"{stem}.timeline.png", pred)
            summary = [{k: v for k, v in r.items() if k != "segments"} | {"file": Path(r["file"]).name} for r in results]
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return results


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
