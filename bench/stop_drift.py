"""Why the calibrated stop lands past retraining (bench/RESULTS.md 23g).

Given a model before and after a request: the forget set's membership AUC against the stored unseen profile,
against the original model's and against the new model's own validation losses; how the validation losses
moved (quantiles, additive and log-scale shifts); and what a data-free estimate of that move from the original
model's validation gradients (first order, plus the diagonal-Fisher second-order term) would have said.

    .venv/bin/python bench/stop_drift.py runs/ravdess-whisper-cal/model OUT/model SPEAKER N SEED
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from serkit.data.dataset import pad_batch
from serkit.metrics import auc_against_profile
from serkit.models.modeldir import load_model
from serkit.unlearning.evaluation import evaluation_sets, outputs
from serkit.unlearning.forget_set import build_forget_set, training_data


def auc(members: np.ndarray, others: np.ndarray) -> float:
    return roc_auc_score(np.r_[np.ones(len(members)), np.zeros(len(others))], -np.r_[members, others])


def taylor(before, after, unseen) -> tuple[float, float, np.ndarray]:
    """First-order (mean gradient . delta) and diagonal-Fisher second-order estimates of the mean loss shift, and
    each utterance's own first-order shift."""
    model = before.model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    delta = [q.detach() - p.detach() for p, q in zip(params, [q for q in after.model.parameters() if q.requires_grad])]
    mean_grad, fisher, own = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params], []
    for i in range(len(unseen)):
        x, mask = pad_batch([unseen.waves[i]])
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x, mask), torch.as_tensor(unseen.labels[i:i + 1])).backward()
        grads = [p.grad.detach() for p in params]
        own.append(sum(float((g * d).sum()) for g, d in zip(grads, delta)))
        for k, g in enumerate(grads):
            mean_grad[k] += g / len(unseen)
            fisher[k] += g ** 2 / len(unseen)
    first = sum(float((g * d).sum()) for g, d in zip(mean_grad, delta))
    second = 0.5 * sum(float((f * d ** 2).sum()) for f, d in zip(fisher, delta))
    return first, second, np.array(own)


def main() -> None:
    before_dir, after_dir, speaker, n, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    before, after = load_model(before_dir), load_model(after_dir)
    data = training_data(before)
    forget_set = build_forget_set(before, speaker=speaker, n=n, seed=seed, data=data)
    forget_eval, unseen, _ = evaluation_sets(before, data, forget_set, "val")
    profile = before.config["provenance"]["calibration"]["unseen"]
    _, u0 = outputs(before.model, unseen)
    _, u1 = outputs(after.model, unseen)
    _, f1 = outputs(after.model, forget_eval)
    print(f"forget-set AUC against the new model's val losses {auc(f1, u1):.3f}; against the stored profile "
          f"{auc_against_profile(f1, profile):.3f}; against the original model's val losses {auc(f1, u0):.3f}")
    qs = [0.1, 0.25, 0.5, 0.75, 0.9]
    print(f"val loss mean {u0.mean():.3f} -> {u1.mean():.3f}; quantiles {np.round(np.quantile(u0, qs), 3)} -> "
          f"{np.round(np.quantile(u1, qs), 3)}")
    logs = np.log(u1) - np.log(u0)
    print(f"per-utterance shift: additive mean {(u1 - u0).mean():.3f} median {np.median(u1 - u0):.3f}; "
          f"log-scale mean {logs.mean():.3f} median {np.median(logs):.3f}")
    for name, shifted in (("additive median", f1 - np.median(u1 - u0)), ("log-scale median", f1 * np.exp(-np.median(logs)))):
        print(f"  stored-profile AUC with the true {name} shift taken off: "
              f"{auc_against_profile(np.clip(shifted, 1e-9, None), profile):.3f}")
    first, second, own = taylor(before, after, unseen)
    print(f"data-free estimate of the mean shift: first order {first:.3f}, + diagonal Fisher {second:.3f} "
          f"(actual {(u1 - u0).mean():.3f}); per-utterance first order vs actual: r = {np.corrcoef(own, u1 - u0)[0, 1]:.2f}")


if __name__ == "__main__":
    main()
