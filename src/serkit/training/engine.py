"""`train(recipe)`: the one training engine every task plugs into.

Seeds, loads the split's parts, builds the model, runs Lightning with keep-best selection on the
task's validation figure, saves the model with its provenance, evaluates exactly what was saved and
writes `output_dir/` whole or not at all:
  model/            the best model as a serkit model directory
  metrics.json      val and test metrics of that model, training time, throughput, peak memory
  report.md         a short human-readable report, with the task's figures
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
from torch.utils.data import DataLoader

import serkit
from serkit.config import Recipe, recipe_to_dict
from serkit.data.dataset import UtteranceDataset
from serkit.errors import ConfigError
from serkit.io import OutputDir, sha256_file, write_json, write_text
from serkit.models.modeldir import load_model, save_model
from serkit.models.registry import SERModel, build_model, get_architecture
from serkit.training.module import KeepBest, TaskModule
from serkit.training.parts import check_part_lengths, load_part_waves, load_parts

# Lightning's start-up chatter (tips, "TPU available") says nothing a serkit user can act on.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
# nor does its note on SIGTERM: serkit says "interrupted (SIGTERM); nothing was written" itself
logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    metrics: dict
    evaluations: list  # serkit.evaluation: classification.EvalResult, or regression.RegressionEval for task: regression


def task_for(recipe: Recipe):
    """The recipe's task object (fresh per run: it holds the run's labels or dimensions)."""
    if recipe.task == "regression":
        from serkit.training.regression import RegressionTask

        return RegressionTask()
    from serkit.training.classification import ClassificationTask

    return ClassificationTask()


def train(recipe: Recipe, log=print) -> TrainResult | None:
    """Train, select on the task's validation figure, save, evaluate. Returns None on non-zero DDP
    ranks. `task: classification` (default) selects on UAR; `task: regression` on mean CCC."""
    with run_output(recipe) as output:  # a taken, existing or unwritable output fails here, before any work
        return _train(recipe, task_for(recipe), output, log)


def run_output(recipe: Recipe) -> OutputDir | contextlib.nullcontext:
    """The run folder, owned by DDP rank 0 alone. Lightning starts the other ranks with the same
    command line, so they run train() too; they write nothing, so they take no lock (rank 0 holds it)
    and need no staging folder (they get None)."""
    if _rank() != 0:
        return contextlib.nullcontext()
    return OutputDir(recipe.output_dir, what="output directory")


def _rank() -> int:
    return int(os.environ.get("NODE_RANK", 0)) * 1000 + int(os.environ.get("LOCAL_RANK", 0))


def _train(recipe: Recipe, task, output: OutputDir | None, log=print) -> TrainResult | None:
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    split, parts, select_on_val = load_parts(recipe)
    task.prepare(recipe, split, parts, log)
    preprocessing, waves = load_part_waves(recipe, parts, log)

    arch = get_architecture(recipe.model.architecture)
    model = build_model(recipe.model.architecture, recipe.model.options, len(task.names))
    check_part_lengths(model, recipe, parts, waves)
    init = initialise_from(model, recipe.model.init_from, log) if recipe.model.init_from else None
    lr = recipe.train.lr or arch.default_lr
    log(f"model {arch.name}: {model.total_parameters() / 1e6:.2f} M parameters "
        f"({model.trainable_parameters() / 1e6:.2f} M trainable), {task.describe()}, Adam lr {lr:g}")
    task.check_inputs(model, parts)

    loader_args = {"num_workers": recipe.train.num_workers, "persistent_workers": recipe.train.num_workers > 0}
    train_set = UtteranceDataset(parts["train"], task.names, preprocessing, recipe.data.max_seconds, True, waves["train"],
                                 targets=task.targets.get("train"))
    train_loader = DataLoader(train_set, recipe.train.batch_size, shuffle=True, drop_last=False,
                              collate_fn=task.collate(model, parts["train"]), **loader_args)
    loss_hook, graph_stats = None, None
    if recipe.graph is not None:
        from serkit.transfer.nsl import graph_neighbours

        loss_hook, graph_stats = graph_neighbours(recipe.graph, parts["train"], train_set, recipe.train.batch_size, log)
    val_loader = None
    if select_on_val:
        val_set = UtteranceDataset(parts["val"], task.names, preprocessing, None, False, waves["val"],
                                   targets=task.targets.get("val"))
        val_loader = DataLoader(val_set, recipe.train.eval_batch_size, shuffle=False,
                                collate_fn=task.collate(model, parts["val"]), **loader_args)

    keep_best = KeepBest(task, log=None if recipe.train.progress_bar else log, select=select_on_val)
    callbacks = [keep_best]
    if recipe.train.patience and select_on_val:
        callbacks.append(L.pytorch.callbacks.EarlyStopping(task.monitor, patience=recipe.train.patience, mode="max"))
    trainer = L.Trainer(
        # other ranks write nothing either; with logger and checkpoints off, Lightning writes nothing there
        default_root_dir=output.staging() if output is not None else None,
        max_epochs=recipe.train.max_epochs, accelerator=recipe.train.accelerator,
        # a task that cannot gather its validation figures across processes trains on one device
        devices=recipe.train.devices if task.distributed or recipe.train.devices != "auto" else 1,
        strategy=recipe.train.strategy, precision=recipe.train.precision,
        deterministic=recipe.train.deterministic, logger=False, callbacks=callbacks,
        enable_checkpointing=False, num_sanity_val_steps=0, enable_model_summary=False,
        enable_progress_bar=recipe.train.progress_bar, log_every_n_steps=10,
        limit_val_batches=1.0 if select_on_val else 0,
    )
    module = TaskModule(model, task, lr, recipe.train.weight_decay, recipe.train.lr_decay, recipe.train.ema_decay,
                        loss_hook, recipe.train.head_lr)
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
        **task.best_figures(keep_best),
        "train_seconds": round(train_seconds, 2),
        "train_utterances_per_s": round(len(train_set) * epochs / train_seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "device": str(trainer.strategy.root_device),
        "learning_rate": lr,
        "graph": graph_stats,
    }
    provenance = run_provenance(recipe, split, waves, init, training)
    profiles = task.held_out_profiles(model, parts, waves, recipe)
    if profiles is not None:
        provenance["calibration"] = profiles
    work = output.staging()
    save_model(work / "model", model, task.names, preprocessing, provenance, task=task.record())
    if recipe.train.importances:
        task.store_importances(work / "model", model, parts, waves, log, device=str(trainer.strategy.root_device))
    metrics, evaluations = _write_run(work, recipe, task, arch.name, split, parts, waves, training, keep_best.history)
    output_dir = output.commit()
    task.finished(evaluations, log)
    return TrainResult(output_dir, output_dir / "model", metrics, evaluations)


def _write_run(work: Path, recipe: Recipe, task, arch: str, split, parts: dict, waves: dict, training: dict,
               history: list[dict]) -> tuple[dict, list]:
    """Evaluate the saved model (exactly what was written) on the held-out parts; write the run's files."""
    saved = load_model(work / "model")
    evaluations = [task.evaluate(saved, work, name, parts[name], waves[name], recipe) for name in ("val", "test")
                   if name in parts]
    model = saved.model
    metrics = {e.name: e.summary for e in evaluations}
    metrics["training"] = training
    metrics["model"] = {"architecture": arch, "parameters": model.total_parameters(),
                        "trainable_parameters": model.trainable_parameters(), **task.model_figures(saved)}
    metrics.update(task.figures(saved, work, recipe, history))  # the task's figures, and what they show
    write_json(work / "metrics.json", metrics)
    write_text(work / "recipe.yaml", yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    write_text(work / "training_log.csv", history_csv(history))
    write_text(work / "report.md", task.report(recipe, arch, model, split, training, evaluations))
    return metrics, evaluations


def history_csv(history: list[dict]) -> str:
    """The per-epoch history as CSV, six significant digits, empty where a figure is missing."""
    keys = list(history[0]) if history else ["epoch", "train_loss", "lr", "seconds"]
    rows = [",".join(keys)]
    for h in history:
        rows.append(",".join("" if h.get(k) is None else f"{h[k]:.6g}" for k in keys))
    return "\n".join(rows) + "\n"


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


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
