"""Why no forget-only method keeps CNN-6 / EmoDB (bench/RESULTS.md 23h): how much the model loses from a step or
two of fine-tuning on its forget set's OWN labels (a step that should change nothing), by optimizer, rate, mode and
which layers move.

    .venv/bin/python bench/cnn_sharpness.py runs/emodb-cnn6-cal/model 13 10
"""

from __future__ import annotations

import sys

import torch

from serkit.data.dataset import pad_batch
from serkit.metrics import uar
from serkit.models.modeldir import load_model
from serkit.unlearning.evaluation import evaluation_sets, outputs
from serkit.unlearning.forget_set import build_forget_set, training_data
from serkit.unlearning.methods.base import freeze_batchnorm


def main() -> None:
    model_dir, speaker, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    saved = load_model(model_dir)
    data = training_data(saved)
    forget_eval, unseen, _ = evaluation_sets(saved, data, build_forget_set(saved, speaker=speaker, n=n, seed=0, data=data), "val")
    x, mask = pad_batch(forget_eval.waves)
    y = torch.as_tensor(forget_eval.labels)
    original = {k: v.clone() for k, v in load_model(model_dir).model.state_dict().items()}

    def val_uar(model) -> float:
        return uar(unseen.labels, outputs(model, unseen)[0])

    def stepped(optimizer: str, lr: float, steps: int = 2, mode: str = "train", only: str | None = None):
        model = load_model(model_dir).model
        params = [p for name, p in model.named_parameters() if only is None or name.startswith(only)]
        opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
        if mode == "train":
            model.train()
            freeze_batchnorm(model)  # as the unlearning loop does
        else:
            model.eval()
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x, mask), y).backward()
            opt.step()
        return model

    print(f"val UAR before: {val_uar(saved.model):.3f}")
    for optimizer, rates in (("adam", (1e-4, 1e-5, 1e-6)), ("sgd", (1e-3, 1e-2))):
        for lr in rates:
            for mode in ("train", "eval"):
                print(f"{optimizer} lr {lr:g}, 2 steps on the forget set's own labels ({mode} mode): val UAR "
                      f"{val_uar(stepped(optimizer, lr, mode=mode)):.3f}", flush=True)
    moved = stepped("adam", 1e-4).state_dict()
    for prefix in ("layers.0.", "layers.2.", "layers.4.", "layers.6.", "fc"):
        model = load_model(model_dir).model
        model.load_state_dict({k: moved[k] if k.startswith(prefix) else original[k] for k in original})
        print(f"adam lr 1e-4, 2 steps, only {prefix.rstrip('.')} kept its move: val UAR {val_uar(model):.3f}", flush=True)


if __name__ == "__main__":
    main()
