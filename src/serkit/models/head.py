"""The head the transformer classifiers share (SSL backbones and Whisper, papers 000/001/002).

One hidden state (`layer`), a learnt softmax-weighted mix of all of them (`layer_weights`), or the last;
its time average goes through dropout -> fc1 -> ReLU -> dropout -> fc2 (`head_activation: none`: no ReLU,
the linear projector + classifier of transformers' `*ForSequenceClassification`, which `serkit models import-hf`
brings in: pooling and a linear layer commute, so projecting after the time average is the same). A mixin, not a submodule, so the
parameters keep the names saved model directories hold (`fc1.weight`, `layer_logits`)."""

from __future__ import annotations

import torch
from torch import nn

from serkit.errors import ConfigError


class PooledHead:
    """Mixed into an SERModel with `options.layer`, `options.layer_weights`, `options.dropout`, `options.head_dim`,
    `options.head_activation`."""

    def _hidden_state_choice(self, n_states: int, what: str) -> None:
        layer = self.options.layer
        if layer is not None and not 0 <= layer < n_states:
            raise ConfigError(f"model.options.layer {layer} out of range: this {what} has hidden states 0..{n_states - 1}")
        self.layer_logits = nn.Parameter(torch.zeros(n_states)) if self.options.layer_weights else None

    def _add_head(self, hidden: int, num_classes: int) -> None:
        self.dropout = nn.Dropout(self.options.dropout)
        self.fc1 = nn.Linear(hidden, self.options.head_dim)
        self.fc2 = nn.Linear(self.options.head_dim, num_classes)

    def _head(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        fc1 = self.fc1(self.dropout(pooled))
        if self.options.head_activation == "relu":
            fc1 = torch.relu(fc1)
        logits = self.fc2(self.dropout(fc1))
        return {"pooled": pooled, "fc1": fc1, "fc2": logits, "logits": logits}

    def embedding_layers(self) -> list[str]:
        return ["pooled", "fc1", "fc2"]

    def layer_weights(self) -> torch.Tensor | None:
        return None if self.layer_logits is None else torch.softmax(self.layer_logits.detach(), 0)
