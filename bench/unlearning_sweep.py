"""Benchmark: the cost/quality knobs of forget-set-only unlearning (issue #5, "defaults by measurement").

One `serkit forget` per (setting, actor): N = 10 utterances (seed 0) of each training actor, on the
RAVDESS Whisper model of bench/train_benchmark.py; method adv-ewc with the paper's lambdas. Settings
vary the PGD length P, the adversarial samples per utterance M, and the stopping target
(misclassify: forget-set accuracy 0; retrain-like: forget-set accuracy at the model's validation
accuracy, which should leave the forget set looking unseen to a membership attack). Prints, per
setting, the mean over actors of val UAR kept, forget-set UAR, membership AUC, the actor's other
utterances' accuracy, PGD seconds and total seconds.

    .venv/bin/python bench/unlearning_sweep.py runs/bench/ravdess-whisper-<stamp>/seed0/model

Other settings on the command line (NAME=key=value,key=value; `method=` picks the method), e.g. the
CNN-6 EmoDB sweep of bench/RESULTS.md:

    .venv/bin/python bench/unlearning_sweep.py runs/bench/emodb-cnn6-<stamp>/seed1/model --actors 14 \
      --setting "lr1e-4 succ=pgd_steps=20,adversarial_per_sample=10,target=retrain-like,lr=1e-4,adversarial_keep=successful"
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {  # section 3's sweep started from the papers' values; `preset=paper` keeps it reproducible
    "P50-M20 (paper)": ["preset=paper"],
    "P20-M20": ["preset=paper", "pgd_steps=20"],
    "P10-M10": ["preset=paper", "pgd_steps=10", "adversarial_per_sample=10"],
    "P20-M5": ["preset=paper", "pgd_steps=20", "adversarial_per_sample=5"],
    "P20-M10 retrain-like": ["pgd_steps=20", "adversarial_per_sample=10", "target=retrain-like"],  # = the default
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--actors", nargs="+", default=["05", "12", "19"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--method", default="adv-ewc")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=k=v,k=v",
                        help="a setting of your own (replaces --settings); method=NAME inside it picks the method")
    parser.add_argument("--n", type=int, default=10, help="utterances forgotten per actor")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "experiments" / "unl-sweep")
    args = parser.parse_args()
    settings = {name: (SETTINGS[name], args.method) for name in args.settings}
    if args.setting:
        settings = {}
        for spec in args.setting:
            name, _, values = spec.partition("=")
            pairs = [v for v in values.split(",") if v]
            method = next((v.split("=", 1)[1] for v in pairs if v.startswith("method=")), args.method)
            settings[name] = ([v for v in pairs if not v.startswith("method=")], method)
    rows = {}
    for name, (sets, method) in settings.items():
        for actor in args.actors:
            slug = "".join(c if c.isalnum() or c in ".-" else "_" for c in name)
            out = args.out / (f"{slug}-{method}-{actor}" + (f"-n{args.n}" if args.n != 10 else ""))
            if not args.setting and args.n == 10:  # the built-in settings keep their folder names
                out = args.out / f"{name.split()[0]}{'-rl' if 'retrain-like' in name else ''}-{method}-{actor}"
            if not (out / "receipt.json").is_file():
                subprocess.run([sys.executable, "-m", "serkit", "forget", str(args.model), "--speaker", actor, "--n",
                                str(args.n), "--seed", "0", "--method", method, *sum((["--set", v] for v in sets), []),
                                "-o", str(out)], check=True, cwd=REPO)
            r = json.loads((out / "receipt.json").read_text())
            ev = r["evaluation"]
            rows.setdefault(name, []).append({
                "kept": ev["unseen_uar_kept"], "forget": ev["after"]["forget"]["uar"], "mia": ev["after"]["membership"]["auc"],
                "mia_before": ev["before"]["membership"]["auc"], "other": ev["after"]["speaker_other_training"]["accuracy"],
                "pgd_s": r["stats"].get("pgd", {}).get("seconds", 0.0),
                "pgd_success": r["stats"].get("pgd", {}).get("target_success_rate", float("nan")),
                "total_s": r["timing"]["unlearn_seconds"], "epochs": r["stats"]["epochs_run"]})

    def ms(values, fmt="{:.3f}"):
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{fmt.format(statistics.mean(values))} ± {fmt.format(sd)}"

    print(f"\n{args.method if not args.setting else 'per setting'}, N = {args.n}, actors {' '.join(args.actors)}; model {args.model}")
    print("| setting | val UAR kept | forget-set UAR | membership AUC (before) | actor's other utts acc. | PGD success | PGD s | total s | epochs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rs in rows.items():
        print(f"| {name} | {ms([100 * r['kept'] for r in rs], '{:.1f}')} % | {ms([r['forget'] for r in rs])} | "
              f"{ms([r['mia'] for r in rs], '{:.2f}')} ({statistics.mean(r['mia_before'] for r in rs):.2f}) | "
              f"{ms([r['other'] for r in rs], '{:.2f}')} | {statistics.mean(r['pgd_success'] for r in rs):.0%} | "
              f"{ms([r['pgd_s'] for r in rs], '{:.0f}')} | {ms([r['total_s'] for r in rs], '{:.0f}')} | "
              f"{statistics.mean(r['epochs'] for r in rs):.1f} |")


if __name__ == "__main__":
    main()
