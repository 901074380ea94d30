"""Utterance embeddings from any serkit model, saved with what they were computed from.

`embed(saved, manifest, layer)` returns one time-averaged vector per manifest row, in manifest
order. Layers: the model's named embeddings (`pooled`, `fc1`, `fc2` / `logits`) and, for
transformer backbones (whisper, ssl), `hidden:K`, the masked time-average of hidden state K
(0 = the input to the first layer).

On disk an embedding file is `NAME.npy` (float32, rows = manifest rows) plus `NAME.json` beside it:
the model and its weights' SHA-256, the layer, the manifest and its SHA-256, and the rows' paths.
Whatever is built from embeddings (a similarity graph) inherits the manifest hash, so it can be
refused when used with another manifest.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from serkit.data.dataset import load_waves
from serkit.data.manifest import Manifest
from serkit.errors import SerkitError
from serkit.inference.long import check_segments, long_rows, weighted_mean, window_and_hop
from serkit.inference.predict import model_outputs
from serkit.io import atomic_file, refuse_existing
from serkit.models.modeldir import SavedModel

FORMAT = "serkit-embeddings"


def available_layers(saved: SavedModel) -> list[str]:
    """Every layer name `embed` accepts for this model."""
    names = list(saved.model.embedding_layers())
    if "logits" not in names:
        names.append("logits")
    depth = _hidden_depth(saved)
    if depth is not None:
        names += [f"hidden:{k}" for k in range(depth + 1)]
    return names


def _hidden_depth(saved: SavedModel) -> int | None:
    model = saved.model
    if not hasattr(model, "pooled_hidden_states"):
        return None
    encoder = getattr(model, "backbone", None) or getattr(model, "encoder", None)  # ssl / whisper
    config = getattr(encoder, "config", None)
    for key in ("num_hidden_layers", "encoder_layers"):
        if config is not None and getattr(config, key, None) is not None:
            return int(getattr(config, key))
    return None


def check_layer(saved: SavedModel, layer: str) -> None:
    valid = available_layers(saved)
    if layer not in valid:
        raise SerkitError(f"layer '{layer}' does not exist in this {saved.config.get('architecture')} model; "
                          f"choose one of: {', '.join(valid)}")


@torch.no_grad()
def embed(saved: SavedModel, manifest: Manifest, layer: str, batch_size: int = 16, chunk: int = 256,
          progress: Callable[[int], None] | None = None, long_after: float | None = None, segments: str = "fixed",
          window: float | None = None, hop: float | None = None) -> np.ndarray:
    """(rows, dim) float32 embeddings of every manifest row, in manifest order. Audio is decoded
    `chunk` utterances at a time, so memory does not grow with the corpus. With `long_after`, a row longer than
    that is a long recording: streamed segment by segment (serkit.inference.long: `segments`, `window`, `hop`), its
    embedding the duration-weighted mean of its segments' embeddings."""
    check_layer(saved, layer)
    paths = manifest.audio_paths()
    long = long_rows(manifest, long_after)
    if long.any():
        check_segments(segments)
        window, hop = window_and_hop(saved, window, hop)
    short = np.flatnonzero(~long)
    parts: list[tuple[np.ndarray, np.ndarray]] = []  # (row indices, their embeddings)
    for i in np.flatnonzero(long):  # first: a file with nothing to embed fails before the corpus is read
        mean, _ = weighted_mean(saved, paths[i], window, hop, segments, batch_size,
                                lambda waves: layer_values(saved, waves, layer, batch_size))
        parts.append((np.array([i]), mean[None, :].astype(np.float32)))
        if progress is not None:
            progress(1)
    for start in range(0, len(short), chunk):
        rows = short[start:start + chunk]
        waves = load_waves([paths[i] for i in rows], saved.preprocessing)
        parts.append((rows, layer_values(saved, waves, layer, batch_size)))
        if progress is not None:
            progress(len(waves))
    if not long.any():  # as before long recordings: the chunks in manifest order
        return np.concatenate([values for _, values in parts]).astype(np.float32, copy=False)
    out = np.zeros((len(paths), parts[0][1].shape[1]), dtype=np.float32)
    for rows, values in parts:
        out[rows] = values
    return out


def layer_values(saved: SavedModel, waves: list[np.ndarray], layer: str, batch_size: int = 16) -> np.ndarray:
    """(len(waves), dim) time-averaged outputs of `layer` (checked by `check_layer`) on preprocessed waveforms."""
    if layer.startswith("hidden:"):
        return _hidden_means(saved.model, waves, int(layer.split(":", 1)[1]), batch_size)
    return model_outputs(saved.model, waves, batch_size, layers=(layer,))[layer]


def _hidden_means(model, waves: list[np.ndarray], k: int, batch_size: int) -> np.ndarray:
    from serkit.data.dataset import pad_batch

    model.eval()
    order = np.argsort([w.shape[0] for w in waves], kind="stable")
    out = [None] * len(waves)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x, mask = pad_batch([waves[i] for i in idx])
        values = model.pooled_hidden_states(x, mask)[k].float().numpy()
        for row, i in enumerate(idx):
            out[i] = values[row]
    return np.stack(out)


@dataclass
class Embeddings:
    array: np.ndarray
    meta: dict
    path: Path | None = None

    @property
    def paths(self) -> list[str]:
        return list(self.meta.get("paths") or [])


def sidecar(path: Path | str) -> Path:
    return Path(path).with_suffix(".json")


def save_embeddings(path: Path | str, array: np.ndarray, meta: dict) -> Path:
    """Write NAME.npy and NAME.json, each atomically; refused if either exists."""
    path = Path(path)
    if path.suffix != ".npy":
        raise SerkitError(f"embedding output {path} must end in .npy")
    if len(meta.get("paths", [])) != len(array):
        raise ValueError("meta['paths'] must name every row")
    for target in (path, sidecar(path)):
        refuse_existing(target, "embedding file")
    with atomic_file(path, "wb", what="embedding file") as npy, \
            atomic_file(sidecar(path), "w", what="embedding file") as sidecar_file:  # renamed first, the .npy last
        np.save(npy, np.ascontiguousarray(array, dtype=np.float32))
        json.dump({"format": FORMAT, "n": int(array.shape[0]), "dim": int(array.shape[1]), **meta}, sidecar_file, indent=1)
        sidecar_file.write("\n")
    return path


def load_embeddings(path: Path | str, require_meta: bool = True) -> Embeddings:
    path = Path(path)
    if not path.is_file():
        raise SerkitError(f"embedding file not found: {path} (make one with `serkit embed MODEL_DIR MANIFEST -o {path.name}`)")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise SerkitError(f"{path} is not a NumPy .npy array of embeddings ({exc})") from None
    if array.ndim != 2 or array.shape[0] == 0:
        raise SerkitError(f"{path}: embeddings must be a non-empty (utterances, dim) matrix, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise SerkitError(f"{path}: embeddings contain NaN or infinite values; recompute them with `serkit embed`")
    meta: dict = {}
    side = sidecar(path)
    if side.is_file():
        meta = json.loads(side.read_text())
        if meta.get("n") != array.shape[0] or len(meta.get("paths", [])) != array.shape[0]:
            raise SerkitError(f"{path} has {array.shape[0]} rows but {side} describes {meta.get('n')} utterances; "
                              "the two files do not belong together (recompute with `serkit embed`)")
    elif require_meta:
        raise SerkitError(f"{side} is missing: it records which manifest {path} was computed from; "
                          "make embeddings with `serkit embed`")
    return Embeddings(array.astype(np.float32, copy=False), meta, path)


def check_against_manifest(emb: Embeddings, manifest: Manifest) -> None:
    """Refuse embeddings that were not computed from exactly these manifest rows."""
    where = emb.path or "embeddings"
    if len(emb.array) != len(manifest):
        raise SerkitError(f"{where} has {len(emb.array)} rows but manifest {manifest.file} has {len(manifest)} "
                          "utterances; compute the embeddings from this manifest (serkit embed MODEL_DIR MANIFEST)")
    if emb.meta.get("manifest_sha256") and emb.meta["manifest_sha256"] != manifest.sha256:
        raise SerkitError(f"{where} was computed from another manifest ({emb.meta.get('manifest')}); "
                          f"recompute it from {manifest.file}")
