"""Why forgetting on one backbone costs everyone: how the forget set's gradient lines up with unseen speakers'.

Gradient ascent on the forget set's loss (what every forget-only method does in some form) also raises the
loss of any data whose loss gradient points the same way. For each forget set (speaker, N, seed) this prints
the cosine between the gradient of the mean cross-entropy on the forget set and on the validation speakers
(all trainable parameters, eval mode): near 0, the forget set can be pushed away alone; well above 0,
raising its loss raises everyone's.

    .venv/bin/python bench/gradient_alignment.py runs/emodb-cnn6-cal/model --speakers 13 14 16 --n 10 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from serkit.data.dataset import load_waves, pad_batch
from serkit.models import load_model
from serkit.unlearning.evaluation import _label_indices
from serkit.unlearning.forget_set import build_forget_set, training_data


def mean_gradient(model, waves, labels, batch_size: int = 16) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    model.eval()
    for start in range(0, len(waves), batch_size):
        x, mask = pad_batch(waves[start:start + batch_size])
        y = torch.as_tensor(labels[start:start + batch_size])
        loss = nn.functional.cross_entropy(model(x, mask), y, reduction="sum") / len(waves)
        for t, g in zip(total, torch.autograd.grad(loss, params, allow_unused=True)):
            if g is not None:
                t += g
    return torch.cat([t.flatten() for t in total])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--speakers", nargs="+", required=True)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    saved = load_model(args.model)
    data = training_data(saved)
    unseen = data.manifest.subset(data.held_out["val"])
    g_unseen = mean_gradient(saved.model, load_waves(unseen.audio_paths(), saved.preprocessing),
                             _label_indices(saved, unseen.frame))
    cosines = []
    for speaker in args.speakers:
        for seed in args.seeds:
            forget_set = build_forget_set(saved, speaker=speaker, n=args.n, seed=seed, data=data)
            g = mean_gradient(saved.model, load_waves(forget_set.audio_paths(), saved.preprocessing),
                              _label_indices(saved, forget_set.rows))
            cosine = float(torch.nn.functional.cosine_similarity(g, g_unseen, dim=0))
            cosines.append(cosine)
            print(f"speaker {speaker}, seed {seed}: cos(grad forget, grad unseen) = {cosine:+.3f}, "
                  f"|grad forget| = {float(g.norm()):.3g}, |grad unseen| = {float(g_unseen.norm()):.3g}", flush=True)
    print(f"{args.model}: mean cosine {np.mean(cosines):+.3f} ± {np.std(cosines, ddof=1) if len(cosines) > 1 else 0:.3f} "
          f"over {len(cosines)} forget sets")


if __name__ == "__main__":
    main()
