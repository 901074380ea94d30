"""Benchmark: an NSL training step with n neighbours against a base step (issue [4 of 5]).

The issue's goal is an NSL step with n neighbours costing at most (1 + n) base steps. This trains each
downstream CNN as `serkit transfer` does (the paper's recipe: 2 s fixed length, batch 16, Adam), on the real
EmoDB training utterances, with a graph in which EVERY utterance has n neighbours (the worst case: the paper's
FC2 graph at threshold 0.99 leaves 41 % of EmoDB without one, bench/RESULTS.md 18), and times whole steps
(forward, backward, optimizer) with serkit's own loss hook (`serkit.transfer.nsl.Neighbours`), its neighbours in
a pass of their own after the batch's: all at once (serkit before) or in chunks the size of the batch (now). The variants run
interleaved, round after round, on the same batches, so that a shared CPU's drift falls on all of them alike;
each figure is the median step over the rounds.

    .venv/bin/python bench/nsl_step.py runs/data/emodb/split.json --models cnn6 resnet9 --neighbours 3 6 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    from serkit.data.dataset import Preprocessing, UtteranceDataset, collate
    from serkit.data.splits import load_split
    from serkit.models import build_model
    from serkit.transfer.nsl import Neighbours

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split", help="a split of the EmoDB manifest (serkit data split)")
    parser.add_argument("--models", nargs="+", default=["cnn6", "resnet9"])
    parser.add_argument("--neighbours", nargs="+", type=int, default=[3, 6, 9])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.1)
    args = parser.parse_args()

    split = load_split(args.split)
    train = split.manifest.subset(split.speakers("train"))
    labels = sorted(train.frame["emotion"].unique())
    dataset = UtteranceDataset(train, labels, Preprocessing(fixed_seconds=2.0), random_crop=True)
    rng = np.random.default_rng(0)
    n_max = max(args.neighbours)
    # every utterance gets n_max distinct other utterances; a variant with n uses the first n of them
    table = np.stack([rng.choice(np.delete(np.arange(len(dataset)), i), n_max, replace=False) for i in range(len(dataset))])
    batches = [rng.choice(len(dataset), args.batch, replace=False) for _ in range(args.steps)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(dataset)} training utterances of "
          f"{args.split}, 2 s each; batch {args.batch}; every utterance has n neighbours")

    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, None, len(labels))
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        hooks = {(0, "base"): None}
        for n in args.neighbours:
            hooks[(n, "all at once")] = Neighbours(table[:, :n], dataset, args.alpha, "fc1", chunk=0)
            hooks[(n, "in chunks of the batch")] = Neighbours(table[:, :n], dataset, args.alpha, "fc1", chunk=args.batch)
        unique = {n: [] for n in hooks}
        times = {n: [] for n in hooks}

        def step(hook, index, model=model, optimizer=optimizer):
            wave, mask, target, idx = collate([dataset[int(i)] for i in index])
            optimizer.zero_grad(set_to_none=True)
            if hook is None:
                loss = torch.nn.functional.cross_entropy(model(wave, mask), target)
            else:
                loss, _ = hook(model, (wave, mask, target, idx), torch.nn.functional.cross_entropy)
            loss.backward()
            optimizer.step()

        for hook in hooks.values():  # warm-up: allocator, oneDNN kernels for each batch shape
            step(hook, batches[0])
        for _ in range(args.rounds):
            for key, hook in hooks.items():
                for index in batches:
                    t0 = time.perf_counter()
                    step(hook, index)
                    times[key].append(time.perf_counter() - t0)
                    if hook is not None:
                        unique[key].append(len(hook.batch(torch.as_tensor(index)).wave))
        base = statistics.median(times[(0, "base")])
        print(f"\n{name}: base step {base * 1000:.0f} ms (median of {len(times[(0, 'base')])})")
        print("| n | neighbour pass | neighbour rows per step (unique) | step ms | NSL / base | goal (1 + n) |")
        print("|---|---|---|---|---|---|")
        for (n, how), t in times.items():
            if n:
                t = statistics.median(t)
                print(f"| {n} | {how} | {np.mean(unique[(n, how)]):.1f} of {args.batch * n} | {t * 1000:.0f} | "
                      f"{t / base:.2f}x | {1 + n}x |")


if __name__ == "__main__":
    main()
