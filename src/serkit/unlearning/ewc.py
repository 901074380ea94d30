"""Elastic weight consolidation with a Fisher computed on the forget set alone.

F_k = mean over forget utterances of (d CE(f(x_e), y_e) / d theta_k)^2 at the original weights
theta*, one utterance at a time (the empirical diagonal Fisher). Which labels y_e: the random wrong
labels the paper uses ("random"), the true labels ("true") or the model's own predictions
("predicted"). The penalty sum_k F_k (theta_k - theta*_k)^2 holds the weights that matter for those
labels near their original values.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from serkit.data.dataset import pad_batch


def fisher_diagonal(model: nn.Module, waves: list[np.ndarray], labels: np.ndarray, normalize: bool = False) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher over trainable parameters, in eval mode (no dropout noise).

    With `normalize`, F is divided by its largest entry, so lambda_3 means the same thing for
    models of different scales.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for wave, label in zip(waves, labels):
            x, mask = pad_batch([wave])
            device = next(model.parameters()).device
            loss = nn.functional.cross_entropy(model(x.to(device), mask.to(device)), torch.tensor([int(label)], device=device))
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (name, _), grad in zip(params.items(), grads):
                if grad is not None:
                    fisher[name] += grad.detach() ** 2
    finally:
        model.train(was_training)
    for name in fisher:
        fisher[name] /= max(len(waves), 1)
    if normalize:
        peak = max(float(f.max()) for f in fisher.values()) or 1.0
        fisher = {name: f / peak for name, f in fisher.items()}
    return fisher


class EWCPenalty(nn.Module):
    """sum_k F_k (theta_k - theta*_k)^2 over the parameters the Fisher covers."""

    def __init__(self, model: nn.Module, fisher: dict[str, torch.Tensor]):
        super().__init__()
        self.names = sorted(fisher)
        self.fisher = {n: fisher[n].detach().clone() for n in self.names}
        params = dict(model.named_parameters())
        self.anchor = {n: params[n].detach().clone() for n in self.names}

    def forward(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        total = None
        for name in self.names:
            term = (self.fisher[name] * (params[name] - self.anchor[name]) ** 2).sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def stats(self) -> dict:
        values = torch.cat([f.flatten() for f in self.fisher.values()]) if self.fisher else torch.zeros(1)
        return {"fisher_sum": float(values.sum()), "fisher_max": float(values.max()), "fisher_mean": float(values.mean())}
