"""How the models of an unlearning grid spread their losses over one forget set (issue [3 of 5], bench/RESULTS.md 23t).

A membership AUC ranks the forget utterances' losses among unseen speakers', so two models can share it while
one gets a fifth of the forget set wrong and the other none. This prints, per model, the forget-set accuracy,
the median and mean loss, and every utterance's loss in the order the first retrained model ranks them (`*`:
misclassified), which shows whether a method raises every loss a little or a few a lot, as retraining does.
Beside them: the Kolmogorov-Smirnov distance between the forget losses and the loss profile of the held-out
utterances of training speakers that the model directory recorded at training time ("known", data.calibration),
the distribution a retrained model should give a forgotten utterance of a speaker it still knows.

    .venv/bin/python bench/forget_loss_shape.py runs/ravdess-whisper-cal/model \\
        runs/experiments/unlearning-audit-ravdess-whisper-n30/runs --speaker 12 --n 30 \\
        --labels retrain-s1,retrain-s2,retrain-s3,pgu-0.8-lr1e-2,pgu-ascent
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="the model the grid forgot from (train->val)")
    parser.add_argument("runs", type=Path, help="the grid's runs/ folder (its models kept: audit or keep_models)")
    parser.add_argument("--speaker", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", required=True, help="the grid's method labels, comma-separated; the first one "
                        "that is retrained orders the utterances")
    args = parser.parse_args()

    import numpy as np

    from serkit.models.modeldir import load_model
    from serkit.unlearning.evaluation import _eval_set, outputs
    from serkit.unlearning.forget_set import build_forget_set, training_data

    original = load_model(args.model_dir)
    forget_set = build_forget_set(original, speaker=args.speaker, n=args.n, seed=args.seed, data=training_data(original))
    forget = _eval_set(original, "forget", forget_set.as_manifest())
    labels = args.labels.split(",")
    rows = {"original": outputs(original.model, forget)}
    for label in labels:
        found = sorted(args.runs.glob(f"*_{args.speaker}_{args.n}_{args.seed}_{label}_*/model"))
        if len(found) != 1:
            raise SystemExit(f"{len(found) or 'no'} kept models for {label} (speaker {args.speaker}, N {args.n}) under "
                             f"{args.runs}: {'give a grid with one backbone, setting and tau' if found else 'keep its models'}")
        rows[label] = outputs(load_model(found[0]).model, forget)
    known = (original.config.get("provenance") or {}).get("calibration", {}).get("known")
    quantiles = np.asarray(known["loss_quantiles"]) if known else None
    if known:
        print(f"known profile: accuracy {known['accuracy']:.2f}, median loss {np.median(quantiles):.2f}, "
              f"mean loss {known['loss_mean']:.2f}")

    def ks(loss):  # against the profile's 101 quantiles read as equal-weight points (within ~0.01 of interpolating)
        if quantiles is None:
            return float("nan")
        grid = np.sort(np.concatenate([loss, quantiles]))
        ours = np.searchsorted(np.sort(loss), grid, side="right") / len(loss)
        theirs = np.searchsorted(quantiles, grid, side="right") / len(quantiles)
        return float(np.abs(ours - theirs).max())

    first = next((label for label in labels if label.startswith("retrain")), labels[0])
    order = np.argsort(rows[first][1])
    print(f"speaker {args.speaker}, N = {args.n}, seed {args.seed}; utterances ordered by {first}'s loss, * = wrong")
    for name, (predicted, loss) in rows.items():
        right = predicted == forget.labels
        print(f"{name:18s} acc {right.mean():.2f}  median loss {np.median(loss):.2f}  mean loss {loss.mean():.2f}  "
              f"KS vs known {ks(loss):.2f}")
        print("    " + " ".join(f"{value:.2f}{'' if ok else '*'}" for ok, value in zip(right[order], loss[order])))


if __name__ == "__main__":
    main()
