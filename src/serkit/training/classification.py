"""Emotion categories: cross-entropy, validation UAR (and accuracy), confusion matrices."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from serkit.errors import ConfigError
from serkit.evaluation.classification import EvalResult, evaluate, recall_table, summary_table, write_predictions
from serkit.inference.predict import predict_proba
from serkit.metrics import auc_against_profile, loss_profile, uar_from_confusion
from serkit.plots import confusion_png, training_curve_png


class UARMetric(MulticlassConfusionMatrix):
    """The validation confusion matrix, read as unweighted average recall and accuracy."""

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        super().update(logits.argmax(-1), target)

    def values(self) -> dict[str, float]:
        matrix = self.compute().cpu().numpy()
        return {"val_uar": uar_from_confusion(matrix), "val_war": float(matrix.trace() / max(matrix.sum(), 1))}


class ClassificationTask:
    """`task: classification` (the default): the recipe's emotion categories."""

    monitor = "val_uar"
    history_keys = ("val_uar", "val_war")
    distributed = True

    def __init__(self):
        self.names: list[str] = []
        self.targets: dict = {}  # label indices come from the manifest's emotion column
        self.loss = nn.CrossEntropyLoss()

    def validation_metric(self, num_classes: int) -> UARMetric:
        return UARMetric(num_classes)

    def prepare(self, recipe, split, parts: dict, log=print) -> None:
        """The classes to train: data.labels (other rows left out of every part), or the training
        part's emotions."""
        labels = recipe.data.labels or parts["train"].emotions
        if recipe.data.labels:
            for name, part in parts.items():
                keep = part.frame["emotion"].isin(labels)
                if (~keep).any():
                    log(f"{name}: leaving out {(~keep).sum()} utterances whose emotion is not in data.labels")
                part.frame = part.frame[keep].reset_index(drop=True)
        missing = [label for label in labels if label not in set(parts["train"].frame["emotion"])]
        if missing:
            raise ConfigError(f"data.labels {missing} have no training utterances in split {split.file}")
        for part in parts.values():
            part.check_labels(labels, "the training set")
        self.names = list(labels)

    def describe(self) -> str:
        return f"{len(self.names)} classes"

    def check_inputs(self, model, parts: dict) -> None:
        pass

    def collate(self, model, part):
        from serkit.data.dataset import collate

        return collate

    def epoch_line(self, row: dict, better: bool) -> str:
        if row["val_uar"] is None:
            return f"train loss {row['train_loss']:.3f}, {row['seconds']:.0f} s (no validation: training on train+val)"
        loss = "-" if row["train_loss"] is None else f"{row['train_loss']:.3f}"
        return (f"train loss {loss}, val UAR {row['val_uar']:.3f}, val accuracy {row['val_war']:.3f}"
                f"{' (best so far)' if better else ''}, {row['seconds']:.0f} s")

    def best_figures(self, keep_best) -> dict:
        row = keep_best.best_row if keep_best.select else None
        return {"best_val_uar": keep_best.best_value, "best_val_accuracy": None if row is None else row["val_war"]}

    def record(self) -> dict | None:
        return None  # a classifier's model directory has labels and no task section

    def held_out_profiles(self, model, parts: dict, waves: dict, recipe) -> dict | None:
        """How the kept model treats what it never trained on, as loss profiles (serkit.metrics.loss_profile):
        "unseen", the validation speakers, and with data.calibration "known", the held-out utterances of its
        training speakers, with their membership AUC against the unseen ones. A model retrained without a
        forget set treats the forgotten utterances like "known" ones (their speaker's other utterances stay in
        its training): a deletion request's calibrated stop aims there (serkit.unlearning.methods.base). Test
        speakers are never profiled: what a stop aims for must not be tuned on them."""
        profiles, losses = {}, {}
        for key, name in (("unseen", "val"), ("known", "calibration")):
            if name in parts:
                labels = np.array([self.names.index(e) for e in parts[name].frame["emotion"]])
                probs = predict_proba(model, waves[name], recipe.train.eval_batch_size)
                losses[key] = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))
                profiles[key] = {"part": name, **loss_profile(losses[key], labels, probs.argmax(1))}
        if "unseen" in profiles and "known" in profiles:
            profiles["known"]["auc_vs_unseen"] = auc_against_profile(losses["known"], profiles["unseen"])
        if not profiles:
            return None
        return {"per_speaker": recipe.data.calibration, **profiles}

    def store_importances(self, model_dir: Path, model, parts: dict, waves: dict, log=print, device: str = "cpu") -> None:
        """The training importances and head moments forget-only methods read (serkit.unlearning.importance),
        bound to the weights just written, one whole utterance at a time on the training device."""
        from serkit import SAMPLE_RATE
        from serkit.io import sha256_file
        from serkit.models.modeldir import WEIGHTS
        from serkit.unlearning.importance import importances_over, save_importances

        limit = model.max_seconds
        if limit is not None and any(w.shape[0] > limit * SAMPLE_RATE for w in waves["train"]):
            log(f"note: no training importances stored: some training utterances are longer than the model's {limit:g}-s "
                "input window (data.max_seconds crops them in training only); a deletion request runs adv-ewc")
            return
        labels = np.array([self.names.index(e) for e in parts["train"].frame["emotion"]])
        start = time.perf_counter()
        try:
            importance, n, moments = importances_over(model.to(device), waves["train"], labels)
        finally:
            model.cpu()
        save_importances(model_dir, importance, sha256_file(model_dir / WEIGHTS), n, moments=moments)
        log(f"stored the training importances and head moments for deletion requests ({n} utterances, "
            f"{time.perf_counter() - start:.0f} s)")

    def evaluate(self, saved, work: Path, name: str, part, waves, recipe) -> EvalResult:
        result = evaluate(saved, part, name, recipe.train.eval_batch_size, waves)
        write_predictions(result, work / f"predictions_{name}.csv")
        confusion_png(work / f"confusion_{name}.png", result.summary["confusion"], saved.labels,
                      f"{recipe.name} {name}: UAR {result.summary['uar']:.3f}, acc {result.summary['war']:.3f}")
        return result

    def model_figures(self, saved) -> dict:
        return {"labels": saved.labels}

    def figures(self, saved, work: Path, recipe, history: list) -> dict:
        training_curve_png(work / "training_curve.png", history)
        return {}

    def report(self, recipe, arch: str, model, split, training: dict, evaluations: list) -> str:
        test = next((e for e in evaluations if e.name == "test"), evaluations[-1])
        speakers = ", ".join(f"{p} {len(split.speakers(p))}" for p in ("train", "val", "test"))
        if training["best_val_uar"] is not None:
            selection = (f"Best validation UAR {training['best_val_uar']:.3f} at epoch {training['best_epoch']} "
                         f"of {training['epochs']}; ")
        else:
            selection = (f"Trained on {' + '.join(recipe.data.train_parts)} for {training['epochs']} epochs, no validation: "
                         "the last epoch is kept; ")
        return "\n\n".join([
            f"# {recipe.name}",
            f"Model `{arch}` ({model.total_parameters() / 1e6:.2f} M parameters), trained on `{split.manifest.file}` "
            f"with a speaker-independent split (speakers: {speakers}), seed {recipe.seed}.",
            selection + f"{training['train_seconds']:.0f} s of training on {training['device']} "
            f"({training['train_utterances_per_s']:.1f} utterances/s), peak memory {training['peak_rss_mb']:.0f} MB.",
            summary_table(evaluations),
            f"## Recall per class ({test.name})\n\n" + recall_table(test),
            f"![confusion matrix]({'confusion_' + test.name + '.png'})\n\n![training curve](training_curve.png)",
            "Files: `model/` (load with `serkit predict model/ FILE.wav`), `metrics.json`, `predictions_*.csv`, "
            "`training_log.csv`, `recipe.yaml`.",
        ]) + "\n"

    def finished(self, evaluations: list, log=print) -> None:
        pass  # the CLI prints a classifier's figures

