"""Which weights matter for some utterances: per-parameter importances, and the quadratic anchor.

Two estimators, both one utterance at a time in eval mode (no dropout noise, batch-norm statistics
as trained), so that an importance is a mean over utterances whatever the batch size:
- `fisher_diagonal`: F_k = mean_e (d CE(f(x_e), y_e) / d theta_k)^2, the empirical diagonal Fisher.
  Which labels y_e is the caller's choice: the papers' EWC uses the random wrong labels, SSD the
  true ones.
- `mas_importance`: Omega_k = mean_e |d ||f(x_e)||_2 / d theta_k|, Memory Aware Synapses (Aljundi et
  al., ECCV 2018): the sensitivity of the output itself, no labels needed (L2UL's choice).

`AnchorPenalty` is sum_k w_k (theta_k - theta*_k)^2 for any weights w: EWC's w = F holds the weights
that matter for the forget set; L2UL's w = (1 - Omega~)/2 frees exactly those and holds the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from serkit.data.dataset import pad_batch

Importance = dict[str, torch.Tensor]


def _per_utterance(model: nn.Module, waves: list[np.ndarray], objective: Callable, accumulate: Callable) -> Importance:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for index, wave in enumerate(waves):
            x, mask = pad_batch([wave])
            value = objective(model(x.to(device), mask.to(device)), index)
            grads = torch.autograd.grad(value, list(params.values()), allow_unused=True)
            for (name, _), grad in zip(params.items(), grads):
                if grad is not None:
                    total[name] += accumulate(grad.detach())
    finally:
        model.train(was_training)
    return {name: t / max(len(waves), 1) for name, t in total.items()}


def fisher_diagonal(model: nn.Module, waves: list[np.ndarray], labels: np.ndarray, normalize: bool = False) -> Importance:
    """Diagonal empirical Fisher over trainable parameters.

    With `normalize`, F is divided by its largest entry, so lambda_3 means the same thing for
    models of different scales.
    """
    labels = np.asarray(labels)
    if len(labels) != len(waves):
        raise ValueError(f"fisher_diagonal: {len(waves)} utterances but {len(labels)} labels")

    def cross_entropy(logits, index):
        return nn.functional.cross_entropy(logits, torch.tensor([int(labels[index])], device=logits.device))

    fisher = _per_utterance(model, waves, cross_entropy, lambda g: g ** 2)
    if normalize:
        peak = max(float(f.max()) for f in fisher.values()) or 1.0
        fisher = {name: f / peak for name, f in fisher.items()}
    return fisher


def mas_importance(model: nn.Module, waves: list[np.ndarray]) -> Importance:
    """MAS: mean absolute gradient of the L2 norm of the logits."""
    return _per_utterance(model, waves, lambda logits, _: torch.linalg.vector_norm(logits, dim=-1).sum(), torch.abs)


def min_max_per_tensor(importance: Importance) -> Importance:
    """Each tensor scaled to [0, 1] on its own (L2UL), so layers of different scales weigh alike."""
    scaled = {}
    for name, value in importance.items():
        low, high = value.min(), value.max()
        scaled[name] = (value - low) / (high - low) if float(high - low) > 0 else torch.zeros_like(value)
    return scaled


class AnchorPenalty(nn.Module):
    """sum_k w_k (theta_k - theta*_k)^2 over the parameters `weights` covers, anchored at today's weights."""

    def __init__(self, model: nn.Module, weights: Importance):
        super().__init__()
        self.names = sorted(weights)
        self.weights = {n: weights[n].detach().clone() for n in self.names}
        params = dict(model.named_parameters())
        self.anchor = {n: params[n].detach().clone() for n in self.names}

    def forward(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        total = None
        for name in self.names:
            term = (self.weights[name] * (params[name] - self.anchor[name]) ** 2).sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def stats(self, prefix: str = "fisher") -> dict:
        values = torch.cat([w.flatten() for w in self.weights.values()]) if self.weights else torch.zeros(1)
        return {f"{prefix}_sum": float(values.sum()), f"{prefix}_max": float(values.max()),
                f"{prefix}_mean": float(values.mean())}
