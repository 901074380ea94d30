"""Benchmark: what bit-identical deletion requests cost, side by side in one run.

The same default request (adv-ewc, its measured defaults) runs with PyTorch's deterministic
algorithms on (serkit's default) and off, alternating, `--repeats` times each, on one model. It
prints each run's unlearning time and model_after hash (after one uncounted warm-up request), the mean time of each mode and their ratio,
and whether every run of a mode gave the same model.

    .venv/bin/python bench/determinism_benchmark.py runs/ravdess-whisper/model --speaker 05 --n 10 --repeats 3 \\
        -o runs/bench/determinism
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from serkit.unlearning.run import forget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--speaker", required=True)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--split", type=Path, help="needed when the model has answered a request before")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    warmup = args.out / "warmup"  # the first request in a process pays for loading; it is not counted
    shutil.rmtree(warmup, ignore_errors=True)
    forget(args.model_dir, warmup, speaker=args.speaker, n=args.n, split=args.split, log=lambda *a: None)
    runs = []
    for repeat in range(args.repeats):
        for deterministic in (True, False):
            out = args.out / f"{'det' if deterministic else 'fast'}-{repeat}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            result = forget(args.model_dir, out, speaker=args.speaker, n=args.n, split=args.split,
                            deterministic=deterministic, log=lambda *a: None)
            wall = time.perf_counter() - start
            receipt = result.receipt
            runs.append({"deterministic": deterministic, "repeat": repeat, "wall_seconds": round(wall, 1),
                         "unlearn_seconds": receipt["timing"]["unlearn_seconds"],
                         "model_after": receipt["model_after"]["weights_sha256"],
                         "nondeterministic_ops": receipt["environment"]["nondeterministic_ops"]})
            print(json.dumps(runs[-1]), flush=True)
            shutil.rmtree(out / "model", ignore_errors=True)
    summary = {}
    for mode in (True, False):
        mine = [r for r in runs if r["deterministic"] is mode]
        summary["deterministic" if mode else "fastest kernels"] = {
            "unlearn_seconds_mean": round(float(np.mean([r["unlearn_seconds"] for r in mine])), 1),
            "unlearn_seconds": [r["unlearn_seconds"] for r in mine],
            "distinct_models": len({r["model_after"] for r in mine})}
    summary["time_ratio_deterministic_over_fastest"] = round(
        summary["deterministic"]["unlearn_seconds_mean"] / summary["fastest kernels"]["unlearn_seconds_mean"], 3)
    summary["same_model_in_both_modes"] = len({r["model_after"] for r in runs}) == 1
    (args.out / "results.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
