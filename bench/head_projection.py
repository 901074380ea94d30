"""Why unlearning in the head alone does not keep CNN-6 / EmoDB either (bench/RESULTS.md 23i): head-only gradient
ascent on the forget set (Adam, BN and conv blocks as trained), with the head's weight change optionally projected
off the principal subspace of the TRAINING utterances' features at each head layer's input (GPM / PGU style: the
subspace holding `energy` of their energy), printing forget accuracy, membership AUC against the validation
speakers, val UAR kept and the speaker's other utterances along the way. A probe: it reads the training data.

    .venv/bin/python bench/head_projection.py runs/emodb-cnn6-cal/model SPEAKER N ascent|random none,0.9,0.99 LR
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from serkit.data.dataset import pad_batch
from serkit.data.manifest import Manifest
from serkit.inference.predict import model_outputs
from serkit.metrics import uar, war
from serkit.models.modeldir import load_model
from serkit.unlearning.evaluation import _eval_set, evaluation_sets, membership_attack, outputs
from serkit.unlearning.forget_set import build_forget_set, training_data


def basis(features: np.ndarray, energy: float) -> tuple[torch.Tensor, int]:
    """The top right-singular directions holding `energy` of the features' energy, (d, k)."""
    _, s, vt = torch.linalg.svd(torch.as_tensor(features, dtype=torch.float64), full_matrices=False)
    k = int(((s ** 2).cumsum(0) / (s ** 2).sum() < energy).sum()) + 1
    return vt[:k].T.float(), k


def main() -> None:
    model_dir, speaker, n, objective = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    energies = [None if e == "none" else float(e) for e in sys.argv[5].split(",")]
    lr = float(sys.argv[6])
    saved = load_model(model_dir)
    data = training_data(saved)
    forget_set = build_forget_set(saved, speaker=speaker, n=n, seed=0, data=data)
    forget_eval, unseen, other = evaluation_sets(saved, data, forget_set, "val")
    train = _eval_set(saved, "train", Manifest(data.train_rows().reset_index(drop=True), data.manifest.file))
    feats = model_outputs(saved.model, train.waves, layers=("pooled", "fc1"))
    x, mask = pad_batch(forget_eval.waves)
    y = torch.as_tensor(forget_eval.labels)
    shift = np.random.default_rng(0).integers(1, len(saved.labels), len(y))
    wrong = torch.as_tensor((forget_eval.labels + shift) % len(saved.labels))
    base_uar = uar(unseen.labels, outputs(saved.model, unseen)[0])
    print(f"val UAR before {base_uar:.3f}; train utts {len(train)}")
    for energy in energies:
        model = load_model(model_dir).model
        project = {}
        if energy is not None:
            ks = []
            for name, key in (("fc1", "pooled"), ("fc2", "fc1")):
                directions, k = basis(feats[key], energy)
                project[name] = torch.eye(directions.shape[0]) - directions @ directions.T
                ks.append(f"{name} {k} / {directions.shape[0]}")
            print(f"energy {energy}: k " + ", ".join(ks))
        start = {name: getattr(model, name).weight.detach().clone() for name in ("fc1", "fc2")}
        # a bias moves every utterance alike: only the weights move when projected
        params = [model.fc1.weight, model.fc2.weight] + ([] if project else [model.fc1.bias, model.fc2.bias])
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=lr)
        model.eval()
        for step in range(1, 81):
            optimizer.zero_grad()
            logits = model(x, mask)
            ce = torch.nn.functional.cross_entropy
            loss = -ce(logits, y) if objective == "ascent" else ce(logits, wrong)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for name, matrix in project.items():
                    weight = getattr(model, name).weight
                    weight.copy_(start[name] + (weight - start[name]) @ matrix)
            if step in (1, 2, 3, 5, 10, 20, 30, 40, 50, 60, 80):
                f_pred, f_loss = outputs(model, forget_eval)
                u_pred, u_loss = outputs(model, unseen)
                o_pred, _ = outputs(model, other)
                print(f"  step {step}: forget acc {war(forget_eval.labels, f_pred):.2f} "
                      f"AUC {membership_attack(f_loss, u_loss)['auc']:.3f} val kept {uar(unseen.labels, u_pred) / base_uar:.1%} "
                      f"other {war(other.labels, o_pred):.2f}", flush=True)


if __name__ == "__main__":
    main()
