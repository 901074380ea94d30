"""Dimensional SER (paper 004): regression of arousal, valence, dominance with a 1 − CCC loss.

A manifest carries one numeric column per dimension on a scale the recipe declares (any scale:
[1, 5], [-1, 1], ...). Values are normalised to [0, 1] for training; predictions are reported on
the declared scale again. Any serkit model serves as the encoder: its `num_classes` outputs become
the dimensions. Evaluation reports CCC, Pearson r and MAE per dimension.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from serkit.data.dataset import collate, load_waves
from serkit.data.manifest import Manifest
from serkit.errors import ConfigError, ManifestError, SerkitError
from serkit.inference import check_lengths, model_outputs
from serkit.io import atomic_file, write_json, write_text
from serkit.metrics import ccc
from serkit.models.modeldir import SavedModel

DIMENSIONS = ("arousal", "valence", "dominance")


# ---------------------------------------------------------------------------------------- targets

def dimension_targets(manifest: Manifest, names: list[str], scale: tuple[float, float]) -> np.ndarray:
    """The manifest's dimension columns normalised to [0, 1]: (utterances, dimensions) float32.

    Refuses missing columns, non-numeric or empty values, and values outside the declared scale,
    naming the manifest, the column and the first offending utterance."""
    frame, where = manifest.frame, manifest.file or "the manifest"
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise ManifestError(
            f"{where} has no column(s) {missing} for dimensional SER (it has {list(frame.columns)}); add one numeric "
            f"column per dimension, or list the columns it has in dimensions.names")
    low, high = scale
    out = np.empty((len(frame), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = int(bad[0])
            raise ManifestError(f"{where}: column '{name}' of {frame['path'].iloc[i]} is {frame[name].iloc[i]!r}, not a number "
                                f"({bad.size} such rows); every utterance needs a value: fill them or drop those rows")
        outside = np.flatnonzero((values < low) | (values > high))
        if outside.size:
            i = int(outside[0])
            raise ManifestError(f"{where}: column '{name}' of {frame['path'].iloc[i]} is {values[i]:g}, outside the declared "
                                f"scale [{low:g}, {high:g}] ({outside.size} such rows); fix the values or dimensions.scale")
        out[:, j] = (values - low) / (high - low)
    return out


# ------------------------------------------------------------------------------- proxy targets

# Pleasure (valence), arousal and dominance of emotion terms on [-1, 1] from Russell & Mehrabian
# (1977), "Evidence for a three-factor theory of emotions", Journal of Research in Personality 11,
# 273-294, as commonly reused to map categories to PAD. Terms: anger <- "angry", disgust <-
# "disgusted", fear <- "afraid/fearful" (-0.64, 0.60, -0.43; some reuses take "terrified", -0.62,
# 0.82, -0.43, which serkit used before 2026-11-27 evening), happiness <- "happy", sadness <- "sad",
# surprise <- "surprised", boredom <- "bored". Neutral is the origin by construction. calm (RAVDESS)
# is not listed: no value could be checked here; supply a CSV mapping, or drop_unmapped. The values
# agree across several independent public reuses of the table (PAD models of affect such as ALMA,
# Gebhard 2005, and emotion-mapping code); they were not checked against the 1977 paper itself.
RUSSELL_MEHRABIAN_1977 = {
    "anger": {"valence": -0.51, "arousal": 0.59, "dominance": 0.25},
    "boredom": {"valence": -0.65, "arousal": -0.62, "dominance": -0.33},
    "disgust": {"valence": -0.60, "arousal": 0.35, "dominance": 0.11},
    "fear": {"valence": -0.64, "arousal": 0.60, "dominance": -0.43},
    "happiness": {"valence": 0.81, "arousal": 0.51, "dominance": 0.46},
    "sadness": {"valence": -0.63, "arousal": -0.27, "dominance": -0.33},
    "surprise": {"valence": 0.40, "arousal": 0.67, "dominance": -0.13},
    "neutral": {"valence": 0.0, "arousal": 0.0, "dominance": 0.0},
}
BUILTIN_PROXIES = {"builtin:russell-mehrabian-1977": (RUSSELL_MEHRABIAN_1977, (-1.0, 1.0),
                                                      "Russell & Mehrabian (1977) PAD of emotion terms")}


def load_proxy(spec: str, names: list[str], scale: tuple[float, float] | None) -> dict:
    """A category -> dimensions mapping: {"source", "scale", "mapping": {emotion: {dim: value}}}."""
    if spec in BUILTIN_PROXIES:
        table, own_scale, source = BUILTIN_PROXIES[spec]
        missing = [n for n in names if n not in next(iter(table.values()))]
        if missing:
            raise ConfigError(f"proxy {spec} has no {missing}; it gives valence, arousal, dominance")
        return {"source": f"{spec}: {source}", "scale": list(own_scale),
                "mapping": {e: {n: v[n] for n in names} for e, v in table.items()}}
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"dimensions.proxy {spec!r} is neither {sorted(BUILTIN_PROXIES)} nor a CSV file")
    if scale is None:
        raise ConfigError(f"dimensions.proxy {path}: give the mapping's scale as dimensions.scale: [low, high]")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"proxy mapping {path} is not a readable CSV ({str(exc).splitlines()[0][:120]})") from None
    missing = [c for c in ["emotion", *names] if c not in frame.columns]
    if missing:
        raise ConfigError(f"proxy mapping {path} lacks column(s) {missing}; it needs emotion and one column per dimension")
    mapping = {}
    for _, row in frame.iterrows():
        values = {n: pd.to_numeric(row[n], errors="coerce") for n in names}
        bad = [n for n, v in values.items() if not np.isfinite(v)]
        if bad:
            raise ConfigError(f"proxy mapping {path}: {row['emotion']} has a non-numeric value in {bad}")
        values = {n: float(v) for n, v in values.items()}
        off = [n for n, v in values.items() if not scale[0] <= v <= scale[1]]
        if off:
            raise ConfigError(f"proxy mapping {path}: {row['emotion']} has {off} outside the scale {list(scale)}")
        mapping[str(row["emotion"])] = values
    return {"source": f"CSV mapping {path.resolve()}", "scale": list(scale), "mapping": mapping}


def apply_proxy(manifest: Manifest, proxy: dict, names: list[str], drop_unmapped: bool) -> tuple[Manifest, int]:
    """A copy of `manifest` whose dimension columns come from its emotion categories; the number
    of utterances left out (categories the mapping lacks, when `drop_unmapped`)."""
    frame = manifest.frame
    known = frame["emotion"].isin(proxy["mapping"])
    if not known.all():
        unknown = sorted(frame.loc[~known, "emotion"].unique())
        if not drop_unmapped:
            raise ConfigError(f"proxy mapping ({proxy['source']}) has no values for {unknown} in {manifest.file}; "
                              "add them to a CSV mapping, or set dimensions.drop_unmapped: true")
        frame = frame[known].reset_index(drop=True)
    frame = frame.copy()
    for n in names:
        frame[n] = [proxy["mapping"][e][n] for e in frame["emotion"]]
    return Manifest(frame, manifest.file, manifest.sha256), int((~known).sum())


# ----------------------------------------------------------------------------------- loss, metrics

def ccc_per_dimension(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Lin's concordance correlation coefficient of each column of (N, D) tensors (population moments)."""
    mp, mt = pred.mean(0), target.mean(0)
    vp, vt = pred.var(0, unbiased=False), target.var(0, unbiased=False)
    cov = ((pred - mp) * (target - mt)).mean(0)
    return 2 * cov / (vp + vt + (mp - mt) ** 2 + eps)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − CCC averaged over the dimensions (paper 004), computed over the batch."""
    return 1 - ccc_per_dimension(pred, target).mean()


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


# --------------------------------------------------------------------------------------- evaluation

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


def reads_text(model) -> bool:
    return bool(getattr(model, "uses_text", False))


def manifest_texts(manifest: Manifest, column: str, empty: str) -> list[str]:
    """Transcripts of a manifest, checked: the column exists, and no transcript is empty unless allowed."""
    frame = manifest.frame
    if column not in frame.columns:
        raise ManifestError(f"{manifest.file} has no '{column}' column of transcripts, which this model reads; add "
                            "them (ASR transcription is not in serkit yet), or use model.options.mode: audio")
    texts = ["" if pd.isna(t) else str(t).strip() for t in frame[column]]
    empty_rows = [i for i, t in enumerate(texts) if not t]
    if empty_rows and empty == "error":
        raise ManifestError(f"{manifest.file}: the transcript of {frame['path'].iloc[empty_rows[0]]} is empty "
                            f"({len(empty_rows)} such rows); fill them, or set model.options.empty_text: allow")
    return texts


def collate_with_text(batch, encode, texts: list[str]):
    """collate() plus the token ids and attention mask of each item's transcript."""
    wave, mask, targets, indices = collate(batch)
    ids, attention = encode([texts[int(i)] for i in indices])
    return wave, mask, targets, indices, ids, attention


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
                        waves: list | None = None) -> RegressionEval:
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
    if waves is None:
        waves = load_waves(manifest.audio_paths(), saved.preprocessing)
    check_lengths(saved.model, waves, manifest.audio_paths())
    start = time.perf_counter()
    predicted = predict_dimensions(saved, waves, batch_size, texts)
    seconds = time.perf_counter() - start
    summary = regression_summary(truth, predicted, names, scale)
    summary["speakers"] = sorted(manifest.frame["speaker"].unique())
    summary["inference_s_per_utterance"] = seconds / max(len(waves), 1)
    if task.get("proxy"):
        summary["targets"] = f"PROXY from emotion categories ({task['proxy']['source']}); {dropped} unmapped utterances left out"
    low, high = scale
    frame = manifest.frame[[c for c in ("path", "speaker", "gender", "emotion") if c in manifest.frame.columns]].copy()
    for j, dim in enumerate(names):
        frame[dim] = np.round(low + truth[:, j] * (high - low), 6)
        frame[f"predicted_{dim}"] = np.round(low + predicted[:, j] * (high - low), 6)
    return RegressionEval(name, summary, frame)


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
    from serkit.evaluation import speaker_marks

    marks, notes = speaker_marks(list(seen) if seen is not None else None)
    write_json(folder / "metrics.json", {"model": str(model_path), "data": source, **marks, result.name: result.summary})
    with atomic_file(folder / "predictions.csv", "w") as handle:
        result.predictions.to_csv(handle, index=False)
    write_text(folder / "report.md", "\n\n".join([f"# Evaluation of `{model_path}`", f"Data: {source}", *notes,
                                                   summary_table([result]), f"Scale: {result.summary['scale']} (MAE on it)."]) + "\n")
