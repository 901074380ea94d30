"""Torch datasets over a manifest: decoded once, cropped per item, padded per batch with a mask."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from serkit import SAMPLE_RATE
from serkit.data.audio import load_audio, trim_silence
from serkit.data.manifest import Manifest


@dataclass(frozen=True)
class Preprocessing:
    """What happens to a waveform before the model sees it. Saved with every model, so that
    evaluation and prediction repeat exactly what training did."""

    sample_rate: int = SAMPLE_RATE
    trim_silence_db: float | None = None
    fixed_seconds: float | None = None  # repeat short utterances and cut long ones (paper 003)

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        if self.trim_silence_db is not None:
            wave = trim_silence(wave, self.trim_silence_db)
        if self.fixed_seconds is not None:
            wave = repeat_to_length(wave, int(round(self.fixed_seconds * self.sample_rate)))
        return wave

    def to_dict(self) -> dict:
        return {"sample_rate": self.sample_rate, "trim_silence_db": self.trim_silence_db,
                "fixed_seconds": self.fixed_seconds}

    @classmethod
    def from_dict(cls, values: dict) -> "Preprocessing":
        return cls(**{k: values[k] for k in ("sample_rate", "trim_silence_db", "fixed_seconds") if k in values})


def repeat_to_length(wave: np.ndarray, length: int) -> np.ndarray:
    """Self-repeat a short utterance and cut it to `length` samples: no zero padding at all."""
    if wave.shape[0] < length:
        wave = np.tile(wave, -(-length // wave.shape[0]))
    return wave[:length]


def load_waves(paths, preprocessing: Preprocessing, workers: int | None = None, named_in: str = "manifest") -> list[np.ndarray]:
    """Decode and preprocess every file (in parallel threads; libsndfile and soxr release the GIL).
    `named_in`: where the paths come from, for what an error tells the user to do (see serkit.data.audio.FIXES)."""

    def one(path):
        return preprocessing(load_audio(path, preprocessing.sample_rate, named_in=named_in))

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, paths))


class UtteranceDataset(Dataset):
    """Waveforms and label indices of the rows of a manifest.

    `max_seconds` bounds the length of each item: a random crop when `random_crop` (training),
    the first `max_seconds` otherwise. None keeps whole utterances.
    """

    def __init__(self, manifest: Manifest, labels: list[str], preprocessing: Preprocessing,
                 max_seconds: float | None = None, random_crop: bool = False, waves: list | None = None,
                 targets: np.ndarray | None = None):
        self.manifest = manifest
        self.labels = list(labels)
        if targets is None:  # classification: label indices
            manifest.check_labels(labels, "the model")
            index = {label: i for i, label in enumerate(self.labels)}
            self.targets = np.array([index[e] for e in manifest.frame["emotion"]], dtype=np.int64)
        else:  # regression: one row of values per utterance
            self.targets = np.asarray(targets)
        self.waves = waves if waves is not None else load_waves(manifest.audio_paths(), preprocessing)
        self.max_samples = None if max_seconds is None else int(max_seconds * preprocessing.sample_rate)
        self.random_crop = random_crop

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i: int):
        wave = self.waves[i]
        if self.max_samples is not None and wave.shape[0] > self.max_samples:
            start = 0
            if self.random_crop:
                # torch's RNG: seeded by Lightning per worker, so crops are reproducible
                start = int(torch.randint(0, wave.shape[0] - self.max_samples + 1, ()).item())
            wave = wave[start:start + self.max_samples]
        return torch.from_numpy(np.ascontiguousarray(wave)), self.targets[i], i


def collate(batch):
    """Pad waveforms to the longest in the batch; the mask marks real samples."""
    waves, targets, indices = zip(*batch)
    lengths = torch.tensor([w.shape[0] for w in waves])
    padded = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in enumerate(waves):
        padded[row, : wave.shape[0]] = wave
    mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
    return padded, mask, torch.as_tensor(np.asarray(targets)), torch.tensor(indices)


def pad_batch(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    padded, mask, _, _ = collate([(torch.from_numpy(w), 0, 0) for w in waves])
    return padded, mask
