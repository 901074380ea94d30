"""Where each stop rule would have stopped on the trajectories bench/stop_trajectory.py wrote, and what the
evaluation said there (the first evaluated step at or after the stop; bench/RESULTS.md 23h).

    .venv/bin/python bench/stop_trajectory_table.py DIR     # DIR holds aSPEAKER-nN.csv files
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

KNOWN_AUC, PER_SPEAKER = 0.5586, 54  # runs/ravdess-whisper-cal: the known profile's AUC, training utterances / speaker
RULES = {"stale profile <= 0.559": ("stale_auc", lambda n: 0.559),
         "held-out <= 0.50": ("known_live_auc", lambda n: 0.50),
         "held-out, goal by share (the default)": ("known_live_auc",
                                                   lambda n: 0.5 - min(1, n / PER_SPEAKER) * (KNOWN_AUC - 0.5)),
         "held-out <= 0.45": ("known_live_auc", lambda n: 0.45),
         "oracle: val now <= 0.559": ("eval_auc", lambda n: 0.559)}


def main() -> None:
    rows = []
    for path in sorted(Path(sys.argv[1]).glob("a*-n*.csv")):
        speaker, n = path.stem.split("-")
        frame = pd.read_csv(path)
        evaluated = frame.dropna(subset=["val_uar"])
        base = evaluated.iloc[0]
        for rule, (column, goal) in RULES.items():
            hit = frame[(frame[column] <= goal(int(n[1:]))) & (frame.step > 0)]
            if hit.empty:
                rows.append({"speaker": speaker[1:], "n": int(n[1:]), "rule": rule, "step": f"> {frame.step.max()}"})
                continue
            step = int(hit.step.iloc[0])
            at = evaluated[evaluated.step >= step]
            if at.empty:
                rows.append({"speaker": speaker[1:], "n": int(n[1:]), "rule": rule, "step": step})
                continue
            e = at.iloc[0]
            rows.append({"speaker": speaker[1:], "n": int(n[1:]), "rule": rule, "step": step,
                         "kept": round(e.val_uar / base.val_uar, 3), "forget_acc": round(e.forget_acc, 2),
                         "auc": round(e.eval_auc, 3), "other": round(e.other_acc, 2)})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    done = table.dropna(subset=["auc"]) if "auc" in table else table
    if len(done):
        print(done.groupby(["n", "rule"])[["kept", "forget_acc", "auc", "other"]].agg(["mean", "std"]).round(3).to_string())


if __name__ == "__main__":
    main()
