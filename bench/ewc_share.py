"""Does the EWC term do anything? Its share of the adv-ewc loss in a grid's receipts.

For every adv-ewc run of an unlearning grid (its receipt.json is kept in runs/), the Fisher's size and the
per-epoch share of lambda_ewc * L_ewc in lambda_mis * L_mis + lambda_adv * L_adv + lambda_ewc * L_ewc; and,
where the grid has the same runs without EWC (a label of method adv with the same parameters), how far the
kept UAR moved.

    .venv/bin/python bench/ewc_share.py runs/experiments/unlearning-methods-emodb-cnn6
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def main(grid: Path) -> None:
    rows = []
    for receipt_file in sorted((grid / "runs").glob("*/receipt.json")):
        receipt = json.loads(receipt_file.read_text())
        stats, params = receipt["stats"], receipt["method"]["params"]
        if "ewc" not in stats:
            continue
        shares = []
        for h in stats["history"]:
            ewc = params["lambda_ewc"] * h["L_ewc"]
            total = params["lambda_mis"] * h["L_mis"] + params["lambda_adv"] * h["L_adv"] + ewc
            shares.append(ewc / total if total else 0.0)
        rows.append({"run": receipt_file.parent.name, "fisher_normalize": params["fisher_normalize"],
                     "fisher_max": stats["ewc"]["fisher_max"], "fisher_sum": stats["ewc"]["fisher_sum"],
                     "ewc_share_mean": float(np.mean(shares)), "ewc_share_max": float(np.max(shares))})
    frame = pd.DataFrame(rows)
    if frame.empty:
        print(f"no adv-ewc receipts under {grid / 'runs'}")
        return
    print(frame.groupby("fisher_normalize")[["fisher_max", "fisher_sum", "ewc_share_mean", "ewc_share_max"]]
          .agg(["median", "min", "max"]).to_string(float_format=lambda v: f"{v:.3g}"))
    results = pd.read_csv(grid / "results.csv", dtype={"speaker": str})
    with_ewc = results[results.base_method == "adv-ewc"]
    without = results[results.base_method == "adv"]
    if len(with_ewc) and len(without):
        keys = ["speaker", "n", "seed", "tau"]
        for label, group in with_ewc.groupby("method"):
            paired = group.merge(without, on=keys, suffixes=("", "_adv"))
            if len(paired):
                diff = paired.kept - paired.kept_adv
                print(f"{label} vs {paired.method_adv.iloc[0]}: kept differs by {diff.mean():+.3f} on average "
                      f"({(diff.abs() < 1e-9).sum()} of {len(paired)} runs identical), membership AUC by "
                      f"{(paired.mia_auc - paired.mia_auc_adv).mean():+.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
