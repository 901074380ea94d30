"""Benchmark: targeted PGD throughput, batched (serkit's) against a straightforward per-sample loop.

Both attack the same real RAVDESS utterances with the same targets, P steps each, and report
adversarial utterance-steps per second (one forward + backward of one utterance = one step), the
target success rate, the median SNR and the peak resident memory of the process. The batched
attack runs all M targets of a batch of utterances in one pass and drops each sample once it
reaches its target; the loop attacks one (utterance, target) pair at a time for all P steps.

The loop is slow, so it runs on the first `--loop-samples` pairs only; its rate is per step, so
the two rates compare directly. The full N x M x P time is extrapolated from the measured rate
and printed as such.

    .venv/bin/python bench/pgd_benchmark.py MODEL_DIR --n 10 --m 20 --steps 50
    .venv/bin/python bench/pgd_benchmark.py MODEL_DIR --n 100 --speaker 05,12 --m 20 --steps 50
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from serkit.models import load_model
from serkit.unlearning.forget_set import build_forget_set
from serkit.unlearning.pgd import TargetedPGD, draw_targets


def forget_waves(saved, speakers: list[str], n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """N forget utterances (seed 0) split evenly among `speakers`, decoded, and their label indices."""
    from serkit.data.dataset import load_waves

    shares = [n // len(speakers) + (i < n % len(speakers)) for i in range(len(speakers))]
    forgets = [build_forget_set(saved, speaker=s, n=k, seed=0) for s, k in zip(speakers, shares)]
    waves = [w for f in forgets for w in load_waves(f.audio_paths(), saved.preprocessing)]
    index = {label: i for i, label in enumerate(saved.labels)}
    return waves, np.array([index[e] for f in forgets for e in f.rows["emotion"]])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="a trained serkit model (its training split gives the utterances)")
    parser.add_argument("--speaker", help="training speaker(s) to draw from, comma-separated; N is split evenly "
                        "among them (a RAVDESS actor has 60 utterances, so N = 100 needs two; default: the first)")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--m", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--tau", type=float, default=0.01, help="relative to each utterance's std")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loop-samples", type=int, default=10, help="pairs the per-sample loop attacks")
    parser.add_argument("--full-utterances", type=int, default=2, help="utterances (x M targets) of the batched run without early stop")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                        help="the batched attacks' precision (the per-sample loop, the baseline, stays float32)")
    parser.add_argument("--step-schedule", choices=["constant", "cosine"], default="constant",
                        help="the early-stopped batched attack's step schedule; cosine starts at 4 x the constant step "
                        "2.5 tau / P (a mean step of twice it; RESULTS 36). The loop keeps the constant step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    saved = load_model(args.model_dir)
    speakers = (saved.config.get("provenance") or {}).get("speakers", {}).get("train") or []
    speaker = args.speaker or speakers[0]
    chosen = list(dict.fromkeys(s.strip() for s in speaker.split(",") if s.strip()))
    if args.n < len(chosen):
        parser.error(f"--n {args.n} is fewer than the {len(chosen)} speakers given: each needs at least one utterance")
    waves, labels = forget_waves(saved, chosen, args.n)
    targets = draw_targets(labels, len(saved.labels), args.m, seed=1)
    seconds = np.array([w.shape[0] / 16000 for w in waves])
    print(f"model {saved.config['architecture']} ({args.model_dir}), speaker {speaker}: N={args.n} utterances "
          f"({seconds.mean():.2f} s mean), M={args.m}, P={args.steps}, tau={args.tau} x std, {args.threads} threads, "
          f"batched in {args.precision}, early-stopped steps {args.step_schedule}")

    first = 4 if args.step_schedule == "cosine" else 1
    batched = TargetedPGD(tau=args.tau, sigma=first * 2.5 * args.tau / args.steps, steps=args.steps, early_stop=True,
                          batch_size=args.batch_size, precision=args.precision, step_schedule=args.step_schedule)
    adv = batched.generate(saved.model, waves, targets)
    s = adv.summary()
    full_steps = args.n * args.m * args.steps
    print(f"batched (batch {args.batch_size}, early stop, {args.step_schedule} steps): {s['samples']} samples in {s['seconds']:.1f} s, "
          f"{s['utterance_steps_per_s']:.1f} utterance-steps/s, mean {s['mean_steps']:.1f} steps/sample, "
          f"target success {s['target_success_rate']:.1%}, median SNR {s['snr_db_median']:.1f} dB, peak RSS {peak_rss_mb():.0f} MB")

    no_stop = TargetedPGD(tau=args.tau, steps=args.steps, early_stop=False, batch_size=args.batch_size, precision=args.precision)
    k = min(args.full_utterances, args.n)
    t = time.perf_counter()
    adv_full = no_stop.generate(saved.model, waves[:k], targets[:k])
    full_rate = k * args.m * args.steps / (time.perf_counter() - t)
    print(f"batched (batch {args.batch_size}, all {args.steps} steps): {full_rate:.1f} utterance-steps/s on {k} utterances, "
          f"target success {adv_full.success.mean():.1%}")

    loop = TargetedPGD(tau=args.tau, steps=args.steps, early_stop=False, batch_size=1)
    pairs = [(i // args.m, i % args.m) for i in range(args.loop_samples)]
    t = time.perf_counter()
    hits = 0
    for u, j in pairs:
        one = loop.generate(saved.model, [waves[u]], targets[u:u + 1, j:j + 1])
        hits += int(one.success[0])
    loop_s = time.perf_counter() - t
    loop_rate = len(pairs) * args.steps / loop_s
    print(f"per-sample loop (batch 1, all {args.steps} steps): {len(pairs)} pairs in {loop_s:.1f} s, "
          f"{loop_rate:.1f} utterance-steps/s, target success {hits / len(pairs):.0%}")
    print(f"speed-up of batching alone: {full_rate / loop_rate:.2f}x; with early stop, wall time for all "
          f"N x M pairs: {s['seconds']:.0f} s measured vs {full_steps / loop_rate:.0f} s extrapolated for the loop "
          f"({full_steps / loop_rate / max(s['seconds'], 1e-9):.1f}x)")
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
