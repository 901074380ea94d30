"""SSD, Selective Synaptic Dampening: no training, one pass over the weights.

Foster, Schoepf and Brintrup, "Fast Machine Unlearning Without Retraining Through Selective Synaptic
Dampening" (AAAI 2024; public code if-loops/selective-synaptic-dampening). Each weight's importance
for the forget set, I_f, is compared with its importance for the training data, I_D (the diagonal
Fisher of the cross-entropy on the true labels). A weight far more important to the forget set than to
the data as a whole (`I_f > selection_weighting * I_D`, alpha) is dampened towards zero:
theta <- min(dampening_constant * I_D / I_f, 1) * theta (lambda). The rest are left exactly as they
were.

I_D is stored in the model directory at training time (`serkit train`, or `serkit models importances`
later), so a request reads the forget set alone. Differences from the code: both importances are per-utterance Fisher
means (the code squares the gradient of each batch's mean loss, so its I_D and I_f depend on the
batch sizes, and a forget set of ten is a single batch); only trainable parameters are dampened (a
frozen front end has no importance); SSD has no stop rule, so the receipt records no target.
"""

from __future__ import annotations

import time

import torch
from pydantic import BaseModel, ConfigDict, Field

from serkit.unlearning.importance import fisher_diagonal, importances_sha256, load_importances
from serkit.unlearning.methods.base import UnlearnContext, UnlearningMethod, UnlearnOutcome, register


class SSDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    selection_weighting: float = Field(10.0, gt=0, description="alpha: dampen a weight whose forget-set importance "
                                       "exceeds alpha x its training importance (the paper: 10)")
    dampening_constant: float = Field(1.0, gt=0, description="lambda: a selected weight is scaled by "
                                      "min(lambda x I_D / I_f, 1) (the paper: 1)")


@register
class SSD(UnlearningMethod):
    """theta_k <- min(lambda I_D,k / I_f,k, 1) theta_k wherever I_f,k > alpha I_D,k."""

    name = "ssd"
    Params = SSDParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        p = self.params
        start = time.perf_counter()
        training, n_training = load_importances(ctx.saved)
        if n_training and p.selection_weighting >= n_training / len(ctx.forget_waves):
            # I_D averages over the training set, forget set included, so I_D >= (N_f / N_D) I_f everywhere
            ctx.log(f"warning: selection_weighting {p.selection_weighting:g} selects no weight when {len(ctx.forget_waves)} "
                    f"of the {n_training} training utterances are forgotten (it must stay below "
                    f"{n_training / len(ctx.forget_waves):.1f})")
        forget = fisher_diagonal(ctx.saved.model, ctx.forget_waves, ctx.forget_labels)
        params = dict(ctx.saved.model.named_parameters())
        selected = total = 0
        shrink = []
        with torch.no_grad():
            for name, f_forget in forget.items():
                f_data = training[name].to(f_forget.device)
                chosen = f_forget > p.selection_weighting * f_data
                beta = torch.clamp(p.dampening_constant * f_data / f_forget.clamp_min(1e-30), max=1.0)
                params[name].mul_(torch.where(chosen, beta, torch.ones_like(beta)))
                selected += int(chosen.sum())
                total += chosen.numel()
                if chosen.any():
                    shrink.append(beta[chosen].flatten())
        betas = torch.cat(shrink) if shrink else torch.ones(1)
        ctx.log(f"SSD: dampened {selected} of {total} weights ({selected / max(total, 1):.3%}), "
                f"median factor {float(betas.median()):.3f}")
        return UnlearnOutcome({"method": self.name, "dampened": selected, "dampened_share": round(selected / max(total, 1), 6),
                               "dampening_median": float(betas.median()), "importances_sha256": importances_sha256(ctx.saved),
                               "seconds": round(time.perf_counter() - start, 2)})
