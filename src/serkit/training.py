"""Supervised training with Lightning: Adam, model selection on validation UAR, a run folder.

`train(recipe)` writes `output_dir/` whole or not at all:
  model/            the best model (by validation UAR) as a serkit model directory
  metrics.json      val and test metrics of that model, training time, throughput, peak memory
  report.md         a short human-readable report; confusion_*.png; training_curve.png
  predictions_*.csv per-utterance predictions; training_log.csv per-epoch history; recipe.yaml
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import platform
import resource
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassConfusionMatrix

import serkit
from serkit.config import Recipe, recipe_to_dict
from serkit.data.dataset import Preprocessing, UtteranceDataset, collate, load_waves
from serkit.data.splits import load_split
from serkit.errors import ConfigError, SplitError
from serkit.evaluation import EvalResult, evaluate, recall_table, summary_table, write_predictions
from serkit.inference import check_lengths
from serkit.io import OutputDir, sha256_file, write_json, write_text
from serkit.metrics import uar_from_confusion
from serkit.models.modeldir import load_model, save_model
from serkit.models.registry import SERModel, build_model, get_architecture
from serkit.plots import confusion_png, training_curve_png
from serkit.transfer.nsl import Neighbours, batchnorm_frozen, neighbour_loss

# Lightning's start-up chatter (tips, "TPU available") says nothing a serkit user can act on.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
# nor does its note on SIGTERM: serkit says "interrupted (SIGTERM); nothing was written" itself
logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of any SERModel; logs validation UAR and accuracy per epoch."""

    def __init__(self, model: SERModel, lr: float, weight_decay: float = 0.0, lr_decay=None,
                 ema_decay: float | None = None, neighbours: Neighbours | None = None, head_lr: float | None = None):
        super().__init__()
        self.head_lr = head_lr
        self.model = model
        self.neighbours = neighbours  # neural structured learning: a neighbour loss over a graph
        # the averaged copy is what validation sees and what is kept: it smooths the epoch-to-epoch
        # swings that small corpora give
        self.ema = None if ema_decay is None else torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        self.lr, self.weight_decay, self.lr_decay = lr, weight_decay, lr_decay
        self.loss = nn.CrossEntropyLoss()
        self.val_confusion = MulticlassConfusionMatrix(model.num_classes)
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0

    def on_train_epoch_start(self):
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0

    @property
    def epoch_train_loss(self) -> float | None:
        return self.epoch_loss_sum / self.epoch_loss_count if self.epoch_loss_count else None

    def training_step(self, batch, batch_idx):
        wave, mask, target, index = batch
        nb = self.neighbours.batch(index) if self.neighbours is not None else None
        if nb is None:
            loss = self.loss(self.model(wave, mask), target)
        else:
            # the batch alone, as without the graph; then its neighbours in a pass of their own, with
            # batch normalisation on its running statistics (serkit.transfer.nsl explains why)
            feats = self.model.features(wave, mask)
            with batchnorm_frozen(self.model):
                near = self.model.features(nb.wave.to(wave.device), nb.mask.to(mask.device))
            b = len(target)
            name = self.neighbours.embedding
            l_nbr = neighbour_loss(feats[name], near[name], nb, b, self.neighbours.reduction)
            loss = self.loss(feats["logits"], target) + self.neighbours.alpha * l_nbr
            self.log("neighbour_loss", l_nbr, on_step=False, on_epoch=True, batch_size=b, sync_dist=True)
        self.epoch_loss_sum += float(loss.detach()) * len(target)
        self.epoch_loss_count += len(target)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(target), sync_dist=True)
        return loss

    @property
    def selected_model(self) -> SERModel:
        """The weights validation scores and KeepBest keeps: the EMA if enabled."""
        return self.model if self.ema is None else self.ema.module

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def validation_step(self, batch, batch_idx):
        wave, mask, target, _ = batch
        self.val_confusion.update(self.selected_model(wave, mask).argmax(-1), target)

    def on_validation_epoch_end(self):
        matrix = self.val_confusion.compute().cpu().numpy()  # synced across DDP processes
        self.val_confusion.reset()
        self.log("val_uar", uar_from_confusion(matrix), prog_bar=True)
        self.log("val_war", float(matrix.trace() / max(matrix.sum(), 1)))

    def configure_optimizers(self):
        return adam(self.model, self.lr, self.weight_decay, self.lr_decay, self.head_lr)


class KeepBest(L.Callback):
    """Keep the weights of the epoch with the best validation UAR (first one on ties), in memory:
    no pickled checkpoints on disk. Also records the per-epoch history."""

    def __init__(self, log=None, select: bool = True):
        self.print_fn = log
        self.select = select  # False: no validation data, keep the last epoch
        self.best_uar = -1.0
        self.best_war = None
        self.best_epoch = -1
        self.state: dict | None = None
        self.history: list[dict] = []
        self._epoch_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, module):
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        if self.select:
            return
        self.history.append({"epoch": trainer.current_epoch + 1, "train_loss": module.epoch_train_loss, "val_uar": None,
                             "val_war": None, "lr": trainer.optimizers[0].param_groups[0]["lr"],
                             "seconds": time.perf_counter() - self._epoch_start})
        self.best_epoch, self.best_uar = trainer.current_epoch + 1, None
        self.state = {k: v.detach().cpu().clone() for k, v in module.selected_model.state_dict().items()}
        if self.print_fn is not None and trainer.is_global_zero:
            self.print_fn(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: train loss {module.epoch_train_loss:.3f}, "
                          f"{self.history[-1]['seconds']:.0f} s (no validation: training on train+val)")

    def on_validation_end(self, trainer, module):
        # runs after the module's on_validation_epoch_end has logged val_uar
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        uar = float(metrics["val_uar"])
        self.history.append({
            "epoch": trainer.current_epoch + 1,
            "train_loss": module.epoch_train_loss,
            "val_uar": uar,
            "val_war": float(metrics["val_war"]),
            "lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None,
            "seconds": time.perf_counter() - self._epoch_start,
        })
        better = uar > self.best_uar
        if better:
            self.best_uar, self.best_epoch = uar, trainer.current_epoch + 1
            self.best_war = float(metrics["val_war"])
            self.state = {k: v.detach().cpu().clone() for k, v in module.selected_model.state_dict().items()}
        if self.print_fn is not None and trainer.is_global_zero:
            h = self.history[-1]
            loss = "-" if h["train_loss"] is None else f"{h['train_loss']:.3f}"
            self.print_fn(f"epoch {h['epoch']}/{trainer.max_epochs}: train loss {loss}, val UAR {uar:.3f}, "
                     f"val accuracy {h['val_war']:.3f}{' (best so far)' if better else ''}, {h['seconds']:.0f} s")


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    metrics: dict
    evaluations: list[EvalResult]


def _rank() -> int:
    return int(os.environ.get("NODE_RANK", 0)) * 1000 + int(os.environ.get("LOCAL_RANK", 0))


def load_parts(recipe: Recipe):
    """The recipe's split and its manifest parts: train (train or train+val speakers), and the
    held-out val/test parts. Also whether the model is selected on val."""
    split = load_split(recipe.data.split, recipe.data.manifest, recipe.data.fold)
    select_on_val = "val" not in recipe.data.train_parts
    if select_on_val and not split.val:
        raise SplitError(f"split {split.file} has no validation speakers; model selection needs them (serkit data split --val N)")
    train_speakers = [s for part in recipe.data.train_parts for s in split.speakers(part)]
    parts = {"train": split.manifest.subset(train_speakers)}
    for name in ("val", "test"):
        if split.speakers(name) and name not in recipe.data.train_parts:
            parts[name] = split.part(name)
    return split, parts, select_on_val


def load_part_waves(recipe: Recipe, parts: dict, log=print) -> tuple[Preprocessing, dict]:
    """The recipe's preprocessing and every part's decoded, preprocessed audio."""
    preprocessing = Preprocessing(trim_silence_db=recipe.data.trim_silence_db, fixed_seconds=recipe.data.fixed_seconds)
    t0 = time.perf_counter()
    waves = {name: load_waves(part.audio_paths(), preprocessing) for name, part in parts.items()}
    log(f"loaded {sum(len(w) for w in waves.values())} utterances in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{n} {len(w)} ({parts[n].frame['speaker'].nunique()} speakers)" for n, w in waves.items()))
    return preprocessing, waves


def check_part_lengths(model: SERModel, recipe: Recipe, parts: dict, waves: dict) -> None:
    """Every clip the model sees whole fits its input window, checked before training rather than at
    the first validation: val and test always, train unless data.max_seconds crops it to fit."""
    limit = model.max_seconds
    for name, part in parts.items():
        cropped = name == "train" and limit is not None and recipe.data.max_seconds is not None and recipe.data.max_seconds <= limit
        if not cropped:
            check_lengths(model, waves[name], part.audio_paths())


def adam(model, lr: float, weight_decay: float = 0.0, lr_decay=None, head_lr: float | None = None):
    """Adam over the trainable parameters, optionally decayed stepwise per epoch (Lightning's format).
    With `head_lr`, the head (fc1, fc2, layer weights) learns at that rate and the backbone at `lr`."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if head_lr is None:
        groups = [{"params": [p for _, p in named], "lr": lr}]
    else:
        head = [p for n, p in named if model.is_head_parameter(n)]
        body = [p for n, p in named if not model.is_head_parameter(n)]
        if not head:
            raise ConfigError(f"train.head_lr: this {type(model).__name__} has no trainable head parameters "
                              f"({', '.join(model.head_prefixes)}); remove head_lr")
        groups = [g for g in ({"params": body, "lr": lr}, {"params": head, "lr": head_lr}) if g["params"]]
    optimizer = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if lr_decay is None:
        return optimizer
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, lr_decay.every_epochs, lr_decay.factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def run_provenance(recipe: Recipe, split, waves: dict, init, training: dict) -> dict:
    """What a saved model records about how it was trained."""
    return {
        "recipe": recipe_to_dict(recipe),
        "split_file": str(split.file.resolve()) if split.file else None,
        "split_sha256": sha256_file(split.file) if split.file else None,
        "manifest": str(split.manifest.file),
        "manifest_sha256": split.manifest.sha256,
        "speakers": split.parts(),
        "trained_on": list(recipe.data.train_parts),
        "init_from": init,
        "n_utterances": {n: len(w) for n, w in waves.items()},
        "seed": recipe.seed,
        "training": training,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"serkit": serkit.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "git_commit": _git_commit(),
    }


def train(recipe: Recipe, log=print) -> TrainResult | None:
    """Train, select on validation UAR, save, evaluate. Returns None on non-zero DDP ranks.

    A recipe with `task: regression` trains dimensional SER instead (serkit.dimensional)."""
    if recipe.task == "regression":
        from serkit.dimensional import train_regression

        return train_regression(recipe, log)
    with run_output(recipe) as output:  # a taken, existing or unwritable output fails here, before any work
        return _train_classifier(recipe, output, log)


def run_output(recipe: Recipe) -> OutputDir | contextlib.nullcontext:
    """The run folder, owned by DDP rank 0 alone. Lightning starts the other ranks with the same
    command line, so they run train() too; they write nothing, so they take no lock (rank 0 holds it)
    and need no staging folder (they get None)."""
    if _rank() != 0:
        return contextlib.nullcontext()
    return OutputDir(recipe.output_dir, what="output directory")


def _train_classifier(recipe: Recipe, output: OutputDir | None, log=print) -> TrainResult | None:
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    split, parts, select_on_val = load_parts(recipe)
    labels = _labels(recipe, split, parts, log)
    preprocessing, waves = load_part_waves(recipe, parts, log)

    arch = get_architecture(recipe.model.architecture)
    model = build_model(recipe.model.architecture, recipe.model.options, len(labels))
    check_part_lengths(model, recipe, parts, waves)
    init = initialise_from(model, recipe.model.init_from, log) if recipe.model.init_from else None
    lr = recipe.train.lr or arch.default_lr
    log(f"model {arch.name}: {model.total_parameters() / 1e6:.2f} M parameters "
        f"({model.trainable_parameters() / 1e6:.2f} M trainable), {len(labels)} classes, Adam lr {lr:g}")

    train_set = UtteranceDataset(parts["train"], labels, preprocessing, recipe.data.max_seconds, True, waves["train"])
    loader_args = {"collate_fn": collate, "num_workers": recipe.train.num_workers,
                   "persistent_workers": recipe.train.num_workers > 0}
    train_loader = DataLoader(train_set, recipe.train.batch_size, shuffle=True, drop_last=False, **loader_args)
    neighbours, graph_stats = _graph_neighbours(recipe, parts["train"], train_set, log)
    val_loader = None
    if select_on_val:
        val_set = UtteranceDataset(parts["val"], labels, preprocessing, None, False, waves["val"])
        val_loader = DataLoader(val_set, recipe.train.eval_batch_size, shuffle=False, **loader_args)

    keep_best = KeepBest(log=None if recipe.train.progress_bar else log, select=select_on_val)
    callbacks = [keep_best]
    if recipe.train.patience and select_on_val:
        callbacks.append(L.pytorch.callbacks.EarlyStopping("val_uar", patience=recipe.train.patience, mode="max"))
    trainer = L.Trainer(
        # other ranks write nothing either; with logger and checkpoints off, Lightning writes nothing there
        default_root_dir=output.staging() if output is not None else None,
        max_epochs=recipe.train.max_epochs, accelerator=recipe.train.accelerator,
        devices=recipe.train.devices, strategy=recipe.train.strategy, precision=recipe.train.precision,
        deterministic=recipe.train.deterministic, logger=False, callbacks=callbacks,
        enable_checkpointing=False, num_sanity_val_steps=0, enable_model_summary=False,
        enable_progress_bar=recipe.train.progress_bar, log_every_n_steps=10,
        limit_val_batches=1.0 if select_on_val else 0,
    )
    module = ClassifierModule(model, lr, recipe.train.weight_decay, recipe.train.lr_decay, recipe.train.ema_decay,
                              neighbours, recipe.train.head_lr)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.fit(module, train_loader, val_loader)
    train_seconds = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return None
    if keep_best.state is None:
        raise ConfigError("training ended before the first validation; raise train.max_epochs")
    model.load_state_dict(keep_best.state)
    model.cpu().eval()
    epochs = len(keep_best.history)
    training = {
        "epochs": epochs,
        "best_epoch": keep_best.best_epoch,
        "best_val_uar": keep_best.best_uar,
        "best_val_accuracy": keep_best.best_war,
        "train_seconds": round(train_seconds, 2),
        "train_utterances_per_s": round(len(train_set) * epochs / train_seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "device": str(trainer.strategy.root_device),
        "learning_rate": lr,
        "graph": graph_stats,
    }
    save_model(output.staging() / "model", model, labels, preprocessing, run_provenance(recipe, split, waves, init, training))
    metrics, evaluations = _write_run(output.staging(), recipe, arch.name, split, parts, waves, training, keep_best.history)
    output_dir = output.commit()
    return TrainResult(output_dir, output_dir / "model", metrics, evaluations)


def _labels(recipe: Recipe, split, parts: dict, log=print) -> list[str]:
    """The classes to train: data.labels (other rows left out of every part), or the training part's emotions."""
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
    return labels


def _graph_neighbours(recipe: Recipe, train_part, train_set, log=print) -> tuple[Neighbours | None, dict | None]:
    """The neighbour loss of a recipe with a graph section, and what the run records about the graph."""
    if recipe.graph is None:
        return None, None
    from serkit.transfer.graph import load_graph
    from serkit.transfer.nsl import align_graph

    graph = load_graph(recipe.graph.file)
    table, stats = align_graph(graph, train_part, recipe.graph.max_neighbours, f"graph {recipe.graph.file}", log)
    stats = {"file": str(Path(recipe.graph.file).resolve()), "sha256": sha256_file(recipe.graph.file),
             "alpha": recipe.graph.alpha, "embedding": recipe.graph.embedding, "reduction": recipe.graph.reduction,
             **stats, **graph.meta}
    return Neighbours(table, train_set, recipe.graph.alpha, recipe.graph.embedding, recipe.graph.reduction), stats


def _write_run(work: Path, recipe: Recipe, arch: str, split, parts: dict, waves: dict, training: dict,
               history: list[dict]) -> tuple[dict, list[EvalResult]]:
    """Evaluate the saved model (exactly what was written) on the held-out parts; write the run's files."""
    saved = load_model(work / "model")
    evaluations = []
    for name in ("val", "test"):
        if name in parts:
            result = evaluate(saved, parts[name], name, recipe.train.eval_batch_size, waves[name])
            evaluations.append(result)
            write_predictions(result, work / f"predictions_{name}.csv")
            confusion_png(work / f"confusion_{name}.png", result.summary["confusion"], saved.labels,
                          f"{recipe.name} {name}: UAR {result.summary['uar']:.3f}, acc {result.summary['war']:.3f}")
    model = saved.model
    metrics = {e.name: e.summary for e in evaluations}
    metrics["training"] = training
    metrics["model"] = {"architecture": arch, "parameters": model.total_parameters(),
                        "trainable_parameters": model.trainable_parameters(), "labels": saved.labels}
    write_json(work / "metrics.json", metrics)
    write_text(work / "recipe.yaml", yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    write_text(work / "training_log.csv", _history_csv(history))
    training_curve_png(work / "training_curve.png", history)
    write_text(work / "report.md", _report(recipe, arch, model, split, training, evaluations))
    return metrics, evaluations


def initialise_from(model: SERModel, path: Path, log=print) -> dict:
    """Copy every tensor of another serkit model whose name and shape match (two-step fine-tuning:
    model A trained on an intermediate task, then model B on SER). Returns what was copied."""
    source = load_model(path)
    if source.config["architecture"] != model.architecture:
        raise ConfigError(f"model.init_from {path} is a '{source.config['architecture']}' model; "
                          f"this recipe trains '{model.architecture}' (they must match)")
    theirs = source.model.state_dict()
    ours = model.state_dict()
    copied = {k: v for k, v in theirs.items() if k in ours and v.shape == ours[k].shape}
    skipped = sorted(k for k in ours if k not in copied)
    model.load_state_dict({**ours, **copied})
    log(f"initialised {len(copied)} of {len(ours)} tensors from {path}"
        + (f"; fresh: {', '.join(skipped[:4])}{' ...' if len(skipped) > 4 else ''}" if skipped else ""))
    return {"path": str(Path(path).resolve()), "weights_sha256": source.weights_sha256, "copied": len(copied), "fresh": skipped}


def _history_csv(history: list[dict]) -> str:
    keys = ["epoch", "train_loss", "val_uar", "val_war", "lr", "seconds"]
    rows = [",".join(keys)]
    for h in history:
        rows.append(",".join("" if h.get(k) is None else f"{h[k]:.6g}" for k in keys))
    return "\n".join(rows) + "\n"


def _report(recipe: Recipe, arch: str, model: SERModel, split, training: dict, evaluations: list[EvalResult]) -> str:
    test = next((e for e in evaluations if e.name == "test"), evaluations[-1])
    speakers = ", ".join(f"{p} {len(split.speakers(p))}" for p in ("train", "val", "test"))
    if training["best_val_uar"] is not None:
        selection = f"Best validation UAR {training['best_val_uar']:.3f} at epoch {training['best_epoch']} of {training['epochs']}; "
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


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
