"""`serkit embed`, `serkit graph` and `serkit transfer`: upstream embeddings, the similarity graph, and training
with it (paper 003)."""

from __future__ import annotations

from pathlib import Path

import typer

from serkit.commands._shared import HOP, SEGMENTS, WINDOW, console, progress_bar


def embed_cmd(
    model_dir: Path = typer.Argument(..., help="a serkit model directory (any architecture)"),
    manifest: Path = typer.Argument(..., help="manifest.csv whose utterances to embed"),
    out: Path = typer.Option(..., "-o", "--out", help="new .npy file (a .json beside it records its provenance)"),
    layer: str = typer.Option("fc1", help="fc1, fc2 (logits), pooled, or hidden:K for transformer backbones"),
    split: Path | None = typer.Option(None, help="with --part: embed only the speakers of one part of this split"),
    part: str | None = typer.Option(None, help="train, val or test (needs --split)"),
    batch_size: int = typer.Option(16, min=1),
    long_after: float = typer.Option(30.0, "--long-after", help="rows longer than this (seconds) are long recordings: "
                                     "embedded segment by segment, streamed; their embedding is the duration-weighted mean"),
    segments: str = SEGMENTS,
    window: float | None = WINDOW,
    hop: float | None = HOP,
):
    """Time-averaged embeddings of every utterance of a manifest, from any serkit model; long recordings window by window."""
    from serkit.data.manifest import read_manifest
    from serkit.data.splits import load_split
    from serkit.errors import SerkitError
    from serkit.inference.embeddings import check_layer, embed, save_embeddings
    from serkit.inference.long import check_segments, long_note, long_rows, long_summary, window_and_hop
    from serkit.io import refuse_existing
    from serkit.models import load_model

    if (split is None) != (part is None):
        raise SerkitError("--split and --part go together: e.g. --split split.json --part train")
    check_segments(segments)
    refuse_existing(out, "embedding file")
    saved = load_model(model_dir)
    check_layer(saved, layer)
    window, hop = window_and_hop(saved, window, hop)
    rows = read_manifest(manifest)
    if split is not None:
        loaded = load_split(split, manifest)
        rows = loaded.part(part)
    done = 0

    def advance(k: int) -> None:
        nonlocal done
        done += k
        update(done, len(rows))

    long = int(long_rows(rows, long_after).sum())
    with progress_bar("embedding") as update:
        array = embed(saved, rows, layer, batch_size, progress=advance, long_after=long_after, segments=segments,
                      window=window, hop=hop)
    meta = {"model": str(Path(model_dir).resolve()), "model_weights_sha256": saved.weights_sha256,
            "architecture": saved.config.get("architecture"), "layer": layer,
            "manifest": str(rows.file), "manifest_sha256": rows.sha256,
            "split": str(Path(split).resolve()) if split else None, "part": part,
            "paths": list(rows.frame["path"])}
    if long:
        meta["long_recordings"] = long_summary(long, long_after, segments, window, hop)
    save_embeddings(out, array, meta)
    console.print(f"wrote {out} ({array.shape[0]} utterances x {array.shape[1]}, layer {layer}) and {out.with_suffix('.json')}")
    if long:
        console.print(long_note(meta["long_recordings"]))


def graph_cmd(
    embeddings: Path = typer.Argument(..., help=".npy from `serkit embed` (its .json beside it)"),
    out: Path = typer.Option(..., "-o", "--out", help="new .npz graph file"),
    threshold: float = typer.Option(0.99, help="link two utterances when their cosine similarity exceeds this"),
    max_neighbours: int = typer.Option(6, help="keep at most this many neighbours per utterance (paper: 3, 6, 9)"),
):
    """Similarity graph over embedded utterances: exact thresholded top-k cosine neighbours."""
    import time

    from serkit.inference.embeddings import load_embeddings
    from serkit.transfer.graph import build_graph, check_threshold, isolation_warning, save_graph, similarity_quantiles

    check_threshold(threshold)
    emb = load_embeddings(embeddings)
    start = time.perf_counter()
    graph = build_graph(emb.array, threshold, max_neighbours)
    seconds = time.perf_counter() - start
    graph.paths = emb.paths
    graph.manifest_sha256 = emb.meta.get("manifest_sha256", "")
    graph.meta = {"embeddings": str(embeddings.resolve()), "layer": emb.meta.get("layer", ""),
                  "model": emb.meta.get("model", ""), "part": emb.meta.get("part") or ""}
    save_graph(out, graph)
    s = graph.stats()
    console.print(f"{s['nodes']} nodes, {s['edges']} edges in {seconds:.1f} s; neighbours per node: mean "
                  f"{s['degree_mean']:.2f}, median {s['degree_median']:.0f}, max {s['degree_max']}; "
                  f"isolated {s['isolated']} ({s['isolated_fraction']:.0%})")
    q = similarity_quantiles(emb.array)
    console.print(f"nearest-neighbour cosine similarity: 10% {q['q10']:.3f}, median {q['q50']:.3f}, 90% {q['q90']:.3f}")
    warning = isolation_warning(graph)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"wrote {out}")


def transfer_cmd(
    recipe: Path = typer.Argument(..., help="a training recipe with a graph section (see configs/emodb_cnn6_nsl.yaml)"),
    set_: list[str] = typer.Option([], "--set", help="override a recipe value, e.g. --set graph.alpha=0.01"),
    baseline: list[str] = typer.Option(["base"], help="baselines to train beside NSL: base (no graph), and the "
                                       "transfer-learning models add, max, avg (repeat the option)"),
    upstream: Path | None = typer.Option(None, help="upstream model of add/max/avg (default: the one the graph was built from)"),
):
    """Train a small model with the neighbour loss over an upstream graph (NSL), beside its base model."""
    from serkit.config import load_recipe
    from serkit.transfer.run import comparison_markdown, transfer

    comparison = transfer(load_recipe(recipe, set_), baselines=baseline, upstream=upstream, log=console.print)
    console.print(comparison_markdown(comparison))
    console.print(f"wrote {load_recipe(recipe, set_).output_dir}/ (one run folder per model, comparison.json, comparison.md)")


def register(app: typer.Typer) -> None:
    app.command("embed")(embed_cmd)
    app.command("graph")(graph_cmd)
    app.command("transfer")(transfer_cmd)
