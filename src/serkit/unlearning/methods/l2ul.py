"""L2UL: gradient ascent on the forget set, targeted PGD samples, and an inverted-importance anchor.

Cha, Cho, Hwang, Lee, Moon and Lee, "Learning to Unlearn: Instance-wise Unlearning for Pre-trained
Classifiers" (AAAI 2024; public code csm9493/L2UL), the image method papers 000/001 adapt. Where the
papers train the forget set on random wrong labels and anchor the weights with EWC on a forget-set
Fisher, which holds most firmly exactly the weights that must move to forget, L2UL
- raises the forget set's loss on its true labels (gradient ascent),
- keeps each forget utterance's neighbourhood populated with targeted PGD samples labelled with
  their targets (the same adversarial set as `adv`, built once from the original model), the two
  terms weighted by their shares of the batch, and
- anchors the weights by how little they matter for the forget set:
  reg_lamb * sum_k (1 - Omega~_k) (theta_k - theta*_k)^2 / 2, with Omega~ the MAS importance on the
  forget set, min-max normalised per tensor. Forget-relevant weights move freely, the rest stay.

Differences from the code: PGD here is serkit's waveform L-inf attack (the code's is L2 on images),
the optimiser and lr are serkit's shared defaults (Adam at the model's training lr; the code uses
SGD 0.01 with momentum on CIFAR), and the stop is the shared rule (the code stops at forget-set
accuracy 0, the "misclassify" target).
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from serkit.unlearning.importance import AnchorPenalty, mas_importance, min_max_per_tensor
from serkit.unlearning.methods.adversarial import Adversarial, PGDParams
from serkit.unlearning.methods.base import UnlearnContext, UnlearnOutcome, finetune, register


class L2ULParams(PGDParams):
    reg_lamb: float = Field(10.0, ge=0, description="weight of the inverted-importance anchor (the code's default 10)")


@register
class L2UL(Adversarial):
    """L = -CE(f(x_e), y_e) * share_e + CE(f(x~), y~) * share_adv + reg_lamb * sum (1 - Omega~)(theta - theta*)^2 / 2."""

    name = "l2ul"
    Params = L2ULParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        p = self.params
        adversarial, stats = self._attack(ctx)
        importance = min_max_per_tensor(mas_importance(ctx.saved.model, ctx.forget_waves))
        anchor = AnchorPenalty(ctx.saved.model, {n: (1 - w) / 2 for n, w in importance.items()})
        frees = float(sum((w > 0.5).sum() for w in importance.values()) / sum(w.numel() for w in importance.values()))

        def loss_fn(model, forget, extra):
            x, mask, y = forget
            ax, amask, ay = extra
            share = len(y) / (len(y) + len(ay))
            l_forget = nn.functional.cross_entropy(model(x, mask), y)
            l_adv = nn.functional.cross_entropy(model(ax, amask), ay)
            l_reg = anchor(model)
            loss = -l_forget * share + l_adv * (1 - share) + p.reg_lamb * l_reg
            return loss, {"L_forget": l_forget.detach(), "L_adv": l_adv.detach(), "L_reg": l_reg.detach()}

        run = finetune(ctx, p, ctx.forget_labels, adversarial, loss_fn, p.learning_rate(ctx.saved))
        return UnlearnOutcome({"method": self.name, **stats, "anchor": {**anchor.stats("weight"),
                                                                       "share_important": round(frees, 4)}, **run})
