"""`serkit experiment recovery`: paper 002's information-recovery study, end to end, per corpus.

The paper asks whether a speech foundation model that was fine-tuned for ASR (an intermediate task)
recovers the emotion information it lost once it is fine-tuned again for SER, and whether it then
decides like a model trained for SER directly. Here the ASR network is real: Whisper tiny.en's
encoder was trained for English ASR. The systems, all of one architecture (the recipe's):

- **ASR**: the pretrained Whisper encoder, frozen (its embeddings; the paper's G-3 ASR rows);
- **ASR → SER**: the same encoder fine-tuned for SER with the recipe (two-step fine-tuning, G-4),
  once per seed; two or more seeds give the seed-to-seed floor for every comparison;
- **SER**: the task-specific reference, the same architecture trained for SER from random weights
  with the same recipe (there is no SSL-only Whisper checkpoint, so the paper's "PT → SER" becomes
  "scratch → SER"; its coordinates share nothing with the others, which the tables say);
- **handcrafted** baselines: openSMILE functionals and/or bag-of-audio-words (G-1).

Every system's last-layer embedding (the time-averaged encoder output, `pooled`) is probed with a
linear SVM (C by speaker-grouped 5-fold search on the training speakers) and scored on the held-out
part: Table I, with the frozen ASR encoder also probed per layer. Decisions and cosine distances
between the trained models: Tables II-III (paper's Fig. 3 as a PNG). Self-attention maps:
Bhattacharyya distances per layer and head (Eq. 1, Fig. 4) as heatmaps. Each step is saved when
done (resumable) and timed; `tables.md` reports the run time of every analysis.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from serkit.errors import ConfigError
from serkit.experiment import Cell, ExecutorConfig, Fingerprint, StepResults, mean_std, run_cells, take_in_finished
from serkit.io import write_text

ASR, SER = "asr", "ser-scratch"
NAMES = {ASR: "ASR (Whisper, frozen)", SER: "SER (same architecture, from scratch)"}


def _seed_system(seed: int) -> str:
    return f"asr-to-ser-s{seed}"


def _name(system: str) -> str:
    if system.startswith("asr-to-ser-s"):
        return f"ASR → SER (seed {system.rsplit('s', 1)[1]})"
    return NAMES.get(system, system)


class RecoveryExperiment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "recovery"
    output_dir: Path
    corpora: dict[str, Path] = Field(min_length=1, description="corpus name -> a whisper training recipe (its split, data, train)")
    seeds: list[int] = Field([0, 1], min_length=1, description="ASR → SER seeds (the first also trains SER from scratch); "
                             "two or more give the seed-to-seed floor")
    handcrafted: list[str] = Field(["eGeMAPSv02"], description="openSMILE functional sets (eGeMAPSv02, ComParE_2016) "
                                   "and/or 'boaw' (bag of audio words over ComParE LLDs); [] for none")
    boaw_words: int = Field(500, ge=2)
    part: str = Field("test", description="the held-out part every analysis is scored on: test or val")
    attention_utterances: int = Field(50, ge=1, description="a seeded sample of the held-out part for attention maps")
    set: list[str] = Field(default_factory=list, description="recipe overrides for every training, e.g. train.max_epochs=5")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="where the steps run: local (in this "
                                     "process), pool (local worker processes) or slurm (submitit)")
    scratch_set: list[str] = Field(["train.lr=1e-4"], description="further overrides for the from-scratch training only: "
                                   "random weights need a larger learning rate than fine-tuning's 3e-5")

    @field_validator("part")
    @classmethod
    def _part(cls, value):
        if value not in ("test", "val"):
            raise ValueError("part must be 'test' or 'val'")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value):
        if len(set(value)) != len(value):
            raise ValueError(f"seeds {value} repeat a seed: a model compared with itself is no floor")
        return value

    @field_validator("handcrafted")
    @classmethod
    def _handcrafted(cls, value):
        bad = [v for v in value if v not in ("eGeMAPSv02", "ComParE_2016", "boaw")]
        if bad:
            raise ValueError(f"unknown handcrafted features {bad}: use eGeMAPSv02, ComParE_2016 or boaw")
        return value


def load_recovery(path: Path | str, overrides: list[str] | None = None) -> RecoveryExperiment:
    from serkit.config import load_experiment

    return load_experiment(path, RecoveryExperiment, overrides)


def _recipes(exp: RecoveryExperiment) -> dict:
    from serkit.config import load_recipe
    from serkit.data.splits import load_split

    recipes = {}
    for corpus, path in exp.corpora.items():
        recipe = load_recipe(path, exp.set)
        if recipe.model.architecture != "whisper" or recipe.task != "classification":
            raise ConfigError(f"{path}: the recovery study needs a whisper classification recipe (the pretrained ASR "
                              f"encoder), not {recipe.task} with {recipe.model.architecture}")
        if "val" in recipe.data.train_parts and exp.part == "val":
            raise ConfigError(f"{path} trains on val: score the study on part: test")
        load_split(recipe.data.split, recipe.data.manifest, recipe.data.fold)  # a missing split fails before any output
        recipes[corpus] = recipe
    return recipes


def _check_fingerprint(exp: RecoveryExperiment, recipes: dict, out: Path) -> None:
    """A resumed study must be the same study: same recipes and settings."""
    from serkit.config import recipe_to_dict

    now = {"recipes": {}, "boaw_words": exp.boaw_words if "boaw" in exp.handcrafted else None, "part": exp.part,
           "attention_utterances": exp.attention_utterances, "scratch_seed": exp.seeds[0], "scratch_set": exp.scratch_set}
    for corpus, recipe in recipes.items():
        raw = recipe_to_dict(recipe)
        for key in ("output_dir", "seed", "name"):
            raw.pop(key, None)
        now["recipes"][corpus] = raw
    fingerprint = Fingerprint(out, "a recovery study", legacy=("experiment.json",))  # its older name
    before = fingerprint.previous()
    if before is not None:
        differs = [k for k in now if k != "recipes" and before.get(k) != now[k] and not (k == "boaw_words" and None in (before.get(k), now[k]))]
        differs += [f"recipe of {c}" for c in now["recipes"] if c in before.get("recipes", {}) and before["recipes"][c] != now["recipes"][c]]
        fingerprint.refuse(differs)
        now["recipes"] = {**before.get("recipes", {}), **now["recipes"]}
        now["boaw_words"] = now["boaw_words"] or before.get("boaw_words")
    fingerprint.save(now)



def _train(recipe, run_dir: Path, seed: int, pretrained: bool, overrides: list[str] | None = None) -> dict:
    from serkit.config import apply_overrides, load_recipe, recipe_to_dict
    from serkit.training import train

    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted training
    raw = recipe_to_dict(recipe)
    raw.update(seed=seed, output_dir=str(run_dir))
    raw["train"]["progress_bar"] = False
    options = {**raw["model"]["options"], "pretrained": pretrained}
    if not pretrained:  # random weights: nothing may stay frozen at its initial values
        options.update(freeze_feature_encoder=False, freeze_layers=0, freeze_backbone=False)
    raw["model"]["options"] = options
    result = train(load_recipe(raw=apply_overrides(raw, overrides or [])), log=lambda *a: None)
    m = result.metrics
    return {"model_dir": str(result.model_dir), "val_uar": (m.get("val") or {}).get("uar", float("nan")),
            **{f"{part}_{k}": m[part][k] for part in ("test", "val") if part in m for k in ("uar", "war")},
            "train_seconds": m["training"]["train_seconds"], "parameters": m["model"]["parameters"]}


def _frozen_asr(recipe, labels: list[str], path: Path) -> dict:
    """The pretrained encoder as a model directory (its head is untrained: only its embeddings and
    attention maps are used)."""
    from serkit.data.dataset import Preprocessing
    from serkit.models import build_model, save_model

    if path.exists():
        shutil.rmtree(path)
    options = {**recipe.model.options, "freeze_backbone": True}
    model = build_model("whisper", options, len(labels)).eval()
    save_model(path, model, labels, Preprocessing(trim_silence_db=recipe.data.trim_silence_db,
                                                  fixed_seconds=recipe.data.fixed_seconds),
               provenance={"note": "pretrained Whisper encoder, frozen; head untrained (recovery study)"})
    return {"model_dir": str(path), "parameters": model.total_parameters()}


def _probe(train_x: dict, test_x: dict, train_rows, test_rows) -> dict:
    from serkit.analysis.probes import probe_layers

    rows = probe_layers(train_x, np.array(train_rows.frame["emotion"]), np.array(train_rows.frame["speaker"]),
                        test_x, np.array(test_rows.frame["emotion"]))
    return {"rows": [{**r, "dim": int(train_x[r["layer"]].shape[1])} for r in rows]}


def _probe_model(model_dir: str, layers: list[str] | None, recipe, part: str) -> dict:
    from serkit.analysis.probes import default_probe_layers, model_features
    from serkit.models import load_model

    _, train_rows, test_rows = _rows(recipe, part)
    saved = load_model(model_dir)
    layers = layers or [*default_probe_layers(saved), "pooled"]
    return _probe(model_features(saved, train_rows, layers), model_features(saved, test_rows, layers), train_rows, test_rows)


def _probe_handcrafted(kind: str, recipe, part: str, words: int) -> dict:
    from serkit.analysis.features import bag_of_audio_words, opensmile_functionals

    split, train_rows, test_rows = _rows(recipe, part)
    both = split.manifest.subset(list(split.speakers("train")) + list(split.speakers(part)))
    quiet = lambda *a: None  # noqa: E731
    if kind == "boaw":
        array, _ = bag_of_audio_words(both, list(train_rows.frame["speaker"].unique()), "ComParE_2016", words, log=quiet)
    else:
        array, _ = opensmile_functionals(both, kind, log=quiet)
    index = {p: i for i, p in enumerate(both.frame["path"])}
    pick = lambda rows: {kind: array[[index[p] for p in rows.frame["path"]]]}  # noqa: E731
    return _probe(pick(train_rows), pick(test_rows), train_rows, test_rows)


def _compare(a: str, b: str, recipe, part: str, npy: Path) -> dict:
    from serkit.analysis.compare import compare_models
    from serkit.models import load_model

    rows = _rows(recipe, part)[2]
    result = compare_models(load_model(a), load_model(b), rows, layer="pooled")
    np.save(npy, np.array(result.pop("distances"), dtype=np.float32))
    return result


def _attention(a: str, b: str, recipe, part: str, n: int, png: Path, title: str) -> dict:
    from serkit.analysis.attention import attention_distance, attention_png
    from serkit.models import load_model

    rows = _rows(recipe, part)[2]
    result = attention_distance(load_model(a), load_model(b), rows, n)
    attention_png(png, result, title)
    return result


def run_recovery(exp: RecoveryExperiment, log=print, executor: ExecutorConfig | None = None,
                 progress=None) -> Path:
    """Run the study's missing steps (through `executor`, default the study's own), then write its tables.

    Three rounds, each one's steps independent of each other: the trainings; the frozen encoders (they
    take the trained models' labels); the probes, comparisons and attention maps of every system."""
    out = Path(exp.output_dir)
    recipes = _recipes(exp)
    out.mkdir(parents=True, exist_ok=True)
    _check_fingerprint(exp, recipes, out)
    steps = StepResults(out / "results.json")
    if take_in_finished(steps, lambda row: row["step"]):
        log("took in steps that finished after the last run stopped")
    config = executor or exp.executor
    for round_ in (_trainings, _encoders, _analyses):
        cells = [Cell(key, key, (key, fn, args)) for key, fn, args in round_(exp, recipes, steps.done, out)
                 if key not in steps.done]
        run_cells(cells, run_cell, steps, config, log, progress=progress)
    summarise(exp, steps.done, out)
    return out


def run_cell(payload) -> list[dict]:
    """One step, timed (run in this process or in a worker)."""
    key, fn, args = payload
    t0 = time.perf_counter()
    result = fn(*args)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return [{"step": key, "result": result}]


def _trainings(exp: RecoveryExperiment, recipes: dict, done: dict, out: Path):
    for corpus, recipe in recipes.items():
        for seed in exp.seeds:
            system = _seed_system(seed)
            yield f"{corpus}/train/{system}", _train, (recipe, out / corpus / system, seed, True)
        yield f"{corpus}/train/{SER}", _train, (recipe, out / corpus / SER, exp.seeds[0], False, exp.scratch_set)


def _encoders(exp: RecoveryExperiment, recipes: dict, done: dict, out: Path):
    from serkit.models import load_model

    for corpus, recipe in recipes.items():
        first = done[f"{corpus}/train/{_seed_system(exp.seeds[0])}"]["model_dir"]
        if not Path(first).is_dir():
            raise ConfigError(f"{first} is gone: the study's results.json refers to a model that was deleted; "
                              "delete the study's output_dir and run again")
        if f"{corpus}/build/{ASR}" not in done:
            yield f"{corpus}/build/{ASR}", _frozen_asr, (recipe, load_model(first).labels, out / corpus / ASR / "model")


def _analyses(exp: RecoveryExperiment, recipes: dict, done: dict, out: Path):
    for corpus, recipe in recipes.items():
        base = out / corpus
        systems = {s: done[f"{corpus}/{'build' if s == ASR else 'train'}/{s}"]["model_dir"]
                   for s in [*map(_seed_system, exp.seeds), SER, ASR]}
        for system, model_dir in systems.items():
            layers = None if system == ASR else ["pooled"]  # the frozen encoder: every layer, and pooled
            yield f"{corpus}/probe/{system}", _probe_model, (model_dir, layers, recipe, exp.part)
        for kind in exp.handcrafted:
            yield f"{corpus}/probe/{kind}", _probe_handcrafted, (kind, recipe, exp.part, exp.boaw_words)
        for a, b in _pairs(exp.seeds, decisions=True):
            yield f"{corpus}/compare/{a}|{b}", _compare, (systems[a], systems[b], recipe, exp.part,
                                                          base / f"distances_{a}_{b}.npy")
        for a, b in _pairs(exp.seeds, decisions=False):
            yield (f"{corpus}/attention/{a}|{b}", _attention,
                   (systems[a], systems[b], recipe, exp.part, exp.attention_utterances, base / f"attention_{a}_{b}.png",
                    f"{corpus}: {_name(a)} vs {_name(b)}"))


def _rows(recipe, part: str):
    """The training speakers' rows and the held-out part's, from the recipe's split."""
    from serkit.data.splits import load_split

    split = load_split(recipe.data.split, recipe.data.manifest, recipe.data.fold)
    return split, split.part("train"), split.part(part)


def _pairs(seeds: list[int], decisions: bool) -> list[tuple[str, str]]:
    """Compared pairs: SER vs ASR → SER (the paper's), two ASR → SER seeds (the floor), and for
    attention also ASR vs ASR → SER (how far SER fine-tuning moves the ASR attention)."""
    first = _seed_system(seeds[0])
    pairs = [(SER, first)]
    if len(seeds) > 1:
        pairs.append((first, _seed_system(seeds[1])))
    if not decisions:
        pairs.insert(0, (ASR, first))
    return pairs


def summarise(exp: RecoveryExperiment, done: dict, out: Path) -> None:
    corpora = list(exp.corpora)
    seeds = [_seed_system(s) for s in exp.seeds]
    get = lambda corpus, key: done.get(f"{corpus}/{key}")  # noqa: E731

    def probe_cell(corpus, systems, layer="pooled"):
        rows = [r for s in systems if get(corpus, f"probe/{s}") for r in get(corpus, f"probe/{s}")["rows"] if r["layer"] == layer]
        if not rows:
            return "– | –", None
        return f"{mean_std([r['test_uar'] for r in rows])} | {mean_std([r['test_war'] for r in rows])}", rows[0]["dim"]

    part = exp.part
    lines = [f"# Information recovery (paper 002): {exp.name}", "",
             "Whisper tiny.en's encoder is the ASR network (trained for English ASR). Linear-SVM probes on each "
             f"system's time-averaged encoder output (`pooled`: the recipe's pooled hidden state, the last unless "
             f"model.options.layer says otherwise), C by speaker-grouped 5-fold search on the training speakers, "
             f"scored on the held-out {part} speakers. ASR → SER: mean ± std over seeds {exp.seeds}.", "",
             "## Table I: probe UAR / WAR", "",
             "| group | representation | dim | " + " | ".join(f"{c} UAR | {c} WAR" for c in corpora) + " |",
             "|---|---|---|" + "---|---|" * len(corpora)]
    groups = [("G-1 handcrafted", k, [k], k) for k in exp.handcrafted]
    groups += [("G-3 task-specific", NAMES[ASR], [ASR], "pooled"), ("G-3 task-specific", NAMES[SER], [SER], "pooled"),
               ("G-4 two-step", "ASR → SER", seeds, "pooled")]
    for group, label, systems, layer in groups:
        cells, dim = [], None
        for corpus in corpora:
            cell, d = probe_cell(corpus, systems, layer)
            cells.append(cell)
            dim = dim or d
        lines.append(f"| {group} | {label} | {dim or '–'} | " + " | ".join(cells) + " |")
    lines += ["", "The trained models' own heads on the same speakers (not probes):", "",
              "| model | " + " | ".join(f"{c} {part} UAR | {c} val UAR | {c} train s" for c in corpora) + " |",
              "|---|" + "---|---|---|" * len(corpora)]
    for label, systems in ((NAMES[SER], [SER]), ("ASR → SER", seeds)):
        cells = []
        for corpus in corpora:
            runs = [get(corpus, f"train/{s}") for s in systems if get(corpus, f"train/{s}")]
            key = f"{part}_uar" if part == "test" else "val_uar"
            cells.append(" | ".join([mean_std([r.get(key, float("nan")) for r in runs]), mean_std([r["val_uar"] for r in runs]),
                                     mean_std([r["train_seconds"] for r in runs], 0)]) if runs else "– | – | –")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "### The frozen ASR encoder, layer by layer (hidden:0 = input to the first layer)", "",
              "| layer | " + " | ".join(f"{c} C | {c} {part} UAR | {c} {part} WAR" for c in corpora) + " |",
              "|---|" + "---|---|---|" * len(corpora)]
    asr_rows = {c: {r["layer"]: r for r in (get(c, f"probe/{ASR}") or {"rows": []})["rows"]} for c in corpora}
    hidden = {la for rows in asr_rows.values() for la in rows if la.startswith("hidden:")}
    for layer in sorted(hidden, key=lambda s: int(s.split(":")[1])):
        cells = [" | ".join([f"{r['C']:g}", f"{r['test_uar']:.3f}", f"{r['test_war']:.3f}"]) if (r := asr_rows[c].get(layer))
                 else "– | – | –" for c in corpora]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")

    lines += ["", "## Tables II and III: decisions and last-layer cosine distances", "",
              f"On the {part} speakers. Cosine distance between the two models' time-averaged encoder outputs; the "
              "threshold is the smallest distance that covers 70 % of the utterances (the paper's rule), and the "
              "match is the decision agreement on the utterances within it. SER from scratch shares no "
              "initialisation with ASR → SER, so its coordinates are unrelated to theirs: its distances say "
              "nothing about recovery, only its decisions do. Two ASR → SER seeds give the floor.", "",
              "| corpus | pair | mismatch | threshold | data within | match within | mean distance | > 1 |",
              "|---|---|---|---|---|---|---|---|"]
    for corpus in corpora:
        for a, b in _pairs(exp.seeds, decisions=True):
            r = get(corpus, f"compare/{a}|{b}")
            if not r:
                continue
            t = r["table"][0]
            match = "–" if t["decision_match"] is None else f"{t['decision_match']:.1%}"
            lines.append(f"| {corpus} | {_name(a)} vs {_name(b)} | {r['decision_mismatch']:.1%} | {t['threshold']:.3f} | "
                         f"{t['data_fraction']:.1%} | {match} | {r['distance']['mean']:.3f} | {r['distance']['above_1']:.1%} |")
    _fig3(exp, out)

    lines += ["", "## Attention (Eq. 1): mean Bhattacharyya distance per layer", "",
              f"Over {exp.attention_utterances} seeded {part} utterances per corpus (0: identical attention rows; "
              "heatmaps per layer × head beside this file).", "", "| corpus | pair | " +
              " | ".join(f"layer {i + 1}" for i in range(_max_layers(done))) + " | heatmap |",
              "|---|---|" + "---|" * (_max_layers(done) + 1)]
    for corpus in corpora:
        for a, b in _pairs(exp.seeds, decisions=False):
            r = get(corpus, f"attention/{a}|{b}")
            if not r:
                continue
            png = f"{corpus}/attention_{a}_{b}.png"
            lines.append(f"| {corpus} | {_name(a)} vs {_name(b)} | " + " | ".join(f"{v:.3f}" for v in r["mean_per_layer"]) +
                         f" | [{Path(png).name}]({png}) |")

    lines += ["", "## Run time of each step (s, this machine)", "", "| step | " + " | ".join(corpora) + " |",
              "|---|" + "---|" * len(corpora)]
    kinds = list(dict.fromkeys(key.split("/", 1)[1] for key in done))
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(f"{done[f'{c}/{kind}']['seconds']:.0f}" if f"{c}/{kind}" in done else "–"
                                                 for c in corpora) + " |")
    lines += ["", "![cosine distances](fig3.png)", ""]
    write_text(out / "tables.md", "\n".join(lines), overwrite=True)


def _max_layers(done: dict) -> int:
    return max([len(v["mean_per_layer"]) for k, v in done.items() if "/attention/" in k] or [0])


def _fig3(exp: RecoveryExperiment, out: Path) -> None:
    """The paper's Fig. 3: line-joined 10-bin histograms of cosine distances, one panel per corpus."""
    from serkit.plots import plt, save_png  # the Agg backend is set there

    corpora = list(exp.corpora)
    fig, axes = plt.subplots(1, len(corpora), figsize=(4.6 * len(corpora), 3.4), squeeze=False)
    for ax, corpus in zip(axes[0], corpora):
        for a, b in _pairs(exp.seeds, decisions=True):
            file = out / corpus / f"distances_{a}_{b}.npy"
            if not file.is_file():
                continue
            d = np.load(file)
            counts, edges = np.histogram(d, bins=10, range=(0.0, max(1.0, float(d.max()))))
            ax.plot((edges[:-1] + edges[1:]) / 2, 100 * counts / len(d), "o-", label=f"{_name(a)} vs {_name(b)}", markersize=3)
        ax.set_xlabel("cosine distance (last layer)")
        ax.set_ylabel("% of utterances")
        ax.set_title(corpus, fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_png(fig, out / "fig3.png", dpi=110)
