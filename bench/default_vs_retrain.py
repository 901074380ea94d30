"""Benchmark: a default deletion request (no --method: pgu where the model stores its head moments) at N = 10 / 30 /
50 / 100 against retraining without the forget set, side by side on one model and machine (issue [4 of 5]).

N up to 60 draws from one actor (`--speakers`' first); N = 100 takes half from each of the first two. The default
requests run before AND after the retraining, so a busy shared machine slows both alike; each ratio uses the slower
of the two. Retraining runs once, at the largest N (`--retrain-n`, default 100): it trains on the fewest
utterances there, so it is the cheapest retrain and every ratio against it is an upper bound (a smaller
`--retrain-n` makes the larger N's ratios low by at most the share of the training set, and says so). Prints per request:
seconds of unlearning (what the receipt times: the method, its stop's checks) and of the whole request (evaluation
included), kept UAR, membership AUC, forget-set accuracy, the speakers' other utterances, steps and why it stopped;
then the ratios.

    .venv/bin/python bench/default_vs_retrain.py runs/ravdess-whisper-cal/model --speakers 12 19
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from serkit.models import load_model
from serkit.unlearning.forget_set import build_forget_set
from serkit.unlearning.run import forget


def forget_files(model: Path, speakers: list[str], n: int, seed: int) -> list[str]:
    """N utterances: one actor's when they fit, else split evenly over the first actors named."""
    saved = load_model(model)
    per = [n] if n <= 50 else [n // 2, n - n // 2]
    files = []
    for speaker, k in zip(speakers, per, strict=False):
        chosen = build_forget_set(saved, speaker=speaker, n=k, seed=seed, warn=lambda *a: None)
        files += [str(p) for p in chosen.audio_paths()]
    if len(files) != n:
        raise SystemExit(f"N = {n} needs {len(per)} actors: name them with --speakers")
    return files


def request(model: Path, out: Path, files: list[str], seed: int, method: str | None) -> dict:
    start = time.perf_counter()
    receipt = forget(model, out, files=files, seed=seed, method=method, log=lambda *a: None).receipt
    ev, stats = receipt["evaluation"], receipt.get("stats", {})
    return {"method": receipt["method"]["name"], "wall": time.perf_counter() - start,
            "unlearn": receipt["timing"]["unlearn_seconds"], "kept": ev.get("unseen_uar_kept") or float("nan"),
            "auc": ev["after"]["membership"]["auc"], "forget_acc": ev["after"]["forget"]["accuracy"],
            "other": (ev["after"].get("speaker_other_training") or {}).get("accuracy", float("nan")),
            "steps": stats.get("steps", "-"),
            "stop": stats.get("stop_reason", "-")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--speakers", nargs="+", default=["12", "19"])
    parser.add_argument("--n", nargs="+", type=int, default=[10, 30, 50, 100])
    parser.add_argument("--retrain-n", type=int, default=None, help="the N retrained (default: the largest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="keep every request's output here (e.g. for serkit "
                        "audit), as PASS-N; default: a temporary folder")
    args = parser.parse_args()
    retrain_n = args.retrain_n or max(args.n)
    sets = {n: forget_files(args.model, args.speakers, n, args.seed) for n in sorted(set(args.n) | {retrain_n})}
    print("pass | N | method | unlearning s | request s | kept | AUC | forget acc. | speakers' other utts | steps | stop",
          flush=True)
    runs: dict[tuple[str, int], dict] = {}

    def show(tag: str, n: int, row: dict) -> None:
        print(f"{tag} | {n} | {row['method']} | {row['unlearn']:.1f} | {row['wall']:.1f} | {row['kept']:.3f} | "
              f"{row['auc']:.3f} | {row['forget_acc']:.2f} | {row['other']:.2f} | {row['steps']} | {row['stop']}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        for tag in ("before", "retrain", "after"):
            for n in ([retrain_n] if tag == "retrain" else args.n):
                row = request(args.model, folder / f"{tag}-{n}", sets[n], args.seed,
                              "retrain" if tag == "retrain" else None)
                runs[(tag, n)] = row
                show(tag, n, row)
    retrain = runs[("retrain", retrain_n)]
    print(f"\nretraining at N = {retrain_n}: {retrain['unlearn']:.0f} s training, {retrain['wall']:.0f} s with evaluation")
    if retrain_n < max(args.n):
        print(f"note: retraining without {retrain_n} trains on more utterances than without {max(args.n)}: the ratios of "
              f"larger N are low by at most that share of the training set")
    print("N | default method | unlearning / retraining | request / retrain request")
    for n in args.n:
        passes = (runs[("before", n)], runs[("after", n)])
        unlearn, wall = max(r["unlearn"] for r in passes), max(r["wall"] for r in passes)
        print(f"{n} | {passes[0]['method']} | {100 * unlearn / retrain['unlearn']:.2f} % | "
              f"{100 * wall / retrain['wall']:.1f} %")


if __name__ == "__main__":
    main()
