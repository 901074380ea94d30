"""JiT: zero-shot unlearning by smoothing the model around each forget utterance (Lipschitz regularisation).

Foster, Schoepf and Brintrup, "Zero-Shot Machine Unlearning at Scale via Lipschitz Regularization"
(2024, arXiv 2402.01401; public code jwf40/Zeroshot-Unlearning-At-Scale). A memorised utterance sits
where the model's output changes sharply; an unseen one, where it is smooth. For each forget utterance
x, `n_samples` noisy copies x' = x + N(0, sigma^2) are drawn and the model's output sensitivity
||f(x) - f(x')||_2 / ||x - x'||_2 (logits) is minimised with plain SGD, one pass over the forget set
(`epochs` 1) by default.

Differences from the code: the gradient flows through both outputs (the code holds f(x') fixed; on
serkit's tiny test CNN that made the ratio grow at every step, at every lr tried); sigma
(`lipschitz_weighting`) is relative to each utterance's standard deviation, padding gets no noise,
the ratios are averaged over the batch (the code sums them, so its step grows with the batch size),
the model runs in eval mode (the code leaves dropout on, so part of the output change it penalises is
dropout's, and serkit's CNNs would add SpecAugment's), and the shared stop rule may end the pass early
(more epochs continue it until the target).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from serkit.unlearning.methods.base import (
    FinetuneParams,
    UnlearnContext,
    UnlearningMethod,
    UnlearnOutcome,
    finetune,
    freeze_batchnorm,
    register,
)


class JiTParams(FinetuneParams):
    epochs: int = Field(1, ge=1, description="passes over the forget set (the paper: one)")
    optimizer: Literal["adam", "sgd"] = Field("sgd", description="sgd (the paper) or adam")
    lr: float | None = Field(1e-4, gt=0, description="eta, the SGD step (chosen on validation speakers: bench/RESULTS.md 23)")
    n_samples: int = Field(25, ge=1, description="noisy copies per utterance (the paper: 25)")
    lipschitz_weighting: float = Field(0.1, gt=0, description="sigma, x each utterance's standard deviation")


@register
class JiT(UnlearningMethod):
    """L = mean over utterances and copies of ||f(x) - f(x + xi)|| / ||xi||, xi ~ N(0, (sigma std(x))^2)."""

    name = "jit"
    Params = JiTParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        p = self.params
        generator = torch.Generator(device="cpu").manual_seed(ctx.seed)

        def loss_fn(model, forget, extra):
            x, mask, _ = forget
            weight = mask.to(x.dtype)
            count = weight.sum(-1, keepdim=True)
            mean = (x * weight).sum(-1, keepdim=True) / count
            std = torch.sqrt((((x - mean) * weight) ** 2).sum(-1, keepdim=True) / count)
            model.eval()  # the output's change must come from the noise alone, not from dropout or SpecAugment
            try:
                out = model(x, mask)
                total = 0.0
                for k in range(p.n_samples):  # one copy's graph at a time: memory stays that of two batches
                    noise = torch.randn(x.shape, generator=generator).to(x.device) * p.lipschitz_weighting * std * weight
                    ratio = (torch.linalg.vector_norm(out - model(x + noise, mask), dim=-1)
                             / torch.linalg.vector_norm(noise, dim=-1).clamp_min(1e-12)).mean() / p.n_samples
                    ratio.backward(retain_graph=k < p.n_samples - 1)
                    total += float(ratio.detach())
            finally:
                model.train()
                freeze_batchnorm(model)
            return None, {"L_lipschitz": total}

        run = finetune(ctx, p, ctx.forget_labels, None, loss_fn, p.lr)
        return UnlearnOutcome({"method": self.name, "n_samples": p.n_samples,
                               "lipschitz_weighting": p.lipschitz_weighting, **run})
