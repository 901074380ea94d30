"""Benchmark: dimensional SER from audio, text, and audio + text (paper 004's Table 1 shape).

EmoDB (or RAVDESS) with PROXY arousal/valence/dominance targets mapped from the categories
(configs/<corpus>_audiotext.yaml). Acted corpora read emotionally neutral sentences, so the text
modality must not help: this is the negative control on real data. One `serkit train` process per
(mode, seed). Prints CCC per dimension (test, mean ± std over seeds), parameters, train time and
CPU latency for one 3 s utterance with its transcript.

    .venv/bin/python bench/audiotext_benchmark.py --corpus emodb --seeds 0 1 2
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

REPO = Path(__file__).resolve().parents[1]
SERKIT = [sys.executable, "-m", "serkit"]
SPLITS = {"ravdess": ["--val", "8", "--test", "6"], "emodb": ["--val", "2", "--test", "2"]}
MODES = ["audio", "text", "audio+text"]


def latency(model_dir: Path, text: str, repeats: int = 20) -> float:
    from serkit.dimensional.experiment import latency_ms

    return latency_ms(model_dir, text, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=sorted(SPLITS), default="emodb")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("SERKIT_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench")
    parser.add_argument("--set", action="append", default=[], help="recipe override for every run")
    parser.add_argument("--resume", type=Path, help="a folder of an earlier run of this benchmark: finished runs are kept")
    args = parser.parse_args()
    base = args.resume or args.out / f"{args.corpus}-audiotext-{time.strftime('%Y%m%d-%H%M%S')}"
    if not (base / "split.json").is_file():
        subprocess.run([*SERKIT, "data", "import", args.corpus, str(args.data / args.corpus), "-o", str(base / "data"),
                        "--link"], check=True, cwd=REPO)
        subprocess.run([*SERKIT, "data", "split", str(base / "data" / "manifest.csv"), "-o", str(base / "split.json"),
                        *SPLITS[args.corpus], "--seed", "0"], check=True, cwd=REPO)
    text = str(next(iter(__import__("pandas").read_csv(base / "data" / "manifest.csv")["text"])))
    results: dict[str, list[dict]] = {m: [] for m in args.modes}
    for mode in args.modes:
        for seed in args.seeds:
            run = base / f"{mode.replace('+', '_')}-seed{seed}"
            overrides = [f"data.split={base / 'split.json'}", f"output_dir={run}", f"seed={seed}",
                         "train.progress_bar=false", f"model.options.mode={mode}", *args.set]
            if not (run / "metrics.json").is_file():
                subprocess.run([*SERKIT, "train", f"configs/{args.corpus}_audiotext.yaml",
                                *sum((["--set", o] for o in overrides), [])], check=True, cwd=REPO)
            m = json.loads((run / "metrics.json").read_text())
            results[mode].append({"seed": seed, "test": m["test"], "val": m["val"], "training": m["training"],
                                  "parameters": m["model"]["parameters"], "latency_ms": latency(run / "model", text)})
    dims = list(next(iter(results.values()))[0]["test"]["dimensions"])
    print(f"\n{args.corpus}: configs/{args.corpus}_audiotext.yaml {' '.join(args.set)}; {results[args.modes[0]][0]['test']['targets']}")
    print("| mode | " + " | ".join(f"test CCC {d}" for d in dims) + " | mean CCC | val mean CCC | parameters | train s | latency 3 s (ms) |")
    print("|---|" + "---|" * (len(dims) + 5))

    def ms(values):
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"

    for mode, rows in results.items():
        cells = [ms([r["test"]["dimensions"][d]["ccc"] for r in rows]) for d in dims]
        print(f"| {mode} | " + " | ".join(cells) + f" | {ms([r['test']['mean_ccc'] for r in rows])} | "
              f"{ms([r['val']['mean_ccc'] for r in rows])} | {rows[0]['parameters'] / 1e6:.2f} M | "
              f"{statistics.mean(r['training']['train_seconds'] for r in rows):.0f} | {statistics.mean(r['latency_ms'] for r in rows):.1f} |")
    print("\nper run:")
    for mode, rows in results.items():
        for r in rows:
            print(f"  {mode} seed {r['seed']}: test " + ", ".join(f"{d} {r['test']['dimensions'][d]['ccc']:.3f}" for d in dims)
                  + f"; best epoch {r['training']['best_epoch']}/{r['training']['epochs']}, {r['training']['train_seconds']:.0f} s")
    print(f"runs in {base}")


if __name__ == "__main__":
    main()
