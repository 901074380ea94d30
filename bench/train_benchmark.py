"""Benchmark: the default recipes on RAVDESS and EmoDB over several seeds, plus inference latency.

Each training run is a separate `serkit train` process (so its peak memory is its own). Prints a
markdown table of test UAR / accuracy, train time, throughput and peak memory per run, their mean
and standard deviation, and the CPU latency of one 3 s utterance.

    .venv/bin/python bench/train_benchmark.py --corpus ravdess --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SERKIT = [sys.executable, "-m", "serkit"]
SPLITS = {"ravdess": ["--val", "8", "--test", "6"], "emodb": ["--val", "2", "--test", "2"]}  # paper 003's 10/8/6 actors


def sh(args: list[str]) -> None:
    subprocess.run(args, check=True, cwd=REPO)


def latency(model_dir: Path, seconds: float = 3.0, repeats: int = 20) -> dict:
    from serkit.models import load_model

    saved = load_model(model_dir)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    wave = torch.from_numpy((0.1 * np.random.default_rng(0).standard_normal(int(16000 * seconds))).astype(np.float32))[None]
    mask = torch.ones_like(wave, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(3):
            saved.model(wave, mask)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            saved.model(wave, mask)
            times.append(time.perf_counter() - t)
    return {"median_ms": 1000 * statistics.median(times), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=sorted(SPLITS), default="ravdess")
    parser.add_argument("--model", default="cnn6", help="recipe configs/<corpus>_<model>.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("SERKIT_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench")
    parser.add_argument("--set", action="append", default=[], help="recipe override for every run")
    args = parser.parse_args()

    recipe, split_args = f"configs/{args.corpus}_{args.model}.yaml", SPLITS[args.corpus]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = args.out / f"{args.corpus}-{args.model}-{stamp}"
    sh([*SERKIT, "data", "import", args.corpus, str(args.data / args.corpus), "-o", str(base / "data"), "--link"])
    sh([*SERKIT, "data", "split", str(base / "data" / "manifest.csv"), "-o", str(base / "split.json"), *split_args, "--seed", "0"])
    rows = []
    for seed in args.seeds:
        run = base / f"seed{seed}"
        overrides = [f"data.split={base / 'split.json'}", f"output_dir={run}", f"seed={seed}", "train.progress_bar=false", *args.set]
        sh([*SERKIT, "train", recipe, *sum((["--set", o] for o in overrides), [])])
        m = json.loads((run / "metrics.json").read_text())
        rows.append({"seed": seed, "val_uar": m["val"]["uar"], "test_uar": m["test"]["uar"], "test_acc": m["test"]["war"],
                     "epochs": m["training"]["epochs"], "best_epoch": m["training"]["best_epoch"],
                     "train_s": m["training"]["train_seconds"], "utt_per_s": m["training"]["train_utterances_per_s"],
                     "peak_mb": m["training"]["peak_rss_mb"]})
    lat = latency(base / f"seed{args.seeds[0]}" / "model")
    print(f"\n{args.corpus}: {recipe} {' '.join(args.set)}")
    print("| seed | val UAR | test UAR | test acc | best epoch / epochs | train time (s) | train utt/s | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['val_uar']:.3f} | {r['test_uar']:.3f} | {r['test_acc']:.3f} | {r['best_epoch']}/{r['epochs']} "
              f"| {r['train_s']:.0f} | {r['utt_per_s']:.1f} | {r['peak_mb']:.0f} |")
    for key in ("test_uar", "test_acc"):
        values = [r[key] for r in rows]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{key}: mean {statistics.mean(values):.3f} ± {sd:.3f} (n={len(values)})")
    print(f"inference latency, one 3 s utterance, batch 1: {lat['median_ms']:.1f} ms median ({lat['threads']} threads)")
    print(f"runs in {base}")


if __name__ == "__main__":
    main()
