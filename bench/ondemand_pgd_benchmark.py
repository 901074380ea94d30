"""Benchmark: a default deletion request with its PGD samples made up front (the papers' order) against made on
demand (when a training step first uses them), side by side on the same model, forget set and seed.

Both orders make the same samples (each keeps its seeded random start) from the original model, so the
unlearned models must agree; on demand only skips the samples no step used before the stop. Prints, per
request: wall time of the whole request (evaluation included), PGD seconds, samples made of those planned,
fine-tuning steps, kept UAR and membership AUC, and the on-demand / upfront time ratio. Runs alternate
(upfront, on-demand, upfront, ...) so a busy shared machine slows both alike.

    .venv/bin/python bench/ondemand_pgd_benchmark.py runs/ravdess-whisper-cal/model --speakers 05 12 19 --n 10 30
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from serkit.unlearning.run import forget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--speakers", nargs="+", default=["05"])
    parser.add_argument("--n", nargs="+", type=int, default=[10])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], help="extra method parameters key=value (same for both)")
    args = parser.parse_args()
    extra = {}
    for item in args.set:
        key, value = item.split("=", 1)
        extra[key] = float(value) if value.replace(".", "", 1).replace("e-", "", 1).isdigit() else value
    print("speaker | N | order | request s | PGD s | samples made / planned | steps | kept | AUC | stop")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for speaker in args.speakers:
            for n in args.n:
                seconds = {}
                for order in ("upfront", "on-demand"):
                    out = Path(tmp) / f"{speaker}-{n}-{order}"
                    start = time.perf_counter()
                    result = forget(args.model, out, speaker=speaker, n=n, seed=args.seed, method="adv-ewc",
                                    params={**extra, "adversarial_generation": order}, log=lambda *a: None)
                    seconds[order] = time.perf_counter() - start
                    r = result.receipt
                    stats, ev = r["stats"], r["evaluation"]
                    pgd = stats["pgd"]
                    print(f"{speaker} | {n} | {order} | {seconds[order]:.0f} | {pgd['seconds']:.0f} | {pgd['samples']} / "
                          f"{pgd.get('samples_planned', pgd['samples'])} | {stats['steps']} | {ev['unseen_uar_kept']:.3f} | "
                          f"{ev['after']['membership']['auc']:.3f} | {stats['stop_reason']}", flush=True)
                ratios.append(seconds["on-demand"] / seconds["upfront"])
                print(f"  on-demand / upfront: {ratios[-1]:.2f}x the time", flush=True)
    print(f"mean ratio {sum(ratios) / len(ratios):.2f}x over {len(ratios)} requests")


if __name__ == "__main__":
    main()
