"""serkit transcribe: the runtimes side by side on the same RAVDESS utterances (issue [4 of 5]).

Whisper tiny.en (the bundled checkpoint), greedy, batch 8, on N utterances (N/24 per actor, numpy seed 0):
transformers over 30 s windows (the reference), CTranslate2 (float32, int8) over 30 s windows, CTranslate2
int8 over shorter windows. Each run starts from an empty cache. Prints seconds per utterance, the WER
against the manifest's text, how many transcripts differ from the reference's, and the speed-up.

    .venv/bin/python bench/transcribe_benchmark.py [--n 120] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from serkit.dimensional.transcribe import normalise, transcribe

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"
RUNS = [("transformers, 30 s", "transformers", 30.0, "int8"), ("ctranslate2 float32, 30 s", "ctranslate2", 30.0, "float32"),
        ("ctranslate2 int8, 30 s", "ctranslate2", 30.0, "int8"), ("ctranslate2 int8, 20 s", "ctranslate2", 20.0, "int8"),
        ("ctranslate2 int8, 15 s", "ctranslate2", 15.0, "int8"), ("ctranslate2 int8, 10 s", "ctranslate2", 10.0, "int8")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every runtime, interleaved (the CPU is shared)")
    args = parser.parse_args()
    frame = pd.read_csv(DATA / "manifest.csv", dtype=str, keep_default_na=False)
    frame["path"] = [str(DATA / p) for p in frame["path"]]
    per_actor = max(1, args.n // frame.speaker.nunique())
    rng = np.random.default_rng(0)
    subset = pd.concat(g.iloc[rng.choice(len(g), per_actor, replace=False)] for _, g in frame.groupby("speaker"))
    work = Path(tempfile.mkdtemp(prefix="serkit-asr-bench-"))
    subset[["path", "speaker", "emotion", "text"]].to_csv(work / "m.csv", index=False)
    print(f"{len(subset)} RAVDESS utterances ({per_actor} per actor), mean {subset.duration_s.astype(float).mean():.2f} s")
    seconds, texts, wers = {}, {}, {}
    for r in range(args.repeats):
        for name, engine, window, compute in RUNS:
            out = work / f"{engine}-{window}-{compute}-{r}.csv"
            start = time.perf_counter()
            report = transcribe(work / "m.csv", out, engine=engine, window=window, compute_type=compute,
                                cache_dir=work / f"cache-{engine}-{window}-{compute}-{r}", log=lambda *_: None)
            seconds.setdefault(name, []).append((time.perf_counter() - start) / len(subset))
            texts[name], wers[name] = pd.read_csv(out, keep_default_na=False)["asr_text"].map(normalise).tolist(), report["wer_vs_text"]
    reference = RUNS[0][0]
    print(f"{'runtime':26s} {'s / utterance':>14s} {'speed-up':>9s} {'WER':>7s} {'differ from transformers':>25s}")
    for name, *_ in RUNS:
        best = min(seconds[name])
        differ = sum(a != b for a, b in zip(texts[name], texts[reference]))
        print(f"{name:26s} {best:14.3f} {min(seconds[reference]) / best:8.1f}x {wers[name]:7.3f} {differ:25d}")
    print("seconds per utterance: the best of the rounds (all rounds: "
          + "; ".join(f"{n} {', '.join(f'{s:.3f}' for s in v)}" for n, v in seconds.items()) + ")")


if __name__ == "__main__":
    main()
