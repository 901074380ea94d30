"""`serkit experiment transfer`: paper 003's Table 3 grid, resumable, one CSV row per training.

Grid: downstream models x upstream layers (graphs from FC1 / FC2 embeddings) x neighbours n x
alpha x seeds, each NSL cell beside its base model (the same downstream model, recipe and seed,
no graph: trained once per model and seed, shared by every cell). The training recipe (data,
fixed length, optimiser, epochs) is an ordinary serkit recipe (`recipe:`); the grid overrides its
model, graph and seed. The upstream model embeds the split's training utterances once per layer;
each layer's graph keeps max(n) neighbours and every cell uses its first n.

Outputs beside results.csv: table3.md (per downstream model: base, then every NSL cell, mean ± std
over seeds of val/test UAR and accuracy; one-tailed tests of NSL > base on test UAR: the papers'
z-test, and a paired permutation test over the same test utterances, seeds paired), fig2.png
(test UAR vs alpha per n and layer, base as a line) and confusion_best.png (the test confusion
matrix of the best cell on validation).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from serkit.errors import ConfigError
from serkit.io import write_text
from serkit.metrics import paired_uar_test, significance_marker, z_test_one_tailed

COLUMNS = ["model", "seed", "variant", "layer", "n", "alpha", "val_uar", "val_accuracy", "test_uar", "test_accuracy",
           "n_val", "n_test", "train_seconds", "parameters", "run_dir"]


class TransferGrid(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "transfer"
    output_dir: Path
    recipe: Path = Field(description="the downstream training recipe (data, train); its graph/model are overridden")
    upstream: Path = Field(description="serkit model directory of the upstream model (e.g. Whisper fine-tuned on RAVDESS)")
    models: list[str] = ["cnn6", "resnet9", "vgg15"]
    layers: list[str] = ["fc1", "fc2"]
    neighbours: list[int] = [3, 6, 9]
    alphas: list[float] = [0.01, 0.1, 1.0]
    threshold: float = Field(0.99, gt=-1, le=1)
    seeds: list[int] = [0, 1, 2]
    keep_models: bool = False
    set: list[str] = Field(default_factory=list, description="recipe overrides for every training, e.g. train.max_epochs=5")


def load_transfer_grid(path: Path | str, overrides: list[str] | None = None) -> TransferGrid:
    from serkit.config import load_experiment

    return load_experiment(path, TransferGrid, overrides)


def _graphs(grid: TransferGrid, recipe, out: Path, log) -> dict[str, Path]:
    """One graph per upstream layer over the split's training utterances (made once, then reused)."""
    from serkit.data.splits import load_split
    from serkit.embeddings import check_layer, embed, save_embeddings
    from serkit.models import load_model
    from serkit.transfer.graph import build_graph, save_graph

    graphs, upstream, train = {}, None, None
    for layer in grid.layers:
        path = out / "graphs" / f"{layer}.npz"
        graphs[layer] = path
        if path.is_file():
            continue
        if upstream is None:
            upstream = load_model(grid.upstream)
            split = load_split(recipe.data.split, recipe.data.manifest, recipe.data.fold)
            train = split.manifest.subset(split.speakers("train"))
        check_layer(upstream, layer)
        array = embed(upstream, train, layer)
        emb = out / "graphs" / f"{layer}.npy"
        if not emb.is_file():
            save_embeddings(emb, array, {"model": str(Path(grid.upstream).resolve()), "layer": layer,
                                         "manifest": str(train.file), "manifest_sha256": train.sha256,
                                         "paths": list(train.frame["path"])})
        graph = build_graph(array, grid.threshold, max(grid.neighbours))
        graph.paths, graph.manifest_sha256 = list(train.frame["path"]), train.sha256
        graph.meta = {"model": str(Path(grid.upstream).resolve()), "layer": layer, "embeddings": str(emb), "part": "train"}
        save_graph(path, graph)
        s = graph.stats()
        log(f"graph {layer}: {s['edges']} edges, {s['isolated_fraction']:.0%} of {s['nodes']} training utterances isolated")
    return graphs


def _cells(grid: TransferGrid):
    for model in grid.models:
        for seed in grid.seeds:
            yield model, seed, "base", "", 0, 0.0
            for layer in grid.layers:
                for n in grid.neighbours:
                    for alpha in grid.alphas:
                        yield model, seed, "nsl", layer, n, alpha


def _key(model, seed, variant, layer, n, alpha) -> str:
    return f"{model}|{seed}|{variant}|{layer}|{n}|{float(alpha):g}"


def run_transfer_grid(grid: TransferGrid, log=print) -> Path:
    from serkit.config import load_recipe
    from serkit.training import train

    out = Path(grid.output_dir)
    base_recipe = load_recipe(grid.recipe, grid.set)
    if base_recipe.task != "classification" or "val" in base_recipe.data.train_parts:
        raise ConfigError(f"{grid.recipe}: the transfer grid needs a classification recipe that selects on validation "
                          "(data.train_parts: [train])")
    out.mkdir(parents=True, exist_ok=True)
    _check_fingerprint(grid, base_recipe, out)
    graphs = _graphs(grid, base_recipe, out, log)
    results = out / "results.csv"
    done = set()
    if results.is_file():
        for row in pd.read_csv(results, dtype=str, keep_default_na=False).to_dict("records"):
            done.add(_key(row["model"], row["seed"], row["variant"], row["layer"], row["n"], row["alpha"]))
    cells = list(_cells(grid))
    todo = [c for c in cells if _key(*c) not in done]
    log(f"{len(cells) - len(todo)} trainings done, {len(todo)} to go")
    for i, (model, seed, variant, layer, n, alpha) in enumerate(todo, 1):
        tag = f"{model}-s{seed}-{variant}" + (f"-{layer}-n{n}-a{alpha:g}" if variant == "nsl" else "")
        run_dir = out / "runs" / tag
        if run_dir.exists():
            shutil.rmtree(run_dir)  # an interrupted training of this cell
        overrides = [f"model.architecture={model}", "model.options={}", f"seed={seed}", f"output_dir={run_dir}",
                     "train.progress_bar=false", *grid.set]
        raw = base_recipe.model_dump(mode="json")
        raw["graph"] = None if variant == "base" else {"file": str(graphs[layer]), "alpha": alpha, "max_neighbours": n,
                                                          "embedding": "fc1"}
        recipe = load_recipe(raw=_apply(raw, overrides))
        log(f"[{i}/{len(todo)}] {tag}")
        result = train(recipe, log=lambda *a: None)
        m = result.metrics
        row = {"model": model, "seed": seed, "variant": variant, "layer": layer, "n": n, "alpha": alpha,
               "val_uar": m["val"]["uar"], "val_accuracy": m["val"]["war"], "test_uar": m["test"]["uar"],
               "test_accuracy": m["test"]["war"], "n_val": m["val"]["n"], "n_test": m["test"]["n"],
               "train_seconds": m["training"]["train_seconds"], "parameters": m["model"]["parameters"],
               "run_dir": str(run_dir)}
        new = not results.is_file()
        with results.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        if not grid.keep_models:
            shutil.rmtree(run_dir / "model", ignore_errors=True)
    summarise(out)
    return out


def _check_fingerprint(grid: TransferGrid, recipe, out: Path) -> None:
    """A resumed grid must be the same experiment: same training recipe, upstream, graph settings."""
    import json

    from serkit.config import recipe_to_dict
    from serkit.io import sha256_file

    raw = recipe_to_dict(recipe)
    for key in ("output_dir", "seed", "model", "graph", "name"):
        raw.pop(key, None)
    weights = Path(grid.upstream) / "model.safetensors"
    now = {"recipe": raw, "upstream_weights_sha256": sha256_file(weights) if weights.is_file() else str(grid.upstream),
           "threshold": grid.threshold, "max_neighbours": max(grid.neighbours), "layers": sorted(grid.layers)}
    file = out / "grid.json"
    if file.is_file():
        before = json.loads(file.read_text())
        differs = [k for k in ("recipe", "upstream_weights_sha256", "threshold") if before.get(k) != now[k]]
        if before.get("max_neighbours", 0) < now["max_neighbours"]:
            differs.append("neighbours (more than the saved graphs keep)")
        if differs:
            raise ConfigError(f"{out} holds a grid run with other settings ({', '.join(differs)}); resuming would mix "
                              "results: choose another output_dir")
        now["layers"] = sorted(set(now["layers"]) | set(before.get("layers", [])))
        now["max_neighbours"] = before["max_neighbours"]
    file.write_text(json.dumps(now, indent=1) + "\n")


def _apply(raw: dict, overrides: list[str]) -> dict:
    from serkit.config import apply_overrides

    return apply_overrides(raw, overrides)


def _ms(values) -> str:
    values = [float(v) for v in values]
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} ± {sd:.3f}"


def _predictions(out: Path, row) -> pd.DataFrame | None:
    """A run's test predictions (the run folder under out/runs/, wherever the grid was run from)."""
    file = out / "runs" / Path(str(row.run_dir)).name / "predictions_test.csv"
    return pd.read_csv(file, usecols=["path", "emotion", "predicted"], dtype=str) if file.is_file() else None


def paired_p(out: Path, cell: pd.DataFrame, base: pd.DataFrame) -> float | None:
    """One-tailed paired permutation test of NSL > base on test UAR, each seed's NSL run paired with
    the base run of that seed on the same utterances; None when a prediction file is missing."""
    truth, nsl, ref, groups = [], [], [], []
    for row in cell.itertuples():
        match = base[base.seed == row.seed]
        if not len(match):
            return None
        a, b = _predictions(out, row), _predictions(out, next(match.itertuples()))
        if a is None or b is None:
            return None
        joined = a.merge(b, on=["path", "emotion"], suffixes=("_nsl", "_base"))
        if len(joined) != len(a) or len(joined) != len(b):
            return None  # not the same test utterances
        truth += list(joined.emotion)
        nsl += list(joined.predicted_nsl)
        ref += list(joined.predicted_base)
        groups += [row.seed] * len(joined)
    return paired_uar_test(truth, nsl, ref, groups)[1]


def summarise(out: Path) -> None:
    frame = pd.read_csv(out / "results.csv")
    lines = [f"# Knowledge transfer through a graph (paper 003, Table 3): {out.name}", "",
             "Mean ± std over seeds. One-tailed tests of NSL > base on test UAR: p (z), the papers' two-proportion "
             "z-test (mean UARs, utterances pooled over seeds); p (paired), a paired permutation test (10,000 "
             "permutations) on the same test utterances, each seed's NSL run paired with that seed's base run. "
             "Each cell is compared with the base runs of its own seeds. + p < 0.1, * p < 0.05, ** p < 0.01.", ""]
    best = None
    for model, group in frame.groupby("model", sort=False):
        base = group[group.variant == "base"]
        lines += [f"## {model} ({int(group.parameters.iloc[0]) / 1e6:.2f} M parameters)", "",
                  "| variant | layer | n | alpha | seeds | val UAR | test UAR | test accuracy | NSL − base (test) | p (z) | p (paired) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        if len(base):
            lines.append(f"| base | | | | {len(base)} | {_ms(base.val_uar)} | {_ms(base.test_uar)} | {_ms(base.test_accuracy)} | | | |")
        nsl = group[group.variant == "nsl"]
        for (layer, n, alpha), cell in nsl.groupby(["layer", "n", "alpha"], sort=True):
            same = base[base.seed.isin(cell.seed)]  # compare like with like: the base runs of the cell's seeds
            if len(same):
                gain = cell.test_uar.mean() - same.test_uar.mean()
                _, p = z_test_one_tailed(cell.test_uar.mean(), same.test_uar.mean(), int(cell.n_test.sum()), int(same.n_test.sum()))
                paired = paired_p(out, cell, same)
                paired = "n/a" if paired is None else f"{paired:.3g} {significance_marker(paired)}"
                test = f"{gain:+.3f} | {p:.3g} {significance_marker(p)} | {paired}"
            else:
                test = " | | "
            lines.append(f"| nsl | {layer} | {n} | {alpha:g} | {len(cell)} | {_ms(cell.val_uar)} | {_ms(cell.test_uar)} | "
                         f"{_ms(cell.test_accuracy)} | {test} |")
            score = cell.val_uar.mean()
            if best is None or score > best[0]:
                best = (score, out / "runs" / Path(str(cell.run_dir.iloc[0])).name, f"{model} {layer} n={n} alpha={alpha:g}")
        lines.append("")
    write_text(out / "table3.md", "\n".join(lines) + "\n", overwrite=True)
    _fig2(frame, out / "fig2.png")
    if best is not None and (best[1] / "confusion_test.png").is_file():
        shutil.copyfile(best[1] / "confusion_test.png", out / "confusion_best.png")


def _fig2(frame: pd.DataFrame, path: Path) -> None:
    from serkit.plots import plt  # the Agg backend is set there

    models = list(dict.fromkeys(frame.model))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.4), squeeze=False)
    for ax, model in zip(axes[0], models):
        group = frame[frame.model == model]
        base = group[group.variant == "base"]
        if len(base):
            ax.axhline(base.test_uar.mean(), color="black", linestyle="--", label="base")
        nsl = group[group.variant == "nsl"]
        for (layer, n), cell in nsl.groupby(["layer", "n"]):
            means = cell.groupby("alpha").test_uar.mean()
            ax.plot(means.index, means.values, "o-", label=f"{layer}, n={n}")
        ax.set_xscale("log")
        ax.set_xlabel("alpha")
        ax.set_ylabel("test UAR")
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
