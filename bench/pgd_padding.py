"""How much padding costs PGD samples made on demand (issue [4 of 5], bench/RESULTS.md 28): the samples one
fine-tuning step asks for come from ~10 utterances of different lengths; made in one batch, every sample runs at
the longest one's length. Side by side on the same model, forget set and samples: one padded batch per step (what
adversarial_generation on-demand does today) against batches that close where padding would pass max_padding of
their longest sample, and the same samples made up front (M per utterance, batches of 32). Prints seconds per
sample and the largest difference between the samples (the same ids keep the same random start).

    .venv/bin/python bench/pgd_padding.py runs/ravdess-whisper-cal/model --speakers 05 12 19 --n 10
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from serkit.models.modeldir import load_model
from serkit.unlearning.evaluation import evaluation_sets
from serkit.unlearning.forget_set import build_forget_set, training_data
from serkit.unlearning.pgd import TargetedPGD, draw_targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--speakers", nargs="+", default=["05"])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="fine-tuning steps whose samples are made")
    parser.add_argument("--max-padding", type=float, nargs="+", default=[0.1, 0.0])
    args = parser.parse_args()
    saved = load_model(args.model)
    data = training_data(saved)
    m, batch, p = 10, 16, 20
    print("speaker | way | samples | seconds | s / sample | ratio to one padded batch | max |diff| to padded")
    for speaker in args.speakers:
        forget_set = build_forget_set(saved, speaker=speaker, n=args.n, seed=0, data=data)
        waves = evaluation_sets(saved, data, forget_set, "val")[0].waves
        targets = draw_targets(evaluation_sets(saved, data, forget_set, "val")[0].labels, len(saved.labels), m, 1)
        source, flat = np.repeat(np.arange(len(waves)), m), targets.reshape(-1)
        order = np.random.default_rng(0).permutation(len(flat))[: args.steps * batch]  # what the first steps use
        steps = [order[s * batch:(s + 1) * batch] for s in range(args.steps)]
        ways = {"one padded batch per step": TargetedPGD(tau=0.01, steps=p, batch_size=32, seed=0)}
        for share in args.max_padding:
            ways[f"max_padding {share:g}"] = TargetedPGD(tau=0.01, steps=p, batch_size=32, seed=0, max_padding=share)
        made = {}
        for name, pgd in ways.items():
            start, out = time.perf_counter(), {}
            for ids in steps:
                result = pgd.attack(saved.model, waves, source[ids], flat[ids], ids)
                out.update({int(i): w for i, w in zip(ids, result.waves)})
            seconds = time.perf_counter() - start
            made[name] = (seconds, out)
            base = made["one padded batch per step"]
            diff = max(float(np.abs(out[i] - base[1][i]).max()) for i in out)
            print(f"{speaker} | {name} | {len(out)} | {seconds:.1f} | {seconds / len(out):.3f} | "
                  f"{seconds / base[0]:.2f} | {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
