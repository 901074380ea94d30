"""Per-layer linear probes on a frozen pretrained encoder (default: Whisper tiny.en).

Time-averaged hidden states of every layer -> linear SVM, C by 5-fold speaker-grouped grid search
on the training speakers; UAR/accuracy on the validation and test speakers. Prints a markdown
table and writes a PNG.

    .venv/bin/python bench/layer_probe.py runs/data/ravdess/split.json --png bench/figures/ravdess_whisper_layers.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from serkit.analysis.probes import layer_means, linear_probe  # noqa: E402
from serkit.data.dataset import Preprocessing, load_waves  # noqa: E402
from serkit.data.splits import load_split  # noqa: E402
from serkit.models import build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split")
    parser.add_argument("--checkpoint", default="builtin:whisper-tiny.en")
    parser.add_argument("--trim-silence-db", type=float, default=40.0, help="0: no trimming")
    parser.add_argument("--png", type=Path)
    args = parser.parse_args()

    split = load_split(args.split)
    model = build_model("whisper", {"checkpoint": args.checkpoint}, 2).eval()
    prep = Preprocessing(trim_silence_db=args.trim_silence_db or None)
    start = time.perf_counter()
    feats, labels, groups = {}, {}, {}
    for part in ("train", "val", "test"):
        rows = split.part(part)
        feats[part] = layer_means(model, load_waves(rows.audio_paths(), prep))
        labels[part] = np.array(rows.frame["emotion"])
        groups[part] = np.array(rows.frame["speaker"])
    embed_s = time.perf_counter() - start
    print(f"{args.split}: {args.checkpoint}, embeddings of {sum(len(v) for v in labels.values())} utterances in {embed_s:.0f} s")
    print("| layer | C | CV UAR (train) | val UAR | test UAR | test accuracy |")
    print("|---|---|---|---|---|---|")
    rows_out = []
    for layer in range(feats["train"].shape[0]):
        test = linear_probe(feats["train"][layer], labels["train"], feats["test"][layer], labels["test"], groups["train"])
        val = linear_probe(feats["train"][layer], labels["train"], feats["val"][layer], labels["val"], groups["train"])
        rows_out.append((layer, test, val))
        print(f"| {layer} | {test.c:g} | {test.cv_uar:.3f} | {val.test_uar:.3f} | {test.test_uar:.3f} | {test.test_war:.3f} |")
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.png:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(5, 3.2))
        layers = [r[0] for r in rows_out]
        ax.plot(layers, [r[2].test_uar for r in rows_out], "s-", label="val UAR")
        ax.plot(layers, [r[1].test_uar for r in rows_out], "o-", label="test UAR")
        ax.set_xlabel("hidden state (0 = input to the first layer)")
        ax.set_ylabel("UAR")
        ax.set_xticks(layers)
        ax.set_title(f"linear probes, frozen {args.checkpoint.split(':')[-1]}", fontsize=9)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
