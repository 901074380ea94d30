"""Dimensional SER (paper 004): regression of arousal, valence, dominance with a 1 − CCC loss.

A manifest carries one numeric column per dimension on a scale the recipe declares (any scale:
[1, 5], [-1, 1], ...). Values are normalised to [0, 1] for training; predictions are reported on
the declared scale again. Any serkit model serves as the encoder: its `num_classes` outputs become
the dimensions. Evaluation reports CCC, Pearson r and MAE per dimension.
"""

from __future__ import annotations

import functools
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader

from serkit.config import Recipe, recipe_to_dict
from serkit.data.dataset import UtteranceDataset, collate, load_waves
from serkit.data.manifest import Manifest
from serkit.errors import ConfigError, ManifestError, SerkitError
from serkit.inference import check_lengths, model_outputs
from serkit.io import atomic_file, write_json, write_text
from serkit.metrics import ccc
from serkit.models.modeldir import SavedModel, load_model, save_model
from serkit.models.registry import build_model, get_architecture
from serkit.plots import layer_weights_png

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


# ----------------------------------------------------------------------------------------- training

class RegressionModule(L.LightningModule):
    """1 − CCC training of any SERModel whose outputs are the dimensions; validation CCC per epoch."""

    def __init__(self, model, lr: float, weight_decay: float = 0.0, lr_decay=None, head_lr: float | None = None):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.lr_decay, self.head_lr = lr, weight_decay, lr_decay, head_lr
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
        self._val_pred: list[torch.Tensor] = []
        self._val_true: list[torch.Tensor] = []
        self.val_ccc: list[float] = []

    def on_train_epoch_start(self):
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0

    def training_step(self, batch, batch_idx):
        wave, mask, target, _, *text = batch  # text: token ids + attention mask, for audio+text models
        loss = ccc_loss(self.model(wave, mask, *text), target.float())
        self.epoch_loss_sum += float(loss.detach()) * len(target)
        self.epoch_loss_count += len(target)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(target))
        return loss

    def validation_step(self, batch, batch_idx):
        wave, mask, target, _, *text = batch
        self._val_pred.append(self.model(wave, mask, *text).detach().float().cpu())
        self._val_true.append(target.float().cpu())

    def on_validation_epoch_end(self):
        pred, true = torch.cat(self._val_pred), torch.cat(self._val_true)
        self._val_pred, self._val_true = [], []
        self.val_ccc = [float(v) for v in ccc_per_dimension(pred, true)]
        self.log("val_ccc", float(np.mean(self.val_ccc)), prog_bar=True)

    def configure_optimizers(self):
        from serkit.training import adam

        return adam(self.model, self.lr, self.weight_decay, self.lr_decay, self.head_lr)


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


def train_regression(recipe: Recipe, log=print):
    """Train a dimensional model: 1 − CCC, selection on mean validation CCC, save, evaluate.
    Returns None on non-zero DDP ranks."""
    from serkit.training import run_output

    with run_output(recipe) as output:  # a taken, existing or unwritable output fails here, before any work
        return _train_regression(recipe, output, log)


def _train_regression(recipe: Recipe, output, log=print):
    from serkit.training import TrainResult, check_part_lengths, initialise_from, load_part_waves, load_parts, run_provenance

    dims = recipe.dimensions
    names = list(dims.names)
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    split, parts, select_on_val = load_parts(recipe)
    proxy, dropped = None, {}
    if dims.proxy:
        proxy = load_proxy(dims.proxy, names, dims.scale)
        for name in list(parts):
            parts[name], dropped[name] = apply_proxy(parts[name], proxy, names, dims.drop_unmapped)
        log(f"PROXY targets: {', '.join(names)} from the emotion categories ({proxy['source']}); left out as unmapped: "
            + ", ".join(f"{n} {d}" for n, d in dropped.items()))
    scale = tuple(float(v) for v in (proxy["scale"] if proxy else dims.scale))
    targets = {name: dimension_targets(part, names, scale) for name, part in parts.items()}
    preprocessing, waves = load_part_waves(recipe, parts, log)

    arch = get_architecture(recipe.model.architecture)
    model = build_model(recipe.model.architecture, recipe.model.options, len(names))
    check_part_lengths(model, recipe, parts, waves)
    init = initialise_from(model, recipe.model.init_from, log) if recipe.model.init_from else None
    lr = recipe.train.lr or arch.default_lr
    log(f"model {arch.name}: {model.total_parameters() / 1e6:.2f} M parameters ({model.trainable_parameters() / 1e6:.2f} M "
        f"trainable), regression of {', '.join(names)} on [{scale[0]:g}, {scale[1]:g}], loss 1 - CCC, Adam lr {lr:g}")
    if reads_text(model):  # every part's transcripts are checked before any training
        for part in parts.values():
            manifest_texts(part, model.options.text_column, model.options.empty_text)
    loader_args = {"num_workers": recipe.train.num_workers, "persistent_workers": recipe.train.num_workers > 0}

    def collate_for(part: str):
        if not reads_text(model):
            return collate
        texts = manifest_texts(parts[part], model.options.text_column, model.options.empty_text)
        return functools.partial(collate_with_text, encode=model.text_encoder(), texts=texts)

    train_set = UtteranceDataset(parts["train"], names, preprocessing, recipe.data.max_seconds, True, waves["train"],
                                 targets=targets["train"])
    train_loader = DataLoader(train_set, recipe.train.batch_size, shuffle=True, collate_fn=collate_for("train"), **loader_args)
    val_loader = None
    if select_on_val:
        val_set = UtteranceDataset(parts["val"], names, preprocessing, None, False, waves["val"], targets=targets["val"])
        val_loader = DataLoader(val_set, recipe.train.eval_batch_size, shuffle=False, collate_fn=collate_for("val"),
                                **loader_args)
    work = output.staging() if output is not None else None  # other DDP ranks write nothing
    keep = KeepBestCCC(names, log=None if recipe.train.progress_bar else log, select=select_on_val)
    trainer = L.Trainer(
        default_root_dir=work, max_epochs=recipe.train.max_epochs, accelerator=recipe.train.accelerator,
        devices=1 if recipe.train.devices == "auto" else recipe.train.devices, precision=recipe.train.precision,
        deterministic=recipe.train.deterministic, logger=False, callbacks=[keep], enable_checkpointing=False,
        num_sanity_val_steps=0, enable_model_summary=False, enable_progress_bar=recipe.train.progress_bar,
        limit_val_batches=1.0 if select_on_val else 0,
    )
    module = RegressionModule(model, lr, recipe.train.weight_decay, recipe.train.lr_decay, recipe.train.head_lr)
    t0 = time.perf_counter()
    trainer.fit(module, train_loader, val_loader)
    train_seconds = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return None
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
    if proxy:
        task["proxy"] = proxy
    provenance = run_provenance(recipe, split, waves, init, training)
    save_model(work / "model", model, names, preprocessing, provenance, task=task)
    metrics, evaluations = _write_regression_run(work, recipe, arch.name, parts, waves, training, task, keep.history,
                                                 dropped)
    output_dir = output.commit()
    for e in evaluations:
        log(f"{e.name}: mean CCC {e.summary['mean_ccc']:.3f} ("
            + ", ".join(f"{n} {v['ccc']:.3f}" for n, v in e.summary["dimensions"].items()) + f"), {e.summary['n']} utterances")
    return TrainResult(output_dir, output_dir / "model", metrics, evaluations)


def _write_regression_run(work: Path, recipe: Recipe, arch: str, parts: dict, waves: dict, training: dict, task: dict,
                          history: list[dict], dropped: dict) -> tuple[dict, list[RegressionEval]]:
    """Evaluate the saved model (exactly what was written) on the held-out parts; write the run's files."""
    saved = load_model(work / "model")
    model, names, proxy = saved.model, task["dimensions"], task.get("proxy")
    scale = task["scale"]
    evaluations = []
    for name in ("val", "test"):
        if name in parts:
            result = evaluate_regression(saved, parts[name], name, recipe.train.eval_batch_size, waves[name])
            evaluations.append(result)
            with atomic_file(work / f"predictions_{name}.csv", "w") as handle:
                result.predictions.to_csv(handle, index=False)
    metrics = {e.name: e.summary for e in evaluations}
    metrics["training"] = training
    metrics["model"] = {"architecture": arch, "parameters": model.total_parameters(),
                        "trainable_parameters": model.trainable_parameters(), "task": task}
    audio = getattr(model, "audio", model)  # the audio encoder of an audio+text model, or the model
    weights = audio.layer_weights() if audio is not None and hasattr(audio, "layer_weights") else None
    if weights is not None:  # learnable softmax layer weights (paper 004, Fig. 2)
        metrics["layer_weights"] = {"dimensions": names, "weights": [round(float(w), 5) for w in weights]}
        layer_weights_png(work / "layer_weights.png", {"+".join(names): weights.tolist()},
                          f"{recipe.name}: layer weights learnt for {', '.join(names)}")
    write_json(work / "metrics.json", metrics)
    write_text(work / "recipe.yaml", yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    write_text(work / "training_log.csv", pd.DataFrame(history).to_csv(index=False))
    write_text(work / "report.md", "\n\n".join([
        f"# {recipe.name}: dimensional SER ({', '.join(names)})",
        f"Model `{arch}`, {model.total_parameters() / 1e6:.2f} M parameters; loss 1 - CCC; values on "
        f"[{scale[0]:g}, {scale[1]:g}] normalised to [0, 1]; best epoch {training['best_epoch']} of {training['epochs']}.",
        *([f"**Targets are a PROXY** mapped from emotion categories ({proxy['source']}), not ratings; "
           f"unmapped utterances left out: {dropped}."] if proxy else []),
        summary_table(evaluations) if evaluations else "(no held-out parts)",
    ]) + "\n")
    return metrics, evaluations
