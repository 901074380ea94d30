"""Evaluation of a dimensional (regression) model: CCC, Pearson r and MAE per dimension (paper 004)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from serkit.data.dataset import load_waves
from serkit.data.manifest import Manifest
from serkit.dimensional.targets import apply_proxy, dimension_targets
from serkit.dimensional.text import manifest_texts, reads_text
from serkit.errors import SerkitError
from serkit.evaluation.classification import speaker_marks
from serkit.inference.long import check_segments, long_note, long_rows, long_summary, weighted_mean, window_and_hop
from serkit.inference.predict import check_lengths, model_outputs
from serkit.io import atomic_file, write_json, write_text
from serkit.metrics import ccc
from serkit.models.modeldir import SavedModel


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def regression_summary(truth: np.ndarray, predicted: np.ndarray, names: list[str], scale) -> dict:
    """CCC, Pearson r and MAE (on the declared scale) per dimension, and their means."""
    low, high = scale
    per = {}
    for j, name in enumerate(names):
        per[name] = {"ccc": ccc(predicted[:, j], truth[:, j]), "pearson_r": pearson(predicted[:, j], truth[:, j]),
                     "mae": float(np.abs(predicted[:, j] - truth[:, j]).mean() * (high - low))}
    return {"n": int(len(truth)), "dimensions": per, "mean_ccc": float(np.mean([p["ccc"] for p in per.values()])),
            "scale": [low, high]}


@dataclass
class RegressionEval:
    name: str
    summary: dict
    predictions: pd.DataFrame


def task_of(saved: SavedModel) -> dict:
    task = saved.task
    if not task or task.get("type") != "regression":
        raise SerkitError(f"model {saved.path} is a classifier, not a dimensional (regression) model")
    return task


def predict_dimensions(saved: SavedModel, waves: list[np.ndarray], batch_size: int = 16,
                       texts: list[str] | None = None) -> np.ndarray:
    """Predictions normalised to [0, 1] (clipped), one column per dimension."""
    model = saved.model
    if not reads_text(model):
        return np.clip(model_outputs(model, waves, batch_size)["logits"], 0.0, 1.0)
    if texts is None or len(texts) != len(waves):
        raise SerkitError(f"model {saved.path} reads transcripts: give one text per audio file")
    from serkit.data.dataset import pad_batch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.zeros((len(waves), model.num_classes), dtype=np.float32)
    order = np.argsort([w.shape[0] for w in waves], kind="stable")
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            wave, mask = pad_batch([waves[i] for i in idx])
            ids, attention = model.encode_texts([texts[i] for i in idx])
            out[idx] = model(wave.to(device), mask.to(device), ids.to(device), attention.to(device)).float().cpu().numpy()
    model.train(was_training)
    return np.clip(out, 0.0, 1.0)


def evaluate_regression(saved: SavedModel, manifest: Manifest, name: str = "test", batch_size: int = 16,
                        waves: list | None = None, long_after: float | None = None, segments: str = "fixed",
                        window: float | None = None, hop: float | None = None) -> RegressionEval:
    """Score every row. With `long_after` (and no preloaded `waves`), a row longer than that is a long recording:
    predicted segment by segment, streamed, and scored by the duration-weighted mean of its segments' values (see
    serkit.inference.long); predictions then get a `segments` column. A model that reads transcripts refuses it."""
    task = task_of(saved)
    names, scale = task["dimensions"], task["scale"]
    dropped = 0
    if task.get("proxy"):
        manifest, dropped = apply_proxy(manifest, task["proxy"], names, drop_unmapped=True)
        waves = None if dropped else waves
    truth = dimension_targets(manifest, names, scale)
    texts = None
    if reads_text(saved.model):
        texts = manifest_texts(manifest, saved.model.options.text_column, saved.model.options.empty_text)
    long = long_rows(manifest, long_after) if waves is None else np.zeros(len(manifest), dtype=bool)
    start = time.perf_counter()
    if long.any():
        predicted, counts = _predict_with_long(saved, manifest, batch_size, texts, long, long_after, segments, window, hop)
    else:
        if waves is None:
            waves = load_waves(manifest.audio_paths(), saved.preprocessing)
        check_lengths(saved.model, waves, manifest.audio_paths())
        start = time.perf_counter()
        predicted, counts = predict_dimensions(saved, waves, batch_size, texts), None
    seconds = time.perf_counter() - start
    summary = regression_summary(truth, predicted, names, scale)
    summary["speakers"] = sorted(manifest.frame["speaker"].unique())
    summary["inference_s_per_utterance"] = seconds / max(len(predicted), 1)
    if task.get("proxy"):
        summary["targets"] = f"PROXY from emotion categories ({task['proxy']['source']}); {dropped} unmapped utterances left out"
    low, high = scale
    frame = manifest.frame[[c for c in ("path", "speaker", "gender", "emotion") if c in manifest.frame.columns]].copy()
    for j, dim in enumerate(names):
        frame[dim] = np.round(low + truth[:, j] * (high - low), 6)
        frame[f"predicted_{dim}"] = np.round(low + predicted[:, j] * (high - low), 6)
    if counts is not None:
        frame["segments"] = counts
        summary["long_recordings"] = long_summary(int(long.sum()), long_after, segments, *window_and_hop(saved, window, hop))
    return RegressionEval(name, summary, frame)


def _predict_with_long(saved: SavedModel, manifest: Manifest, batch_size: int, texts, long: np.ndarray,
                       long_after: float, segments: str, window: float | None, hop: float | None):
    """Predictions of every row, the long ones first (each the duration-weighted mean over its segments), and the
    number of segments of each long row (NA for the others)."""
    paths = manifest.audio_paths()
    if texts is not None:
        i = int(np.flatnonzero(long)[0])
        raise SerkitError(f"audio file {paths[i]} is longer than --long-after ({long_after:g} s), and this model reads a "
                          "transcript per utterance, which the windows of a long recording do not have; split it into "
                          "utterances with their transcripts, or raise --long-after to score it whole")
    check_segments(segments)
    window, hop = window_and_hop(saved, window, hop)
    predicted = np.zeros((len(manifest), saved.model.num_classes), dtype=np.float32)
    counts = pd.array([pd.NA] * len(manifest), dtype="Int64")
    for i in np.flatnonzero(long):
        predicted[i], counts[i] = weighted_mean(saved, paths[i], window, hop, segments, batch_size,
                                                lambda waves: predict_dimensions(saved, waves, batch_size))
    short = np.flatnonzero(~long)
    if short.size:
        short_paths = [paths[i] for i in short]
        waves = load_waves(short_paths, saved.preprocessing)
        check_lengths(saved.model, waves, short_paths)
        predicted[short] = predict_dimensions(saved, waves, batch_size)
    return predicted, counts


def summary_table(results: list[RegressionEval]) -> str:
    names = list(results[0].summary["dimensions"])
    head = "| part | utterances | " + " | ".join(f"{n} CCC | {n} r | {n} MAE" for n in names) + " | mean CCC |"
    lines = [head, "|" + "---|" * (3 + 3 * len(names))]
    for r in results:
        d = r.summary["dimensions"]
        cells = " | ".join(f"{d[n]['ccc']:.3f} | {d[n]['pearson_r']:.3f} | {d[n]['mae']:.3f}" for n in names)
        lines.append(f"| {r.name} | {r.summary['n']} | {cells} | {r.summary['mean_ccc']:.3f} |")
    return "\n".join(lines)


def write_regression_eval_files(folder: Path, result: RegressionEval, model_path, source: str, seen: list[str] | None = ()) -> None:
    """`serkit evaluate` output of a dimensional model, into `folder`: metrics.json, predictions.csv, report.md."""
    marks, notes = speaker_marks(list(seen) if seen is not None else None)
    write_json(folder / "metrics.json", {"model": str(model_path), "data": source, **marks, result.name: result.summary})
    with atomic_file(folder / "predictions.csv", "w") as handle:
        result.predictions.to_csv(handle, index=False)
    long = [long_note(result.summary["long_recordings"])] if "long_recordings" in result.summary else []
    write_text(folder / "report.md", "\n\n".join([f"# Evaluation of `{model_path}`", f"Data: {source}", *notes, *long,
                                                   summary_table([result]), f"Scale: {result.summary['scale']} (MAE on it)."]) + "\n")
