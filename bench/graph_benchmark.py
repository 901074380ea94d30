"""Benchmark: similarity-graph build time and peak memory at 10 k and 100 k random 256-d embeddings.

Each size runs in a fresh process, so its peak resident memory is its own. The embeddings are
clustered Gaussian vectors (1000 centres), so a threshold links real neighbours, as on speech.

    .venv/bin/python bench/graph_benchmark.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def one(n: int, dim: int, threshold: float, k: int) -> dict:
    from serkit.transfer.graph import build_graph

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, n)] + 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    graph = build_graph(x, threshold=threshold, max_neighbours=k)
    seconds = time.perf_counter() - start
    s = graph.stats()
    return {"n": n, "dim": dim, "seconds": round(seconds, 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_before_mb": round(before), "embeddings_mb": round(x.nbytes / 2**20), "degree_mean": round(s["degree_mean"], 2),
            "isolated_fraction": round(s["isolated_fraction"], 3), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--threshold", type=float, default=0.99)
    parser.add_argument("--max-neighbours", type=int, default=6)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.dim, args.threshold, args.max_neighbours)))
        return
    print("| embeddings | dim | build time (s) | peak RSS (MB) | of which embeddings (MB) | mean degree | isolated | threads |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--dim", str(args.dim), "--threshold", str(args.threshold),
                              "--max-neighbours", str(args.max_neighbours)], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['n']:,} | {r['dim']} | {r['seconds']:.1f} | {r['peak_rss_mb']} | {r['embeddings_mb']} | {r['degree_mean']} "
              f"| {r['isolated_fraction']:.1%} | {r['threads']} |", flush=True)


if __name__ == "__main__":
    main()
