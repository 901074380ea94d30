"""Neural structured learning: the neighbour loss that carries an upstream model's knowledge.

Paper 003, Eq. 2: L = sum_i CE(y_i, f(x_i)) + alpha * sum_i sum_{k in N(i)} (1 - cos(p(x_i), p(x_k))),
with p an intermediate embedding of the downstream model (FC1 by default). Here both terms are
averaged over the utterances of a batch (cross-entropy as usual; the neighbour term summed over
each utterance's neighbours, then averaged over utterances), which keeps the paper's balance
between them at any batch size. `graph.reduction: edges` averages the neighbour term over the
batch's edges instead, as TensorFlow's NSL (and so the paper's code) does by default: there alpha
weighs one edge, here one utterance's neighbours (alpha_edges = alpha_utterances x mean degree).
Neighbours are training utterances (cropped like any training item), and the gradient flows
through both ends of every edge, as in TensorFlow's NSL.

The neighbours go through the model in a pass of their own, as in TensorFlow's NSL (and the
paper's code), never as extra rows of the batch: batch normalisation would otherwise normalise the
batch with statistics that include its neighbours, which changes training whatever alpha is (the
first version did this; bench/RESULTS.md section 18a). In the
neighbour pass batch normalisation uses, and does not update, its running statistics: a few
neighbours are too few to normalise by, and the running statistics stay those of the batches
alone. So with alpha = 0 NSL training is exactly the base model's training.

On a CPU the neighbour pass runs in chunks of the recipe's batch size: with batch normalisation frozen each
row's output does not depend on the others (the same bits chunked or not), and there a CNN-6 neighbour row
costs a fifth to a third less in forwards of 16 rows than in one of 85-121 (bench/RESULTS.md 31; not
measured on a GPU, which keeps one pass). Running the neighbours in one forward with the batch instead
(each batch-norm layer splitting its rows) was slower still.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from serkit.data.dataset import UtteranceDataset, collate
from serkit.data.manifest import Manifest
from serkit.errors import SerkitError
from serkit.io import sha256_file
from serkit.transfer.graph import SimilarityGraph, load_graph

EMBEDDINGS = ("fc1", "fc2", "pooled")


def align_graph(graph: SimilarityGraph, train: Manifest, max_neighbours: int | None = None, source: str = "graph",
                log=print) -> tuple[np.ndarray, dict]:
    """The graph's neighbours as (training rows, n) indices into `train` (-1: none).

    Refuses a graph built on another manifest (its SHA-256 differs) or one that misses training
    utterances. Edges to utterances outside the training rows (validation or test speakers) are
    dropped: their audio must not shape training."""
    if not graph.paths:
        raise SerkitError(f"{source} names no utterances; build it from `serkit embed` output (serkit graph EMB.npy)")
    if graph.manifest_sha256 and train.sha256 and graph.manifest_sha256 != train.sha256:
        raise SerkitError(f"{source} was built on another manifest than {train.file} (SHA-256 {graph.manifest_sha256[:12]}... "
                          f"vs {train.sha256[:12]}...); rebuild it: serkit embed UPSTREAM {train.file} --split SPLIT "
                          "--part train -o emb.npy, then serkit graph emb.npy")
    node_of = {p: i for i, p in enumerate(graph.paths)}
    paths = list(train.frame["path"])
    missing = [p for p in paths if p not in node_of]
    if missing:
        raise SerkitError(f"{source} does not cover {len(missing)} of the {len(paths)} training utterances (e.g. {missing[0]}); "
                          "build it over this split's training part (serkit embed ... --split SPLIT --part train)")
    if max_neighbours is not None and max_neighbours > graph.max_neighbours:
        raise SerkitError(f"graph.max_neighbours {max_neighbours} exceeds the {graph.max_neighbours} neighbours {source} kept; "
                          f"rebuild it with serkit graph --max-neighbours {max_neighbours}")
    row_of = np.full(len(graph), -1, dtype=np.int64)
    for row, p in enumerate(paths):
        row_of[node_of[p]] = row
    nodes = np.array([node_of[p] for p in paths])
    raw = graph.neighbours[nodes]
    mapped = np.where(raw >= 0, row_of[np.clip(raw, 0, None)], -1)
    dropped = int(((raw >= 0) & (mapped < 0)).sum())
    # keep the most similar first (the graph's order), valid entries packed to the left
    order = np.argsort(mapped < 0, axis=1, kind="stable")
    mapped = np.take_along_axis(mapped, order, axis=1)
    width = max_neighbours or graph.max_neighbours
    mapped = mapped[:, :width]
    degree = (mapped >= 0).sum(1)
    stats = {"edges": int(degree.sum()), "degree_mean": float(degree.mean()), "isolated_fraction": float((degree == 0).mean()),
             "dropped_edges_outside_training": dropped, "max_neighbours": int(width), "threshold": graph.threshold}
    if dropped:
        log(f"graph: dropped {dropped} edges to utterances outside the training speakers")
    log(f"graph: {stats['edges']} edges over {len(paths)} training utterances (mean {stats['degree_mean']:.2f} neighbours, "
        f"{stats['isolated_fraction']:.0%} without any)")
    return mapped, stats


@dataclass
class NeighbourBatch:
    wave: torch.Tensor  # (E_unique, T) neighbour waveforms
    mask: torch.Tensor
    source: torch.Tensor  # (E,) row in the main batch
    target: torch.Tensor  # (E,) row in the neighbour batch


class Neighbours:
    """Fetches the neighbours of a batch of training rows from the training dataset."""

    def __init__(self, table: np.ndarray, dataset: UtteranceDataset, alpha: float, embedding: str = "fc1",
                 reduction: str = "utterances", chunk: int = 0):
        if embedding not in EMBEDDINGS:
            raise SerkitError(f"graph.embedding '{embedding}' is not one of {list(EMBEDDINGS)}")
        if len(table) != len(dataset):
            raise ValueError("one row of neighbours per training utterance")
        self.table, self.dataset, self.alpha, self.embedding = table, dataset, alpha, embedding
        self.reduction = reduction
        if chunk < 0:
            raise ValueError(f"chunk {chunk}: give the neighbour rows per forward on a CPU, or 0 for all at once")
        self.chunk = chunk  # graph_neighbours passes the recipe's batch size

    def batch(self, index: torch.Tensor) -> NeighbourBatch | None:
        rows = self.table[index.cpu().numpy()]
        source, node = np.nonzero(rows >= 0)
        if not len(source):
            return None
        unique, target = np.unique(rows[source, node], return_inverse=True)
        wave, mask, _, _ = collate([self.dataset[int(j)] for j in unique])
        return NeighbourBatch(wave, mask, torch.as_tensor(source), torch.as_tensor(target.reshape(-1)))

    def __call__(self, model: nn.Module, batch, task_loss) -> tuple[torch.Tensor, dict]:
        """The training engine's loss hook: the task's loss plus alpha times the neighbour loss, and
        what to log. The batch goes through the model alone, as without the graph; its neighbours
        in a pass of their own, with batch normalisation on its running statistics."""
        wave, mask, target, index = batch[:4]
        nb = self.batch(index)
        if nb is None:
            return task_loss(model(wave, mask), target), {}
        feats = model.features(wave, mask)
        # chunks were measured on CPUs only; an accelerator keeps its one large pass
        step = self.chunk if self.chunk and wave.device.type == "cpu" else len(nb.wave)
        with batchnorm_frozen(model):
            near = torch.cat([model.features(nb.wave[s:s + step].to(wave.device), nb.mask[s:s + step].to(mask.device))[self.embedding]
                              for s in range(0, len(nb.wave), step)])
        l_nbr = neighbour_loss(feats[self.embedding], near, nb, len(target), self.reduction)
        return task_loss(feats["logits"], target) + self.alpha * l_nbr, {"neighbour_loss": l_nbr}


def graph_neighbours(config, train: Manifest, train_set: UtteranceDataset, batch_size: int, log=print) -> tuple[Neighbours, dict]:
    """The loss hook of a recipe's graph section over its training part (its neighbours run `batch_size`
    rows at a time on a CPU), and what the run records about the graph."""
    graph = load_graph(config.file)
    table, stats = align_graph(graph, train, config.max_neighbours, f"graph {config.file}", log)
    stats = {"file": str(Path(config.file).resolve()), "sha256": sha256_file(config.file), "alpha": config.alpha,
             "embedding": config.embedding, "reduction": config.reduction, **stats, **graph.meta}
    return Neighbours(table, train_set, config.alpha, config.embedding, config.reduction, batch_size), stats


@contextmanager
def batchnorm_frozen(model: nn.Module):
    """Batch normalisation layers use their running statistics and leave them unchanged; the rest of
    the model (dropout, gradients) stays in training mode."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in layers:
        m.eval()
    try:
        yield
    finally:
        for m in layers:
            m.train()


def neighbour_loss(main: torch.Tensor, neighbours: torch.Tensor, nb: NeighbourBatch, batch_size: int,
                   reduction: str = "utterances") -> torch.Tensor:
    """(1 - cos) over the batch's edges: summed and divided by the batch's utterances ('utterances'),
    or averaged over the edges ('edges': TensorFlow NSL's SUM_BY_NONZERO_WEIGHTS)."""
    cos = nn.functional.cosine_similarity(main[nb.source.to(main.device)], neighbours[nb.target.to(main.device)], dim=-1)
    if reduction == "edges":
        return (1 - cos).mean()
    if reduction != "utterances":
        raise SerkitError(f"graph.reduction '{reduction}' is not 'utterances' or 'edges'")
    return (1 - cos).sum() / batch_size
