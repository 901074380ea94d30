"""AMUN: fine-tune on each forget utterance's nearest adversarial example, labelled as the model sees it.

Ebrahimpour-Boroojeny, Sundaram and Chandrasekaran, "AMUN: Adversarial Machine UNlearning" (ICML
2025; public code Ali-E/AMUN). For each forget utterance the attack finds the closest waveform the
original model misclassifies (serkit.unlearning.pgd.NearestAdversarial: untargeted L2 PGD whose radius
doubles until the prediction changes) and labels it with that wrong prediction. Fine-tuning on the
forget set with its true labels together with these neighbours lowers the model's confidence on the
forget utterances to what it has on data near, but not in, its training set, without a random label
ever being taught: the paper's setting without remaining data.

Differences from the code: the attack runs on the waveform with a radius relative to each utterance's
norm (the code: [0, 1] images, eps from 0.04); the optimiser and lr are serkit's shared defaults (Adam
at the model's training lr; the code uses SGD 0.01, momentum 0.9, the lr divided by 10 every epoch)
and the stop is the shared rule.
"""

from __future__ import annotations

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
from serkit.unlearning.pgd import NearestAdversarial


class AMUNParams(FinetuneParams):
    epochs: int = Field(10, ge=1, description="upper bound on epochs (the code: 10)")
    eps: float = Field(0.005, gt=0, description="the attack's first L2 radius, x each utterance's norm; doubled for "
                       "every utterance still classified correctly after pgd_steps")
    pgd_steps: int = Field(50, ge=1, description="steps per radius (the code: 50)")
    max_doublings: int = Field(5, ge=0, description="at most this many doublings (eps 0.005 x 2^5 = 0.16: 16 dB "
                               "below the speech); an utterance still not misclassified then is used as it stands")
    pgd_batch_size: int = Field(32, ge=1)


@register
class AMUN(UnlearningMethod):
    """L = CE over [forget utterances with their labels; their nearest adversarial examples with the model's
    predictions on them], one mean over both."""

    name = "amun"
    Params = AMUNParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        p = self.params
        attack = NearestAdversarial(p.eps, p.pgd_steps, p.max_doublings, p.pgd_batch_size)
        with ctx.steps("nearest adversarial examples") as update:
            adversarial = attack.generate(ctx.saved.model, ctx.forget_waves, ctx.forget_labels, progress=update)
        summary = adversarial.summary()
        ctx.log(f"AMUN: {summary['samples']} nearest adversarial examples in {summary['seconds']:.0f} s, "
                f"{summary['target_success_rate']:.0%} misclassified, median radius {summary['eps_median'] or 0:.4f} "
                f"x the utterance's norm")

        def loss_fn(model, forget, extra):
            x, mask, y = forget
            ax, amask, ay = extra
            logits_f, logits_a = model(x, mask), model(ax, amask)
            loss = nn.functional.cross_entropy(torch.cat([logits_f, logits_a]), torch.cat([y, ay]))
            return loss, {"L_forget": nn.functional.cross_entropy(logits_f, y).detach(),
                          "L_adv": nn.functional.cross_entropy(logits_a, ay).detach()}

        run = finetune(ctx, p, ctx.forget_labels, (adversarial.waves, adversarial.targets), loss_fn,
                       p.learning_rate(ctx.saved))
        return UnlearnOutcome({"method": self.name, "attack": {**attack.params(), **summary}, **run})
