"""Lightweight CNNs on a differentiable log-Mel front end: CNN-6, ResNet-9, VGG-15.

Layer plans follow paper 003 (Ren et al., knowledge transfer with NSL) and its public Keras
code: 2-D convolutions over (time, mel) without bias, batch norm, ReLU, global average pooling,
then FC1 (256, ReLU) and FC2 (classes). Parameter counts with 7 classes: CNN-6 4.44 M,
ResNet-9 4.96 M, VGG-15 14.85 M (the paper: 4.44 M, 4.96 M, 14.86 M).

Padding: after every layer the frames beyond each utterance's length are zeroed, and pooling
uses ceil mode, so an utterance gets the same prediction alone or in a padded batch.
"""

from __future__ import annotations

import abc

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from serkit.models.frontends import LogMel, LogMelConfig
from serkit.models.registry import SERModel, register


class CNNOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    frontend: LogMelConfig = Field(default_factory=LogMelConfig)
    fc_dim: int = Field(256, description="width of FC1, the embedding layer (paper 003: 256)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before FC1 and FC2")


def _mask_time(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero the frames of (B, C, T, F) at or beyond each utterance's length."""
    keep = torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]
    return x * keep[:, None, :, None].to(x.dtype)


def _halve(lengths: torch.Tensor) -> torch.Tensor:
    return torch.div(lengths + 1, 2, rounding_mode="floor")  # ceil(n / 2)


class ConvBNReLU(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.stride = stride

    def forward(self, x, lengths):
        if self.stride == 2:
            lengths = _halve(lengths)
        return _mask_time(torch.relu(self.bn(self.conv(x))), lengths), lengths


class MaxPool(nn.Module):
    def __init__(self, kernel: int = 2, stride: int = 2, padding: int = 0):
        super().__init__()
        # ceil mode keeps ceil(n / 2) frames for the 2x2 pools; the padded 3x3 pool gets there without it
        self.pool = nn.MaxPool2d(kernel, stride, padding=padding, ceil_mode=padding == 0)

    def forward(self, x, lengths):
        # inputs are >= 0 (after ReLU) and padding is 0, so padding never wins a max
        lengths = _halve(lengths)
        return _mask_time(self.pool(x), lengths), lengths


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions (the first strided) plus a strided 1x1 projection of the input."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = ConvBNReLU(c_in, c_out, 3, stride=2)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1, stride=2, bias=False)

    def forward(self, x, lengths):
        y, lengths = self.conv1(x, lengths)
        y = self.bn2(self.conv2(y)) + self.skip(x)
        return _mask_time(torch.relu(y), lengths), lengths


class _LogMelCNN(SERModel):
    """Front end -> conv stack -> masked global average pool -> FC1 (ReLU) -> FC2."""

    def __init__(self, options: CNNOptions, num_classes: int):
        super().__init__(options, num_classes)
        self.frontend = LogMel(options.frontend)
        self.layers = nn.ModuleList(self._conv_layers())
        channels = [m for m in self.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        self.dropout = nn.Dropout(options.dropout)
        self.fc1 = nn.Linear(channels, options.fc_dim)
        self.fc2 = nn.Linear(options.fc_dim, num_classes)

    @abc.abstractmethod
    def _conv_layers(self) -> list[nn.Module]:
        """The convolutional stack, each layer taking and returning (x, lengths)."""

    def features(self, waveform, mask):
        logmel, frame_mask = self.frontend(waveform, mask)
        x = logmel[:, None]  # (B, 1, frames, mels)
        lengths = torch.clamp(frame_mask.sum(-1), min=1)
        for layer in self.layers:
            x, lengths = layer(x, lengths)
        # masked mean over time, plain mean over frequency
        pooled = x.sum(2) / lengths[:, None, None].to(x.dtype)
        pooled = pooled.mean(-1)
        fc1 = torch.relu(self.fc1(self.dropout(pooled)))
        logits = self.fc2(self.dropout(fc1))
        return {"pooled": pooled, "fc1": fc1, "fc2": logits, "logits": logits}

    def embedding_layers(self) -> list[str]:
        return ["pooled", "fc1", "fc2"]


@register("cnn6", "cnn", CNNOptions, "CNN-6 on log-Mel: 4 blocks of 5x5 conv (64-512) + pooling, FC 256", 1e-3)
class CNN6(_LogMelCNN):
    def _conv_layers(self):
        layers, c_in = [], 1
        for c_out in (64, 128, 256, 512):
            layers += [ConvBNReLU(c_in, c_out, 5), MaxPool()]
            c_in = c_out
        return layers


@register("resnet9", "cnn", CNNOptions, "ResNet-9 on log-Mel: 7x7 stem + 3 residual blocks (128-512), FC 256", 1e-3)
class ResNet9(_LogMelCNN):
    def _conv_layers(self):
        return [
            ConvBNReLU(1, 64, 7, stride=2),
            MaxPool(3, 2, padding=1),
            ResidualBlock(64, 128),
            ResidualBlock(128, 256),
            ResidualBlock(256, 512),
        ]


@register("vgg15", "cnn", CNNOptions, "VGG-15 on log-Mel: 13 3x3 convs in 5 blocks (64-512), FC 256", 1e-3)
class VGG15(_LogMelCNN):
    def _conv_layers(self):
        layers, c_in = [], 1
        for c_out, n_convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
            for _ in range(n_convs):
                layers.append(ConvBNReLU(c_in, c_out, 3))
                c_in = c_out
            layers.append(MaxPool())
        return layers
