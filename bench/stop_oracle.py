"""A diagnosis, not a method (bench/RESULTS.md 23g): where the calibrated stop would land if it knew the current
model's losses on unseen speakers instead of the stored, original ones.

adv-ewc with gentle steps (lr 1e-5, checked after every step); at every check the forget set's AUC is measured
against the CURRENT model's losses on a fixed quarter of the validation utterances (an oracle: what a perfect
drift estimate would give) and the stale AUC beside it. It reads validation audio during the request, which no
deletion request may do.

    .venv/bin/python bench/stop_oracle.py runs/ravdess-whisper-cal/model SPEAKER N OUT
"""

from __future__ import annotations

import sys

import numpy as np

from serkit.metrics import auc_against_profile
from serkit.models.modeldir import load_model
from serkit.unlearning import stopping
from serkit.unlearning.evaluation import evaluation_sets
from serkit.unlearning.forget_set import build_forget_set, training_data
from serkit.unlearning.run import forget


def main() -> None:
    model_dir, speaker, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    saved = load_model(model_dir)
    data = training_data(saved)
    _, unseen, _ = evaluation_sets(saved, data, build_forget_set(saved, speaker=speaker, n=n, seed=0, data=data), "val")
    probe_waves, probe_labels = unseen.waves[::4], unseen.labels[::4]
    stale_check = stopping.StopRule.check

    def oracle_check(rule, model, waves, labels):
        if rule.measure != "membership_auc":
            return stale_check(rule, model, waves, labels)
        _, current = stopping.forget_figures(model, probe_waves, probe_labels)
        accuracy, stale = stale_check(rule, model, waves, labels)
        _, losses = stopping.forget_figures(model, waves, labels)
        fresh = auc_against_profile(losses, {"loss_quantiles": list(np.quantile(current, np.linspace(0, 1, 101)))})
        print(f"check: stale {stale:.3f} fresh {fresh:.3f} acc {accuracy:.2f}", flush=True)
        return accuracy, fresh

    stopping.StopRule.check = oracle_check
    result = forget(model_dir, out, speaker=speaker, n=n, seed=0, method="adv-ewc", log=print,
                    params={"target": "calibrated", "lr": 1e-5, "check_every": 1, "adversarial_generation": "upfront"})
    ev, stats = result.receipt["evaluation"], result.receipt["stats"]
    after = ev["after"]
    print(f"RESULT kept {ev['unseen_uar_kept']:.3f} forget acc {after['forget']['accuracy']:.2f} AUC "
          f"{after['membership']['auc']:.3f} other {after['speaker_other_training']['accuracy']:.2f} steps {stats['steps']} "
          f"({stats['stop_reason']})")


if __name__ == "__main__":
    main()
