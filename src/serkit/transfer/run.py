"""`serkit transfer`: a downstream model trained with the graph's neighbour loss, beside the same
model trained without it (the base model) and, on request, the transfer-learning baselines, all on
the same split and seed, with one-tailed tests of NSL against each: the papers' z-test and a paired
permutation test on the same utterances.

Writes OUTPUT_DIR/ whole or not at all: `nsl/`, `base/`, `tl-add/` ... (ordinary run folders, each
with its model), `comparison.json` and `comparison.md`.
"""

from __future__ import annotations

from pathlib import Path

from serkit.config import Recipe
from serkit.errors import ConfigError
from serkit.io import OutputDir, write_json, write_text
from serkit.metrics import paired_uar_test, significance_marker, z_test_one_tailed
from serkit.training import train

BASELINES = ("base", "add", "max", "avg")


def transfer(recipe: Recipe, baselines: tuple[str, ...] | list[str] = ("base",), upstream: Path | str | None = None,
             log=print) -> dict:
    """Train the NSL model and each baseline: `base` (the same model without the graph) and the
    transfer-learning models `add` / `max` / `avg` (downstream FC1 combined with the upstream
    embedding; the upstream model defaults to the one the graph was built from)."""
    if recipe.graph is None:
        raise ConfigError("a transfer recipe needs a graph section, e.g. graph: {file: graph.npz, alpha: 0.1, max_neighbours: 6}")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}")
    tl_modes = [b for b in baselines if b != "base"]
    upstream_layer = "fc1"
    if tl_modes:
        from serkit.transfer.graph import load_graph

        meta = load_graph(recipe.graph.file).meta
        upstream = upstream or meta.get("model")
        if not upstream:
            raise ConfigError("transfer-learning baselines need the upstream model: pass --upstream MODEL_DIR")
        upstream_layer = meta.get("layer") if meta.get("layer") in ("fc1", "fc2", "pooled") else "fc1"
    with OutputDir(recipe.output_dir, what="output directory") as output:  # taken, existing or unwritable: fails before training
        work = output.staging()
        variants = {"nsl": recipe.model_copy(update={"output_dir": work / "nsl"})}
        if "base" in baselines:
            variants["base"] = recipe.model_copy(update={"output_dir": work / "base", "graph": None})
        for mode in tl_modes:
            model = recipe.model.model_copy(update={"architecture": "fused", "options": {
                "downstream": recipe.model.architecture, "downstream_options": recipe.model.options,
                "upstream": str(upstream), "upstream_layer": upstream_layer, "mode": mode}})
            variants[f"tl-{mode}"] = recipe.model_copy(update={"output_dir": work / f"tl-{mode}", "graph": None, "model": model})
        metrics = {}
        for name, variant in variants.items():
            log(f"== {name}: {'neighbour loss, alpha ' + format(recipe.graph.alpha, 'g') if variant.graph else 'no graph'}")
            result = train(variant, log=log)
            metrics[name] = result.metrics
        comparison = compare(metrics, recipe, {name: work / name for name in variants})
        write_json(work / "comparison.json", comparison)
        write_text(work / "comparison.md", comparison_markdown(comparison))
        output.commit()
    return comparison


def paired_predictions(file_a: Path, file_b: Path):
    """Two runs' predictions of the same utterances, side by side (columns path, emotion,
    predicted_a, predicted_b); None when a file is missing or they scored different utterances."""
    import pandas as pd

    if not (Path(file_a).is_file() and Path(file_b).is_file()):
        return None
    a, b = (pd.read_csv(f, usecols=["path", "emotion", "predicted"], dtype=str) for f in (file_a, file_b))
    joined = a.merge(b, on=["path", "emotion"], suffixes=("_a", "_b"))
    return joined if len(joined) == len(a) == len(b) else None


def _paired(run_dirs: dict | None, part: str, name: str, other: str) -> float | None:
    """Paired permutation p of NSL > other on `part`, from the two runs' predictions (None if missing)."""
    if not run_dirs:
        return None
    joined = paired_predictions(*(Path(run_dirs[k]) / f"predictions_{part}.csv" for k in (name, other)))
    if joined is None:
        return None
    return paired_uar_test(joined.emotion, joined.predicted_a, joined.predicted_b)[1]


def compare(metrics: dict, recipe: Recipe, run_dirs: dict | None = None) -> dict:
    graph = metrics["nsl"]["training"]["graph"]
    rows = {}
    for part in ("val", "test"):
        if part not in metrics["nsl"]:
            continue
        row = {name: {"uar": m[part]["uar"], "accuracy": m[part]["war"], "n": m[part]["n"]} for name, m in metrics.items()}
        tests = {}
        for other in metrics:
            if other != "nsl":
                z, p = z_test_one_tailed(row["nsl"]["uar"], row[other]["uar"], row["nsl"]["n"], row[other]["n"])
                tests[other] = {"uar_gain": row["nsl"]["uar"] - row[other]["uar"], "z": z, "p_one_tailed": p,
                                "p_paired": _paired(run_dirs, part, "nsl", other)}
        rows[part] = {"models": row, "nsl_vs": tests}
    return {"architecture": recipe.model.architecture, "seed": recipe.seed, "graph": graph, "parts": rows,
            "parameters": {name: m["model"]["parameters"] for name, m in metrics.items()},
            "train_seconds": {name: m["training"]["train_seconds"] for name, m in metrics.items()}}


def comparison_markdown(c: dict) -> str:
    g = c["graph"]
    lines = [f"# Knowledge transfer through a graph: {c['architecture']}, seed {c['seed']}", "",
             f"Graph `{g['file']}` (layer {g.get('layer') or '?'} of `{g.get('model') or '?'}`, threshold {g['threshold']:g}, "
             f"at most {g['max_neighbours']} neighbours; {g['edges']} edges, {g['isolated_fraction']:.0%} of the training "
             f"utterances without any); alpha {g['alpha']:g} on `{g['embedding']}`"
             f"{', the neighbour loss averaged over edges' if g.get('reduction') == 'edges' else ''}.", "",
             "One-tailed p of NSL > this model: z, the papers' two-proportion z-test; paired, a paired permutation "
             "test on the same utterances (10,000 permutations).", "",
             "| part | model | parameters | UAR | accuracy | utterances | NSL minus this (UAR) | p (z) | p (paired) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for part, row in c["parts"].items():
        for name, m in row["models"].items():
            t = row["nsl_vs"].get(name)
            if t:
                paired = "n/a" if t.get("p_paired") is None else f"{t['p_paired']:.3g} {significance_marker(t['p_paired'])}"
                test = f"{t['uar_gain']:+.3f} | {t['p_one_tailed']:.3g} {significance_marker(t['p_one_tailed'])} | {paired}"
            else:
                test = "| | "
            lines.append(f"| {part} | {name} | {c['parameters'][name] / 1e6:.2f} M | {m['uar']:.3f} | {m['accuracy']:.3f} "
                         f"| {m['n']} | {test} |")
    lines.append("\ntl-*: transfer learning, the downstream FC1 combined with the frozen upstream embedding "
                 "(the upstream model is part of those models, hence their size).")
    return "\n".join(lines) + "\n"
