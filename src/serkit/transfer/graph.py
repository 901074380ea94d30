"""The similarity graph of neural structured learning (paper 003).

Nodes are utterances, embedded by an upstream model. Node i links to node k when
cos(h_i, h_k) > threshold (the paper: 0.99); each node keeps at most `max_neighbours` links, the
most similar ones (the paper: 3, 6 or 9).

The search is exact: rows are L2-normalised and compared by blocked matrix products (a block of
rows against all rows, then a top-k per row), so memory is O(block x N) rather than O(N^2) and
the result is the same as the full similarity matrix would give. At 100 k nodes this is a few
minutes on two CPU cores (bench/graph_benchmark.py); an approximate index would only pay off well
beyond the corpora SER works with.

A graph file (`.npz`, no pickles) stores the neighbour indices and similarities, the node paths,
and the manifest SHA-256 of the embeddings it was built from, so training refuses a graph built
on another manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from serkit.errors import SerkitError
from serkit.io import atomic_file

FORMAT = "serkit-graph"


@dataclass
class SimilarityGraph:
    neighbours: np.ndarray  # (N, max_neighbours) int64 node indices, -1 where there is none
    similarity: np.ndarray  # (N, max_neighbours) float32 cosine similarity, 0 where there is none
    candidates: np.ndarray  # (N,) how many nodes were above the threshold before the cap
    threshold: float
    max_neighbours: int
    paths: list[str] = field(default_factory=list)
    manifest_sha256: str = ""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.neighbours)

    @property
    def degree(self) -> np.ndarray:
        return (self.neighbours >= 0).sum(1)

    def stats(self) -> dict:
        degree = self.degree
        return {
            "nodes": len(self),
            "edges": int(degree.sum()),
            "threshold": self.threshold,
            "max_neighbours": self.max_neighbours,
            "degree_mean": float(degree.mean()),
            "degree_median": float(np.median(degree)),
            "degree_max": int(degree.max()),
            "isolated": int((degree == 0).sum()),
            "isolated_fraction": float((degree == 0).mean()),
            "candidates_median": float(np.median(self.candidates)),
        }


def check_threshold(threshold: float) -> None:
    if not -1.0 < threshold <= 1.0:
        raise SerkitError(f"--threshold {threshold} is outside (-1, 1]: it is a cosine similarity (the paper uses 0.99)")


def build_graph(embeddings: np.ndarray, threshold: float = 0.99, max_neighbours: int = 6, block_mb: int = 256,
                device: str | torch.device = "cpu") -> SimilarityGraph:
    """Exact thresholded top-k cosine neighbours of every row (no self-links)."""
    check_threshold(threshold)
    if max_neighbours < 1:
        raise SerkitError(f"--max-neighbours {max_neighbours} must be at least 1 (the paper uses 3, 6 or 9)")
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32, device=device)
    if x.ndim != 2 or len(x) < 2:
        raise SerkitError(f"a graph needs a (nodes >= 2, dim) matrix of embeddings, got shape {tuple(x.shape)}")
    norms = x.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        bad = torch.nonzero(norms[:, 0] == 0)[:3, 0].tolist()
        raise SerkitError(f"embedding rows {bad} are all zeros: their cosine similarity is undefined "
                          "(an upstream layer after ReLU can be silent; try another --layer)")
    x = x / norms
    n = len(x)
    k = min(max_neighbours, n - 1)
    block = max(1, (block_mb << 20) // (4 * n))
    neighbours = np.full((n, max_neighbours), -1, dtype=np.int64)
    similarity = np.zeros((n, max_neighbours), dtype=np.float32)
    candidates = np.zeros(n, dtype=np.int64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = x[start:stop] @ x.T
        rows = torch.arange(stop - start, device=sims.device)
        sims[rows, rows + start] = -2.0  # never one's own neighbour
        above = sims > threshold
        candidates[start:stop] = above.sum(1).cpu().numpy()
        values, index = torch.topk(sims, k, dim=1)
        keep = values > threshold
        index = torch.where(keep, index, torch.full_like(index, -1))
        values = torch.where(keep, values, torch.zeros_like(values))
        neighbours[start:stop, :k] = index.cpu().numpy()
        similarity[start:stop, :k] = values.cpu().numpy()
    return SimilarityGraph(neighbours, similarity, candidates, float(threshold), int(max_neighbours))


def isolation_warning(graph: SimilarityGraph, limit: float = 0.5) -> str | None:
    stats = graph.stats()
    if stats["isolated_fraction"] <= limit:
        return None
    return (f"threshold {graph.threshold:g} leaves {stats['isolated_fraction']:.0%} of the {stats['nodes']} nodes without "
            "a neighbour, so the neighbour loss reaches few utterances; lower --threshold "
            "(the similarity quantiles above show where the pairs lie)")


def similarity_quantiles(embeddings: np.ndarray, sample: int = 2000, seed: int = 0) -> dict[str, float]:
    """Quantiles of the nearest-neighbour cosine similarity on a sample of rows: to choose a threshold."""
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    sims = x[torch.as_tensor(rows)] @ x.T
    sims[torch.arange(len(rows)), torch.as_tensor(rows)] = -2.0
    nearest = sims.max(1).values.numpy()
    return {f"q{q}": float(np.quantile(nearest, q / 100)) for q in (10, 50, 90)}


def save_graph(path: Path | str, graph: SimilarityGraph) -> Path:
    """Write the graph atomically; refused if `path` exists."""
    path = Path(path)
    if path.suffix != ".npz":
        raise SerkitError(f"graph output {path} must end in .npz")
    with atomic_file(path, "wb", what="graph file") as handle:
        np.savez(handle, format=np.array(FORMAT), neighbours=graph.neighbours, similarity=graph.similarity,
                 candidates=graph.candidates, threshold=np.array(graph.threshold),
                 max_neighbours=np.array(graph.max_neighbours), paths=np.array(graph.paths, dtype=str),
                 manifest_sha256=np.array(graph.manifest_sha256),
                 meta_keys=np.array(list(graph.meta), dtype=str),
                 meta_values=np.array([str(v) for v in graph.meta.values()], dtype=str))
    return path


def load_graph(path: Path | str) -> SimilarityGraph:
    path = Path(path)
    if not path.is_file():
        raise SerkitError(f"graph file not found: {path} (build one with `serkit graph EMB.npy -o {path.name}`)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["format"]) != FORMAT:
                raise KeyError("format")
            graph = SimilarityGraph(
                data["neighbours"].astype(np.int64), data["similarity"].astype(np.float32), data["candidates"],
                float(data["threshold"]), int(data["max_neighbours"]), [str(p) for p in data["paths"]],
                str(data["manifest_sha256"]), dict(zip(map(str, data["meta_keys"]), map(str, data["meta_values"]))))
    except (KeyError, ValueError, OSError) as exc:
        raise SerkitError(f"{path} is not a serkit graph file ({exc}); build one with `serkit graph`") from None
    if graph.paths and len(graph.paths) != len(graph):
        raise SerkitError(f"{path} is damaged: {len(graph)} nodes but {len(graph.paths)} paths")
    return graph
