"""Evaluate a saved model on manifest rows: metrics, predictions, confusion PNG, markdown report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from serkit.data.dataset import load_waves
from serkit.data.manifest import Manifest
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
             waves: list | None = None) -> EvalResult:
    manifest.check_labels(saved.labels, f"model {saved.path or ''}".strip())
    if waves is None:
        waves = load_waves(manifest.audio_paths(), saved.preprocessing)
    check_lengths(saved.model, waves, manifest.audio_paths())
    start = time.perf_counter()
    probs = predict_proba(saved.model, waves, batch_size)
    seconds = time.perf_counter() - start
    predicted = [saved.labels[i] for i in probs.argmax(1)]
    truth = list(manifest.frame["emotion"])
    summary = classification_summary(truth, predicted, saved.labels)
    summary["speakers"] = sorted(manifest.frame["speaker"].unique())
    summary["inference_s_per_utterance"] = seconds / len(waves)
    frame = manifest.frame[[c for c in ("path", "speaker", "gender", "emotion") if c in manifest.frame.columns]].copy()
    frame["predicted"] = predicted
    frame["confidence"] = probs.max(1)
    for j, label in enumerate(saved.labels):
        frame[f"p_{label}"] = np.round(probs[:, j], 6)
    return EvalResult(name, summary, frame)


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
        summary_table([result]),
        "## Recall per class\n\n" + recall_table(result),
        "![confusion matrix](confusion.png)",
    ]) + "\n")
