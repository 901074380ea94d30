"""The model directory: `model.safetensors` + `config.json` (+ a transformers config for SSL).

config.json holds everything needed to rebuild the model and use it the way it was trained:
architecture and options (front end included), label list, sample rate, preprocessing, and
training provenance. Weights are safetensors only: serkit refuses pickles (.pt/.pth/.ckpt/.bin),
which can run arbitrary code when loaded. Loading a saved model gives bit-identical predictions.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import serkit
from serkit.data.dataset import Preprocessing
from serkit.errors import ConfigError, ModelDirError
from serkit.io import atomic_dir, sha256_file
from serkit.models.registry import SERModel, build_model, get_architecture

FORMAT = "serkit-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"}
REQUIRED_KEYS = ("architecture", "options", "labels", "sample_rate")
IMPORTANCES = "importances.safetensors"  # the owner's training importances (serkit models importances)
AUXILIARY = {IMPORTANCES}
BACKBONE_FILES = ("backbone_config.json", "upstream_backbone_config.json")  # what build_saved reads beside the config


@dataclass
class SavedModel:
    model: SERModel
    labels: list[str]
    preprocessing: Preprocessing
    config: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def task(self) -> dict | None:
        """None for a classifier; {"type": "regression", "dimensions", "scale"} for dimensional SER."""
        return self.config.get("task")

    @property
    def weights_sha256(self) -> str:
        return sha256_file(self.path / WEIGHTS) if self.path else ""


def file_hashes(path: Path | str) -> dict[str, str]:
    """SHA-256 of every file of a model directory: the weights alone do not fix what a model predicts
    (config.json's label order and preprocessing do too). Files that change nothing it predicts and that
    the owner may add later (AUXILIARY: training importances) are left out, so adding one keeps a
    receipt's model check valid."""
    path = Path(path)
    return {str(f.relative_to(path)): sha256_file(f) for f in sorted(path.rglob("*"))
            if f.is_file() and str(f.relative_to(path)) not in AUXILIARY}


def save_model(path: Path | str, model: SERModel, labels: list[str], preprocessing: Preprocessing,
               provenance: dict | None = None, task: dict | None = None) -> Path:
    """Write a new model directory at `path` (refused if it exists; written atomically).

    `task` describes a regression model ({"type": "regression", "dimensions": [...], "scale": [lo, hi]});
    its `labels` are then the dimension names. None: a classifier over `labels`."""
    path = Path(path)
    if len(labels) != model.num_classes:
        raise ValueError(f"{len(labels)} labels for a model with {model.num_classes} outputs")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "serkit_version": serkit.__version__,
        "architecture": model.architecture,
        "family": model.family,
        "options": model.options.model_dump(mode="json"),
        "labels": list(labels),
        "sample_rate": preprocessing.sample_rate,
        "preprocessing": preprocessing.to_dict(),
        "parameters": {"total": model.total_parameters(), "trainable": model.trainable_parameters()},
        "provenance": provenance or {},
    }
    if task is not None:
        config["task"] = task
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(path, what="model directory") as tmp:
        _save_weights(state, tmp / WEIGHTS)
        for name, payload in model.extra_files().items():
            (tmp / name).write_text(json.dumps(payload, indent=2) + "\n")
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return path


def _save_weights(state: dict, file: Path) -> None:
    try:
        save_file(state, str(file), metadata={"format": FORMAT})
    except SafetensorError as exc:  # it wraps the OSError of a full disk in its own error, as text
        if "No space left on device" in str(exc):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file)) from None
        raise


def _read_json(file: Path, fix: str = "restore it from the trained model"):
    try:
        return json.loads(file.read_text())
    except OSError as exc:
        raise ModelDirError(f"cannot read {file} ({exc.strerror}); check its permissions (serkit needs to read it)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"{exc.msg}, line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise ModelDirError(f"{file} is not valid JSON ({where}); {fix}") from None


def _check_readable(file: Path) -> None:
    """safetensors reports every failure to open a file as "No such file or directory"; a file that is
    there but cannot be read (permissions) must not be called missing or damaged."""
    try:
        with open(file, "rb"):
            pass
    except OSError as exc:
        raise ModelDirError(f"cannot read {file} ({exc.strerror}); check its permissions (serkit needs to read it)") from None


def build_saved(config: dict, files: dict[str, dict], where: Path | str = "the model") -> SERModel:
    """The untrained model a saved config describes, with the JSON files saved beside its weights
    (`SERModel.extra_files`: a transformers backbone is rebuilt from its saved config, never fetched)."""
    arch = get_architecture(config["architecture"])
    kwargs = {}
    if arch.family == "ssl":
        if "backbone_config.json" not in files:
            raise ModelDirError(f"{where} has no backbone_config.json (needed for a {arch.name} model)")
        kwargs["saved_backbone_config"] = files["backbone_config.json"]
    elif arch.family == "audiotext":  # text encoder config + tokenizer, audio backbone config
        kwargs["saved_files"] = dict(files)  # may be {}
    elif arch.family == "fused" and "upstream_backbone_config.json" in files:
        kwargs["saved_upstream_backbone_config"] = files["upstream_backbone_config.json"]
    return build_model(config["architecture"], config["options"], len(config["labels"]), **kwargs)


def load_model(path: Path | str, device: str | torch.device = "cpu") -> SavedModel:
    """Load a serkit model directory, checking every file it needs."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelDirError(_pickle_message(path))
    if path.is_file() and path.name in (WEIGHTS, CONFIG):
        path = path.parent
    if not path.is_dir():
        raise ModelDirError(f"model directory not found: {path}; give the folder `serkit train` wrote (it holds {CONFIG} and {WEIGHTS})")
    config_file = path / CONFIG
    if not config_file.is_file():
        pickles = [p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            raise ModelDirError(_pickle_message(path / pickles[0]))
        raise ModelDirError(f"{path} is not a serkit model directory: no {CONFIG}; give the folder `serkit train` wrote")
    config = _read_json(config_file)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        hint = " (it looks like a transformers checkpoint: use it as model.options.checkpoint in a recipe)" \
            if isinstance(config, dict) and "model_type" in config else ""
        raise ModelDirError(f"{config_file} is not a serkit model config (no \"format\": \"{FORMAT}\"){hint}")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ModelDirError(f"{config_file} lacks {missing}; restore it from the trained model")
    labels = config["labels"]
    regression = (config.get("task") or {}).get("type") == "regression"
    if not isinstance(labels, list) or len(labels) < (1 if regression else 2) or len(set(labels)) != len(labels):
        raise ModelDirError(f"{config_file}: 'labels' must be a list of at least {1 if regression else 2} distinct names")
    weights = path / WEIGHTS
    if not weights.is_file():
        pickles = [p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            raise ModelDirError(_pickle_message(path / pickles[0]))
        raise ModelDirError(f"{path} has no {WEIGHTS}; the model directory is incomplete")
    try:
        family = get_architecture(config["architecture"]).family
        wanted = [f for f in path.glob("*.json") if f.name != CONFIG and (family == "audiotext" or f.name in BACKBONE_FILES)]
        model = build_saved(config, {f.name: _read_json(f) for f in wanted}, where=path)
    except ConfigError as exc:
        raise ModelDirError(f"{config_file}: {exc}") from None
    _check_readable(weights)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelDirError(f"cannot read {weights} as safetensors ({exc}); the file is damaged") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        problems = [f"{what} {keys[:3]}" for what, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]
        raise ModelDirError(
            f"weights in {weights} do not match {config_file}: {', '.join(problems)} "
            "(was config.json edited, or copied from another model?)"
        )
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    preprocessing = Preprocessing.from_dict({**(config.get("preprocessing") or {}), "sample_rate": int(config["sample_rate"])})
    return SavedModel(model, list(labels), preprocessing, config, path)


def _pickle_message(path: Path) -> str:
    return (
        f"{path} is a pickle checkpoint; serkit loads only safetensors model directories, because "
        "unpickling can run arbitrary code. Re-save the weights with safetensors (or retrain with serkit train)"
    )
