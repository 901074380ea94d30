"""Where do two transformer models attend differently? (paper 002, Sec. V-C, Eq. 1)

For each utterance, layer l and head h, the self-attention map A (frames x frames; each row a
distribution over the frames attended to) is taken from both models, and the Bhattacharyya
distance between corresponding rows, D_B(p, q) = -ln sum_j sqrt(p_j q_j), is averaged over the
utterance's frames and then over utterances. 0: the two heads attend identically. The result is a
layers x heads matrix, drawn as a heatmap.

Works for serkit's transformer backbones: `whisper` and `ssl` (wav2vec 2.0, HuBERT; WavLM's
attention does not expose per-head maps). Both models must have the same number of layers and
heads; padding frames are left out of every row and every average.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from serkit.data.dataset import load_waves, pad_batch
from serkit.data.manifest import Manifest
from serkit.errors import SerkitError
from serkit.models.modeldir import SavedModel

EPS = 1e-12


def bhattacharyya(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """D_B between distributions along the last axis; the coefficient is floored at 1e-12 (D_B <= 27.6)."""
    coefficient = torch.sqrt(torch.clamp(p, min=0) * torch.clamp(q, min=0)).sum(-1)
    return -torch.log(torch.clamp(coefficient, min=EPS, max=1.0))


def _attention_modules(saved: SavedModel) -> tuple[list[torch.nn.Module], object]:
    model = saved.model
    arch = saved.config.get("architecture")
    if arch == "whisper":
        return [layer.self_attn for layer in model.encoder.layers], model.encoder.config
    if arch == "ssl":
        backbone = model.backbone
        if backbone.config.model_type == "wavlm":
            raise SerkitError(f"{saved.path}: WavLM's attention does not expose per-head maps; "
                              "attention analysis supports whisper, wav2vec 2.0 and HuBERT models")
        return [layer.attention for layer in backbone.encoder.layers], backbone.config
    raise SerkitError(f"{saved.path} is a '{arch}' model, which has no self-attention; "
                      "attention analysis needs a transformer backbone (whisper or ssl)")


@contextlib.contextmanager
def _capture(saved: SavedModel):
    """Collect every layer's attention weights (B, heads, frames, frames) during one forward pass."""
    modules, config = _attention_modules(saved)
    caught: list = [None] * len(modules)
    previous = config._attn_implementation
    config._attn_implementation = "eager"  # the fused kernels do not return the weights

    def hook(index):
        def store(module, inputs, output):
            caught[index] = output[1]
        return store

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        yield caught
    finally:
        for h in handles:
            h.remove()
        config._attn_implementation = previous


@torch.no_grad()
def attention_maps(saved: SavedModel, wave: torch.Tensor, mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-layer attention maps (B, heads, T, T) and the frame mask (B, T)."""
    model = saved.model.eval()
    with _capture(saved) as caught:
        if saved.config.get("architecture") == "whisper":
            _, frame_mask = model.hidden_states(wave, mask)
        else:
            out = model._backbone(wave, mask, hidden_states=False)
            frame_mask = model.backbone._get_feature_vector_attention_mask(out.last_hidden_state.shape[1], mask.long())
    if any(c is None for c in caught):
        raise SerkitError(f"{saved.path}: the backbone did not return attention weights")
    return list(caught), frame_mask.bool()


def attention_distance(a: SavedModel, b: SavedModel, manifest: Manifest, max_utterances: int | None = None,
                       batch_size: int = 8, seed: int = 0) -> dict:
    """Mean Bhattacharyya distance per (layer, head) between the two models' attention rows."""
    mods_a, mods_b = _attention_modules(a)[0], _attention_modules(b)[0]
    if any(getattr(m.model, "group_norm_encoder", False) for m in (a, b)):
        batch_size = 1  # a group-norm encoder attends to padding: one unpadded utterance at a time
    if len(mods_a) != len(mods_b):
        raise SerkitError(f"{a.path} has {len(mods_a)} attention layers and {b.path} {len(mods_b)}; compare models of one architecture")
    rows = manifest.frame
    if max_utterances is not None and len(rows) > max_utterances:
        rows = rows.sample(n=max_utterances, random_state=seed)
    subset = Manifest(rows.reset_index(drop=True), manifest.file, manifest.sha256)
    waves = load_waves(subset.audio_paths(), a.preprocessing)
    total, count = None, 0
    order = np.argsort([w.shape[0] for w in waves])
    for start in range(0, len(order), batch_size):
        x, mask = pad_batch([waves[i] for i in order[start:start + batch_size]])
        maps_a, frames = attention_maps(a, x, mask)
        maps_b, frames_b = attention_maps(b, x, mask)
        if frames.shape != frames_b.shape or maps_a[0].shape[1] != maps_b[0].shape[1]:
            raise SerkitError("the two models give attention maps of different shapes (frames or heads); "
                              "compare models of one architecture")
        valid = frames.to(torch.float32)  # (B, T)
        per_layer = []
        for pa, pb in zip(maps_a, maps_b):
            d = bhattacharyya(pa.float(), pb.float())  # (B, H, T): one value per query frame
            per_utt = (d * valid[:, None, :]).sum(-1) / valid.sum(-1)[:, None]  # (B, H): mean over frames
            per_layer.append(per_utt.sum(0))  # summed over utterances
        batch = torch.stack(per_layer).numpy()  # (L, H)
        total = batch if total is None else total + batch
        count += x.shape[0]
    matrix = total / count
    return {"model_a": str(a.path), "model_b": str(b.path), "utterances": count, "manifest": str(manifest.file),
            "layers": matrix.shape[0], "heads": matrix.shape[1], "distance": matrix.tolist(),
            "mean_per_layer": matrix.mean(1).tolist()}


def attention_png(path: Path, result: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(result["distance"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * matrix.shape[1], 1.0 + 0.4 * matrix.shape[0]))
    image = ax.imshow(matrix, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_yticks(range(matrix.shape[0]), [str(i + 1) for i in range(matrix.shape[0])])
    fig.colorbar(image, ax=ax, label="Bhattacharyya distance")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
