"""Dimensional SER (paper 004): regression of arousal, valence, dominance with a 1 − CCC loss.

A manifest carries one numeric column per dimension on a scale the recipe declares (any scale:
[1, 5], [-1, 1], ...). Values are normalised to [0, 1] for training; predictions are reported on
the declared scale again. Any serkit model serves as the encoder: its `num_classes` outputs become
the dimensions. Evaluation reports CCC, Pearson r and MAE per dimension.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader

import serkit
from serkit.config import Recipe, recipe_to_dict
from serkit.data.dataset import Preprocessing, UtteranceDataset, collate, load_waves
from serkit.data.manifest import Manifest
from serkit.errors import ConfigError, ManifestError, SerkitError
from serkit.inference import model_outputs
from serkit.io import atomic_dir, atomic_file, refuse_existing, sha256_file, write_json, write_text
from serkit.metrics import ccc
from serkit.models.modeldir import SavedModel, load_model, save_model
from serkit.models.registry import build_model, get_architecture

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


# ----------------------------------------------------------------------------------------- training

class RegressionModule(L.LightningModule):
    """1 − CCC training of any SERModel whose outputs are the dimensions; validation CCC per epoch."""

    def __init__(self, model, lr: float, weight_decay: float = 0.0, lr_decay=None):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.lr_decay = lr, weight_decay, lr_decay
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
        self._val_pred: list[torch.Tensor] = []
        self._val_true: list[torch.Tensor] = []
        self.val_ccc: list[float] = []

    def on_train_epoch_start(self):
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0

    def training_step(self, batch, batch_idx):
        wave, mask, target, _ = batch
        loss = ccc_loss(self.model(wave, mask), target.float())
        self.epoch_loss_sum += float(loss.detach()) * len(target)
        self.epoch_loss_count += len(target)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(target))
        return loss

    def validation_step(self, batch, batch_idx):
        wave, mask, target, _ = batch
        self._val_pred.append(self.model(wave, mask).detach().float().cpu())
        self._val_true.append(target.float().cpu())

    def on_validation_epoch_end(self):
        pred, true = torch.cat(self._val_pred), torch.cat(self._val_true)
        self._val_pred, self._val_true = [], []
        self.val_ccc = [float(v) for v in ccc_per_dimension(pred, true)]
        self.log("val_ccc", float(np.mean(self.val_ccc)), prog_bar=True)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_decay is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, self.lr_decay.every_epochs, self.lr_decay.factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class KeepBestCCC(L.Callback):
    """Keep the weights of the epoch with the best mean validation CCC (in memory), or the last
    epoch when there is no validation data; record the history."""

    def __init__(self, names: list[str], log=None, select: bool = True):
        self.names, self.print_fn, self.select = names, log, select
        self.best, self.best_epoch, self.state = -np.inf, -1, None
        self.history: list[dict] = []
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer, module):
        self._start = time.perf_counter()

    def _record(self, trainer, module, val: list[float] | None):
        row = {"epoch": trainer.current_epoch + 1, "train_loss": module.epoch_loss_sum / max(module.epoch_loss_count, 1),
               "val_ccc": None if val is None else float(np.mean(val)), "seconds": time.perf_counter() - self._start}
        for name, value in zip(self.names, val or [None] * len(self.names)):
            row[f"val_ccc_{name}"] = value
        self.history.append(row)
        better = val is None or row["val_ccc"] > self.best
        if better:
            self.best, self.best_epoch = (row["val_ccc"] if val is not None else None), row["epoch"]
            self.state = {k: v.detach().cpu().clone() for k, v in module.model.state_dict().items()}
        if self.print_fn is not None:
            text = "no validation" if val is None else "val CCC " + ", ".join(f"{n} {v:.3f}" for n, v in zip(self.names, val))
            self.print_fn(f"epoch {row['epoch']}/{trainer.max_epochs}: train loss (1 - CCC) {row['train_loss']:.3f}, {text}"
                          f"{' (best so far)' if better and val is not None else ''}, {row['seconds']:.0f} s")

    def on_train_epoch_end(self, trainer, module):
        if not self.select:
            self._record(trainer, module, None)

    def on_validation_end(self, trainer, module):
        if not trainer.sanity_checking:
            self._record(trainer, module, module.val_ccc)


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


def predict_dimensions(saved: SavedModel, waves: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
    """Predictions normalised to [0, 1] (clipped), one column per dimension."""
    return np.clip(model_outputs(saved.model, waves, batch_size)["logits"], 0.0, 1.0)


def evaluate_regression(saved: SavedModel, manifest: Manifest, name: str = "test", batch_size: int = 16,
                        waves: list | None = None) -> RegressionEval:
    task = task_of(saved)
    names, scale = task["dimensions"], task["scale"]
    truth = dimension_targets(manifest, names, scale)
    if waves is None:
        waves = load_waves(manifest.audio_paths(), saved.preprocessing)
    start = time.perf_counter()
    predicted = predict_dimensions(saved, waves, batch_size)
    seconds = time.perf_counter() - start
    summary = regression_summary(truth, predicted, names, scale)
    summary["speakers"] = sorted(manifest.frame["speaker"].unique())
    summary["inference_s_per_utterance"] = seconds / max(len(waves), 1)
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


def write_regression_eval_dir(out: Path | str, result: RegressionEval, model_path, source: str) -> Path:
    out = Path(out)
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", {"model": str(model_path), "data": source, result.name: result.summary})
        with atomic_file(tmp / "predictions.csv", "w") as handle:
            result.predictions.to_csv(handle, index=False)
        write_text(tmp / "report.md", f"# Evaluation of `{model_path}`\n\nData: {source}\n\n{summary_table([result])}\n\n"
                   f"Scale: {result.summary['scale']} (MAE on it).\n")
    return out


def train_regression(recipe: Recipe, log=print):
    """Train a dimensional model: 1 − CCC, selection on mean validation CCC, save, evaluate."""
    from serkit.training import TrainResult, _git_commit, initialise_from, load_parts

    dims = recipe.dimensions
    names, scale = list(dims.names), (float(dims.scale[0]), float(dims.scale[1]))
    output_dir = Path(recipe.output_dir)
    work = output_dir.with_name(f".{output_dir.name}.partial")
    refuse_existing(output_dir, "output directory")
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    split, parts, select_on_val = load_parts(recipe)
    targets = {name: dimension_targets(part, names, scale) for name, part in parts.items()}
    preprocessing = Preprocessing(trim_silence_db=recipe.data.trim_silence_db, fixed_seconds=recipe.data.fixed_seconds)
    t0 = time.perf_counter()
    waves = {name: load_waves(part.audio_paths(), preprocessing) for name, part in parts.items()}
    log(f"loaded {sum(len(w) for w in waves.values())} utterances in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{n} {len(w)} ({parts[n].frame['speaker'].nunique()} speakers)" for n, w in waves.items()))

    arch = get_architecture(recipe.model.architecture)
    model = build_model(recipe.model.architecture, recipe.model.options, len(names))
    init = initialise_from(model, recipe.model.init_from, log) if recipe.model.init_from else None
    lr = recipe.train.lr or arch.default_lr
    log(f"model {arch.name}: {model.total_parameters() / 1e6:.2f} M parameters ({model.trainable_parameters() / 1e6:.2f} M "
        f"trainable), regression of {', '.join(names)} on [{scale[0]:g}, {scale[1]:g}], loss 1 - CCC, Adam lr {lr:g}")
    loader_args = {"collate_fn": collate, "num_workers": recipe.train.num_workers,
                   "persistent_workers": recipe.train.num_workers > 0}
    train_set = UtteranceDataset(parts["train"], names, preprocessing, recipe.data.max_seconds, True, waves["train"],
                                 targets=targets["train"])
    train_loader = DataLoader(train_set, recipe.train.batch_size, shuffle=True, **loader_args)
    val_loader = None
    if select_on_val:
        val_set = UtteranceDataset(parts["val"], names, preprocessing, None, False, waves["val"], targets=targets["val"])
        val_loader = DataLoader(val_set, recipe.train.eval_batch_size, shuffle=False, **loader_args)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        keep = KeepBestCCC(names, log=None if recipe.train.progress_bar else log, select=select_on_val)
        trainer = L.Trainer(
            default_root_dir=work, max_epochs=recipe.train.max_epochs, accelerator=recipe.train.accelerator,
            devices=1 if recipe.train.devices == "auto" else recipe.train.devices, precision=recipe.train.precision,
            deterministic=recipe.train.deterministic, logger=False, callbacks=[keep], enable_checkpointing=False,
            num_sanity_val_steps=0, enable_model_summary=False, enable_progress_bar=recipe.train.progress_bar,
            limit_val_batches=1.0 if select_on_val else 0,
        )
        module = RegressionModule(model, lr, recipe.train.weight_decay, recipe.train.lr_decay)
        t0 = time.perf_counter()
        trainer.fit(module, train_loader, val_loader)
        train_seconds = time.perf_counter() - t0
        if keep.state is None:
            raise ConfigError("training ended before the first epoch finished; raise train.max_epochs")
        model.load_state_dict(keep.state)
        model.cpu().eval()
        epochs = len(keep.history)
        training = {
            "epochs": epochs, "best_epoch": keep.best_epoch,
            "best_val_ccc": None if not select_on_val else keep.best,
            "train_seconds": round(train_seconds, 2),
            "train_utterances_per_s": round(len(train_set) * epochs / train_seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "device": str(trainer.strategy.root_device), "learning_rate": lr,
        }
        task = {"type": "regression", "dimensions": names, "scale": list(scale), "loss": "1 - CCC"}
        provenance = {
            "recipe": recipe_to_dict(recipe),
            "split_file": str(split.file.resolve()) if split.file else None,
            "split_sha256": sha256_file(split.file) if split.file else None,
            "manifest": str(split.manifest.file), "manifest_sha256": split.manifest.sha256,
            "speakers": split.parts(), "trained_on": list(recipe.data.train_parts), "init_from": init,
            "n_utterances": {n: len(w) for n, w in waves.items()}, "seed": recipe.seed, "training": training,
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"serkit": serkit.__version__, "torch": torch.__version__, "python": platform.python_version()},
            "git_commit": _git_commit(),
        }
        save_model(work / "model", model, names, preprocessing, provenance, task=task)
        saved = load_model(work / "model")  # evaluate exactly what was written
        evaluations = []
        for name in ("val", "test"):
            if name in parts:
                result = evaluate_regression(saved, parts[name], name, recipe.train.eval_batch_size, waves[name])
                evaluations.append(result)
                with atomic_file(work / f"predictions_{name}.csv", "w") as handle:
                    result.predictions.to_csv(handle, index=False)
        metrics = {e.name: e.summary for e in evaluations}
        metrics["training"] = training
        metrics["model"] = {"architecture": arch.name, "parameters": model.total_parameters(),
                            "trainable_parameters": model.trainable_parameters(), "task": task}
        write_json(work / "metrics.json", metrics)
        write_text(work / "recipe.yaml", yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
        write_text(work / "training_log.csv", pd.DataFrame(keep.history).to_csv(index=False))
        write_text(work / "report.md", "\n\n".join([
            f"# {recipe.name}: dimensional SER ({', '.join(names)})",
            f"Model `{arch.name}`, {model.total_parameters() / 1e6:.2f} M parameters; loss 1 - CCC; values on "
            f"[{scale[0]:g}, {scale[1]:g}] normalised to [0, 1]; best epoch {keep.best_epoch} of {epochs}.",
            summary_table(evaluations) if evaluations else "(no held-out parts)",
        ]) + "\n")
        os.rename(work, output_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    for e in evaluations:
        log(f"{e.name}: mean CCC {e.summary['mean_ccc']:.3f} ("
            + ", ".join(f"{n} {v['ccc']:.3f}" for n, v in e.summary["dimensions"].items()) + f"), {e.summary['n']} utterances")
    return TrainResult(output_dir, output_dir / "model", metrics, evaluations)
