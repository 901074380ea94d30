"""Recipes: YAML files validated by pydantic at the boundary, with `--set key=value` overrides.

Relative paths in a recipe are relative to the directory serkit is run from.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serkit.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    split: Path = Field(description="split file from `serkit data split`")
    manifest: Path | None = Field(None, description="override the manifest the split file names")
    fold: int | None = Field(None, description="fold of a leave-one-speaker-out split")
    train_parts: list[Literal["train", "val"]] = Field(
        ["train"], description="['train', 'val'] trains on both (the papers' train+val -> test setting): "
        "no model selection then, the last epoch is kept")
    labels: list[str] | None = Field(None, description="class list and order; default: the training emotions, sorted")
    trim_silence_db: float | None = Field(None, gt=0, description="trim leading/trailing audio quieter than this (dB below peak)")
    fixed_seconds: float | None = Field(None, gt=0, description="make every utterance this long (repeat, then cut), in training and inference")
    max_seconds: float | None = Field(None, gt=0, description="random crop of training utterances to this length")
    calibration: int = Field(0, ge=0, description="hold this many utterances of each training speaker out of training "
                             "(the same ones in every retraining): how the model treats unseen utterances of speakers "
                             "it knows, recorded in the model directory, is what a deletion request's calibrated stop "
                             "aims for (bench/RESULTS.md 23)")


class ModelConfig(_Strict):
    architecture: str = "cnn6"
    options: dict = Field(default_factory=dict)
    init_from: Path | None = Field(None, description="start from another serkit model's weights (same architecture; "
                                   "tensors whose shape differs, e.g. a head for other classes, stay freshly initialised)")


class LRDecay(_Strict):
    every_epochs: int = Field(5, ge=1)
    factor: float = Field(0.9, gt=0, le=1)


class TrainConfig(_Strict):
    lr: float | None = Field(None, gt=0, description="Adam learning rate; default 1e-3 for CNNs, 3e-5 for SSL backbones")
    head_lr: float | None = Field(None, gt=0, description="learning rate of the head (fc1, fc2, layer weights); default: lr. "
                                  "A pretrained backbone fine-tunes at a small lr while its new head learns at e.g. 1e-3")
    weight_decay: float = Field(0.0, ge=0)
    lr_decay: LRDecay | None = None
    ema_decay: float | None = Field(None, gt=0, lt=1, description="evaluate and keep an exponential moving average of the weights (e.g. 0.99)")
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(16, ge=1)
    max_epochs: int = Field(20, ge=1)
    patience: int | None = Field(None, ge=1, description="stop after this many epochs without a better val UAR (mean CCC for regression)")
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = Field(0, ge=0)
    deterministic: bool = True
    progress_bar: bool = True
    importances: bool = Field(True, description="store in the model directory what forget-only methods read from the "
                              "training data (the Fisher over the training utterances for ssd, the head layers' input "
                              "moments for pgu), so a deletion request reads the forget set alone: one more pass over "
                              "the training utterances (classifiers; `serkit models importances` does it later)")


class GraphConfig(_Strict):
    """Neural structured learning (paper 003): a neighbour loss over an upstream model's graph."""

    file: Path = Field(description="graph from `serkit graph`, built over this split's training utterances")
    alpha: float = Field(0.1, ge=0, description="multiplier of the neighbour loss (paper 003: 0.01, 0.1, 1)")
    max_neighbours: int | None = Field(None, ge=1, description="use at most this many of each utterance's neighbours "
                                       "(paper 003: 3, 6, 9); default: all the graph kept")
    embedding: str = Field("fc1", description="downstream embedding the neighbour loss keeps close: fc1, fc2 or pooled")
    reduction: Literal["utterances", "edges"] = Field(
        "utterances", description="how a batch's edge losses are averaged: 'utterances' sums them and divides by the "
        "batch's utterances (paper 003, Eq. 2); 'edges' takes their mean, as TensorFlow's NSL and the paper's code do "
        "(alpha_edges = alpha_utterances x the mean number of neighbours)")


class DimensionsConfig(_Strict):
    """Dimensional SER (paper 004): regression of manifest columns such as arousal, valence, dominance."""

    names: list[str] = Field(["arousal", "valence", "dominance"], min_length=1,
                             description="manifest columns to predict, each normalised to [0, 1] by `scale`")
    scale: tuple[float, float] | None = Field(None, description="the columns' declared scale [low, high], e.g. [1, 5] or "
                                              "[-1, 1]; values outside it are refused (with proxy: the mapping's scale)")
    proxy: str | None = Field(None, description="PROXY targets from the emotion category instead of columns: "
                              "builtin:russell-mehrabian-1977 or a CSV with emotion + one column per dimension "
                              "(its scale given as dimensions.scale); every output says the targets are a proxy")
    drop_unmapped: bool = Field(False, description="with proxy: leave out utterances whose category has no mapping "
                                "(default: refuse)")

    @model_validator(mode="after")
    def _check(self):
        if self.scale is None and self.proxy is None:
            raise ValueError("dimensions needs scale: [low, high] (the manifest columns' scale), or a proxy mapping")
        if self.scale is not None and not self.scale[0] < self.scale[1]:
            raise ValueError(f"dimensions.scale must be [low, high] with low < high, got {list(self.scale)}")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"dimensions.names has duplicates: {self.names}")
        return self


class Recipe(_Strict):
    name: str = "serkit-run"
    seed: int = 0
    output_dir: Path
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    graph: GraphConfig | None = Field(None, description="train with a neighbour loss over this similarity graph")
    task: Literal["classification", "regression"] = "classification"
    dimensions: DimensionsConfig | None = Field(None, description="task: regression: the columns to predict and their scale")

    @model_validator(mode="after")
    def _check_model(self):
        from serkit.models.registry import parse_options

        parse_options(self.model.architecture, self.model.options)
        if self.task == "regression" and self.dimensions is None:
            raise ValueError("task: regression needs a dimensions section, e.g. "
                             "dimensions: {names: [arousal, valence, dominance], scale: [1, 5]}")
        if self.task == "classification" and self.dimensions is not None:
            raise ValueError("a dimensions section needs task: regression")
        if self.model.architecture == "audiotext" and self.task != "regression":
            raise ValueError("model audiotext (audio + text) is for task: regression (dimensional SER) so far")
        if self.task == "regression":
            if self.train.strategy != "auto" or self.train.devices not in ("auto", 1, [0]):
                raise ValueError("task: regression does not support train.devices / train.strategy (one device only) yet")
        if self.task == "regression" and self.graph is not None:
            raise ValueError("graph (neural structured learning) is for task: classification only")
        return self


def parse_value(text: str):
    """A --set value as YAML: numbers, booleans, null and lists parse; anything else is a string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.max_epochs=5")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section of the recipe")
        node[parts[-1]] = parse_value(value)
    return raw


def _read_yaml(path: Path, what: str, hint: str = "") -> dict:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}{hint}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must be a mapping of sections (data, model, train, ...)")
    return raw


def _validate(model: type[BaseModel], raw: dict, label: str):
    """`model` over `raw`; the first validation error becomes one line naming the field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"{label}: {where}: {first['msg'].removeprefix('Value error, ')}") from None


def load_recipe(path: Path | str | None = None, overrides: list[str] | None = None, raw: dict | None = None) -> Recipe:
    if raw is None:
        path = Path(path)
        raw = _read_yaml(path, "recipe", "; see configs/ for examples")
    return _validate(Recipe, apply_overrides(raw, overrides or []), f"recipe {path or ''}")


def load_experiment(path: Path | str, model: type[BaseModel], overrides: list[str] | None = None):
    """An experiment-grid YAML validated by `model`, with --set overrides; errors name the field."""
    path = Path(path)
    return _validate(model, apply_overrides(_read_yaml(path, "experiment recipe"), overrides or []), str(path))


def recipe_to_dict(recipe: Recipe) -> dict:
    return recipe.model_dump(mode="json")
