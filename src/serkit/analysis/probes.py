"""Linear probes: how much emotion a frozen representation carries, layer by layer.

A probe is a linear-kernel SVM on standardised, time-averaged hidden states; its C is chosen by a
5-fold grid search on the training data only (paper 002). Folds are grouped by speaker, so the
search rewards what generalises to new speakers, as the final test does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from serkit.data.dataset import pad_batch
from serkit.errors import SerkitError
from serkit.metrics import uar, war

if TYPE_CHECKING:
    from serkit.data.manifest import Manifest
    from serkit.data.splits import Split

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


@dataclass
class SplitFeatures:
    """One representation of a split's training part and of the part the probes are scored on, per layer."""

    source: str  # what the features are, as the report names them
    part: str
    train: Manifest
    test: Manifest
    train_x: dict[str, np.ndarray]
    test_x: dict[str, np.ndarray]


def split_features(source: Path | str, split: Split, part: str = "test", layers: list[str] | None = None) -> SplitFeatures:
    """Features to probe: a serkit model directory's `layers` (default: `default_probe_layers`), or the one
    layer of a `serkit embed` .npy, which must hold every utterance of the split from its own manifest."""
    source = Path(source)
    train, test = split.part("train"), split.part(part)
    if source.suffix == ".npy":
        from serkit.inference.embeddings import load_embeddings

        emb = load_embeddings(source)
        if emb.meta.get("manifest_sha256") and emb.meta["manifest_sha256"] != split.manifest.sha256:
            raise SerkitError(f"{source} was computed from another manifest than the split's ({split.manifest.file})")
        index = {p: i for i, p in enumerate(emb.paths)}
        missing = [p for p in list(train.frame["path"]) + list(test.frame["path"]) if p not in index]
        if missing:
            raise SerkitError(f"{source} lacks {len(missing)} utterances of the split (e.g. {missing[0]}); "
                              "embed the whole manifest (serkit embed MODEL MANIFEST -o ...)")
        name = emb.meta.get("layer") or source.stem

        def pick(rows: Manifest) -> dict[str, np.ndarray]:
            return {name: emb.array[[index[p] for p in rows.frame["path"]]]}

        return SplitFeatures(f"{source} ({emb.meta.get('model', 'features')})", part, train, test, pick(train), pick(test))
    from serkit.models import load_model

    saved = load_model(source)
    layers = layers or default_probe_layers(saved)
    return SplitFeatures(str(source), part, train, test, model_features(saved, train, layers), model_features(saved, test, layers))


@dataclass
class SplitProbes:
    """A linear probe per layer, trained on a split's training part and scored on another of its parts."""

    features: SplitFeatures
    rows: list[dict]  # per layer: layer, C, cv_uar, test_uar, test_war

    def markdown(self) -> str:
        f, part = self.features, self.features.part
        lines = [f"# Linear probes on {f.source}", "", f"Trained on {len(f.train)} utterances ({f.train.frame['speaker'].nunique()} "
                 f"speakers), scored on {len(f.test)} {part} utterances ({f.test.frame['speaker'].nunique()} speakers).", "",
                 f"| layer | C | CV UAR (train) | {part} UAR | {part} WAR |", "|---|---|---|---|---|"]
        lines += [f"| {r['layer']} | {r['C']:g} | {r['cv_uar']:.3f} | {r['test_uar']:.3f} | {r['test_war']:.3f} |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def save(self, out: Path | str) -> None:
        """A new folder: probe.json, probe.md, and probe.png where there are layers to plot against each other."""
        from serkit.io import atomic_dir

        with atomic_dir(out) as tmp:
            (tmp / "probe.json").write_text(json.dumps({"source": self.features.source, "part": self.features.part,
                                                        "rows": self.rows}, indent=2) + "\n")
            (tmp / "probe.md").write_text(self.markdown())
            if len(self.rows) > 1:
                probe_png(tmp / "probe.png", self.rows, self.features.part)


def probe_split(features: SplitFeatures) -> SplitProbes:
    """Probes of every layer (C by speaker-grouped search on the training part), scored on the other part."""
    train, test = features.train.frame, features.test.frame
    rows = probe_layers(features.train_x, np.array(train["emotion"]), np.array(train["speaker"]), features.test_x,
                        np.array(test["emotion"]))
    return SplitProbes(features, rows)


def probe_png(path: Path, rows: list[dict], part: str) -> None:
    """UAR over layers: on `part`, and the training part's cross-validation score that chose C."""
    from serkit.plots import plt, save_png  # the Agg backend is set there

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(len(rows)), [r["test_uar"] for r in rows], "o-", label=f"{part} UAR")
    ax.plot(range(len(rows)), [r["cv_uar"] for r in rows], "s--", label="CV UAR (train)")
    ax.set_xticks(range(len(rows)), [r["layer"] for r in rows], rotation=30, fontsize=8)
    ax.set_ylabel("UAR")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
