"""Evaluate a saved model on manifest rows: metrics, predictions, confusion PNG, markdown report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from serkit.data.dataset import load_waves
from serkit.data.manifest import Manifest
from serkit.inference import predict_proba
from serkit.io import atomic_dir, atomic_file, write_json, write_text
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


def write_evaluation_dir(out: Path | str, result: EvalResult, model_path: Path | None, source: str) -> Path:
    """`serkit evaluate` output: metrics.json, predictions.csv, confusion.png, report.md (a new dir)."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", {"model": str(model_path), "data": source, result.name: result.summary})
        write_predictions(result, tmp / "predictions.csv")
        confusion_png(tmp / "confusion.png", result.summary["confusion"], result.summary["labels"],
                      f"{result.name}: UAR {result.summary['uar']:.3f}, accuracy {result.summary['war']:.3f}")
        write_text(tmp / "report.md", "\n\n".join([
            f"# Evaluation of `{model_path}`",
            f"Data: {source}",
            summary_table([result]),
            "## Recall per class\n\n" + recall_table(result),
            "![confusion matrix](confusion.png)",
        ]) + "\n")
    return out
