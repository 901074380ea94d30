"""`serkit experiment dimensional`: paper 004's Tables 1 and 2, resumable, one CSV row per training.

Grid: modality (audio, text, audio+text) x audio encoder x text encoder x transcript source x seed,
over one `task: regression` recipe with the `audiotext` architecture (its data, dimensions, train).
Cells that cannot differ are trained once: an audio-only model ignores the text encoder and the
transcripts, a text-only model the audio encoder. Outputs beside results.csv:

- table1.md: per modality and encoders (human transcripts, the first source), CCC per dimension
  (mean ± std over seeds), mean CCC, parameters and CPU latency for one 3 s utterance with its
  transcript; the paper's Table 1.
- table2.md: per text-using configuration, CCC with each transcript source (e.g. the manifest's
  human `text` against `asr_text` from `serkit transcribe`) and that source's WER against `text`;
  the paper's Table 2.

Proxy targets (categories mapped to A/V/D) are named as such in both tables.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serkit.errors import ConfigError
from serkit.experiment import Cell, ExecutorConfig, Fingerprint, ResultsTable, mean_std, run_cells, take_in_finished
from serkit.io import write_text

MODES = ("audio", "text", "audio+text")
COLUMNS = ["mode", "audio", "text", "transcript", "seed", "dimension", "test_ccc", "test_pearson", "test_mae",
           "val_mean_ccc", "parameters", "train_seconds", "latency_ms", "targets", "run_dir", "layer_weights"]


class DimensionalGrid(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "dimensional"
    output_dir: Path
    recipe: Path = Field(description="a task: regression recipe with the audiotext architecture (data, dimensions, train)")
    modes: list[str] = list(MODES)
    audio_encoders: dict[str, dict] = Field(
        min_length=1, default_factory=lambda: {"whisper-tiny.en": {"audio": "whisper", "audio_options": {
            "checkpoint": "builtin:whisper-tiny.en", "freeze_feature_encoder": True}}},
        description="name -> audiotext options for the audio side (audio, audio_options)")
    text_encoders: dict[str, str] = Field(min_length=1, default_factory=lambda: {"all-MiniLM-L6-v2": "builtin:all-minilm-l6-v2"},
                                          description="name -> a local BERT-like checkpoint (or builtin:all-minilm-l6-v2)")
    transcripts: list[str] = Field(["text"], min_length=1, description="manifest columns with transcripts; the first is "
                                   "Table 1's, e.g. [text, asr_text] (asr_text from `serkit transcribe`) for Table 2")
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    layer_weights: list[str] = Field(default_factory=list, description="audio encoders (names above) whose layer "
                                     "importance is learnt per dimension: encoder frozen, softmax weights over its hidden "
                                     "states, one audio-only model per dimension and seed (paper 004, Fig. 2)")
    layer_weights_lr: float = Field(1e-3, gt=0, description="learning rate of the layer-weight runs (only the softmax "
                                    "weights and the head train there): at a fine-tuning rate such as 3e-5 the weights "
                                    "stay at 1/L and the figure shows nothing")
    keep_models: bool = False
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="where the trainings run: local "
                                     "(default), pool (local processes), slurm (submitit)")
    set: list[str] = Field(default_factory=list, description="recipe overrides for every training, e.g. train.max_epochs=5")

    @field_validator("modes")
    @classmethod
    def _modes(cls, value):
        bad = [m for m in value if m not in MODES]
        if bad or not value:
            raise ValueError(f"modes must be among {list(MODES)}, got {value}")
        return value

    @field_validator("audio_encoders")
    @classmethod
    def _audio(cls, value):
        for name, options in value.items():
            extra = set(options) - {"audio", "audio_options"}
            if "audio" not in options or extra:
                raise ValueError(f"audio_encoders.{name}: give 'audio' (an architecture) and optionally 'audio_options'"
                                 + (f", not {sorted(extra)}" if extra else ""))
        return value

    @model_validator(mode="after")
    def _layer_weight_encoders(self):
        unknown = [a for a in self.layer_weights if a not in self.audio_encoders]
        if unknown:
            raise ValueError(f"layer_weights {unknown}: not among audio_encoders {list(self.audio_encoders)}")
        return self


def load_dimensional_grid(path: Path | str, overrides: list[str] | None = None) -> DimensionalGrid:
    from serkit.config import load_experiment

    return load_experiment(path, DimensionalGrid, overrides)


def _cells(grid: DimensionalGrid):
    """(mode, audio, text, transcript, seed), each distinct model once."""
    seen = set()
    for mode in grid.modes:
        for audio in grid.audio_encoders if mode != "text" else [""]:
            for text in grid.text_encoders if mode != "audio" else [""]:
                for transcript in grid.transcripts if mode != "audio" else [""]:
                    for seed in grid.seeds:
                        cell = (mode, audio, text, transcript, seed)
                        if cell not in seen:
                            seen.add(cell)
                            yield cell


def _layer_cells(grid: DimensionalGrid, dimensions: list[str]):
    """(mode 'weights:<dimension>', audio, '', '', seed) for the per-dimension layer-weight runs."""
    for audio in grid.layer_weights:
        for dimension in dimensions:
            for seed in grid.seeds:
                yield f"weights:{dimension}", audio, "", "", seed


def _key(mode, audio, text, transcript, seed) -> str:
    return f"{mode}|{audio}|{text}|{transcript}|{seed}"


def latency_ms(model_dir: Path, text: str, repeats: int = 10) -> float:
    """Median CPU time of one 3 s utterance (noise) with `text`, through a saved audio/text model."""
    import torch

    from serkit.models import load_model

    model = load_model(model_dir).model.eval()
    wave = torch.from_numpy((0.1 * np.random.default_rng(0).standard_normal(48000)).astype(np.float32))[None]
    mask = torch.ones_like(wave, dtype=torch.bool)
    ids, attention = model.encode_texts([text]) if model.uses_text else (None, None)
    times = []
    with torch.no_grad():
        for i in range(repeats + 2):
            start = time.perf_counter()
            model(wave, mask, ids, attention)
            if i >= 2:
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run_cell(payload) -> list[dict]:
    """One training of the grid (in this process or a worker): one results.csv row per dimension."""
    from serkit.config import load_recipe
    from serkit.training import train

    raw, (mode, audio, text, transcript, seed), sample_text, keep_models = payload
    recipe = load_recipe(raw=raw)
    run_dir = Path(recipe.output_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted training of this cell
    result = train(recipe, log=lambda *a: None)
    m = result.metrics
    latency = latency_ms(result.model_dir, sample_text)
    weights = (m.get("layer_weights") or {}).get("weights")
    rows = [{"mode": mode, "audio": audio, "text": text, "transcript": transcript, "seed": seed, "dimension": d,
             "test_ccc": v["ccc"], "test_pearson": v["pearson_r"], "test_mae": v["mae"],
             "val_mean_ccc": (m.get("val") or {}).get("mean_ccc", float("nan")), "parameters": m["model"]["parameters"],
             "train_seconds": m["training"]["train_seconds"], "latency_ms": round(latency, 2),
             "targets": m["test"].get("targets", "manifest columns"), "run_dir": str(run_dir),
             "layer_weights": " ".join(f"{w:.5f}" for w in weights) if weights else ""}
            for d, v in m["test"]["dimensions"].items()]
    if not keep_models:
        shutil.rmtree(run_dir / "model", ignore_errors=True)
    return rows


def run_dimensional_grid(grid: DimensionalGrid, log=print, executor: ExecutorConfig | None = None,
                         progress=None) -> Path:
    """Run the grid's missing trainings (through `executor`, default the grid's own), then summarise."""
    from serkit.config import load_recipe, recipe_to_dict
    from serkit.data.splits import load_split

    out = Path(grid.output_dir)
    base = load_recipe(grid.recipe, grid.set)
    if base.task != "regression" or base.model.architecture != "audiotext":
        raise ConfigError(f"{grid.recipe}: the dimensional grid needs a task: regression recipe with the audiotext "
                          f"architecture, not {base.task} with {base.model.architecture}")
    split = load_split(base.data.split, base.data.manifest, base.data.fold)
    if not split.speakers("test") or "test" in base.data.train_parts:
        raise ConfigError(f"{grid.recipe}: the grid scores every cell on held-out test speakers; its split "
                          f"({base.data.split}) needs a test part that the recipe does not train on")
    columns = set(split.manifest.frame.columns)
    missing = [c for c in grid.transcripts if c not in columns]
    if any(m != "audio" for m in grid.modes) and missing:
        raise ConfigError(f"{split.manifest.file} has no transcript column {missing}; add it (e.g. serkit transcribe "
                          f"{split.manifest.file} -o NEW.csv, then point the recipe's split at NEW.csv with data.manifest)")
    out.mkdir(parents=True, exist_ok=True)
    _check_fingerprint(grid, recipe_to_dict(base), out, split.manifest.frame)
    table = ResultsTable(out / "results.csv", COLUMNS, "dimensional grid")
    row_key = lambda r: _key(r["mode"], r["audio"], r["text"], r["transcript"], r["seed"])  # noqa: E731
    if take_in_finished(table, row_key):
        log("took in cells that finished after the last run stopped")
    done = {row_key(r) for r in table.read().to_dict("records")}
    cells = list(_cells(grid)) + list(_layer_cells(grid, list(base.dimensions.names)))
    todo = [c for c in cells if _key(*c) not in done]
    # every cell's recipe is validated before the first training, not halfway through the grid
    recipes = {c: _cell_recipe(grid, base, c, out) for c in todo}
    log(f"{len(cells) - len(todo)} trainings done, {len(todo)} to go")
    sample_text = str(split.manifest.frame[grid.transcripts[0]].iloc[0]) if grid.transcripts[0] in columns else ""
    jobs = [Cell(_key(*c), _tag(out, c)[0], (recipe_to_dict(recipes[c]), c, sample_text, grid.keep_models)) for c in todo]
    run_cells(jobs, run_cell, table, executor or grid.executor, log, progress=progress)
    summarise(grid, split.manifest, out)
    return out


def _tag(out: Path, cell) -> tuple[str, Path]:
    mode, audio, text, transcript, seed = cell
    tag = "-".join(x.replace("+", "_").replace("/", "_").replace(":", "_") for x in (mode, audio, text, transcript) if x) + f"-s{seed}"
    return tag, out / "runs" / tag


def _cell_recipe(grid: DimensionalGrid, base, cell, out: Path):
    """The base recipe with this cell's modality, encoders and transcript column (the base's own audio
    side is dropped, so an encoder entry never inherits another architecture's options)."""
    from serkit.config import apply_overrides, load_recipe, recipe_to_dict

    mode, audio, text, transcript, seed = cell
    raw = recipe_to_dict(base)
    options = {k: v for k, v in raw["model"]["options"].items() if k not in ("audio", "audio_options")}
    options["mode"] = mode
    if audio:
        options.update({"audio_options": {}, **grid.audio_encoders[audio]})
    if mode.startswith("weights:"):  # the encoder frozen, its layers weighted; one dimension
        options["mode"] = "audio"
        options["audio_options"] = {**options["audio_options"], "freeze_backbone": True, "layer_weights": True, "layer": None}
        raw["dimensions"] = {**raw["dimensions"], "names": [mode.split(":", 1)[1]]}
        raw["train"] = {**raw["train"], "lr": grid.layer_weights_lr, "head_lr": None}
    if text:
        options["text_encoder"] = grid.text_encoders[text]
        options["text_column"] = transcript
    raw["model"]["options"] = options
    _, run_dir = _tag(out, cell)
    recipe = load_recipe(raw=apply_overrides(raw, [f"seed={seed}", f"output_dir={run_dir}", "train.progress_bar=false"]))
    from serkit.models.registry import parse_options

    # a bad encoder entry fails here, before any training
    parsed = parse_options(recipe.model.architecture, recipe.model.options)
    if audio:
        parse_options(parsed.audio, parsed.audio_options)
    return recipe


def _column_hashes(frame: pd.DataFrame, transcripts: list[str]) -> dict[str, str]:
    import hashlib

    def digest(columns):
        return hashlib.sha256(frame[columns].astype(str).to_csv(index=False).encode()).hexdigest()

    core = [c for c in ("path", "speaker", "emotion", "arousal", "valence", "dominance") if c in frame.columns]
    return {"utterances": digest(core), **{t: digest([t]) for t in transcripts if t in frame.columns}}


def _check_fingerprint(grid: DimensionalGrid, raw: dict, out: Path, frame: pd.DataFrame) -> None:
    """A resumed grid must be the same experiment: same recipe, encoders, utterances and transcripts.
    The manifest may move or gain columns (e.g. `asr_text` for Table 2); a transcript column whose
    content changed (re-transcribed) would mix old and new cells, and is refused."""
    for key in ("output_dir", "seed", "name"):
        raw.pop(key, None)
    raw.get("train", {}).pop("importances", None)  # what the model directory stores besides, not how it trains
    raw["model"]["options"] = {k: v for k, v in raw["model"]["options"].items()
                               if k not in ("mode", "audio", "audio_options", "text_encoder", "text_column")}
    raw["data"].pop("manifest", None)  # the path may move; its content is what counts
    now = {"recipe": raw, "columns": _column_hashes(frame, grid.transcripts), "audio_encoders": grid.audio_encoders,
           "text_encoders": grid.text_encoders, "layer_weights_lr": grid.layer_weights_lr}
    fingerprint = Fingerprint(out)
    before = fingerprint.previous()
    if before is not None:
        differs = [k for k in ("recipe",) if before.get(k) != now[k]]
        if grid.layer_weights and before.get("layer_weights_lr", now["layer_weights_lr"]) != now["layer_weights_lr"]:
            differs.append("layer_weights_lr")
        results = out / "results.csv"
        if "layer_weights_lr" not in before and results.is_file() and "weights:" in results.read_text():
            differs.append("layer_weights_lr (its layer-weight runs trained at the recipe's lr)")
        differs += [f"manifest column {c}" for c, h in now["columns"].items() if before.get("columns", {}).get(c, h) != h]
        differs += [f"{k} {name}" for k in ("audio_encoders", "text_encoders") for name, v in now[k].items()
                    if name in before.get(k, {}) and before[k][name] != v]
        fingerprint.refuse(differs)
        for k in ("audio_encoders", "text_encoders", "columns"):
            now[k] = {**before.get(k, {}), **now[k]}
    fingerprint.save(now)


def summarise(grid: DimensionalGrid, manifest, out: Path) -> None:
    from serkit.dimensional.transcribe import word_error_rate

    frame = pd.read_csv(out / "results.csv", dtype={"audio": str, "text": str, "transcript": str, "layer_weights": str},
                        keep_default_na=False)
    weighted = frame[frame["mode"].str.startswith("weights:")]
    frame = frame[~frame["mode"].str.startswith("weights:")]
    dims = list(dict.fromkeys(frame.dimension))
    targets = "; ".join(dict.fromkeys(frame.targets))
    note = f"Targets: {targets}. Test CCC, mean ± std over seeds (seeds per row in the table)."
    head = "| " + " | ".join(f"CCC {d}" for d in dims) + " | mean CCC |"

    def cells(group) -> str:
        per_seed = group.groupby("seed").test_ccc.mean()
        return " | ".join(mean_std(group[group.dimension == d].test_ccc) for d in dims) + f" | {mean_std(per_seed)} |"

    first = grid.transcripts[0]
    lines = [f"# Dimensional SER from audio and text (paper 004, Table 1): {out.name}", "", note,
             f"Text-using rows read the `{first}` column.", "",
             "| modality | audio encoder | text encoder | seeds " + head + " parameters | latency 3 s (ms) |",
             "|---|---|---|---|" + "---|" * (len(dims) + 3)]
    table1 = frame[(frame.transcript == first) | (frame["mode"] == "audio")]
    for (mode, audio, text), group in table1.groupby(["mode", "audio", "text"], sort=False):
        lines.append(f"| {mode} | {audio or '–'} | {text or '–'} | {group.seed.nunique()} | " + cells(group)
                     + f" {int(group.parameters.iloc[0]) / 1e6:.2f} M | {group.latency_ms.mean():.1f} |")
    write_text(out / "table1.md", "\n".join(lines) + "\n", overwrite=True)

    columns = set(manifest.frame.columns)
    wer = {}
    for t in grid.transcripts:
        if t != "text" and t in columns and "text" in columns:
            wer[t] = word_error_rate(list(manifest.frame[t].astype(str)), list(manifest.frame["text"].astype(str)))
    lines = [f"# Human vs ASR transcripts (paper 004, Table 2): {out.name}", "", note,
             "WER of each transcript column against the manifest's `text` (lower case, punctuation removed), over the "
             "whole manifest.", "", "| modality | audio encoder | text encoder | transcripts | WER | seeds " + head,
             "|---|---|---|---|---|---|" + "---|" * (len(dims) + 1)]
    texty = frame[frame["mode"] != "audio"]
    for (mode, audio, text, transcript), group in texty.groupby(["mode", "audio", "text", "transcript"], sort=False):
        w = "0 (reference)" if transcript == "text" else (f"{wer[transcript]:.3f}" if transcript in wer else "–")
        lines.append(f"| {mode} | {audio or '–'} | {text} | `{transcript}` | {w} | {group.seed.nunique()} | " + cells(group))
    write_text(out / "table2.md", "\n".join(lines) + "\n", overwrite=True)
    if len(weighted):
        _layer_weights(weighted, targets, out)


def _layer_weights(frame: pd.DataFrame, targets: str, out: Path) -> None:
    """Paper 004's Fig. 2: per audio encoder, the softmax layer weights learnt for each dimension
    alone (encoder frozen), averaged over seeds; a table and one PNG per encoder."""
    from serkit.plots import layer_weights_png

    lines = ["# Layer importance per dimension (paper 004, Fig. 2)", "",
             f"Targets: {targets}. Each dimension trained alone, audio only, the encoder frozen, learnable softmax "
             "weights over its hidden states (0 = input to the first layer); mean over seeds. Test CCC of these "
             "frozen-encoder models beside.", ""]
    for audio, group in frame.groupby("audio", sort=False):
        series = {}
        for mode, cell in group.groupby("mode", sort=False):
            dimension = mode.split(":", 1)[1]
            stacked = np.array([[float(w) for w in row.split()] for row in cell.layer_weights if row])
            if len(stacked):
                series[dimension] = (stacked.mean(0), cell.test_ccc.tolist())
        if not series:
            continue
        n = len(next(iter(series.values()))[0])
        lines += [f"## {audio}", "", "| dimension | " + " | ".join(f"h{i}" for i in range(n)) + " | test CCC |",
                  "|---|" + "---|" * (n + 1)]
        for dimension, (weights, ccc) in series.items():
            lines.append(f"| {dimension} | " + " | ".join(f"{w:.3f}" for w in weights) + f" | {mean_std(ccc)} |")
        png = f"fig2_layer_weights_{audio.replace('/', '_')}.png"
        target = out / png
        if target.exists():
            target.unlink()  # redrawn from every finished run
        layer_weights_png(target, {d: w.tolist() for d, (w, _) in series.items()},
                          f"{audio}: layer weights per dimension (encoder frozen)")
        lines += ["", f"![layer weights]({png})", ""]
    write_text(out / "layer_weights.md", "\n".join(lines) + "\n", overwrite=True)


# the names of serkit 0.1 (the grid was called after its architecture), kept for scripts that import them
AudioTextGrid, load_audiotext_grid, run_audiotext_grid = DimensionalGrid, load_dimensional_grid, run_dimensional_grid
