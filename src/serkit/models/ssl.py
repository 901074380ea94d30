"""Self-supervised speech backbones through `transformers`, with the papers' head.

wav2vec 2.0, HuBERT, WavLM and DistilHuBERT (a 2-layer HuBERT) are loaded from a LOCAL
checkpoint directory (safetensors only; never a hub id) or built from a config dict (random
weights: tests and from-scratch baselines). The convolutional feature encoder is frozen, as in
the papers; hidden states are mean-pooled over valid frames (or a learnable softmax-weighted sum
of layers first), then a head of two linear layers: FC1 (256, ReLU) and FC2 (classes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import (
    HubertConfig,
    HubertModel,
    PretrainedConfig,
    PreTrainedModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)

from serkit.errors import ConfigError, ModelDirError
from serkit.models.frontends import WaveformNormalize
from serkit.models.head import PooledHead
from serkit.models.registry import SERModel, register

BACKBONES: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
    "hubert": (HubertConfig, HubertModel),
    "wavlm": (WavLMConfig, WavLMModel),
    "distilhubert": (HubertConfig, HubertModel),
}


class SSLOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbone: Literal["wav2vec2", "hubert", "wavlm", "distilhubert"] = "wav2vec2"
    checkpoint: str | None = Field(None, description="local transformers checkpoint directory (safetensors)")
    hf_config: dict | None = Field(None, description="transformers config dict: build with random weights")
    freeze_feature_encoder: bool = True
    freeze_backbone: bool = Field(False, description="train the head only (a probe)")
    layer: int | None = Field(None, description="hidden state to pool (0 = before the transformer); None: last")
    layer_weights: bool = Field(False, description="learnable softmax weights over all hidden states")
    normalize_waveform: bool = Field(True, description="zero mean, unit variance per utterance")
    layerdrop: float | None = Field(None, ge=0.0, lt=1.0, description="override the backbone's LayerDrop (forced to 0 with layer/layer_weights)")
    mask_time_prob: float | None = Field(None, ge=0.0, lt=1.0, description="override the backbone's SpecAugment time masking while training")
    head_dim: int = 256
    head_activation: Literal["relu", "none"] = Field("relu", description="between the head's two layers (none: "
                                                     "transformers' *ForSequenceClassification head)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.checkpoint is None) == (self.hf_config is None):
            raise ValueError("give exactly one of 'checkpoint' (a local directory) or 'hf_config' (a config dict)")
        if self.layer is not None and self.layer_weights:
            raise ValueError("'layer' and 'layer_weights' exclude each other")
        return self


def load_backbone(options: SSLOptions, saved_config: dict | None = None) -> PreTrainedModel:
    config_cls, model_cls = BACKBONES[options.backbone]
    if saved_config is not None:  # reloading a serkit model dir: weights come from its safetensors
        return model_cls(config_cls.from_dict(saved_config))
    if options.hf_config is not None:
        try:
            return model_cls(config_cls(**options.hf_config))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.options.hf_config is not a valid {config_cls.__name__}: {exc}") from None
    path = Path(options.checkpoint)
    if not path.is_dir():
        raise ConfigError(
            f"backbone checkpoint {path} is not a local directory; serkit never downloads: "
            "download the checkpoint once (config.json + model.safetensors) and give its path"
        )
    if not (path / "config.json").is_file():
        raise ModelDirError(f"backbone checkpoint {path} has no config.json")
    if not any(path.glob("*.safetensors")):
        raise ModelDirError(
            f"backbone checkpoint {path} has no .safetensors weights; serkit never unpickles "
            "(.bin/.pt can run code): convert it with transformers' save_pretrained(safe_serialization=True)"
        )
    return model_cls.from_pretrained(str(path), local_files_only=True, use_safetensors=True)


@register("ssl", "ssl", SSLOptions, "wav2vec 2.0 / HuBERT / WavLM / DistilHuBERT + mean pooling + 2-layer head", 3e-5)
class SSLClassifier(PooledHead, SERModel):
    def __init__(self, options: SSLOptions, num_classes: int, saved_backbone_config: dict | None = None):
        super().__init__(options, num_classes)
        self.normalize = WaveformNormalize() if options.normalize_waveform else None
        self.backbone = load_backbone(options, saved_backbone_config)
        config = self.backbone.config
        if options.layerdrop is not None:
            config.layerdrop = options.layerdrop
        if options.layer is not None or options.layer_weights:
            config.layerdrop = 0.0  # a dropped layer would shift the hidden-state indices
        if options.mask_time_prob is not None:
            config.mask_time_prob = options.mask_time_prob
        self._hidden_state_choice(config.num_hidden_layers + 1, "backbone")
        if options.freeze_feature_encoder or options.freeze_backbone:
            # transformers' own freeze also stops the encoder from marking its input as needing
            # a gradient, which would fail when the waveform already carries one (PGD)
            self.backbone.feature_extractor._freeze_parameters()
        if options.freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad = False
        self._add_head(self.backbone.config.hidden_size, num_classes)

    @property
    def uses_hidden_states(self) -> bool:
        return self.options.layer is not None or self.options.layer_weights

    @property
    def group_norm_encoder(self) -> bool:
        return getattr(self.backbone.config, "feat_extract_norm", "layer") == "group"

    def _backbone(self, waveform, mask, hidden_states: bool):
        if self.normalize is not None:
            waveform = self.normalize(waveform, mask)
        else:
            waveform = waveform * mask
        # group-norm feature encoders (wav2vec2-base, HuBERT-base, DistilHuBERT) were trained on
        # unpadded audio without an attention mask; passing one changes their output (transformers' docs)
        pass_mask = not self.group_norm_encoder
        return self.backbone(waveform, attention_mask=mask.long() if pass_mask else None, output_hidden_states=hidden_states)

    def _pooled_states(self, waveform, mask, hidden_states: bool) -> tuple[torch.Tensor, tuple | None]:
        """Masked time-average of the last hidden state (B, hidden), and of every hidden state when
        asked ((layers + 1) tensors of (B, hidden)).

        A group-norm feature encoder normalises over the whole padded length and its transformer
        sees the padding, so in a batch of unequal lengths each utterance goes through the backbone
        on its own, unpadded: an utterance's output never depends on the batch it is in.
        """
        lengths = mask.sum(-1)
        if self.group_norm_encoder and bool((lengths != mask.shape[-1]).any()):
            parts = [self._pooled_states(waveform[i:i + 1, :int(n)], mask[i:i + 1, :int(n)], hidden_states)
                     for i, n in enumerate(lengths.tolist())]
            last = torch.cat([p[0] for p in parts])
            states = tuple(torch.cat(layer) for layer in zip(*(p[1] for p in parts))) if hidden_states else None
            return last, states
        out = self._backbone(waveform, mask, hidden_states=hidden_states)
        frame_mask = self.backbone._get_feature_vector_attention_mask(out.last_hidden_state.shape[1], mask.long())
        weight = frame_mask[..., None].to(out.last_hidden_state.dtype)
        count = torch.clamp(weight.sum(1), min=1.0)
        last = (out.last_hidden_state * weight).sum(1) / count
        states = tuple((h * weight).sum(1) / count for h in out.hidden_states) if hidden_states else None
        return last, states

    def pooled_hidden_states(self, waveform: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked time-average of every hidden state: (layers + 1, B, hidden)."""
        return torch.stack(self._pooled_states(waveform, mask, hidden_states=True)[1])

    def features(self, waveform, mask):
        last, states = self._pooled_states(waveform, mask, hidden_states=self.uses_hidden_states)
        if self.options.layer is not None:
            pooled = states[self.options.layer]
        elif self.layer_logits is not None:  # weighted sum of hidden states, then mean = weighted sum of means
            weights = torch.softmax(self.layer_logits, 0)
            pooled = torch.einsum("l,lbd->bd", weights, torch.stack(states))
        else:
            pooled = last
        return self._head(pooled)

    def extra_files(self) -> dict[str, dict]:
        return {"backbone_config.json": self.backbone.config.to_dict()}
