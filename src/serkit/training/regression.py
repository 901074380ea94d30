"""Dimensional SER (paper 004) as a training task: arousal/valence/dominance, 1 − CCC, validation CCC.

The targets and the proxy mapping from categories live in serkit.dimensional, the evaluation in
serkit.evaluation.regression; this module is what the training engine needs to train on them."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torchmetrics

from serkit.dimensional.targets import apply_proxy, dimension_targets, load_proxy
from serkit.dimensional.text import collate_with_text, manifest_texts, reads_text
from serkit.evaluation.regression import evaluate_regression, summary_table
from serkit.io import atomic_file
from serkit.plots import layer_weights_png


def ccc_per_dimension(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Lin's concordance correlation coefficient of each column of (N, D) tensors (population moments)."""
    mp, mt = pred.mean(0), target.mean(0)
    vp, vt = pred.var(0, unbiased=False), target.var(0, unbiased=False)
    cov = ((pred - mp) * (target - mt)).mean(0)
    return 2 * cov / (vp + vt + (mp - mt) ** 2 + eps)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − CCC averaged over the dimensions (paper 004), computed over the batch."""
    return 1 - ccc_per_dimension(pred, target).mean()


class CCCMetric(torchmetrics.Metric):
    """Every validation prediction and target, read as CCC per dimension and their mean."""

    def __init__(self, names: list[str]):
        super().__init__()
        self.names = list(names)
        self.add_state("pred", default=[], dist_reduce_fx="cat")
        self.add_state("true", default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.pred.append(pred.detach().float())
        self.true.append(target.float())

    def compute(self) -> torch.Tensor:
        pred = torch.cat(self.pred) if isinstance(self.pred, list) else self.pred
        true = torch.cat(self.true) if isinstance(self.true, list) else self.true
        return ccc_per_dimension(pred.cpu(), true.cpu())

    def values(self) -> dict[str, float]:
        per = [float(v) for v in self.compute().reshape(-1)]  # torchmetrics squeezes a single dimension
        return {"val_ccc": float(np.mean(per)), **{f"val_ccc_{n}": v for n, v in zip(self.names, per)}}


class RegressionTask:
    """`task: regression`: one output per dimension, normalised to [0, 1] for training."""

    monitor = "val_ccc"
    distributed = False  # one device only (config.Recipe refuses more)

    def __init__(self):
        self.names: list[str] = []
        self.targets: dict[str, np.ndarray] = {}
        self.scale: tuple[float, float] = (0.0, 1.0)
        self.proxy: dict | None = None
        self.dropped: dict[str, int] = {}

    @property
    def history_keys(self) -> tuple[str, ...]:
        return ("val_ccc", *(f"val_ccc_{n}" for n in self.names))

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ccc_loss(pred, target.float())

    def validation_metric(self, num_classes: int) -> CCCMetric:
        return CCCMetric(self.names)

    def prepare(self, recipe, split, parts: dict, log=print) -> None:
        """The dimensions' targets of every part; with dimensions.proxy, mapped from the categories."""
        dims = recipe.dimensions
        self.names = list(dims.names)
        if dims.proxy:
            self.proxy = load_proxy(dims.proxy, self.names, dims.scale)
            for name in list(parts):
                parts[name], self.dropped[name] = apply_proxy(parts[name], self.proxy, self.names, dims.drop_unmapped)
            log(f"PROXY targets: {', '.join(self.names)} from the emotion categories ({self.proxy['source']}); left out "
                "as unmapped: " + ", ".join(f"{n} {d}" for n, d in self.dropped.items()))
        self.scale = tuple(float(v) for v in (self.proxy["scale"] if self.proxy else dims.scale))
        self.targets = {name: dimension_targets(part, self.names, self.scale) for name, part in parts.items()}

    def describe(self) -> str:
        return f"regression of {', '.join(self.names)} on [{self.scale[0]:g}, {self.scale[1]:g}], loss 1 - CCC"

    def check_inputs(self, model, parts: dict) -> None:
        if reads_text(model):  # every part's transcripts are checked before any training
            for part in parts.values():
                manifest_texts(part, model.options.text_column, model.options.empty_text)

    def collate(self, model, part):
        from serkit.data.dataset import collate

        if not reads_text(model):
            return collate
        texts = manifest_texts(part, model.options.text_column, model.options.empty_text)
        return functools.partial(collate_with_text, encode=model.text_encoder(), texts=texts)

    def epoch_line(self, row: dict, better: bool) -> str:
        if row["val_ccc"] is None:
            text = "no validation"
        else:
            text = "val CCC " + ", ".join(f"{n} {row[f'val_ccc_{n}']:.3f}" for n in self.names)
        return (f"train loss (1 - CCC) {row['train_loss']:.3f}, {text}{' (best so far)' if better else ''}, "
                f"{row['seconds']:.0f} s")

    def best_figures(self, keep_best) -> dict:
        return {"best_val_ccc": keep_best.best_value}

    def held_out_profiles(self, model, parts: dict, waves: dict, recipe) -> dict | None:
        return None  # loss profiles serve deletion requests' stop, which classifiers have

    def store_importances(self, model_dir: Path, model, parts: dict, waves: dict, log=print, device: str = "cpu") -> None:
        return None  # as the profiles: deletion requests' methods serve classifiers

    def record(self) -> dict:
        task = {"type": "regression", "dimensions": self.names, "scale": list(self.scale), "loss": "1 - CCC"}
        if self.proxy:
            task["proxy"] = self.proxy
        return task

    def evaluate(self, saved, work: Path, name: str, part, waves, recipe):
        result = evaluate_regression(saved, part, name, recipe.train.eval_batch_size, waves)
        with atomic_file(work / f"predictions_{name}.csv", "w") as handle:
            result.predictions.to_csv(handle, index=False)
        return result

    def model_figures(self, saved) -> dict:
        return {"task": self.record()}

    def figures(self, saved, work: Path, recipe, history: list) -> dict:
        audio = getattr(saved.model, "audio", saved.model)  # the audio encoder of an audio+text model, or the model
        weights = audio.layer_weights() if audio is not None and hasattr(audio, "layer_weights") else None
        if weights is None:
            return {}
        # learnable softmax layer weights (paper 004, Fig. 2)
        layer_weights_png(work / "layer_weights.png", {"+".join(self.names): weights.tolist()},
                          f"{recipe.name}: layer weights learnt for {', '.join(self.names)}")
        return {"layer_weights": {"dimensions": self.names, "weights": [round(float(w), 5) for w in weights]}}

    def report(self, recipe, arch: str, model, split, training: dict, evaluations: list) -> str:
        low, high = self.scale
        return "\n\n".join([
            f"# {recipe.name}: dimensional SER ({', '.join(self.names)})",
            f"Model `{arch}`, {model.total_parameters() / 1e6:.2f} M parameters; loss 1 - CCC; values on "
            f"[{low:g}, {high:g}] normalised to [0, 1]; best epoch {training['best_epoch']} of {training['epochs']}.",
            *([f"**Targets are a PROXY** mapped from emotion categories ({self.proxy['source']}), not ratings; "
               f"unmapped utterances left out: {self.dropped}."] if self.proxy else []),
            summary_table(evaluations) if evaluations else "(no held-out parts)",
        ]) + "\n"

    def finished(self, evaluations: list, log=print) -> None:
        for e in evaluations:
            log(f"{e.name}: mean CCC {e.summary['mean_ccc']:.3f} ("
                + ", ".join(f"{n} {v['ccc']:.3f}" for n, v in e.summary["dimensions"].items())
                + f"), {e.summary['n']} utterances")
