"""Which weights matter for some utterances: per-parameter importances, and the quadratic anchor.

Two estimators, both one utterance at a time in eval mode (no dropout noise, batch-norm statistics
as trained), so that an importance is a mean over utterances whatever the batch size:
- `fisher_diagonal`: F_k = mean_e (d CE(f(x_e), y_e) / d theta_k)^2, the empirical diagonal Fisher.
  Which labels y_e is the caller's choice: the papers' EWC uses the random wrong labels, SSD the
  true ones.
- `mas_importance`: Omega_k = mean_e |d ||f(x_e)||_2 / d theta_k|, Memory Aware Synapses (Aljundi et
  al., ECCV 2018): the sensitivity of the output itself, no labels needed (L2UL's choice).

`AnchorPenalty` is sum_k w_k (theta_k - theta*_k)^2 for any weights w: EWC's w = F holds the weights
that matter for the forget set; L2UL's w = (1 - Omega~)/2 frees exactly those and holds the rest.

A model's *training* importances (the Fisher over its own training utterances, which SSD compares a
forget set's with) are computed once while the training data exists (at the end of `serkit train`, or by
`serkit models importances` for an older model) and stored beside the weights as `importances.safetensors`, bound
to those weights by their hash: a deletion request then reads the forget set alone. Beside them it
stores the second moments of the training utterances' features at the input of each head layer
(sum_e x_e x_e^T, `moments.<layer>`), from which PGU finds the directions the training data uses.

After a request that moved only the head, the retained moments (the stored ones less the forget set's) go to a
file beside the request's keys, `forget-keys.moments.safetensors`, bound to the new weights: as private as the keys
(beside the shared ones, they would tell the forget set's moments), and what the next request of that lineage reads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from serkit.data.dataset import pad_batch
from serkit.errors import SerkitError
from serkit.io import atomic_file
from serkit.models.modeldir import IMPORTANCES as IMPORTANCES_FILE

Importance = dict[str, torch.Tensor]


def _each_utterance(model: nn.Module, waves: list[np.ndarray], progress: Callable | None = None):
    """(index, x, mask) for each utterance alone, in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for index, wave in enumerate(waves):
            x, mask = pad_batch([wave])
            yield index, x.to(device), mask.to(device)
            if progress is not None:
                progress(index + 1, len(waves))
    finally:
        model.train(was_training)


def _per_utterance(model: nn.Module, waves: list[np.ndarray], objective: Callable, accumulate: Callable,
                   progress: Callable | None = None) -> Importance:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for index, x, mask in _each_utterance(model, waves, progress):
        grads = torch.autograd.grad(objective(model(x, mask), index), list(params.values()), allow_unused=True)
        for (name, _), grad in zip(params.items(), grads):
            if grad is not None:
                total[name] += accumulate(grad.detach())
    return {name: t / max(len(waves), 1) for name, t in total.items()}


def fisher_diagonal(model: nn.Module, waves: list[np.ndarray], labels: np.ndarray, normalize: bool = False,
                    progress: Callable | None = None) -> Importance:
    """Diagonal empirical Fisher over trainable parameters.

    With `normalize`, F is divided by its largest entry, so lambda_3 means the same thing for
    models of different scales.
    """
    labels = np.asarray(labels)
    if len(labels) != len(waves):
        raise ValueError(f"fisher_diagonal: {len(waves)} utterances but {len(labels)} labels")

    def cross_entropy(logits, index):
        return nn.functional.cross_entropy(logits, torch.tensor([int(labels[index])], device=logits.device))

    fisher = _per_utterance(model, waves, cross_entropy, lambda g: g ** 2, progress)
    if normalize:
        peak = max(float(f.max()) for f in fisher.values()) or 1.0
        fisher = {name: f / peak for name, f in fisher.items()}
    return fisher


def mas_importance(model: nn.Module, waves: list[np.ndarray]) -> Importance:
    """MAS: mean absolute gradient of the L2 norm of the logits."""
    return _per_utterance(model, waves, lambda logits, _: torch.linalg.vector_norm(logits, dim=-1).sum(), torch.abs)


def min_max_per_tensor(importance: Importance) -> Importance:
    """Each tensor scaled to [0, 1] on its own (L2UL), so layers of different scales weigh alike."""
    scaled = {}
    for name, value in importance.items():
        low, high = value.min(), value.max()
        scaled[name] = (value - low) / (high - low) if float(high - low) > 0 else torch.zeros_like(value)
    return scaled


class AnchorPenalty(nn.Module):
    """sum_k w_k (theta_k - theta*_k)^2 over the parameters `weights` covers, anchored at today's weights."""

    def __init__(self, model: nn.Module, weights: Importance):
        super().__init__()
        self.names = sorted(weights)
        self.weights = {n: weights[n].detach().clone() for n in self.names}
        params = dict(model.named_parameters())
        self.anchor = {n: params[n].detach().clone() for n in self.names}

    def forward(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        total = None
        for name in self.names:
            term = (self.weights[name] * (params[name] - self.anchor[name]) ** 2).sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def stats(self, prefix: str = "fisher") -> dict:
        values = torch.cat([w.flatten() for w in self.weights.values()]) if self.weights else torch.zeros(1)
        return {f"{prefix}_sum": float(values.sum()), f"{prefix}_max": float(values.max()),
                f"{prefix}_mean": float(values.mean())}


MOMENTS = "moments."  # key prefix of the head layers' input second moments in the importances file


def head_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers of the model's classification head, by name (fc1, fc2)."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and model.is_head_parameter(f"{name}.weight")}


@torch.no_grad()
def head_moments(model: nn.Module, waves: list[np.ndarray], progress: Callable | None = None) -> dict[str, torch.Tensor]:
    """sum_e x_e x_e^T of each head layer's input x_e over the utterances, one at a time in eval mode."""
    layers = head_layers(model)
    caught: dict[str, torch.Tensor] = {}
    handles = [module.register_forward_hook(lambda m, inputs, out, name=name: caught.__setitem__(name, inputs[0]))
               for name, module in layers.items()]
    total = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for name, m in layers.items()}
    try:
        for _, x, mask in _each_utterance(model, waves, progress):
            model(x, mask)
            for name, value in caught.items():
                row = value.detach().double().reshape(-1, value.shape[-1]).cpu()
                total[name] += row.T @ row
    finally:
        for handle in handles:
            handle.remove()
    return total


def save_importances(model_dir: Path | str, importance: Importance, weights_sha256: str, n: int,
                     overwrite: bool = False, moments: dict[str, torch.Tensor] | None = None) -> Path:
    """Store a model's training importances (and its head layers' input moments) in its directory (written whole
    or not at all)."""
    path = Path(model_dir) / IMPORTANCES_FILE
    state = {name: value.detach().cpu().contiguous() for name, value in importance.items()}
    state.update({MOMENTS + name: value.detach().cpu().contiguous() for name, value in (moments or {}).items()})
    meta = {"kind": "fisher-diagonal", "labels": "true", "per": "utterance", "n_utterances": str(n),
            "weights_sha256": weights_sha256}
    with atomic_file(path, "wb", overwrite=overwrite, what="importances file") as handle:
        handle.write(_safetensors_bytes(state, meta))
    return path


def _safetensors_bytes(state: dict, meta: dict) -> bytes:
    from safetensors.torch import save

    return save(state, metadata=meta)


def load_importances(saved, split_hint: str = "--split SPLIT.json") -> tuple[Importance, int]:
    """The training importances stored in `saved`'s directory, checked to belong to its weights, and the
    number of utterances they average over."""
    values, meta, path, redo = _read_stored(saved, split_hint)
    params = {name: p for name, p in saved.model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(values))
    if missing or any(values[n].shape != params[n].shape for n in params):
        raise SerkitError(f"{path} does not cover the model's trainable parameters (e.g. {(missing or list(params))[0]}); "
                          f"{redo}")
    return {name: values[name] for name in params}, int(meta.get("n_utterances") or 0)


def load_moments(saved, split_hint: str = "--split SPLIT.json", retained: Path | None = None) -> dict[str, torch.Tensor]:
    """The head layers' input second moments over the training utterances, stored beside the importances, or
    over what is left of them after earlier requests (`retained`, the file the last request left beside its keys)."""
    if retained is not None:  # a request output without them is refused by serkit forget, naming where it looked
        values, path = _read_retained(retained, saved.weights_sha256), retained
        redo = f"give the keys file of the request that made model {saved.path} (--key)"
    else:
        values, _, path, redo = _read_stored(saved, split_hint)
    layers = head_layers(saved.model)
    moments = {name: values.get(MOMENTS + name) for name in layers}
    if any(m is None or m.shape != (layers[n].in_features,) * 2 for n, m in moments.items()):
        raise SerkitError(f"{path} holds no training moments of the head layers ({', '.join(layers)}), which this "
                          f"method projects its steps off (stored since 2026-12-05); {redo}")
    return moments


def importances_sha256(saved) -> str:
    """The hash of the stored importances a request read, for its receipt: recomputed ones differ in the last bits,
    and a reproduction that reads other figures gives another model."""
    from serkit.io import sha256_file

    return sha256_file(Path(saved.path) / IMPORTANCES_FILE)


RETAINED_KIND = "retained-head-moments"


def retained_moments_file(keys_file: Path | str) -> Path:
    """Where a request leaves the retained head moments: beside its keys file, as private as they are."""
    keys_file = Path(keys_file)
    return keys_file.with_name(keys_file.stem + ".moments.safetensors")


def save_retained_moments(path: Path, moments: dict[str, torch.Tensor], weights_sha256: str, n: int) -> Path:
    """The head moments of what a model still holds of its training utterances, bound to its weights: owner-only
    (0600) like the keys, written whole or not at all, never over an existing file."""
    from serkit.unlearning.keys import write_private

    state = {MOMENTS + name: value.detach().cpu().contiguous() for name, value in moments.items()}
    meta = {"kind": RETAINED_KIND, "n_utterances": str(n), "weights_sha256": weights_sha256,
            "private": "keep with the request keys: beside the model's earlier files it tells the forget set's moments"}
    return write_private(path, _safetensors_bytes(state, meta), what="retained moments file")


def safetensors_header(path: Path) -> tuple[dict, list[str]] | None:
    """A safetensors file's metadata and tensor names, without reading the tensors; None where it cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            return handle.metadata() or {}, list(handle.keys())
    except (SafetensorError, OSError):
        return None


def moments_source(model_dir: Path | str, keys_files: list[Path] = ()) -> tuple[str, Path] | None:
    """Where head moments for the model's own weights are (what pgu reads), from the files' headers and the weights'
    hash, without loading the model: ("stored", its importances file) for a trained model, ("retained", the file
    beside one of `keys_files`) for the output of a request that left one; None where none is."""
    from serkit.io import sha256_file
    from serkit.models.modeldir import WEIGHTS

    try:
        weights = sha256_file(Path(model_dir) / WEIGHTS)
    except OSError:
        return None
    candidates = [("stored", Path(model_dir) / IMPORTANCES_FILE)]
    candidates += [("retained", retained_moments_file(k)) for k in keys_files]
    for kind, path in candidates:
        header = safetensors_header(path)
        if header and any(k.startswith(MOMENTS) for k in header[1]) and header[0].get("weights_sha256") == weights:
            return kind, path
    return None


def _read_retained(path: Path, weights_sha256: str) -> dict[str, torch.Tensor]:
    header = safetensors_header(path)
    if header is None or header[0].get("kind") != RETAINED_KIND:
        raise SerkitError(f"cannot read {path} as the retained moments a deletion request leaves beside its keys; give "
                          "the keys file of the request that made this model (--key)")
    if header[0].get("weights_sha256") != weights_sha256:
        raise SerkitError(f"{path} belongs to other weights than this model's; give the keys file of the request that "
                          "made this model (--key)")
    return load_file(str(path))


def _read_stored(saved, split_hint: str):
    path = Path(saved.path) / IMPORTANCES_FILE
    fix = (f"compute them once, while the training data still exists: serkit models importances {saved.path} "
           f"{split_hint}")
    redo = fix + " --overwrite"
    if (saved.config.get("provenance") or {}).get("unlearning_history"):
        fix = redo = ("it answered a deletion request, and a request's output carries no training importances (its "
                      "recorded training data still holds what it forgot): name another method")
    if not path.is_file():
        raise SerkitError(f"model {saved.path} has no stored training importances ({IMPORTANCES_FILE}), which this "
                          f"method compares the forget set with; {fix}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        values = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise SerkitError(f"cannot read {path} ({exc}); {redo}") from None
    if meta.get("weights_sha256") != saved.weights_sha256:
        raise SerkitError(f"{path} was computed for other weights than model {saved.path}'s (a model that answered a "
                          f"deletion request has new weights); {redo}")
    return values, meta, path, redo


def training_importances(saved, data, progress: Callable | None = None) -> tuple[Importance, int, dict]:
    """The diagonal Fisher (true labels, one utterance at a time) over the utterances `saved` trained on, their
    number, and the head layers' input moments over them."""
    from serkit.data.dataset import load_waves
    from serkit.data.manifest import Manifest

    rows = Manifest(data.train_rows().reset_index(drop=True), data.manifest.file)
    rows.check_labels(saved.labels, f"model {saved.path}")
    waves = load_waves(rows.audio_paths(), saved.preprocessing)
    index = {label: i for i, label in enumerate(saved.labels)}
    labels = np.array([index[e] for e in rows.frame["emotion"]])
    return importances_over(saved.model, waves, labels, progress)


def importances_over(model: nn.Module, waves: list[np.ndarray], labels: np.ndarray,
                     progress: Callable | None = None) -> tuple[Importance, int, dict]:
    """What a model's directory stores of its training utterances: the diagonal Fisher (true labels), their number,
    and the head layers' input moments."""
    return fisher_diagonal(model, waves, labels, progress=progress), len(waves), head_moments(model, waves)
