"""Benchmark: peak memory of targeted PGD at N = 100, M = 20 against the model's training footprint (issue [4 of 5]).

The issue's goal: the adversarial set of a deletion request (the papers' N = 100 utterances, M = 20 targets each)
made in at most twice the memory that training the model takes. Both run as child processes of this one, one
after the other, and each child's peak resident memory is read from the kernel when it exits (`wait4`):
- training: `serkit train RECIPE` for `--epochs` epochs (the recipe's batch size and data; no importances pass),
  the footprint a user needs to train this model at all (data loading in the process itself: `wait4` reports the
  larger of a process's peak and its children's, not their sum);
- PGD: the model loaded from MODEL_DIR, the N forget utterances (split among `--speakers`), TargetedPGD with its
  own defaults (batch 32, early stop, tau 0.01 x std), M targets, P steps; the child also prints its resident
  memory after loading (model + interpreter), after decoding the forget set and after the attack, and the size
  of the adversarial waveforms it holds.

    .venv/bin/python bench/pgd_memory.py runs/ravdess-whisper/model configs/ravdess_whisper.yaml \
        --set data.split=runs/data/ravdess/split.json --speakers 05,12 --n 100 --m 20 --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS")) / 1024


def pgd_child(args) -> None:
    import numpy as np
    from pgd_benchmark import forget_waves  # bench/ is this script's folder

    from serkit.models import load_model
    from serkit.unlearning import pgd
    from serkit.unlearning.pgd import TargetedPGD, draw_targets

    saved = load_model(args.model_dir)
    trim_mode = args.trim[0]
    # serkit's own ("rows"): malloc_trim after each batch and whenever a batch's active rows shrink
    pgd.TRIM_WHEN_ROWS_DROP = trim_mode == "rows"
    if trim_mode == "none":
        pgd.give_back_freed_memory = lambda: None
    elif trim_mode == "step":
        saved.model.register_forward_pre_hook(lambda *_: pgd.give_back_freed_memory())
    loaded = rss_mb()
    waves, labels = forget_waves(saved, [s for s in args.speakers.split(",") if s], args.n)
    decoded = rss_mb()
    start = time.perf_counter()
    adv = TargetedPGD(tau=0.01, steps=args.steps).generate(saved.model, waves, draw_targets(labels, len(saved.labels), args.m, seed=1))
    print(json.dumps({"loaded_mb": loaded, "decoded_mb": decoded, "after_mb": rss_mb(), "seconds": time.perf_counter() - start,
                      "samples": len(adv), "samples_mb": sum(w.nbytes for w in adv.waves) / 2 ** 20,
                      "mean_seconds": float(np.mean([len(w) for w in waves])) / saved.preprocessing.sample_rate,
                      "success": float(adv.success.mean())}))


def run_child(command: list[str], env: dict | None = None) -> tuple[float, str, float]:
    """(peak RSS in MiB, stdout, seconds) of a child process (Linux: ru_maxrss in KiB)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if child.returncode:
        sys.exit(f"{' '.join(command[:4])} ... failed ({child.returncode}):\n{text[-2000:]}")
    return usage.ru_maxrss / 1024, text, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("recipe", type=Path, help="the recipe the model was trained with")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override for the training child")
    parser.add_argument("--speakers", default="05,12")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--m", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--pgd-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of the PGD child, e.g. MALLOC_MMAP_THRESHOLD_=65536 (glibc's allocator)")
    parser.add_argument("--trim", action="append", choices=["none", "batch", "rows", "step"],
                        help="when PGD gives freed heap pages back (malloc_trim): never, after each batch, after each "
                             "batch and whenever its active rows shrink (serkit's default) or after each batch and "
                             "before every forward; repeat to run several side by side (default: rows)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return pgd_child(args)

    serkit = str(Path(sys.executable).with_name("serkit"))
    with tempfile.TemporaryDirectory(prefix="serkit-pgd-memory-") as work:
        train_cmd = [serkit, "train", str(args.recipe), *[a for o in args.overrides for a in ("--set", o)],
                     "--set", f"train.max_epochs={args.epochs}", "--set", "train.importances=false",
                     "--set", "train.progress_bar=false", "--set", "train.num_workers=0", "--set", f"output_dir={work}/run"]
        train_peak, train_log, train_s = run_child(train_cmd)
    print(f"training ({args.epochs} epoch of {args.recipe}): peak RSS {train_peak:.0f} MiB, {train_s:.0f} s", flush=True)
    env = f" ({', '.join(args.pgd_env)})" if args.pgd_env else ""
    for trim in args.trim or ["rows"]:
        pgd_peak, pgd_out, pgd_s = run_child([sys.executable, __file__, str(args.model_dir), str(args.recipe), "--child",
                                              "--speakers", args.speakers, "--n", str(args.n), "--m", str(args.m),
                                              "--steps", str(args.steps), "--trim", trim],
                                             dict(e.split("=", 1) for e in args.pgd_env))
        stats = json.loads(pgd_out.strip().splitlines()[-1])
        print(f"PGD{env}, trim {trim}, N = {args.n} ({args.speakers}, {stats['mean_seconds']:.2f} s mean), M = {args.m}, "
              f"P = {args.steps}: peak RSS {pgd_peak:.0f} MiB, {stats['seconds']:.0f} s, {stats['samples']} samples "
              f"({stats['samples_mb']:.0f} MiB of waveforms), target success {stats['success']:.1%}")
        print(f"  resident after loading the model {stats['loaded_mb']:.0f} MiB, after decoding the forget set "
              f"{stats['decoded_mb']:.0f} MiB, after the attack {stats['after_mb']:.0f} MiB")
        print(f"  PGD / training peak: {pgd_peak / train_peak:.2f}x (goal <= 2x)", flush=True)


if __name__ == "__main__":
    main()
