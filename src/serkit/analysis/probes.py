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
