"""Random labelling (papers' baseline): cross-entropy on the forget set with random wrong labels."""

from __future__ import annotations

from torch import nn

from serkit.unlearning.methods.base import (
    FinetuneParams,
    UnlearnContext,
    UnlearningMethod,
    UnlearnOutcome,
    finetune,
    random_wrong_labels,
    register,
)


@register
class RandomLabel(UnlearningMethod):
    """L = L_mis = CE(f(x_e), y^_e), y^_e != y_e drawn once (seeded)."""

    name = "random-label"
    Params = FinetuneParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        wrong = random_wrong_labels(ctx.forget_labels, len(ctx.saved.labels), ctx.seed)

        def loss_fn(model, forget, extra):
            x, mask, y = forget
            loss = nn.functional.cross_entropy(model(x, mask), y)
            return loss, {"L_mis": loss.detach()}

        stats = finetune(ctx, self.params, wrong, None, loss_fn, self.params.learning_rate(ctx.saved))
        return UnlearnOutcome({"method": self.name, **stats})
