"""NegGrad: gradient ascent on the forget set's own labels, with a bound, from the forget set alone.

The oldest forget-only baseline (Golatkar et al., CVPR 2020; "NegGrad" in Kurmanji et al., NeurIPS
2023, "Towards Unbounded Machine Unlearning"). UnSLU-BENCH (Koudounas et al., 2025: speaker unlearning
for spoken-language understanding on wav2vec 2.0 / HuBERT) found a well-stopped gradient ascent at a
small learning rate the best combined score there, at 200x the speed of retraining or more, so it is
the bar every costlier forget-only method must clear.

Unbounded ascent drives the loss to infinity and the model with it. Two bounds keep it in hand: the
shared stop rule (calibrated by default: stop once the forget set's membership AUC is down to what
held-out utterances of training speakers scored at training time), and a per-utterance cap on the loss
being raised (`loss_bound`, default ln K, the loss of a uniform prediction): an utterance already pushed
past chance stops pulling the weights.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from serkit.unlearning.methods.base import (
    FinetuneParams,
    UnlearnContext,
    UnlearningMethod,
    UnlearnOutcome,
    finetune,
    register,
)


def ascent_bound(num_classes: int) -> float:
    """ln K: the cross-entropy of a uniform prediction, the default cap of a raised loss."""
    return math.log(num_classes)


def bounded_ascent(logits: torch.Tensor, labels: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(-mean_e min(CE_e, bound), mean CE): the loss whose descent raises each utterance's cross-entropy up to
    `bound`. An utterance's pull on its logits, |p - onehot(y)| / N below the bound and 0 above it, is small where
    the model is sure, so it moves the utterances the model is least sure of first (a retrained model gets those
    wrong and the rest right)."""
    ce = nn.functional.cross_entropy(logits, labels, reduction="none")
    return -torch.clamp(ce, max=bound).mean(), ce.mean().detach()


class NegGradParams(FinetuneParams):
    loss_bound: float | None = Field(None, gt=0, description="cap on each forget utterance's cross-entropy being "
                                     "raised (default ln K, a uniform prediction's): past it an utterance stops pulling")


@register
class NegGrad(UnlearningMethod):
    """L = -mean_e min(CE(f(x_e), y_e), bound): gradient ascent on the forget set's true labels."""

    name = "neg-grad"
    Params = NegGradParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        bound = self.params.loss_bound or ascent_bound(len(ctx.saved.labels))

        def loss_fn(model, forget, extra):
            x, mask, y = forget
            loss, ce = bounded_ascent(model(x, mask), y, bound)
            return loss, {"L_ce": ce}

        stats = finetune(ctx, self.params, ctx.forget_labels, None, loss_fn, self.params.learning_rate(ctx.saved))
        return UnlearnOutcome({"method": self.name, "loss_bound": bound, **stats})
