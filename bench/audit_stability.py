"""How many retrained models does `serkit audit` need for a stable answer?

Given one model, the unlearned outputs of one forget set and a pool of retrained outputs of the same forget
set, the audit is repeated on every subset of K retrained models (K = 3 .. pool size; its AUC holds one out
against a fit of the others, so it needs 3): the spread of the AUC over subsets says how stable an answer from
K models is. As a check of the test itself, each retrained model is also audited as if it were an unlearned
one, against subsets of the others: its AUC should sit near 0.5.

    .venv/bin/python bench/audit_stability.py MODEL --unlearned OUT [OUT ...] --retrained R1 R2 R3 R4 R5 \
        --speaker 14 --n 10 --seed 0
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from serkit.unlearning.audit import AuditModel, distinguishability, score_models
from serkit.unlearning.forget_set import build_forget_set, training_data
from serkit.unlearning.receipts import read_receipt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--unlearned", type=Path, nargs="+", required=True)
    parser.add_argument("--retrained", type=Path, nargs="+", required=True)
    parser.add_argument("--speaker", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from serkit.data.dataset import load_waves
    from serkit.models import load_model
    from serkit.unlearning.evaluation import _label_indices

    original = load_model(args.model)
    forget_set = build_forget_set(original, speaker=args.speaker, n=args.n, seed=args.seed,
                                  data=training_data(original))
    waves = load_waves(forget_set.audio_paths(), original.preprocessing)
    labels = _label_indices(original, forget_set.rows)
    unlearned = [AuditModel(f"{read_receipt(u / 'receipt.json')['method']['name']} ({u.name})", u) for u in args.unlearned]
    retrained = [AuditModel(r.name, r) for r in args.retrained]
    score_models(unlearned + retrained, waves, labels)
    pool = np.array([m.scores for m in retrained])
    print(f"forget set: speaker {args.speaker}, N = {args.n}, seed {args.seed}; {len(pool)} retrained models")
    print("| model | K | subsets | AUC mean | AUC std | AUC min..max |")
    print("|---|---|---|---|---|---|")
    for item in unlearned:
        for k in range(3, len(pool) + 1):
            aucs = [distinguishability(item.scores, pool[list(c)])["auc"] for c in itertools.combinations(range(len(pool)), k)]
            print(f"| {item.name} | {k} | {len(aucs)} | {np.mean(aucs):.3f} | {np.std(aucs):.3f} | "
                  f"{min(aucs):.3f}..{max(aucs):.3f} |")
    for k in range(3, len(pool)):  # a retrained model audited against K others: the test's own null
        aucs = []
        for held in range(len(pool)):
            rest = [i for i in range(len(pool)) if i != held]
            aucs += [distinguishability(pool[held], pool[list(c)])["auc"] for c in itertools.combinations(rest, k)]
        print(f"| a retrained model (null) | {k} | {len(aucs)} | {np.mean(aucs):.3f} | {np.std(aucs):.3f} | "
              f"{min(aucs):.3f}..{max(aucs):.3f} |")


if __name__ == "__main__":
    main()
