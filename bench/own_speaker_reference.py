"""Where the models of an unlearning grid put a forget set against its own speaker's held-out utterances (issue [3 of 5]).

`stop_reference: speaker` (bench/RESULTS.md 23q, tried and dropped) stopped at 0.5: the forget set's membership
AUC against the held-out calibration utterances of its own speaker. That is where a model retrained without the
forget set should put it on average (it trained on neither); this prints where each retrained and unlearned model of a grid actually puts it, with
the mean losses of both sets, and the speaker's held-out utterances against the other speakers' held-out ones.
First it prints, for each speaker, the AUC of the speaker's held-out utterances against the unseen speakers' as
the model scores them (the model-wide figure is the calibrated stop's target): a per-speaker target a stop could
aim at instead, to hold against where the grid's retrained models put that speaker's forget set.

    .venv/bin/python bench/own_speaker_reference.py runs/emodb-cnn6-cal/model \\
        runs/experiments/unlearning-audit-emodb-cnn6-more/runs --speakers 13,16 --n 10
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="the model the grid forgot from (train->val)")
    parser.add_argument("runs", type=Path, help="the grid's runs/ folder (its models kept: audit or keep_models)")
    parser.add_argument("--speakers", default="13,16")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from serkit.data.manifest import Manifest
    from serkit.metrics import membership_auc
    from serkit.models import load_model
    from serkit.unlearning.evaluation import _eval_set, outputs
    from serkit.unlearning.forget_set import build_forget_set, training_data

    original = load_model(args.model_dir)
    data = training_data(original)
    frame, held = data.manifest.frame, data.calibration_mask()
    unseen = _eval_set(original, "val", data.manifest.subset(data.held_out["val"]))
    calibration = frame[held].reset_index(drop=True)
    unseen_loss = outputs(original.model, unseen)[1]
    calibration_loss = outputs(original.model, _eval_set(original, "calibration", Manifest(calibration, data.manifest.file)))[1]
    print(f"held-out utterances of training speakers against unseen speakers, as the model scores them: all "
          f"{len(calibration)}: AUC {membership_auc(calibration_loss, unseen_loss):.3f}")
    for speaker, rows in calibration.groupby("speaker"):
        print(f"  speaker {speaker} ({len(rows)}): AUC {membership_auc(calibration_loss[rows.index], unseen_loss):.3f}")
    print("speaker | model | forget vs own held-out AUC | own held-out vs other speakers' held-out AUC | "
          "mean loss forget / own held-out")
    for speaker in args.speakers.split(","):
        forget_set = build_forget_set(original, speaker=speaker, n=args.n, seed=args.seed)
        parts = {name: _eval_set(original, name, Manifest(rows.reset_index(drop=True), data.manifest.file))
                 for name, rows in (("forget", forget_set.rows), ("own", frame[held & (frame["speaker"] == speaker)]),
                                    ("others", frame[held & (frame["speaker"] != speaker)]))}
        runs = sorted(args.runs.glob(f"*_{speaker}_{args.n}_{args.seed}_*/model"))
        for name, model_dir in [("original", args.model_dir)] + [(p.parent.name.split("_")[5], p) for p in runs]:
            model = original.model if name == "original" else load_model(model_dir).model
            loss = {part: outputs(model, evalset)[1] for part, evalset in parts.items()}
            print(f"{speaker} | {name} | {membership_auc(loss['forget'], loss['own']):.3f} | "
                  f"{membership_auc(loss['own'], loss['others']):.3f} | "
                  f"{loss['forget'].mean():.3f} / {loss['own'].mean():.3f}", flush=True)


if __name__ == "__main__":
    main()
