"""`serkit compare`, `serkit attention` and `serkit probe`: do two models decide and attend alike, and what
the layers of one know (paper 002)."""

from __future__ import annotations

from pathlib import Path

import typer

from serkit.commands._shared import console


def _rows(manifest: Path, split: Path | None, part: str | None):
    from serkit.data.manifest import read_manifest
    from serkit.data.splits import load_split
    from serkit.errors import SerkitError

    if (split is None) != (part is None):
        raise SerkitError("--split and --part go together: e.g. --split split.json --part test")
    return load_split(split, manifest).part(part) if split is not None else read_manifest(manifest)


def compare_cmd(
    model_a: Path = typer.Argument(..., help="first serkit model directory"),
    model_b: Path = typer.Argument(..., help="second serkit model directory"),
    manifest: Path = typer.Argument(..., help="manifest.csv of the utterances to compare on"),
    out: Path = typer.Option(..., "-o", "--out", help="new folder: compare.json, compare.md, distances.csv, cosine_distance.png"),
    layer: str = typer.Option("fc1", help="embedding to compare: fc1 (last hidden layer), fc2, pooled, hidden:K"),
    threshold: list[float] = typer.Option([], help="cosine-distance threshold(s) for the table (default: covers 70 % of the data)"),
    split: Path | None = typer.Option(None, help="with --part: only the speakers of one part of this split"),
    part: str | None = typer.Option(None, help="train, val or test"),
):
    """Decision mismatch and last-layer cosine distances between two models (paper 002, Tables II-III)."""
    import json

    import numpy as np
    import pandas as pd

    from serkit.analysis.compare import compare_models, comparison_markdown, distance_png
    from serkit.io import atomic_dir, refuse_existing
    from serkit.models import load_model

    refuse_existing(out, "output directory")
    rows = _rows(manifest, split, part)
    a, b = load_model(model_a), load_model(model_b)
    with console.status(f"running both models over {len(rows)} utterances"):
        result = compare_models(a, b, rows, layer, threshold or None)
    distances = result.pop("distances")
    with atomic_dir(out) as tmp:
        (tmp / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
        (tmp / "compare.md").write_text(comparison_markdown(result))
        pd.DataFrame({"path": rows.frame["path"], "cosine_distance": distances}).to_csv(tmp / "distances.csv", index=False)
        distance_png(tmp / "cosine_distance.png", np.array(distances),
                     result["table"][0]["threshold"] if len(result["table"]) == 1 else None,
                     f"{Path(model_a).name} vs {Path(model_b).name}: {layer}")
    if result.get("note"):
        console.print(f"[yellow]note:[/] {result['note']}")
    else:
        console.print(f"decision mismatch {result['decision_mismatch']:.1%} over {result['n']} utterances")
    for row in result["table"]:
        match = "-" if row["decision_match"] is None else f"{row['decision_match']:.1%}"
        console.print(f"cosine distance <= {row['threshold']:.3f}: {row['data_fraction']:.1%} of the data, decision match {match}")
    console.print(f"wrote {out}/")


def attention_cmd(
    model_a: Path = typer.Argument(..., help="first transformer model (whisper or ssl)"),
    model_b: Path = typer.Argument(..., help="second model of the same architecture"),
    manifest: Path = typer.Argument(..., help="manifest.csv of the utterances to compare on"),
    out: Path = typer.Option(..., "-o", "--out", help="new folder: attention.json, attention.md, attention.png"),
    max_utterances: int | None = typer.Option(100, help="a seeded sample of at most this many utterances (0: all)"),
    split: Path | None = typer.Option(None, help="with --part: only the speakers of one part of this split"),
    part: str | None = typer.Option(None, help="train, val or test"),
):
    """Bhattacharyya distance between two models' self-attention maps per layer and head (paper 002, Eq. 1)."""
    import json

    from serkit.analysis.attention import attention_distance, attention_png
    from serkit.io import atomic_dir, refuse_existing
    from serkit.models import load_model

    refuse_existing(out, "output directory")
    rows = _rows(manifest, split, part)
    a, b = load_model(model_a), load_model(model_b)
    with console.status("comparing attention maps"):
        result = attention_distance(a, b, rows, max_utterances or None)
    title = f"{Path(model_a).parent.name}/{Path(model_a).name} vs {Path(model_b).parent.name}/{Path(model_b).name}"
    with atomic_dir(out) as tmp:
        (tmp / "attention.json").write_text(json.dumps(result, indent=2) + "\n")
        attention_png(tmp / "attention.png", result, title)
        lines = [f"# Attention distance: `{result['model_a']}` vs `{result['model_b']}`", "",
                 f"Mean Bhattacharyya distance between corresponding attention rows, over {result['utterances']} utterances.",
                 "", "| layer | " + " | ".join(f"head {h}" for h in range(result["heads"])) + " | mean |",
                 "|---|" + "---|" * (result["heads"] + 1)]
        for i, row in enumerate(result["distance"]):
            lines.append(f"| {i + 1} | " + " | ".join(f"{v:.3f}" for v in row) + f" | {result['mean_per_layer'][i]:.3f} |")
        (tmp / "attention.md").write_text("\n".join(lines + ["", "![heatmap](attention.png)"]) + "\n")
    console.print("mean distance per layer: " + ", ".join(f"{i + 1}: {v:.3f}" for i, v in enumerate(result["mean_per_layer"])))
    console.print(f"wrote {out}/")


def probe_cmd(
    source: Path = typer.Argument(..., help="a serkit model directory, or an .npy of embeddings from `serkit embed`"),
    split: Path = typer.Option(..., help="speaker split: probes train on its train part"),
    out: Path = typer.Option(..., "-o", "--out", help="new folder: probe.json, probe.md (and probe.png over layers)"),
    layer: list[str] = typer.Option([], help="layers to probe (repeat); default: every hidden state of a "
                                    "transformer, or pooled and fc1 of a CNN"),
    part: str = typer.Option("test", help="the part to score on: test or val"),
    manifest: Path | None = typer.Option(None, help="override the manifest the split names"),
):
    """Linear-SVM probes (C by 5-fold speaker-grouped search on training data): UAR and WAR per layer."""
    from serkit.analysis.probes import probe_split, split_features
    from serkit.data.splits import load_split
    from serkit.io import refuse_existing

    refuse_existing(out, "output directory")
    loaded = load_split(split, manifest)
    with console.status(f"embedding {len(loaded.part('train')) + len(loaded.part(part))} utterances"):
        features = split_features(source, loaded, part, layer)
    with console.status("probing"):
        probes = probe_split(features)
    for r in probes.rows:
        console.print(f"{r['layer']}: {part} UAR {r['test_uar']:.3f}, WAR {r['test_war']:.3f} (C={r['C']:g})")
    probes.save(out)
    console.print(f"wrote {out}/")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)
    app.command("attention")(attention_cmd)
    app.command("probe")(probe_cmd)
