"""`serkit experiment unlearning`: the papers' grid, resumable, one CSV row per run.

Grid: backbones x settings (train->val, train+val->test) x forgotten speakers x N x seeds x
methods (x tau for the adversarial methods). Each run is one `forget` call; its receipt is kept
(the unlearned model is deleted unless `keep_models`). Rows already in results.csv are skipped, so
an interrupted grid resumes where it stopped.

Outputs beside results.csv: table1.md (methods x N per backbone and setting, mean +- std, tau
chosen on validation, one-tailed z-test best proposed vs random labelling), fig2.png (validation
UAR vs tau per N) and table2.md (across backbones).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from serkit.errors import ConfigError
from serkit.metrics import significance_marker, z_test_one_tailed
from serkit.unlearning.run import forget

SETTINGS = {"train->val": "val", "train+val->test": "test"}
COLUMNS = ["backbone", "setting", "speaker", "n", "seed", "method", "tau", "forget_uar", "forget_accuracy",
           "unseen_uar_before", "unseen_uar", "kept", "other_accuracy", "mia_auc_before", "mia_auc", "n_unseen",
           "seconds", "pgd_success", "snr_db", "epochs_run", "stop_reason"]
PROPOSED = ("adv", "adv-ewc")


class UnlearningGrid(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "unlearning"
    output_dir: Path
    backbones: dict[str, dict[str, Path | list[str]]] = Field(
        description="backbone -> {setting: model dir, speakers: [..] (optional: this backbone's forget speakers, "
        "e.g. when backbones are trained on different corpora)}")
    speakers: list[str] = Field(default_factory=list, description="forget speakers of every backbone without its own "
                                "list (a backbone's own `speakers:` wins over this one)")
    n: list[int] = [10, 30, 50, 100]
    seeds: list[int] = [0]
    methods: dict[str, dict] = Field(default_factory=lambda: {"random-label": {}, "adv": {}, "adv-ewc": {}})
    taus: list[float] = [0.01]
    keep_models: bool = False


    @field_validator("backbones", mode="before")
    @classmethod
    def _speaker_ids(cls, value):
        for backbone, settings in (value or {}).items():
            speakers = settings.get("speakers") if isinstance(settings, dict) else None
            if isinstance(speakers, list) and not all(isinstance(s, str) for s in speakers):
                raise ValueError(f"{backbone}.speakers: quote the speaker ids, e.g. ['13', '05'] (unquoted, 05 reads as 5)")
        return value


def load_grid(path: Path | str, overrides: list[str] | None = None) -> UnlearningGrid:
    from serkit.config import load_experiment

    grid = load_experiment(path, UnlearningGrid, overrides)
    for backbone, settings in grid.backbones.items():
        for setting, value in settings.items():
            if setting == "speakers":
                if not isinstance(value, list) or not value:
                    raise ConfigError(f"{path}: backbones.{backbone}.speakers must be a non-empty list of speaker ids")
                continue
            if setting not in SETTINGS:
                raise ConfigError(f"{path}: backbones.{backbone}: unknown setting '{setting}'; use {sorted(SETTINGS)} "
                                  "(or speakers: [..])")
            if isinstance(value, list):
                raise ConfigError(f"{path}: backbones.{backbone}.{setting} must be a model directory, not a list")
        if not _speakers(grid, backbone):
            raise ConfigError(f"{path}: no forget speakers for backbone {backbone}: give speakers: [..] at the top level "
                              f"or under backbones.{backbone}")
    return grid


def _speakers(grid: UnlearningGrid, backbone: str) -> list[str]:
    return list(grid.backbones[backbone].get("speakers") or grid.speakers)


def _runs(grid: UnlearningGrid):
    for backbone, settings in grid.backbones.items():
        for setting, model_dir in settings.items():
            if setting == "speakers":
                continue
            for n in grid.n:
                for speaker in _speakers(grid, backbone):
                    for seed in grid.seeds:
                        for method, params in grid.methods.items():
                            taus = grid.taus if method in PROPOSED else [None]
                            for tau in taus:
                                yield backbone, setting, Path(model_dir), speaker, n, seed, method, params, tau


def _key(backbone, setting, speaker, n, seed, method, tau) -> str:
    return f"{backbone}|{setting}|{speaker}|{n}|{seed}|{method}|{'' if tau is None else f'{tau:g}'}"


def _check_sizes(grid: UnlearningGrid, pairs: set) -> None:
    """Every forget speaker must have max(n) training utterances in every model: found before the
    first run, not hours into the grid."""
    from serkit.models import load_model
    from serkit.unlearning.forget_set import training_data

    short = []
    for model_dir in sorted({m for m, _ in pairs}):
        frame = training_data(load_model(model_dir)).manifest.frame
        for speaker in sorted({s for m, s in pairs if m == model_dir}):
            count = int((frame["speaker"] == speaker).sum())
            if count < max(grid.n):
                short.append(f"speaker {speaker} has {count} in {model_dir}")
    if short:
        raise ConfigError(f"n: {grid.n} asks for up to {max(grid.n)} utterances per forget speaker, but "
                          f"{'; '.join(short)}: drop the larger n (RAVDESS actors have 60 utterances) or choose other speakers")


def run_grid(grid: UnlearningGrid, log=print) -> Path:
    out = Path(grid.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.csv"
    done = set()
    if results.is_file():
        for row in pd.read_csv(results, dtype=str, keep_default_na=False).itertuples():
            done.add(_key(row.backbone, row.setting, row.speaker, row.n, row.seed, row.method,
                          float(row.tau) if row.tau else None))
    todo = [r for r in _runs(grid) if _key(r[0], r[1], r[3], r[4], r[5], r[6], r[8]) not in done]
    _check_sizes(grid, {(r[2], r[3]) for r in todo})
    log(f"{len(done)} runs done, {len(todo)} to go")
    for i, (backbone, setting, model_dir, speaker, n, seed, method, params, tau) in enumerate(todo, 1):
        key = _key(backbone, setting, speaker, n, seed, method, tau)
        slug = key.replace("|", "_").replace(">", "").replace("+", "p")
        run_dir = out / "runs" / slug
        params = dict(params)
        if tau is not None:
            params["tau"] = tau
        log(f"[{i}/{len(todo)}] {key}")
        result = forget(model_dir, run_dir, speaker=speaker, n=n, seed=seed, method=method, params=params,
                        eval_part=SETTINGS[setting], overwrite=True, log=lambda *a: None)
        if not grid.keep_models:
            shutil.rmtree(result.model_dir, ignore_errors=True)
        row = _row(result.receipt, backbone, setting, speaker, n, seed, method, tau)
        new = not results.is_file()
        with open(results, "a", newline="") as handle:  # one row per finished run: an interruption loses one run
            writer = csv.DictWriter(handle, COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
    summarise(out)
    return out


def _row(receipt, backbone, setting, speaker, n, seed, method, tau) -> dict:
    ev = receipt["evaluation"]
    part = ev["unseen_part"]
    before, after = ev["before"], ev["after"]
    stats = receipt["stats"]
    pgd = stats.get("pgd") or {}
    return {
        "backbone": backbone, "setting": setting, "speaker": speaker, "n": n, "seed": seed, "method": method,
        "tau": "" if tau is None else tau,
        "forget_uar": after["forget"]["uar"], "forget_accuracy": after["forget"]["accuracy"],
        "unseen_uar_before": before[part]["uar"], "unseen_uar": after[part]["uar"], "kept": ev["unseen_uar_kept"],
        "other_accuracy": (after.get("speaker_other_training") or {}).get("accuracy", ""),
        "mia_auc_before": before["membership"]["auc"], "mia_auc": after["membership"]["auc"],
        "n_unseen": after[part]["n"], "seconds": receipt["timing"]["unlearn_seconds"],
        "pgd_success": pgd.get("target_success_rate", ""), "snr_db": pgd.get("snr_db_median", ""),
        "epochs_run": stats.get("epochs_run", ""), "stop_reason": stats.get("stop_reason", ""),
    }


def _mean_std(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}"


def best_taus(frame: pd.DataFrame) -> dict:
    """tau per (backbone, n, method), chosen on the train->val setting: the best mean validation UAR
    among taus whose mean forget UAR is <= 0.1 (or the best validation UAR if none forgets that well)."""
    chosen = {}
    val = frame[(frame.setting == "train->val") & frame.method.isin(PROPOSED)]
    for (backbone, n, method), group in val.groupby(["backbone", "n", "method"]):
        stats = group.groupby("tau").agg(forget=("forget_uar", "mean"), unseen=("unseen_uar", "mean"))
        good = stats[stats.forget <= 0.1]
        chosen[(backbone, n, method)] = float((good if len(good) else stats).unseen.idxmax())
    return chosen


def summarise(out: Path) -> None:
    frame = pd.read_csv(out / "results.csv")
    frame["tau"] = pd.to_numeric(frame["tau"], errors="coerce")
    taus = best_taus(frame)

    def selected(group, backbone, n, method):
        if method in PROPOSED and (backbone, n, method) in taus:
            return group[np.isclose(group.tau, taus[(backbone, n, method)])]
        return group

    lines = ["# Table 1: forget-set UAR (lower is better) and unseen-speaker UAR (higher is better)", "",
             "mean ± std over speakers x seeds; tau of the adversarial methods chosen on validation (train->val); "
             "`*` etc.: one-tailed z-test of the best proposed method's unseen UAR against random labelling "
             "(+ p<.1, * p<.05, ** p<.01, *** p<.001)."]
    table2 = ["# Table 2: across backbones (unseen-speaker UAR kept, best proposed vs random labelling)", "",
              "| backbone | setting | N | random labelling | best proposed | method | p |", "|---|---|---|---|---|---|---|"]
    for (backbone, setting), block in frame.groupby(["backbone", "setting"]):
        part = SETTINGS[setting]
        ns = sorted(block.n.unique())
        lines += ["", f"## {backbone}, {setting} (unseen = {part})", "",
                  "| method | " + " | ".join(f"N={n}: forget UAR | N={n}: {part} UAR" for n in ns) + " |",
                  "|---|" + "---|---|" * len(ns)]
        best = {}
        for method in sorted(block.method.unique()):
            cells = []
            for n in ns:
                group = selected(block[(block.method == method) & (block.n == n)], backbone, n, method)
                if not len(group):
                    cells += ["-", "-"]
                    continue
                cells += [_mean_std(group.forget_uar), _mean_std(group.unseen_uar)]
                if method in PROPOSED and group.unseen_uar.mean() > best.get(n, (None, -1))[1]:
                    best[n] = (method, group.unseen_uar.mean(), int(group.n_unseen.iloc[0]))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        for n in ns:
            baseline = block[(block.method == "random-label") & (block.n == n)]
            if n in best and len(baseline):
                method, mean, n_unseen = best[n]
                z, p = z_test_one_tailed(mean, baseline.unseen_uar.mean(), n_unseen, int(baseline.n_unseen.iloc[0]))
                lines.append(f"\nN={n}: {method} vs random labelling: z = {z:.2f}, p = {p:.3g} {significance_marker(p)}")
                table2.append(f"| {backbone} | {setting} | {n} | {baseline.kept.mean():.1%} | "
                              f"{selected(block[(block.method == method) & (block.n == n)], backbone, n, method).kept.mean():.1%} "
                              f"| {method} | {p:.3g}{significance_marker(p)} |")
    (out / "table1.md").write_text("\n".join(lines) + "\n")
    (out / "table2.md").write_text("\n".join(table2) + "\n")
    (out / "chosen_taus.json").write_text(json.dumps({"|".join(map(str, k)): v for k, v in taus.items()}, indent=2) + "\n")
    _fig2(frame, out / "fig2.png")


def _fig2(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val = frame[frame.setting == "train->val"]
    if val.empty:
        return
    ns = sorted(val.n.unique())
    fig, axes = plt.subplots(1, len(ns), figsize=(3.2 * len(ns), 3), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], ns):
        block = val[val.n == n]
        for method in PROPOSED:
            curve = block[block.method == method].groupby("tau").unseen_uar.mean()
            if len(curve):
                ax.plot(curve.index, curve.values, "o-", label=method)
        baseline = block[block.method == "random-label"].unseen_uar
        if len(baseline):
            ax.axhline(baseline.mean(), color="gray", ls="--", label="random-label")
        ax.set_title(f"N = {n}", fontsize=9)
        ax.set_xlabel("tau")
        ax.set_xscale("log")
    axes[0][0].set_ylabel("validation UAR after unlearning")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
