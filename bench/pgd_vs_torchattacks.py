"""Benchmark: serkit's targeted PGD against torchattacks' PGD on the same model, utterances, targets, steps.

torchattacks attacks images in [0, 1]; the waveform x in [-1, 1] is given to it as (x + 1) / 2 and the model
maps it back, so its eps and step are half of serkit's absolute tau and sigma. To compare like with like every
utterance is cut to the same length (the shortest forget utterance; torchattacks has no padding mask) and
serkit runs with `tau_mode="absolute"` (tau = --tau x the mean std of the utterances). Both run random start,
P steps, batches of --batch-size samples. torchattacks always runs all P steps; serkit is timed without early
stop (the same work), with it (what a deletion request runs), with it but without the trim when rows shrink, and
with it in bfloat16 after the front end (`pgd_precision=bfloat16`), with it and a cosine step schedule from 4
sigma (`pgd_step_schedule=cosine`); --serkit picks which. Prints utterance-steps
per second, the ratios, the target success rates and serkit's mean steps (the two draw different random starts,
so only the statistics can agree).

torchattacks pins an old `requests`; install it without its dependencies: pip install --no-deps torchattacks

    .venv/bin/python bench/pgd_vs_torchattacks.py MODEL_DIR --n 10 --m 10 --steps 20
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from serkit.data.dataset import load_waves
from serkit.models import load_model
from serkit.unlearning import pgd
from serkit.unlearning.forget_set import build_forget_set
from serkit.unlearning.pgd import TargetedPGD, draw_targets

# name: (label, early stop, trim when rows shrink, precision, step schedule, first step in sigmas). "no-trim": what a
# request ran before PGD gave freed pages back whenever its rows shrink (RESULTS 32c); "bf16": the model after its front
# end in bfloat16 (RESULTS 35); "cosine": steps annealed from 4 sigma (a mean step of 2 sigma; RESULTS 36)
SERKIT_RUNS = {"all": ("serkit, all steps", False, True, "float32", "constant", 1),
               "early": ("serkit, early stop", True, True, "float32", "constant", 1),
               "no-trim": ("serkit, early, no trim", True, False, "float32", "constant", 1),
               "bf16": ("serkit, early, bfloat16", True, True, "bfloat16", "constant", 1),
               "cosine": ("serkit, early, cosine", True, True, "float32", "cosine", 4)}


class UnitInterval(nn.Module):
    """The model on [0, 1] inputs, as torchattacks hands them over."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        wave = x01 * 2 - 1
        return self.model(wave, torch.ones_like(wave, dtype=torch.bool))


def main() -> None:
    import torchattacks

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--speaker")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--m", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tau", type=float, default=0.01, help="x the utterances' mean std, absolute for both")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--serkit", nargs="+", choices=list(SERKIT_RUNS), default=list(SERKIT_RUNS),
                        help="which of serkit's attacks to time (default all)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    saved = load_model(args.model_dir)
    speaker = args.speaker or (saved.config.get("provenance") or {}).get("speakers", {}).get("train", [None])[0]
    forget = build_forget_set(saved, speaker=speaker, n=args.n, seed=0)
    waves = load_waves(forget.audio_paths(), saved.preprocessing)
    length = min(w.shape[0] for w in waves)
    waves = [w[:length] for w in waves]
    index = {label: i for i, label in enumerate(saved.labels)}
    labels = np.array([index[e] for e in forget.rows["emotion"]])
    targets = draw_targets(labels, len(saved.labels), args.m, seed=1)
    tau = args.tau * float(np.mean([w.std() for w in waves]))
    sigma = 2.5 * tau / args.steps
    pairs = args.n * args.m
    print(f"model {saved.config['architecture']}, speaker {speaker}: N={args.n} utterances cut to {length / 16000:.2f} s, "
          f"M={args.m}, P={args.steps}, tau={tau:.2e} (absolute), sigma={sigma:.2e}, batch {args.batch_size}, {args.threads} threads")

    saved.model.eval()
    rates, success = {}, {}
    for key in args.serkit:
        name, early, trim_rows, precision, schedule, first = SERKIT_RUNS[key]
        attack = TargetedPGD(tau=tau, sigma=first * sigma, steps=args.steps, tau_mode="absolute", early_stop=early,
                             batch_size=args.batch_size, precision=precision, step_schedule=schedule)
        pgd.TRIM_WHEN_ROWS_DROP = trim_rows
        start = time.perf_counter()
        adv = attack.generate(saved.model, waves, targets)
        seconds = time.perf_counter() - start
        rates[name], success[name] = pairs * args.steps / seconds, float(adv.success.mean())
        print(f"{name:24s}: {seconds:6.1f} s, {rates[name]:6.1f} utterance-steps/s (of P for every pair), "
              f"target success {success[name]:.1%}, mean steps {adv.steps_taken.mean():.1f}", flush=True)
    pgd.TRIM_WHEN_ROWS_DROP = True

    wrapped = UnitInterval(saved.model).eval()
    for p in wrapped.parameters():
        p.requires_grad_(False)
    attack = torchattacks.PGD(wrapped, eps=tau / 2, alpha=sigma / 2, steps=args.steps, random_start=True)
    attack.set_mode_targeted_by_label(quiet=True)
    flat = torch.from_numpy(np.stack([waves[i] for i in np.repeat(np.arange(args.n), args.m)]))
    flat_targets = torch.as_tensor(targets.reshape(-1))
    start, hits = time.perf_counter(), 0
    for b in range(0, pairs, args.batch_size):
        x01 = (flat[b:b + args.batch_size] + 1) / 2
        adv01 = attack(x01, flat_targets[b:b + args.batch_size])
        with torch.no_grad():
            hits += int((wrapped(adv01).argmax(-1) == flat_targets[b:b + args.batch_size]).sum())
    seconds = time.perf_counter() - start
    name = "torchattacks PGD"
    rates[name], success[name] = pairs * args.steps / seconds, hits / pairs
    print(f"{name:24s}: {seconds:6.1f} s, {rates[name]:6.1f} utterance-steps/s, target success {success[name]:.1%}")
    print("serkit / torchattacks: " + "; ".join(f"{label}: {rates[label] / rates[name]:.2f}x"
                                                for label, *_ in (SERKIT_RUNS[k] for k in args.serkit)))


if __name__ == "__main__":
    main()
