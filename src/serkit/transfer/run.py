"""`serkit transfer`: a downstream model trained with the graph's neighbour loss, beside the same
model trained without it (the base model), on the same split and seed, with a one-tailed z-test.

Writes OUTPUT_DIR/ whole or not at all: `nsl/` and `base/` (two ordinary run folders, each with
its model), `comparison.json` and `comparison.md`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from serkit.config import Recipe
from serkit.errors import ConfigError
from serkit.io import refuse_existing, write_json, write_text
from serkit.metrics import significance_marker, z_test_one_tailed
from serkit.training import train


def transfer(recipe: Recipe, with_base: bool = True, log=print) -> dict:
    if recipe.graph is None:
        raise ConfigError("a transfer recipe needs a graph section, e.g. graph: {file: graph.npz, alpha: 0.1, max_neighbours: 6}")
    out = Path(recipe.output_dir)
    refuse_existing(out, "output directory")
    work = out.with_name(f".{out.name}.partial")
    if work.exists():
        shutil.rmtree(work)  # left by an interrupted run of the same recipe
    work.mkdir(parents=True)
    try:
        variants = {"nsl": recipe.model_copy(update={"output_dir": work / "nsl"})}
        if with_base:
            variants["base"] = recipe.model_copy(update={"output_dir": work / "base", "graph": None})
        metrics = {}
        for name, variant in variants.items():
            log(f"== {name}: {'neighbour loss, alpha ' + format(recipe.graph.alpha, 'g') if variant.graph else 'no graph'}")
            result = train(variant, log=log)
            metrics[name] = result.metrics
        comparison = compare(metrics, recipe)
        write_json(work / "comparison.json", comparison)
        write_text(work / "comparison.md", comparison_markdown(comparison))
        os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return comparison


def compare(metrics: dict, recipe: Recipe) -> dict:
    graph = metrics["nsl"]["training"]["graph"]
    rows = {}
    for part in ("val", "test"):
        if part not in metrics["nsl"]:
            continue
        row = {name: {"uar": m[part]["uar"], "accuracy": m[part]["war"], "n": m[part]["n"]} for name, m in metrics.items()}
        if "base" in row:
            z, p = z_test_one_tailed(row["nsl"]["uar"], row["base"]["uar"], row["nsl"]["n"], row["base"]["n"])
            row["nsl_vs_base"] = {"uar_gain": row["nsl"]["uar"] - row["base"]["uar"], "z": z, "p_one_tailed": p}
        rows[part] = row
    return {"architecture": recipe.model.architecture, "seed": recipe.seed, "graph": graph,
            "parameters": metrics["nsl"]["model"]["parameters"], "parts": rows,
            "train_seconds": {name: m["training"]["train_seconds"] for name, m in metrics.items()}}


def comparison_markdown(c: dict) -> str:
    g = c["graph"]
    lines = [f"# Knowledge transfer through a graph: {c['architecture']}, seed {c['seed']}", "",
             f"Graph `{g['file']}` (layer {g.get('layer') or '?'} of `{g.get('model') or '?'}`, threshold {g['threshold']:g}, "
             f"at most {g['max_neighbours']} neighbours; {g['edges']} edges, {g['isolated_fraction']:.0%} of the training "
             f"utterances without any); alpha {g['alpha']:g} on `{g['embedding']}`. {c['parameters'] / 1e6:.2f} M parameters.", "",
             "| part | model | UAR | accuracy | utterances |", "|---|---|---|---|---|"]
    for part, row in c["parts"].items():
        for name in ("base", "nsl"):
            if name in row:
                lines.append(f"| {part} | {name} | {row[name]['uar']:.3f} | {row[name]['accuracy']:.3f} | {row[name]['n']} |")
    for part, row in c["parts"].items():
        if "nsl_vs_base" in row:
            t = row["nsl_vs_base"]
            lines.append(f"\n{part}: NSL - base = {t['uar_gain']:+.3f} UAR, one-tailed z = {t['z']:.2f}, "
                         f"p = {t['p_one_tailed']:.3g} {significance_marker(t['p_one_tailed'])}")
    return "\n".join(lines) + "\n"
