"""Plots written as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from serkit.io import atomic_file  # noqa: E402


def save_png(fig, path: Path | str, dpi: int = 120) -> None:
    """Write a figure as a PNG through a temporary file (never half an image, replacing an older one), and close it."""
    with atomic_file(path, "wb", overwrite=True) as handle:
        fig.savefig(handle, format="png", dpi=dpi)
    plt.close(fig)


def confusion_png(path: Path | str, matrix, labels, title: str = "", overwrite: bool = False) -> None:
    """Row-normalised confusion matrix (recall per true class) with counts in each cell."""
    matrix = np.asarray(matrix)
    support = matrix.sum(1, keepdims=True)
    rates = np.divide(matrix, support, out=np.zeros_like(matrix, dtype=float), where=support > 0)
    size = 1.2 + 0.62 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{rates[i, j]:.2f}\n({matrix[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.55 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="recall")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_file(path, "wb", overwrite=overwrite) as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)


def training_curve_png(path: Path | str, history: list[dict]) -> None:
    """Training loss and validation UAR per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(6, 3.6))
    ax1.plot(epochs, [h.get("train_loss") for h in history], "o-", color="tab:gray", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss")
    if any(h.get("val_uar") is not None for h in history):
        ax2 = ax1.twinx()
        ax2.plot(epochs, [h.get("val_uar") for h in history], "s-", color="tab:blue", label="val UAR")
        ax2.set_ylabel("validation UAR")
        ax2.set_ylim(0, 1)
    fig.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def layer_weights_png(path: Path | str, weights: dict[str, list[float]], title: str = "") -> None:
    """Normalised layer weights (softmax over hidden states) per series, e.g. per dimension (paper 004, Fig. 2)."""
    names = list(weights)
    n_layers = len(next(iter(weights.values())))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * n_layers + 2), 3.4))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        ax.bar(np.arange(n_layers) + k * width - 0.4 + width / 2, weights[name], width, label=name)
    ax.set_xticks(range(n_layers))
    ax.set_xlabel("hidden state (0 = input to the first layer)")
    ax.set_ylabel("normalised weight")
    ax.set_title(title, fontsize=9)
    if len(names) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
