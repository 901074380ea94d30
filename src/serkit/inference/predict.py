"""Batched inference: class probabilities and embeddings for lists of waveforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from serkit import SAMPLE_RATE
from serkit.data.dataset import load_waves, pad_batch
from serkit.errors import AudioError, ConfigError
from serkit.models.modeldir import SavedModel
from serkit.models.registry import SERModel


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size}: give 1 or more utterances per batch (--batch-size)")


@torch.no_grad()
def model_outputs(model: SERModel, waves: list[np.ndarray], batch_size: int = 16,
                  layers: tuple[str, ...] = ("logits",), device: str | torch.device | None = None) -> dict[str, np.ndarray]:
    """Run `model` over `waves` in length-sorted batches (less padding; the models are
    padding-invariant, so the order does not change any output). Returns arrays in input order."""
    check_batch_size(batch_size)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = np.argsort([w.shape[0] for w in waves], kind="stable")
    outputs: dict[str, list] = {name: [None] * len(waves) for name in layers}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        wave, mask = pad_batch([waves[i] for i in idx])
        feats = model.features(wave.to(device), mask.to(device))
        for name in layers:
            values = feats[name].float().cpu().numpy()
            for row, i in enumerate(idx):
                outputs[name][i] = values[row]
    model.train(was_training)
    return {name: np.stack(rows) for name, rows in outputs.items()}


def check_lengths(model: SERModel, waves: list[np.ndarray], paths, named_in: str = "manifest") -> None:
    """Name the first clip longer than the model's input window (Whisper: 30 s) before any batch
    runs: the model alone can only say that some input of a batch was too long."""
    limit = model.max_seconds
    if limit is None:
        return
    for wave, path in zip(waves, paths):
        if wave.shape[0] > limit * SAMPLE_RATE:
            also = ", or remove it from the manifest" if named_in == "manifest" else ""
            raise AudioError(f"audio file {path} is {wave.shape[0] / SAMPLE_RATE:.1f} s long (after the model's preprocessing), "
                             f"longer than this model's {limit:g}-s input window; crop it or split it into clips of at most "
                             f"{limit:g} s{also}")


def predict_proba(model: SERModel, waves: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
    logits = model_outputs(model, waves, batch_size)["logits"]
    logits = logits - logits.max(1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(1, keepdims=True)


def predict_files(saved: SavedModel, files: list[Path | str], batch_size: int = 16) -> list[dict]:
    """Label and class probabilities for each file. Every file is read before any prediction."""
    waves = load_waves([Path(f) for f in files], saved.preprocessing, named_in="command line")
    check_lengths(saved.model, waves, files, "command line")
    probs = predict_proba(saved.model, waves, batch_size)
    results = []
    for path, row in zip(files, probs):
        best = int(np.argmax(row))
        results.append({
            "file": str(path),
            "label": saved.labels[best],
            "confidence": float(row[best]),
            "probabilities": {label: float(p) for label, p in zip(saved.labels, row)},
        })
    return results
