"""Where each candidate stop would land (bench/RESULTS.md 23h): one adv-ewc request with gentle steps (lr 1e-5),
run for a fixed number of steps without stopping, and after EVERY step what each stop signal reads and what the
evaluation would say if the request stopped there.

Stop signals (the forget set's membership AUC):
- stale: against the unseen profile stored at training time (the default calibrated stop);
- unseen-live: against the current model's losses on the validation speakers (what the evaluation measures, so
  only a diagnosis);
- known-live: against the current model's losses on the held-out calibration utterances of the model's OTHER
  training speakers (data.calibration; never trained on, no validation or test speaker): the candidate.
Evaluation at each step: validation UAR kept, forget-set accuracy, the forgotten speaker's other training
utterances' accuracy, membership AUC against the validation losses.

    .venv/bin/python bench/stop_trajectory.py runs/ravdess-whisper-cal/model SPEAKER N STEPS OUT.csv [--seed S]
        [--method adv-ewc] [--set lr=1e-5] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from serkit.metrics import auc_against_profile, uar, war
from serkit.models.modeldir import load_model
from serkit.unlearning import stopping
from serkit.unlearning.evaluation import EvalSet, evaluation_sets, held_out_reference, membership_attack, outputs
from serkit.unlearning.forget_set import build_forget_set, training_data
from serkit.unlearning.run import forget


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("model_dir", "speaker", "n", "steps", "out"):
        parser.add_argument(name)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="adv-ewc")
    parser.add_argument("--every", type=int, default=4, help="evaluate on the validation speakers every this many steps")
    parser.add_argument("--set", action="append", default=[], help="a method parameter, key=value (JSON value)")
    args = parser.parse_args()
    model_dir, speaker, n, steps, out, seed, every = (args.model_dir, args.speaker, int(args.n), int(args.steps),
                                                      args.out, args.seed, args.every)
    params = {"target": "calibrated", "lr": 1e-5, "check_every": 1}
    for item in args.set:
        key, value = item.split("=", 1)
        params[key] = json.loads(value) if value[:1] in "0123456789-[{tfn" else value
    saved = load_model(model_dir)
    data = training_data(saved)
    forget_set = build_forget_set(saved, speaker=speaker, n=n, seed=seed, data=data)
    forget_eval, unseen, other = evaluation_sets(saved, data, forget_set, "val")
    reference = held_out_reference(saved, data, forget_set)  # what stop_reference held-out measures against
    known = EvalSet("known", reference.waves, reference.labels)
    stored = saved.config["provenance"]["calibration"]
    rows = []

    def record(model, step):
        f_pred, f_loss = outputs(model, forget_eval)
        _, k_loss = outputs(model, known)
        row = {"step": step, "forget_acc": war(forget_eval.labels, f_pred),
               "stale_auc": auc_against_profile(f_loss, stored["unseen"]),
               "known_live_auc": membership_attack(f_loss, k_loss)["auc"],
               "forget_loss_median": float(np.median(f_loss)), "known_loss_median": float(np.median(k_loss))}
        if step % every == 0:  # the validation speakers cost 7 s a pass on 2 CPU cores: every `every` steps
            u_pred, u_loss = outputs(model, unseen)
            o_pred, _ = outputs(model, other) if other is not None else (None, None)
            row.update({"val_uar": uar(unseen.labels, u_pred), "eval_auc": membership_attack(f_loss, u_loss)["auc"],
                        "other_acc": war(other.labels, o_pred) if other is not None else np.nan,
                        "known_vs_unseen_live": membership_attack(k_loss, u_loss)["auc"],
                        "val_loss_median": float(np.median(u_loss))})
        rows.append(row)
        print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        pd.DataFrame(rows).to_csv(out, index=False)

    counter = {"step": 0}
    record(saved.model, 0)

    def trajectory_check(rule, model, waves, labels):
        signature = float(sum(p.detach().double().sum() for p in model.parameters()))
        if signature == counter.get("signature"):  # the end-of-epoch check right after a step's own
            return 0.0, (-1.0 if counter["step"] >= steps else 1.0)
        counter["signature"] = signature
        counter["step"] += 1
        record(model, counter["step"])
        model.train()
        return 0.0, (-1.0 if counter["step"] >= steps else 1.0)  # never reached until STEPS

    stopping.StopRule.check = trajectory_check
    forget(model_dir, out + ".run", speaker=speaker, n=n, seed=seed, method=args.method, log=lambda *a: None,
           overwrite=True, params=params)
    print(f"known-utterance reference: {len(known)} utterances; stored goal {stored['known']['auc_vs_unseen']:.3f}")


if __name__ == "__main__":
    main()
