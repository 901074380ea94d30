"""Remaining-data-involved unlearning (papers' baseline): L = L_mis + CE(f(x_r), y_r).

It needs the remaining training data D_r, which the forget-set-only setting forbids; it is here
as the papers' comparison. D_r: the model's training utterances minus the forget set.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from serkit.data.dataset import load_waves
from serkit.errors import SerkitError
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
class RemainingData(UnlearningMethod):
    name = "remain"
    Params = FinetuneParams
    reads_remaining_data = True

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        if ctx.remain is None:
            raise SerkitError("method 'remain' trains on the remaining data: pass --remain (the training manifest or split)")
        rows = ctx.remain.frame[~ctx.remain.frame["path"].isin(set(ctx.forget.rows["path"]))]
        remain = ctx.remain.__class__(rows.reset_index(drop=True), ctx.remain.file, ctx.remain.sha256)
        remain.check_labels(ctx.saved.labels, "the model")
        waves = load_waves(remain.audio_paths(), ctx.saved.preprocessing)
        index = {label: i for i, label in enumerate(ctx.saved.labels)}
        labels = np.array([index[e] for e in remain.frame["emotion"]])
        wrong = random_wrong_labels(ctx.forget_labels, len(ctx.saved.labels), ctx.seed)

        def loss_fn(model, forget, extra):
            x, mask, y = forget
            l_mis = nn.functional.cross_entropy(model(x, mask), y)
            rx, rmask, ry = extra
            l_remain = nn.functional.cross_entropy(model(rx, rmask), ry)
            return l_mis + l_remain, {"L_mis": l_mis.detach(), "L_remain": l_remain.detach()}

        stats = finetune(ctx, self.params, wrong, (waves, labels), loss_fn, self.params.learning_rate(ctx.saved))
        return UnlearnOutcome({"method": self.name, "remaining_utterances": len(waves), **stats})
