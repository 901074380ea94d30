"""`serkit experiment transfer`: paper 003's Table 3 grid, resumable, one CSV row per training.

Grid: downstream models x upstream layers (graphs from FC1 / FC2 embeddings) x neighbours n x
alpha x seeds, each NSL cell beside its base model (the same downstream model, recipe and seed,
no graph: trained once per model and seed, shared by every cell). With a folded split (`serkit
data split --folds K` or `--loso`) every training runs once per fold: each test speaker is tested
once per seed, and each fold has a graph over its own training speakers. The training recipe (data,
fixed length, optimiser, epochs) is an ordinary serkit recipe (`recipe:`); the grid overrides its
model, graph, seed (and fold). The upstream model embeds the training utterances once per layer;
each layer's graph keeps max(n) neighbours and every cell uses its first n.

Outputs beside results.csv: table3.md (per downstream model: base, then every NSL cell, mean ± std
over seeds of val/test UAR and accuracy; one-tailed tests of NSL > base on test UAR: the papers'
z-test, and a paired permutation test over the same test utterances, each NSL run paired with
the base run of its seed and fold), fig2.png
(test UAR vs alpha per n and layer, base as a line) and confusion_best.png (the test confusion
matrix of the best cell on validation: its first seed, pooled over the folds).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from serkit.errors import ConfigError
from serkit.experiment import Cell, ExecutorConfig, Fingerprint, ResultsTable, mean_std, run_cells, take_in_finished
from serkit.io import write_text
from serkit.metrics import paired_uar_test, significance_marker, z_test_one_tailed

COLUMNS = ["model", "seed", "fold", "variant", "layer", "n", "alpha", "val_uar", "val_accuracy", "test_uar", "test_accuracy",
           "n_val", "n_test", "train_seconds", "parameters", "run_dir"]


class TransferGrid(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "transfer"
    output_dir: Path
    recipe: Path = Field(description="the downstream training recipe (data, train); its graph/model are overridden")
    upstream: Path = Field(description="serkit model directory of the upstream model (e.g. Whisper fine-tuned on RAVDESS)")
    models: list[str] = Field(["cnn6", "resnet9", "vgg15"], min_length=1)
    layers: list[str] = Field(["fc1", "fc2"], min_length=1)
    neighbours: list[Annotated[int, Field(ge=1)]] = Field([3, 6, 9], min_length=1)
    alphas: list[Annotated[float, Field(ge=0)]] = Field([0.01, 0.1, 1.0], min_length=1)
    threshold: float = Field(0.99, gt=-1, le=1)
    reduction: Literal["utterances", "edges"] = Field("utterances", description="graph.reduction of every NSL training")
    embedding: Literal["fc1", "fc2", "pooled"] = Field("fc1", description="the downstream embedding the neighbour loss "
                                                      "keeps close (graph.embedding); paper 003 uses FC1")
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    folds: list[int] | None = Field(None, min_length=1, description="folds of a folded split (serkit data split "
                                    "--folds K / --loso) to run; default: every fold. A hold-out split has none")
    keep_models: bool = False
    set: list[str] = Field(default_factory=list, description="recipe overrides for every training, e.g. train.max_epochs=5")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="where the trainings run: local "
                                     "(default), pool (local processes), slurm (submitit)")

    @field_validator("models", "layers", "neighbours", "alphas", "seeds", "folds")
    @classmethod
    def _once_each(cls, values):
        repeated = sorted({str(v) for v in values or [] if list(values).count(v) > 1})
        if repeated:
            raise ValueError(f"repeats {', '.join(repeated)}: each value is one set of trainings, give it once")
        return values


def load_transfer_grid(path: Path | str, overrides: list[str] | None = None) -> TransferGrid:
    from serkit.config import load_experiment

    return load_experiment(path, TransferGrid, overrides)


def _graph_path(out: Path, layer: str, fold) -> Path:
    return out / "graphs" / (f"{layer}.npz" if fold is None else f"fold{fold}/{layer}.npz")


def _graphs(grid: TransferGrid, recipe, folds: list, upstream, out: Path, log) -> dict[tuple, Path]:
    """One graph per upstream layer (and fold) over the training utterances (made once, then reused).
    The upstream model embeds the union of the folds' training utterances once per layer."""
    from serkit.data.splits import load_split
    from serkit.inference.embeddings import check_layer, embed, load_embeddings, save_embeddings
    from serkit.transfer.graph import build_graph, save_graph

    graphs = {}
    splits = {fold: load_split(recipe.data.split, recipe.data.manifest, fold) for fold in folds}
    manifest = next(iter(splits.values())).manifest
    union = manifest.subset(sorted({s for split in splits.values() for s in split.speakers("train")}))
    for layer in grid.layers:
        todo = [f for f in folds if not _graph_path(out, layer, f).is_file()]
        graphs.update({(layer, f): _graph_path(out, layer, f) for f in folds})
        if not todo:
            continue
        emb = out / "graphs" / f"{layer}.npy"
        if emb.is_file():
            cached = load_embeddings(emb)
            array, row = cached.array, {p: i for i, p in enumerate(cached.meta.get("paths", []))}
        if not emb.is_file() or any(p not in row for p in union.frame["path"]):
            check_layer(upstream, layer)
            array = embed(upstream, union, layer)
            for old in (emb, emb.with_suffix(".json")):  # a cache of this grid's own, made for fewer folds
                old.unlink(missing_ok=True)
            save_embeddings(emb, array, {"model": str(Path(grid.upstream).resolve()), "layer": layer,
                                         "manifest": str(union.file), "manifest_sha256": union.sha256,
                                         "paths": list(union.frame["path"])})
            row = {p: i for i, p in enumerate(union.frame["path"])}
        for fold in todo:
            train = splits[fold].part("train")
            graph = build_graph(array[[row[p] for p in train.frame["path"]]], grid.threshold, max(grid.neighbours))
            graph.paths, graph.manifest_sha256 = list(train.frame["path"]), train.sha256
            graph.meta = {"model": str(Path(grid.upstream).resolve()), "layer": layer, "embeddings": str(emb), "part": "train",
                          **({} if fold is None else {"fold": fold})}
            path = _graph_path(out, layer, fold)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_graph(path, graph)
            s = graph.stats()
            where = "" if fold is None else f" fold {fold}"
            log(f"graph {layer}{where}: {s['edges']} edges, {s['isolated_fraction']:.0%} of {s['nodes']} training utterances isolated")
    return graphs


def _cells(grid: TransferGrid, folds: list):
    for model in grid.models:
        for seed in grid.seeds:
            for fold in folds:
                yield model, seed, fold, "base", "", 0, 0.0
                for layer in grid.layers:
                    for n in grid.neighbours:
                        for alpha in grid.alphas:
                            yield model, seed, fold, "nsl", layer, n, alpha


def _fold_text(fold) -> str:
    """A fold as results.csv keeps it: "" for a hold-out split, else its number."""
    return "" if fold is None or str(fold).strip() in ("", "nan") else str(int(float(fold)))


def _key(model, seed, fold, variant, layer, n, alpha) -> str:
    return f"{model}|{seed}|{_fold_text(fold)}|{variant}|{layer}|{n}|{float(alpha):g}"


def _folds(grid: TransferGrid, recipe) -> list:
    """The folds to run: [None] for a hold-out split."""
    from serkit.data.splits import fold_count, load_split

    count = fold_count(recipe.data.split)
    if count is None:
        load_split(recipe.data.split, recipe.data.manifest, recipe.data.fold)  # names any problem with the split
        if grid.folds is not None:
            raise ConfigError(f"folds: {grid.folds}, but {recipe.data.split} is a single hold-out split; drop folds, or make "
                              "a folded split (serkit data split MANIFEST --folds 5 -o SPLIT.json)")
        return [None]
    if recipe.data.fold is not None:
        raise ConfigError(f"{recipe.data.split} is folded and the grid runs its folds: drop data.fold (from the recipe or "
                          "set:) and choose folds with the grid's folds: list")
    load_split(recipe.data.split, recipe.data.manifest, 0)  # names any problem with the split
    folds = list(range(count)) if grid.folds is None else list(grid.folds)
    bad = [f for f in folds if not 0 <= f < count]
    if bad:
        raise ConfigError(f"folds: {bad} not in {recipe.data.split}, which has folds 0..{count - 1}")
    return folds


def run_cell(payload) -> list[dict]:
    """One training of the grid (in this process or a worker): its results.csv row."""
    from serkit.config import load_recipe
    from serkit.training import train

    raw, cell, keep_models = payload
    recipe = load_recipe(raw=raw)
    run_dir = Path(recipe.output_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted training of this cell
    m = train(recipe, log=lambda *a: None).metrics
    row = {**cell, "val_uar": m["val"]["uar"], "val_accuracy": m["val"]["war"], "test_uar": m["test"]["uar"],
           "test_accuracy": m["test"]["war"], "n_val": m["val"]["n"], "n_test": m["test"]["n"],
           "train_seconds": m["training"]["train_seconds"], "parameters": m["model"]["parameters"],
           "run_dir": str(run_dir)}
    if not keep_models:
        shutil.rmtree(run_dir / "model", ignore_errors=True)
    return [row]


def run_transfer_grid(grid: TransferGrid, log=print, executor: ExecutorConfig | None = None,
                      progress=None) -> Path:
    """Run the grid's missing trainings (through `executor`, default the grid's own), then summarise."""
    from serkit.config import load_recipe, recipe_to_dict
    from serkit.inference.embeddings import check_layer
    from serkit.models import get_architecture, load_model

    out = Path(grid.output_dir)
    base_recipe = load_recipe(grid.recipe, grid.set)
    if base_recipe.task != "classification" or "val" in base_recipe.data.train_parts:
        raise ConfigError(f"{grid.recipe}: the transfer grid needs a classification recipe that selects on validation "
                          "(data.train_parts: [train])")
    folds = _folds(grid, base_recipe)
    for model in grid.models:
        get_architecture(model)
    upstream = None
    if not all(_graph_path(out, layer, fold).is_file() for layer in grid.layers for fold in folds):
        upstream = load_model(grid.upstream)  # a bad upstream or layer fails here, before the output folder exists
        for layer in grid.layers:
            check_layer(upstream, layer)
    out.mkdir(parents=True, exist_ok=True)
    _check_fingerprint(grid, base_recipe, out)
    graphs = _graphs(grid, base_recipe, folds, upstream, out, log)
    del upstream
    table = ResultsTable(out / "results.csv", COLUMNS, "transfer grid")  # an older file gains the fold column
    row_key = lambda r: _key(r["model"], r["seed"], r["fold"], r["variant"], r["layer"], r["n"], r["alpha"])  # noqa: E731
    if take_in_finished(table, row_key):
        log("took in cells that finished after the last run stopped")
    done = {row_key(r) for r in table.read().to_dict("records")}
    cells = list(_cells(grid, folds))
    todo = [c for c in cells if _key(*c) not in done]
    log(f"{len(cells) - len(todo)} trainings done, {len(todo)} to go")
    jobs = []
    for model, seed, fold, variant, layer, n, alpha in todo:
        tag = (f"{model}-s{seed}" + ("" if fold is None else f"-f{fold}") + f"-{variant}"
               + (f"-{layer}-n{n}-a{alpha:g}" if variant == "nsl" else ""))
        run_dir = out / "runs" / tag
        overrides = [f"model.architecture={model}", "model.options={}", f"seed={seed}", f"output_dir={run_dir}",
                     "train.progress_bar=false", *grid.set]
        if fold is not None:
            overrides.append(f"data.fold={fold}")
        raw = base_recipe.model_dump(mode="json")
        raw["graph"] = None if variant == "base" else {"file": str(graphs[layer, fold]), "alpha": alpha,
                                                          "max_neighbours": n, "embedding": grid.embedding,
                                                          "reduction": grid.reduction}
        recipe = load_recipe(raw=_apply(raw, overrides))  # every cell's recipe is checked before the first training
        cell = {"model": model, "seed": seed, "fold": _fold_text(fold), "variant": variant, "layer": layer, "n": n,
                "alpha": alpha}
        jobs.append(Cell(_key(*cell.values()), tag, (recipe_to_dict(recipe), cell, grid.keep_models)))
    run_cells(jobs, run_cell, table, executor or grid.executor, log, progress=progress)
    summarise(out)
    return out


def _check_fingerprint(grid: TransferGrid, recipe, out: Path) -> None:
    """A resumed grid must be the same experiment: same training recipe, upstream, graph settings."""
    from serkit.config import recipe_to_dict
    from serkit.io import sha256_file

    raw = recipe_to_dict(recipe)
    for key in ("output_dir", "seed", "model", "graph", "name"):
        raw.pop(key, None)
    raw["train"].pop("importances", None)  # what the model directory stores besides, not how it trains
    weights = Path(grid.upstream) / "model.safetensors"
    now = {"recipe": raw, "upstream_weights_sha256": sha256_file(weights) if weights.is_file() else str(grid.upstream),
           "split_sha256": sha256_file(recipe.data.split), "threshold": grid.threshold, "reduction": grid.reduction,
           "embedding": grid.embedding,
           "max_neighbours": max(grid.neighbours), "layers": sorted(grid.layers)}
    fingerprint = Fingerprint(out)
    before = fingerprint.previous()
    if before is not None:
        before.setdefault("reduction", "utterances")  # grids from before these options
        before.setdefault("embedding", "fc1")
        before.setdefault("split_sha256", now["split_sha256"])  # grids from before the split was fingerprinted
        differs = [k for k in ("recipe", "upstream_weights_sha256", "split_sha256", "threshold", "reduction", "embedding")
                   if before.get(k) != now[k]]
        if before.get("max_neighbours", 0) < now["max_neighbours"]:
            differs.append("neighbours (more than the saved graphs keep)")
        fingerprint.refuse(differs)
        now["layers"] = sorted(set(now["layers"]) | set(before.get("layers", [])))
        now["max_neighbours"] = before["max_neighbours"]
    fingerprint.save(now)


def _apply(raw: dict, overrides: list[str]) -> dict:
    from serkit.config import apply_overrides

    return apply_overrides(raw, overrides)


def _run_dir(out: Path, row) -> Path:
    """A run's folder under out/runs/, wherever the grid was run from."""
    return out / "runs" / Path(str(row.run_dir)).name


def _pairs(cell: pd.DataFrame, base: pd.DataFrame) -> list[tuple]:
    """Each run of an NSL cell with the base run of its seed and fold (None where that is missing)."""
    pairs = []
    for row in cell.itertuples():
        match = base[(base.seed == row.seed) & (base.fold == row.fold)]
        pairs.append((row, next(match.itertuples()) if len(match) else None))
    return pairs


def paired_p(out: Path, cell: pd.DataFrame, base: pd.DataFrame) -> float | None:
    """One-tailed paired permutation test of NSL > base on test UAR, each NSL run paired with the
    base run of its seed (and fold) on the same utterances, the gain averaged over those pairs;
    None when a prediction file is missing."""
    from serkit.transfer.run import paired_predictions

    truth, nsl, ref, groups = [], [], [], []
    for row, match in _pairs(cell, base):
        if match is None:
            return None
        joined = paired_predictions(*(_run_dir(out, r) / "predictions_test.csv" for r in (row, match)))
        if joined is None:
            return None
        truth += list(joined.emotion)
        nsl += list(joined.predicted_a)
        ref += list(joined.predicted_b)
        groups += [f"{row.seed}|{row.fold}"] * len(joined)
    return paired_uar_test(truth, nsl, ref, groups)[1]


def _per_seed(frame: pd.DataFrame, column: str) -> pd.Series:
    """One value per seed: the mean over its folds (the value itself for a hold-out split)."""
    return frame.groupby("seed")[column].mean()


def _count(runs: pd.DataFrame) -> str:
    """Seeds, and with folds 'seeds × folds' (each seed's folds, listed where seeds differ)."""
    seeds = runs.seed.nunique()
    if (runs.fold == "").all():
        return str(seeds)
    per_seed = runs.groupby("seed").fold.nunique()
    if per_seed.nunique() == 1:
        return f"{seeds} × {per_seed.iloc[0]} folds"
    return f"{seeds} ({', '.join(f'{s}: {k} folds' for s, k in per_seed.items())})"


def read_results(out: Path) -> pd.DataFrame:
    """results.csv, with fold as text: "" for a hold-out split, else the fold number."""
    frame = pd.read_csv(out / "results.csv", dtype={"fold": str}, keep_default_na=False)
    if "fold" not in frame.columns:
        frame["fold"] = ""
    frame["fold"] = [_fold_text(f) for f in frame["fold"]]
    return frame


def summarise(out: Path) -> None:
    frame = read_results(out)
    folds = sorted({f for f in frame.fold if f != ""}, key=int)
    lines = [f"# Knowledge transfer through a graph (paper 003, Table 3): {out.name}", ""]
    if folds:
        lines += [f"Speaker folds {', '.join(folds)}: every training ran once per fold, and a seed's UAR is the mean over its "
                  "folds.", ""]
    lines += ["Mean ± std over seeds (seeds: the runs behind a row). One-tailed tests of NSL > base on test UAR: p (z), the papers' two-proportion "
              "z-test (mean UARs, utterances pooled over seeds); p (paired), a paired permutation test (10,000 "
              "permutations) on the same test utterances, each seed's NSL run paired with that seed's base run"
              + (" of the same fold" if folds else "") + ". Each cell is compared with the base runs of its own seeds"
              + (" and folds" if folds else "") + ". + p < 0.1, * p < 0.05, ** p < 0.01.", ""]
    best = None
    for model, group in frame.groupby("model", sort=False):
        base = group[group.variant == "base"]
        lines += [f"## {model} ({int(group.parameters.iloc[0]) / 1e6:.2f} M parameters)", "",
                  "| variant | layer | n | alpha | seeds | val UAR | test UAR | test accuracy | NSL − base (test) | p (z) | p (paired) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        if len(base):
            lines.append(f"| base | | | | {_count(base)} | {mean_std(_per_seed(base, 'val_uar'))} | "
                         f"{mean_std(_per_seed(base, 'test_uar'))} | {mean_std(_per_seed(base, 'test_accuracy'))} | | | |")
        nsl = group[group.variant == "nsl"]
        for (layer, n, alpha), cell in nsl.groupby(["layer", "n", "alpha"], sort=True):
            pairs = [(row, match) for row, match in _pairs(cell, base) if match is not None]
            if pairs:  # compare like with like: the base runs of the cell's own seeds (and folds)
                mine = cell.loc[[row.Index for row, _ in pairs]]
                same = base.loc[[match.Index for _, match in pairs]]
                gain = mine.test_uar.mean() - same.test_uar.mean()
                _, p = z_test_one_tailed(mine.test_uar.mean(), same.test_uar.mean(), int(mine.n_test.sum()), int(same.n_test.sum()))
                paired = paired_p(out, mine, same)
                paired = "n/a" if paired is None else f"{paired:.3g} {significance_marker(paired)}"
                test = f"{gain:+.3f} | {p:.3g} {significance_marker(p)} | {paired}"
            else:
                test = " | | "
            lines.append(f"| nsl | {layer} | {n} | {alpha:g} | {_count(cell)} | {mean_std(_per_seed(cell, 'val_uar'))} | "
                         f"{mean_std(_per_seed(cell, 'test_uar'))} | {mean_std(_per_seed(cell, 'test_accuracy'))} | {test} |")
            score = cell.val_uar.mean()
            if best is None or score > best[0]:
                best = (score, cell[cell.seed == cell.seed.iloc[0]], f"{model} {layer} n={n} alpha={alpha:g}")
        lines.append("")
    write_text(out / "table3.md", "\n".join(lines) + "\n", overwrite=True)
    _fig2(frame, out / "fig2.png")
    if best is not None:
        _confusion_best(out, best[1], best[2])


def _confusion_best(out: Path, runs: pd.DataFrame, name: str) -> None:
    """The best cell's test confusion matrix (one seed, its folds pooled)."""
    from sklearn.metrics import confusion_matrix

    from serkit.plots import confusion_png

    if len(runs) == 1:
        file = _run_dir(out, next(runs.itertuples())) / "confusion_test.png"
        if file.is_file():
            shutil.copyfile(file, out / "confusion_best.png")
        return
    files = [_run_dir(out, row) / "predictions_test.csv" for row in runs.itertuples()]
    if not all(f.is_file() for f in files):
        return
    pooled = pd.concat([pd.read_csv(f, usecols=["emotion", "predicted"], dtype=str) for f in files])
    labels = sorted(set(pooled.emotion) | set(pooled.predicted))
    matrix = confusion_matrix(pooled.emotion, pooled.predicted, labels=labels)
    confusion_png(out / "confusion_best.png", matrix, labels,
                  f"{name}, seed {runs.seed.iloc[0]}, {len(runs)} folds pooled (test)", overwrite=True)  # the grid's own


def _fig2(frame: pd.DataFrame, path: Path) -> None:
    from serkit.plots import plt, save_png  # the Agg backend is set there

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
    save_png(fig, path, dpi=110)
