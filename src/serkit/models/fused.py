"""Classic transfer learning, the baseline of paper 003: a downstream model whose FC1 output is
added to, maxed with, or averaged with a frozen upstream model's embedding before its FC2.

Unlike neural structured learning, the upstream model is needed at inference: it is part of this
model (frozen, always in eval mode), saved in its weights and counted in its size, which is the
cost the paper's comparison is about. Both models see the same waveform; the upstream's own
preprocessing (e.g. silence trimming) is not repeated.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from serkit.errors import ConfigError
from serkit.models.registry import SERModel, build_model, register


class FusedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    downstream: str = Field("cnn6", description="the small model's architecture (cnn6, resnet9, vgg15)")
    downstream_options: dict = Field(default_factory=dict)
    upstream: str | None = Field(None, description="serkit model directory of the upstream model (read when the model is first built)")
    upstream_layer: Literal["fc1", "fc2", "pooled"] = "fc1"
    mode: Literal["add", "max", "avg"] = "add"
    # filled in when the model is first built, so that a saved model rebuilds without the upstream directory
    upstream_architecture: str | None = None
    upstream_options: dict | None = None
    upstream_classes: int | None = None


@register("fused", "fused", FusedOptions, "transfer-learning baseline: downstream FC1 (+|max|avg) a frozen upstream embedding", 1e-3)
class FusedClassifier(SERModel):
    head_prefixes = ("downstream.fc1.", "downstream.fc2.")
    def __init__(self, options: FusedOptions, num_classes: int, saved_upstream_backbone_config: dict | None = None):
        if options.downstream == "fused":
            raise ConfigError("model.options.downstream cannot itself be 'fused'")
        state = None
        if options.upstream_architecture is None:
            if options.upstream is None:
                raise ConfigError("model.options.upstream: give the serkit model directory of the upstream model")
            from serkit.models.modeldir import load_model

            source = load_model(options.upstream)
            state = source.model.state_dict()
            options = options.model_copy(update={"upstream_architecture": source.config["architecture"],
                                                 "upstream_options": source.config["options"],
                                                 "upstream_classes": len(source.labels)})
        super().__init__(options, num_classes)
        kwargs = {"saved_backbone_config": saved_upstream_backbone_config} if saved_upstream_backbone_config else {}
        self.upstream = build_model(options.upstream_architecture, options.upstream_options, options.upstream_classes, **kwargs)
        if state is not None:
            self.upstream.load_state_dict(state)
        for p in self.upstream.parameters():
            p.requires_grad = False
        self.upstream.eval()
        self.downstream = build_model(options.downstream, options.downstream_options, num_classes)
        with torch.no_grad():
            probe = torch.zeros(1, 16000), torch.ones(1, 16000, dtype=torch.bool)
            up_dim = self.upstream.features(*probe)[options.upstream_layer].shape[-1]
            down_dim = self.downstream.features(*probe)["fc1"].shape[-1]
        if up_dim != down_dim:
            raise ConfigError(f"the upstream layer '{options.upstream_layer}' has {up_dim} dimensions but the downstream FC1 has "
                              f"{down_dim}; choose an upstream layer of {down_dim} (fc1 of a serkit model is 256-d)")

    def train(self, mode: bool = True):
        super().train(mode)
        self.upstream.eval()  # frozen: no dropout, no batch-norm updates
        return self

    def features(self, waveform, mask):
        if waveform.requires_grad:  # PGD: the input gradient flows through both models
            up = self.upstream.features(waveform, mask)[self.options.upstream_layer]
        else:
            with torch.no_grad():
                up = self.upstream.features(waveform, mask)[self.options.upstream_layer]
        down = self.downstream.features(waveform, mask)
        fc1 = down["fc1"]
        if self.options.mode == "add":
            fused = fc1 + up
        elif self.options.mode == "max":
            fused = torch.maximum(fc1, up)
        else:
            fused = (fc1 + up) / 2
        logits = self.downstream.fc2(self.downstream.dropout(fused))
        return {"pooled": down["pooled"], "fc1": fused, "fc2": logits, "logits": logits, "upstream": up}

    def embedding_layers(self) -> list[str]:
        return ["pooled", "fc1", "fc2"]

    @property
    def max_seconds(self) -> float | None:
        limits = [m.max_seconds for m in (self.upstream, self.downstream) if m.max_seconds is not None]
        return min(limits, default=None)

    def extra_files(self) -> dict[str, dict]:
        return {f"upstream_{name}": payload for name, payload in self.upstream.extra_files().items()}
