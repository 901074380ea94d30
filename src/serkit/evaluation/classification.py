"""Evaluate a saved model on manifest rows: metrics, predictions, confusion PNG, markdown report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from serkit.data.dataset import load_waves
from serkit.data.manifest import Manifest
from serkit.inference.long import check_segments, long_note, long_rows, long_summary, no_segments, predict_long, window_and_hop
from serkit.inference.predict import check_lengths, predict_proba
from serkit.io import atomic_file, write_json, write_text
from serkit.metrics import classification_summary
from serkit.models.modeldir import SavedModel
from serkit.plots import confusion_png


@dataclass
class EvalResult:
    name: str
    summary: dict
    predictions: pd.DataFrame


def evaluate(saved: SavedModel, manifest: Manifest, name: str = "test", batch_size: int = 16,
             waves: list | None = None, long_after: float | None = None, segments: str = "fixed",
             window: float | None = None, hop: float | None = None) -> EvalResult:
    """Score every row. With `long_after` (and no preloaded `waves`), a row longer than that is a long recording:
    predicted segment by segment, streamed (serkit.inference.long.predict_long, `segments`, `window`, `hop`), and
    scored by its duration-weighted mean probabilities; predictions then get a `segments` column."""
    manifest.check_labels(saved.labels, f"model {saved.path or ''}".strip())
    long = long_rows(manifest, long_after) if waves is None else np.zeros(len(manifest), dtype=bool)
    if long.any():
        return _evaluate_with_long(saved, manifest, name, batch_size, long, long_after, segments, window, hop)
    if waves is None:
        waves = load_waves(manifest.audio_paths(), saved.preprocessing)
    check_lengths(saved.model, waves, manifest.audio_paths())
    start = time.perf_counter()
    probs = predict_proba(saved.model, waves, batch_size)
    seconds = time.perf_counter() - start
    return _result(saved, manifest, name, probs, seconds)


def _result(saved: SavedModel, manifest: Manifest, name: str, probs: np.ndarray, seconds: float) -> EvalResult:
    predicted = [saved.labels[i] for i in probs.argmax(1)]
    truth = list(manifest.frame["emotion"])
    summary = classification_summary(truth, predicted, saved.labels)
    summary["speakers"] = sorted(manifest.frame["speaker"].unique())
    summary["inference_s_per_utterance"] = seconds / len(probs)
    frame = manifest.frame[[c for c in ("path", "speaker", "gender", "emotion") if c in manifest.frame.columns]].copy()
    frame["predicted"] = predicted
    frame["confidence"] = probs.max(1)
    for j, label in enumerate(saved.labels):
        frame[f"p_{label}"] = np.round(probs[:, j], 6)
    return EvalResult(name, summary, frame)


def _evaluate_with_long(saved: SavedModel, manifest: Manifest, name: str, batch_size: int, long: np.ndarray,
                        long_after: float, segments: str, window: float | None, hop: float | None) -> EvalResult:
    """The long rows first (a file with nothing to predict fails before the short ones are read), each by the
    aggregate of its segments; the short rows as `evaluate` scores them."""
    window, hop = window_and_hop(saved, window, hop)
    check_segments(segments)
    paths = manifest.audio_paths()
    start = time.perf_counter()
    probs = np.zeros((len(manifest), len(saved.labels)), dtype=np.float32)  # what predict_proba gives the short rows
    counts = pd.array([pd.NA] * len(manifest), dtype="Int64")
    for i in np.flatnonzero(long):
        pred = predict_long(saved, paths[i], window, hop, segments, batch_size)
        aggregate = pred.aggregate
        if aggregate["label"] is None:
            raise no_segments(paths[i], segments, pred.duration)
        probs[i] = [aggregate["probabilities"][label] for label in saved.labels]
        counts[i] = aggregate["segments"]
    short = np.flatnonzero(~long)
    if short.size:
        short_paths = [paths[i] for i in short]
        waves = load_waves(short_paths, saved.preprocessing)
        check_lengths(saved.model, waves, short_paths)
        probs[short] = predict_proba(saved.model, waves, batch_size)
    result = _result(saved, manifest, name, probs, time.perf_counter() - start)
    result.predictions["segments"] = counts
    result.summary["long_recordings"] = long_summary(int(long.sum()), long_after, segments, window, hop)
    return result


def write_predictions(result: EvalResult, path: Path) -> None:
    with atomic_file(path, "w") as handle:
        result.predictions.to_csv(handle, index=False)


def summary_table(results: list[EvalResult]) -> str:
    lines = ["| part | utterances | speakers | UAR | accuracy (WAR) | macro-F1 |", "|---|---|---|---|---|---|"]
    for r in results:
        s = r.summary
        lines.append(f"| {r.name} | {s['n']} | {len(s['speakers'])} | {s['uar']:.3f} | {s['war']:.3f} | {s['macro_f1']:.3f} |")
    return "\n".join(lines)


def recall_table(result: EvalResult) -> str:
    s = result.summary
    lines = ["| class | recall | support |", "|---|---|---|"]
    for label in s["labels"]:
        rec = s["recall"][label]
        lines.append(f"| {label} | {'-' if rec is None else f'{rec:.3f}'} | {s['support'][label]} |")
    return "\n".join(lines)


def seen_speakers(saved: SavedModel, speakers, split_parts: dict | None = None) -> list[str] | None:
    """The speakers among `speakers` that the model was trained on, from its provenance; None when it
    does not list them (a model from elsewhere). A model after `serkit forget` keeps them private but
    records a hash of its split: `split_parts` of that same split tell them again."""
    from serkit.data.splits import split_parts_sha256

    provenance = saved.config.get("provenance") or {}
    parts = provenance.get("speakers")
    recorded = provenance.get("split_parts_sha256")
    if not isinstance(parts, dict) and split_parts and recorded and split_parts_sha256(split_parts) == recorded:
        parts = split_parts
    if not isinstance(parts, dict):
        return None
    trained = {str(s) for part in provenance.get("trained_on") or ["train"] for s in parts.get(part) or []}
    if not trained:
        return None
    return sorted(trained & {str(s) for s in speakers})


def speaker_marks(seen: list[str] | None) -> tuple[dict, list[str]]:
    """What metrics.json and report.md say about `seen_speakers`: nothing when all are unseen."""
    if seen is None:
        return {"seen_speakers": None}, ["Speakers: serkit could not check that they are unseen (the model does not list "
                                         "the speakers it was trained on)."]
    if seen:
        return {"seen_speakers": seen}, [f"**Not speaker-independent**: the model was trained on speaker(s) "
                                         f"{', '.join(seen)}, whose utterances these figures include (--allow-seen-speakers)."]
    return {}, []


def write_evaluation_files(folder: Path, result: EvalResult, model_path: Path | None, source: str,
                           seen: list[str] | None = ()) -> None:
    """`serkit evaluate` output, into `folder`: metrics.json, predictions.csv, confusion.png, report.md."""
    marks, notes = speaker_marks(list(seen) if seen is not None else None)
    write_json(folder / "metrics.json", {"model": str(model_path), "data": source, **marks, result.name: result.summary})
    write_predictions(result, folder / "predictions.csv")
    confusion_png(folder / "confusion.png", result.summary["confusion"], result.summary["labels"],
                  f"{result.name}: UAR {result.summary['uar']:.3f}, accuracy {result.summary['war']:.3f}")
    write_text(folder / "report.md", "\n\n".join([
        f"# Evaluation of `{model_path}`",
        f"Data: {source}",
        *notes,
        *([long_note(result.summary["long_recordings"])] if "long_recordings" in result.summary else []),
        summary_table([result]),
        "## Recall per class\n\n" + recall_table(result),
        "![confusion matrix](confusion.png)",
    ]) + "\n")
