"""Do two models decide alike? Decision mismatch and last-layer cosine distances (paper 002, Sec. V-A/B).

Two models of the same task can reach the same UAR and still decide differently. For every
utterance this compares the two models' decisions and the cosine distance (1 - cos, in [0, 2])
between their embeddings of one layer (FC1 by default, the last hidden layer). For a distance
threshold (by default the smallest that covers 70 % of the data, the paper's rule), it reports the
share of utterances within it and how often the two decide alike there (the paper's Table III).

Typical pairs: a model before and after unlearning (did forgetting move the representation, or
only the head?), or a model trained directly for SER and one fine-tuned through an intermediate
task (two-step fine-tuning).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from serkit.data.dataset import load_waves
from serkit.data.manifest import Manifest
from serkit.errors import SerkitError
from serkit.inference.predict import model_outputs
from serkit.metrics import uar, war
from serkit.models.modeldir import SavedModel

COVERAGE = 0.7  # the paper's threshold covers more than 70 % of the data


def _outputs(saved: SavedModel, manifest: Manifest, layer: str, cache: dict) -> dict[str, np.ndarray]:
    from serkit.inference.embeddings import check_layer

    check_layer(saved, layer)
    key = saved.preprocessing
    if key not in cache:
        cache[key] = load_waves(manifest.audio_paths(), saved.preprocessing)
    return model_outputs(saved.model, cache[key], layers=(layer, "logits"))


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise 1 - cos(a_i, b_i); rows of zeros (a silent ReLU layer) count as distance 1."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-12)
    cos[(na == 0) | (nb == 0)] = 0.0
    return 1.0 - cos


def threshold_table(distance: np.ndarray, match: np.ndarray | None, thresholds) -> list[dict]:
    rows = []
    for t in thresholds:
        within = distance <= t
        rows.append({"threshold": float(t), "data_fraction": float(within.mean()),
                     "decision_match": None if match is None or not within.any() else float(match[within].mean())})
    return rows


def compare_models(a: SavedModel, b: SavedModel, manifest: Manifest, layer: str = "fc1",
                   thresholds: list[float] | None = None) -> dict:
    if thresholds is not None and any(not 0 <= t <= 2 for t in thresholds):
        raise SerkitError(f"--threshold {thresholds}: a cosine distance lies in [0, 2]")
    cache: dict = {}
    out_a, out_b = _outputs(a, manifest, layer, cache), _outputs(b, manifest, layer, cache)
    ea, eb = out_a[layer], out_b[layer]
    if ea.shape[1] != eb.shape[1]:
        raise SerkitError(f"layer '{layer}' has {ea.shape[1]} dimensions in {a.path} but {eb.shape[1]} in {b.path}; "
                          "cosine distances need embeddings of one size (compare two models of the same architecture)")
    distance = cosine_distance(ea, eb)
    same_labels = list(a.labels) == list(b.labels)
    result: dict = {"model_a": str(a.path), "model_b": str(b.path), "layer": layer, "n": int(len(distance)),
                    "manifest": str(manifest.file), "same_labels": same_labels}
    match = None
    if same_labels:
        pa, pb = out_a["logits"].argmax(1), out_b["logits"].argmax(1)
        match = pa == pb
        result["decision_mismatch"] = float(1 - match.mean())
        truth = manifest.frame["emotion"].tolist()
        if set(truth) <= set(a.labels):
            labels = np.array(a.labels)
            result["uar"] = {"a": uar(truth, labels[pa].tolist()), "b": uar(truth, labels[pb].tolist())}
            result["accuracy"] = {"a": war(truth, labels[pa].tolist()), "b": war(truth, labels[pb].tolist())}
    else:
        result["decision_mismatch"] = None
        result["note"] = (f"the two models have different label lists ({a.labels} vs {b.labels}): "
                          "decisions are not compared, only embeddings")
    # the smallest observed distance with at least COVERAGE of the data at or below it
    chosen = float(np.sort(distance)[math.ceil(COVERAGE * len(distance)) - 1]) if thresholds is None else None
    result["threshold_rule"] = f"smallest distance covering {COVERAGE:.0%} of the data" if chosen is not None else "given"
    result["table"] = threshold_table(distance, match, [chosen] if chosen is not None else thresholds)
    result["distance"] = {"mean": float(distance.mean()), "median": float(np.median(distance)),
                          "above_1": float((distance > 1).mean())}
    result["distances"] = distance.tolist()
    return result


def comparison_markdown(r: dict) -> str:
    lines = [f"# Comparing `{r['model_a']}` (A) and `{r['model_b']}` (B)", "",
             f"{r['n']} utterances of `{r['manifest']}`; embeddings: `{r['layer']}`."]
    if r.get("note"):
        lines += ["", f"Note: {r['note']}."]
    else:
        lines += ["", f"Decision mismatch: {r['decision_mismatch']:.1%} of the utterances."]
    if "uar" in r:
        lines += ["", "| model | UAR | accuracy |", "|---|---|---|",
                  f"| A | {r['uar']['a']:.3f} | {r['accuracy']['a']:.3f} |", f"| B | {r['uar']['b']:.3f} | {r['accuracy']['b']:.3f} |"]
    d = r["distance"]
    lines += ["", f"Cosine distance A vs B: mean {d['mean']:.3f}, median {d['median']:.3f}; {d['above_1']:.1%} above 1 "
              "(opposite directions).", "", f"Threshold: {r['threshold_rule']}.", "",
              "| threshold | data within | decision match within |", "|---|---|---|"]
    for row in r["table"]:
        match = "-" if row["decision_match"] is None else f"{row['decision_match']:.1%}"
        lines.append(f"| {row['threshold']:.3f} | {row['data_fraction']:.1%} | {match} |")
    lines += ["", "![distribution of cosine distances](cosine_distance.png)"]
    return "\n".join(lines) + "\n"


def distance_png(path: Path, distances: np.ndarray, threshold: float | None, title: str) -> None:
    """Line-joined 10-bin histogram of the distances, the paper's Fig. 3 style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts, edges = np.histogram(distances, bins=10, range=(0.0, max(1.0, float(np.max(distances)))))
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(centres, 100 * counts / max(len(distances), 1), "o-")
    if threshold is not None:
        ax.axvline(threshold, color="m", ls="--", label=f"threshold {threshold:.3f}")
        ax.legend(fontsize=8)
    ax.set_xlabel("cosine distance between the two models' embeddings")
    ax.set_ylabel("% of utterances")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
