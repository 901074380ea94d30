"""One registry for every model serkit trains: a name, an options schema, a class.

Every model takes a raw 16 kHz waveform batch (B, T) and its padding mask (B, T) and returns
class logits; its front end is part of it, so gradients reach the waveform.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from serkit.errors import ConfigError


class SERModel(nn.Module, abc.ABC):
    """Base of all serkit models."""

    architecture: str = ""
    family: str = ""  # "cnn" or "ssl": picks defaults such as the learning rate

    def __init__(self, options: BaseModel, num_classes: int):
        super().__init__()
        self.options = options
        self.num_classes = num_classes

    def forward(self, waveform: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.features(waveform, mask)["logits"]

    @abc.abstractmethod
    def features(self, waveform: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named utterance-level embeddings (each (B, D)), always including 'logits'."""

    def embedding_layers(self) -> list[str]:
        """Names `features` returns, for analysis commands (e.g. 'fc1', 'fc2')."""
        return ["fc1", "logits"]

    # parameter names of the classification head (and the layer weights), which `train.head_lr` applies to
    head_prefixes: tuple[str, ...] = ("fc1.", "fc2.", "layer_logits")

    def is_head_parameter(self, name: str) -> bool:
        return name.startswith(self.head_prefixes)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def total_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_files(self) -> dict[str, dict]:
        """JSON files saved beside the weights (e.g. a transformers config)."""
        return {}

    @property
    def max_seconds(self) -> float | None:
        """The longest input the model accepts (Whisper: its 30-s window); None: any length."""
        return None


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str
    options: type[BaseModel]
    cls: type[SERModel]
    description: str
    default_lr: float


_REGISTRY: dict[str, Architecture] = {}


def register(name: str, family: str, options: type[BaseModel], description: str, default_lr: float) -> Callable:
    def wrap(cls: type[SERModel]) -> type[SERModel]:
        cls.architecture, cls.family = name, family
        _REGISTRY[name] = Architecture(name, family, options, cls, description, default_lr)
        return cls

    return wrap


def architectures() -> dict[str, Architecture]:
    _load_builtin()
    return dict(_REGISTRY)


def get_architecture(name: str) -> Architecture:
    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model architecture '{name}'; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def parse_options(name: str, options: dict | None) -> BaseModel:
    arch = get_architecture(name)
    try:
        return arch.options.model_validate(options or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"model options for '{name}': {where}: {first['msg']}") from None


def build_model(name: str, options: dict | BaseModel | None, num_classes: int, **kwargs) -> SERModel:
    arch = get_architecture(name)
    if not isinstance(options, BaseModel):
        options = parse_options(name, options)
    if num_classes < 1:
        raise ConfigError(f"a model needs at least 1 output (2 classes, or 1 regression dimension), got {num_classes}")
    return arch.cls(options, num_classes, **kwargs)


def _load_builtin() -> None:
    # importing the modules registers their architectures
    from serkit.models import audiotext, cnn, fused, ssl, whisper  # noqa: F401
