"""Benchmark: can several utterances share one Whisper window? (issue [4 of 5], `serkit transcribe` <= 0.1 s each)

Whisper's encoder always reads a 30 s window, and an emotional utterance fills 3-4 s of it; shorter windows make
Whisper loop (bench/RESULTS.md 24). This measures, on the same RAVDESS utterances and the bundled tiny.en on
CTranslate2 (float32):
- the default: one utterance per window, batches of 8 (what `serkit transcribe` does);
- log-Mel and the encoder alone on one 30 s window per utterance: the floor of any one-utterance-per-window decoding;
- packing: utterances laid one after another in 30 s windows with `--gap` seconds of silence between them, one
  decoding per window, and the text split back to utterances either by word alignment (CTranslate2's
  cross-attention alignment, as faster-whisper's word timestamps; a word goes to the utterance its start falls
  in) or by Whisper's own segment timestamps (a segment goes to the utterance its start falls in).
Each prints seconds per utterance and the WER against the manifest's text. The CPU may be shared: compare the
rows of one run, not runs.

    .venv/bin/python bench/transcribe_packing.py --n 120 --gap 1.0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"
WINDOW = 30.0


def pack(lengths: list[float], gap: float) -> list[list[tuple[int, float, float]]]:
    """Utterances in order into windows: (index, start s, end s) each, gap seconds apart, ending before 29 s."""
    windows, current, position = [], [], 0.0
    for i, seconds in enumerate(lengths):
        if current and position + seconds > WINDOW - 1.0:
            windows.append(current)
            current, position = [], 0.0
        current.append((i, position, position + seconds))
        position += seconds + gap
    return windows + ([current] if current else [])


def owner(window, t: float) -> int:
    """The utterance of `window` whose span (widened by half the gaps) holds time t, else the nearest."""
    def distance(item):
        _, start, end = item
        return 0.0 if start <= t <= end else min(abs(t - start), abs(t - end))
    return min(window, key=distance)[0]


def main() -> None:
    import ctranslate2
    from faster_whisper import WhisperModel

    from serkit.data.dataset import Preprocessing, load_waves
    from serkit.dimensional.asr import SAMPLE_RATE, load_recogniser
    from serkit.dimensional.transcribe import word_error_rate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--gap", type=float, default=1.0, help="seconds of silence between packed utterances")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    frame = pd.read_csv(DATA / "manifest.csv", dtype=str, keep_default_na=False)
    per_actor = max(1, args.n // frame.speaker.nunique())
    rng = np.random.default_rng(0)
    subset = pd.concat(g.iloc[rng.choice(len(g), per_actor, replace=False)] for _, g in frame.groupby("speaker"))
    waves = load_waves([str(DATA / p) for p in subset.path], Preprocessing())
    references = list(subset.text)
    rec = load_recogniser("builtin:whisper-tiny.en", "ctranslate2", compute_type="float32")
    aligner = WhisperModel(str(rec.path), device="cpu", compute_type="float32", local_files_only=True)
    print(f"{len(waves)} RAVDESS utterances ({per_actor} per actor), mean {np.mean([len(w) for w in waves]) / SAMPLE_RATE:.2f} s; "
          f"Whisper tiny.en on CTranslate2 float32, batch {args.batch}")

    def encode(audio: list[np.ndarray]):
        mels = [rec.features(np.pad(a.astype(np.float32), (0, int(WINDOW * SAMPLE_RATE) - len(a))), padding=0)[:, :3000]
                for a in audio]
        return rec.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(mels))), to_cpu=False)

    rec.decode(waves[:args.batch])  # warm-up, untimed: CTranslate2's first call would fall on the first row
    rows = []
    start = time.perf_counter()
    texts = []
    for s in range(0, len(waves), args.batch):
        texts += rec.decode(waves[s:s + args.batch])
    rows.append(("one utterance per window (the default)", time.perf_counter() - start, word_error_rate(texts, references)))

    start = time.perf_counter()
    for s in range(0, len(waves), args.batch):
        encode(waves[s:s + args.batch])
    rows.append(("  of which log-Mel + the encoder alone", time.perf_counter() - start, None))

    windows = pack([len(w) / SAMPLE_RATE for w in waves], args.gap)
    audio = []
    for window in windows:
        a = np.zeros(int(WINDOW * SAMPLE_RATE), np.float32)
        for i, begin, _ in window:
            a[int(begin * SAMPLE_RATE):int(begin * SAMPLE_RATE) + len(waves[i])] = waves[i]
        audio.append(a)
    eot, first_time = rec.tokenizer.eot, rec.tokenizer.timestamp_begin
    for how in ("word alignment", "segment timestamps"):
        start = time.perf_counter()
        out = [""] * len(waves)
        for b in range(0, len(audio), args.batch):
            encoded = encode(audio[b:b + args.batch])
            prompt = rec.prompt if how == "word alignment" else list(rec.tokenizer.sot_sequence)
            results = rec.model.generate(encoded, [prompt] * len(audio[b:b + args.batch]), beam_size=1, max_length=448,
                                         suppress_blank=True, suppress_tokens=[-1])
            sequences = [r.sequences_ids[0] for r in results]
            if how == "word alignment":
                words = aligner.find_alignment(rec.tokenizer, [[t for t in q if t < eot] for q in sequences], encoded, 3000)
                pieces = [[(w["word"], w["start"]) for w in ws] for ws in words]
            else:
                pieces = []
                for q in sequences:
                    segs, tokens, begin = [], [], None
                    for t in q:
                        if t >= first_time:
                            if begin is None:
                                begin = (t - first_time) * 0.02
                            else:
                                segs.append((rec.tokenizer.decode(tokens), begin))
                                tokens, begin = [], None
                        elif t < eot:
                            tokens.append(t)
                    if tokens:
                        segs.append((rec.tokenizer.decode(tokens), begin or 0.0))
                    pieces.append(segs)
            for window, window_pieces in zip(windows[b:b + args.batch], pieces):
                for text, begin in window_pieces:
                    out[owner(window, begin + 0.05)] += text
        rows.append((f"packed, {len(windows)} windows, {args.gap:g} s gaps, split by {how}", time.perf_counter() - start,
                     word_error_rate(out, references)))
        if how == "word alignment":
            shown = [(o.strip(), r) for o, r in zip(out, references) if o.strip().rstrip(".").lower() != r.lower()][:3]
            examples = "; ".join(f"'{o}' for '{r}'" for o, r in shown)

    print("| decoding | s / utterance | WER vs text |\n|---|---|---|")
    for name, seconds, wer in rows:
        print(f"| {name} | {seconds / len(waves):.3f} | {'' if wer is None else f'{wer:.3f}'} |")
    print(f"packed by word alignment, first transcripts that differ from the text: {examples}")


if __name__ == "__main__":
    main()
