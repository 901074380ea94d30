"""Linear probes: how much emotion a frozen representation carries, layer by layer.

A probe is a linear-kernel SVM on standardised, time-averaged hidden states; its C is chosen by a
5-fold grid search on the training data only (paper 002). Folds are grouped by speaker, so the
search rewards what generalises to new speakers, as the final test does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from serkit.data.dataset import pad_batch
from serkit.errors import SerkitError
from serkit.metrics import uar, war

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


@torch.no_grad()
def layer_means(model, waves: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
    """(layers + 1, N, D): every hidden state of a transformer backbone, averaged over valid frames."""
    if not hasattr(model, "pooled_hidden_states"):
        raise SerkitError(f"model '{getattr(model, 'architecture', type(model).__name__)}' has no hidden states to probe "
                          "(layer probes need a transformer backbone: ssl or whisper)")
    model.eval()
    order = np.argsort([w.shape[0] for w in waves])
    chunks, rows = [], []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x, mask = pad_batch([waves[i] for i in idx])
        chunks.append(model.pooled_hidden_states(x, mask).float().numpy())
        rows.extend(idx)
    stacked = np.concatenate(chunks, axis=1)
    out = np.empty_like(stacked)
    out[:, np.array(rows)] = stacked
    return out


@dataclass
class ProbeResult:
    c: float
    cv_uar: float
    test_uar: float
    test_war: float

    def as_dict(self) -> dict:
        return {"C": self.c, "cv_uar": self.cv_uar, "test_uar": self.test_uar, "test_war": self.test_war}


def linear_probe(x_train, y_train, x_test, y_test, groups=None, cs=DEFAULT_CS, folds: int = 5, seed: int = 0) -> ProbeResult:
    """Fit a linear SVM (C by grid search on training data, speaker-grouped folds when `groups`)."""
    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    if x_train.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise SerkitError(f"probe features must be 2-D with equal widths, got {x_train.shape} and {x_test.shape}")
    if groups is not None and len(set(groups)) >= folds:
        cv = list(GroupKFold(n_splits=folds).split(x_train, y_train, groups))
    else:
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    search = GridSearchCV(make_pipeline(StandardScaler(), SVC(kernel="linear")), {"svc__C": list(cs)},
                          scoring="balanced_accuracy", cv=cv, n_jobs=1)
    search.fit(x_train, y_train)
    predicted = search.predict(x_test)
    return ProbeResult(float(search.best_params_["svc__C"]), float(search.best_score_), uar(y_test, predicted), war(y_test, predicted))


def model_features(saved, manifest, layers: list[str], batch_size: int = 16) -> dict[str, np.ndarray]:
    """Embeddings of every requested layer in one pass over the audio per kind of layer."""
    from serkit.data.dataset import load_waves
    from serkit.inference.embeddings import check_layer
    from serkit.inference.predict import model_outputs

    for layer in layers:
        check_layer(saved, layer)
    waves = load_waves(manifest.audio_paths(), saved.preprocessing)
    out: dict[str, np.ndarray] = {}
    hidden = [layer for layer in layers if layer.startswith("hidden:")]
    named = [layer for layer in layers if not layer.startswith("hidden:")]
    if hidden:
        stacked = layer_means(saved.model, waves, batch_size)
        for layer in hidden:
            out[layer] = stacked[int(layer.split(":", 1)[1])]
    if named:
        out.update(model_outputs(saved.model, waves, batch_size, layers=tuple(named)))
    return {layer: out[layer] for layer in layers}


def default_probe_layers(saved) -> list[str]:
    """Every hidden state of a transformer, else the CNN's pooled and FC1 embeddings."""
    from serkit.inference.embeddings import available_layers

    names = available_layers(saved)
    hidden = [n for n in names if n.startswith("hidden:")]
    return hidden or [n for n in ("pooled", "fc1") if n in names]


def probe_layers(train: dict[str, np.ndarray], y_train, groups, test: dict[str, np.ndarray], y_test) -> list[dict]:
    """One linear probe per layer: C by speaker-grouped 5-fold search on the training data."""
    rows = []
    for layer, x in train.items():
        result = linear_probe(x, y_train, test[layer], y_test, groups)
        rows.append({"layer": layer, **result.as_dict()})
    return rows
