"""`serkit experiment unlearning`: the papers' grid, resumable, one CSV row per run.

Grid: backbones x settings (train->val, train+val->test) x forgotten speakers x N x seeds x
methods (x tau for the adversarial methods). Each run is one `forget` call; its receipt is kept
(the unlearned model is deleted unless `keep_models`). Rows already in results.csv are skipped, so
an interrupted grid resumes where it stopped.

`methods` maps a row label to its parameters; `method: NAME` picks the registered method when the
label is not itself a method name, so one grid can hold variants (`adv-ewc-quick: {method: adv-ewc,
pgd_steps: 20}`, `random-label-rl: {method: random-label, target: retrain-like}`). A backbone may
override `methods` (merged per label) and `taus`, so backbones tuned differently share one Table 2.

As in the papers, tau is chosen on validation: when a backbone has both settings, its train+val->test
runs of the adversarial methods use only the tau that won on train->val (its runs go first), one run per
cell instead of one per tau. `test_taus: all` runs every tau on test as well.

A run that fails (say, no PGD sample reached its target under
`adversarial_keep: successful`) is listed in failed.csv and the grid goes on; the command then
exits with an error naming the file, and a rerun retries only those runs (failures of runs a
partial rerun did not attempt stay listed).

A model trained on train+val has no validation accuracy for the retrain-like stop to aim at; its
runs take the backbone's train->val model's validation accuracy (the same recipe's estimate of how
unseen speakers are recognised) as `target_accuracy`, unless the label sets one.

grid.json beside results.csv records each label's method and parameters: resuming with a label whose
parameters changed is refused (its old and new rows would mix in one cell).

Outputs beside results.csv: table1.md (methods x N per backbone and setting, mean +- std, tau
chosen on validation, one-tailed z-test best proposed vs the best random-labelling row; then the
forget-set accuracy and membership AUC of each method, and the retrained models' spread where the
grid has `retrain` rows), fig2.png (validation UAR vs tau per N), table2.md (across backbones),
chosen_taus.json, and failed.csv while runs fail.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from serkit.errors import ConfigError, SerkitError
from serkit.experiment import Fingerprint, ResultsTable, mean_std
from serkit.io import write_text
from serkit.metrics import significance_marker, z_test_one_tailed
from serkit.unlearning.methods import get_method
from serkit.unlearning.run import forget

SETTINGS = {"train->val": "val", "train+val->test": "test"}
COLUMNS = ["backbone", "setting", "speaker", "n", "seed", "method", "tau", "forget_uar", "forget_accuracy",
           "unseen_uar_before", "unseen_uar", "kept", "other_accuracy", "mia_auc_before", "mia_auc", "n_unseen",
           "seconds", "pgd_success", "snr_db", "epochs_run", "stop_reason", "base_method"]
PROPOSED = ("adv", "adv-ewc")
BACKBONE_KEYS = ("speakers", "methods", "taus")
LABEL = re.compile(r"[A-Za-z0-9._-]+")


class UnlearningGrid(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "unlearning"
    output_dir: Path
    backbones: dict[str, dict[str, Path | list[str] | list[float] | dict[str, dict | None]]] = Field(
        description="backbone -> {setting: model dir, and optionally speakers: [..] (this backbone's forget speakers, "
        "e.g. when backbones are trained on different corpora), methods: {label: {param: value}} (merged over the "
        "top-level methods, per label), taus: [..]}")
    speakers: list[str] = Field(default_factory=list, description="forget speakers of every backbone without its own "
                                "list (a backbone's own `speakers:` wins over this one)")
    n: list[int] = [10, 30, 50, 100]
    seeds: list[int] = [0]
    methods: dict[str, dict] = Field(default_factory=lambda: {"random-label": {}, "adv": {}, "adv-ewc": {}},
                                     description="row label -> method parameters; `method: NAME` when the label is "
                                     "not a method name")
    taus: list[float] = [0.01]
    test_taus: Literal["chosen", "all"] = Field(
        "chosen", description="train+val->test runs of the adversarial methods: only the tau chosen on train->val "
        "(the papers' protocol; needs the backbone's train->val model in the grid), or every tau")
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
            if setting == "taus":
                try:
                    settings["taus"] = [float(t) for t in value]
                except (TypeError, ValueError):
                    settings["taus"] = []
                if not settings["taus"]:
                    raise ConfigError(f"{path}: backbones.{backbone}.taus must be a non-empty list of numbers")
                continue
            if setting == "methods":
                if not isinstance(value, dict) or not all(v is None or isinstance(v, dict) for v in value.values()):
                    raise ConfigError(f"{path}: backbones.{backbone}.methods must map a method label to its parameters "
                                      "(or to null, to leave that label out for this backbone)")
                continue
            if setting not in SETTINGS:
                raise ConfigError(f"{path}: backbones.{backbone}: unknown setting '{setting}'; use {sorted(SETTINGS)} "
                                  f"(or {', '.join(BACKBONE_KEYS)})")
            if not isinstance(value, (str, Path)):
                raise ConfigError(f"{path}: backbones.{backbone}.{setting} must be a model directory")
        if (grid.test_taus == "chosen" and "train+val->test" in settings and "train->val" not in settings
                and any(m in PROPOSED for m, _ in _methods(grid, backbone).values())):
            raise ConfigError(f"{path}: backbones.{backbone} has train+val->test but no train->val model: its tau cannot "
                              "be chosen on validation. Add the train->val model, or set test_taus: all")
        if not _speakers(grid, backbone):
            raise ConfigError(f"{path}: no forget speakers for backbone {backbone}: give speakers: [..] at the top level "
                              f"or under backbones.{backbone}")
        for label, (method, params) in _methods(grid, backbone).items():  # a typo fails now, not hours into the grid
            where = (f"backbones.{backbone}.methods.{label}" if label in (settings.get("methods") or {})
                     else f"methods.{label}")
            if not LABEL.fullmatch(label):
                raise ConfigError(f"{path}: {where}: a method label names run folders: use letters, digits, '.', '_', '-'")
            if method == "remain":
                raise ConfigError(f"{path}: {where}: the grid cannot run 'remain' (it needs the remaining training data, "
                                  "--remain); run it with serkit forget")
            if "tau" in params and method in PROPOSED:
                raise ConfigError(f"{path}: {where}: tau is a grid dimension here: set taus: [..] at the top level or "
                                  f"under backbones.{backbone}, not in the method's parameters")
            try:
                get_method(method, {**params, "tau": 0.01} if method in PROPOSED else params)
            except ConfigError as err:
                raise ConfigError(f"{path}: {where} (backbone {backbone}): {err}") from None
    return grid


def _speakers(grid: UnlearningGrid, backbone: str) -> list[str]:
    return list(grid.backbones[backbone].get("speakers") or grid.speakers)


def _methods(grid: UnlearningGrid, backbone: str) -> dict[str, tuple[str, dict]]:
    """label -> (registered method, parameters), with the backbone's own parameters merged in per label. A
    label set to null under the backbone is left out for it. When no top-level `methods:` is given and the
    backbone lists its own, only those run (the defaults do not sneak in)."""
    own = grid.backbones[backbone].get("methods") or {}
    shared = grid.methods if ("methods" in grid.model_fields_set or not own) else {}
    merged = {label: {**shared.get(label, {}), **(own.get(label) or {})} for label in {**shared, **own}
              if not (label in own and own[label] is None)}
    return {label: (str(params.pop("method", label)), params) for label, params in merged.items()}


CHOSEN = "chosen"  # the tau of a train+val->test run that waits for the train->val runs to choose it


def _runs(grid: UnlearningGrid):
    """Every run of the grid, train->val settings first; a train+val->test run of an adversarial method has
    tau CHOSEN when it is to use the tau that won on validation."""
    for backbone, settings in grid.backbones.items():
        methods = _methods(grid, backbone)
        for setting in sorted((s for s in settings if s in SETTINGS), key=list(SETTINGS).index):
            model_dir = settings[setting]
            for n in grid.n:
                for speaker in _speakers(grid, backbone):
                    for seed in grid.seeds:
                        for label, (method, params) in methods.items():
                            if method not in PROPOSED:
                                taus = [None]
                            elif setting == "train+val->test" and grid.test_taus == "chosen":
                                taus = [CHOSEN]
                            else:
                                taus = settings.get("taus") or grid.taus
                            for tau in taus:
                                yield backbone, setting, Path(model_dir), speaker, n, seed, label, method, params, tau


def _key(backbone, setting, speaker, n, seed, method, tau) -> str:
    tau = "" if tau is None else tau if tau == CHOSEN else f"{tau:g}"
    return f"{backbone}|{setting}|{speaker}|{n}|{seed}|{method}|{tau}"


def _run_key(run) -> str:
    backbone, setting, _, speaker, n, seed, label, _, _, tau = run
    return _key(backbone, setting, speaker, n, seed, label, tau)


def _resolve(run, chosen: dict):
    """A run with its tau filled in from the taus chosen on validation (None: none chosen yet)."""
    if run[9] != CHOSEN:
        return run
    tau = chosen.get((run[0], run[4], run[6]))
    return None if tau is None else (*run[:9], tau)


def _read_results(results: Path) -> pd.DataFrame:
    frame = pd.read_csv(results, dtype={"backbone": str, "setting": str, "speaker": str, "method": str,
                                        "base_method": str})
    frame["tau"] = pd.to_numeric(frame["tau"], errors="coerce")
    frame["base_method"] = frame.get("base_method", frame["method"]).fillna(frame["method"])
    return frame


def _chosen_taus(results: Path) -> dict:
    return best_taus(_read_results(results)) if results.is_file() else {}


def _fingerprint(method: str, params: dict) -> dict:
    """A label's method and its validated parameters (presets filled in; tau, a grid dimension, and the
    injected target_accuracy left out), as JSON types: `lr: 1e-4` and `lr: 0.0001` are the same run."""
    probe = {**params, "tau": 0.01} if method in PROPOSED else params
    values = get_method(method, probe).params.model_dump(mode="json")
    values.pop("tau", None)
    if "target_accuracy" not in params:
        values.pop("target_accuracy", None)
    return {"method": method, **values}


def _check_fingerprint(grid: UnlearningGrid, out: Path, finished: set) -> dict:
    """grid.json holds the method and parameters of every label with finished rows. A resume that changes
    them is refused, since old and new rows would mix in one cell; a label without rows is free to change."""
    fingerprint = Fingerprint(out)
    path = fingerprint.file
    recorded = (fingerprint.previous() or {}).get("methods", {})
    for backbone in grid.backbones:
        for label, (method, params) in _methods(grid, backbone).items():
            old = recorded.get(backbone, {}).get(label)
            if old is None or (backbone, label) not in finished:
                continue
            new = _fingerprint(method, params)
            try:  # the recorded parameters, validated by this serkit: a default left unset is not a change
                old = _fingerprint(old["method"], {k: v for k, v in old.items() if k != "method"})
            except (ConfigError, KeyError):
                pass
            if old != new:
                changed = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
                show = lambda d, changed=changed: ", ".join(f"{k}={d[k]!r}" if k in d else f"{k} unset" for k in changed)  # noqa: E731
                raise ConfigError(f"{path}: label '{label}' of backbone {backbone} has finished runs with {show(old)}, "
                                  f"but the grid now gives {show(new)}: give the new parameters a new label, or use "
                                  "another output_dir (or delete that label's rows from results.csv and grid.json)")
    return recorded


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
    table = ResultsTable(out / "results.csv", COLUMNS, "unlearning grid", upgrade=_label_by_method)
    results = table.path
    done, finished = set(), set()
    if table.exists():
        methods = {b: _methods(grid, b) for b in grid.backbones}
        for row in table.read().itertuples():
            now = methods.get(row.backbone, {}).get(row.method)
            if now and now[0] != row.base_method:
                raise ConfigError(f"{results}: label '{row.method}' ran as method '{row.base_method}' there, but the grid "
                                  f"now makes it '{now[0]}': use a new label or another output_dir")
            done.add(_key(row.backbone, row.setting, row.speaker, row.n, row.seed, row.method,
                          float(row.tau) if row.tau else None))
            finished.add((row.backbone, row.method))
    recorded = _check_fingerprint(grid, out, finished)
    runs = list(_runs(grid))
    known = _chosen_taus(results)
    first = [r for r in runs if r[9] != CHOSEN and _run_key(r) not in done]
    later = [r for r in runs if r[9] == CHOSEN]
    waiting = [r for r in later if _resolve(r, known) is None or _run_key(_resolve(r, known)) not in done]
    _check_sizes(grid, {(r[2], r[3]) for r in first + waiting})
    out.mkdir(parents=True, exist_ok=True)  # only once the grid can run: a bad model path leaves no empty folder
    log(f"{len(done)} runs done, {len(first) + len(waiting)} to go")
    earlier = (pd.read_csv(out / "failed.csv", dtype=str, keep_default_na=False).to_dict("records")
               if (out / "failed.csv").is_file() else [])
    failed, attempted, count = [], set(), len(first) + len(waiting)

    def write_failures():
        rows = [f for f in earlier if f["key"] not in attempted and f["key"] not in done] + failed
        if rows:
            write_text(out / "failed.csv", pd.DataFrame(rows).to_csv(index=False), overwrite=True)
        else:
            (out / "failed.csv").unlink(missing_ok=True)
        return rows

    def attempt(i, run):
        backbone, setting, model_dir, speaker, n, seed, label, method, params, tau = run
        key = _run_key(run)
        attempted.add(key)
        slug = key.replace("|", "_").replace(">", "").replace("+", "p")
        params = dict(params)
        if tau is not None:
            params["tau"] = tau
        if setting == "train+val->test" and "target_accuracy" not in params:
            unlearner = get_method(method, params)
            if "target_accuracy" in unlearner.Params.model_fields and unlearner.params.target == "retrain-like":
                reference = references(backbone)
                if reference is not None:
                    params["target_accuracy"] = reference
        log(f"[{i}/{count}] {key}")
        try:
            # a run folder without its results row is a run that died before the row was written: run it again
            # (an experiment's request keys are worth nothing once its row is gone)
            shutil.rmtree(out / "runs" / slug, ignore_errors=True)
            result = forget(model_dir, out / "runs" / slug, speaker=speaker, n=n, seed=seed, method=method,
                            params=params, eval_part=SETTINGS[setting], log=lambda *a: None)
        except Exception as err:  # e.g. no PGD sample reached its target: one run, not the whole grid
            log(f"  failed: {type(err).__name__}: {err}")
            failed.append({"key": key, "error": f"{type(err).__name__}: {err}"})
            write_failures()
            return
        if not grid.keep_models:
            shutil.rmtree(result.model_dir, ignore_errors=True)
        row = _row(result.receipt, backbone, setting, speaker, n, seed, label, tau) | {"base_method": method}
        table.append([row])
        done.add(key)
        if label not in recorded.setdefault(backbone, {}):  # the label's parameters, fixed by its first finished run
            recorded[backbone][label] = _fingerprint(method, run[8])
            Fingerprint(out).save({"methods": recorded})

    cache = {}

    def references(backbone):
        """The validation accuracy of the backbone's train->val model: the retrain-like stop of its
        train+val->test runs (a model trained on train+val records none of its own)."""
        if backbone in cache:
            return cache[backbone]
        from serkit.models import load_model
        from serkit.unlearning.run import _reference_accuracy

        value = None
        try:
            value = _reference_accuracy(load_model(grid.backbones[backbone]["train->val"]))
        except (KeyError, SerkitError) as err:
            log(f"{backbone}: no validation accuracy from a train->val model ({err})")
        if value is not None:
            value = round(value, 4)
            log(f"{backbone}: train+val->test runs with the retrain-like target stop at {value:.3f}, the "
                "validation accuracy of its train->val model (unless a label sets target_accuracy)")
        cache[backbone] = value
        return value

    try:
        i = 0
        for run in first:
            i += 1
            attempt(i, run)
        # the train->val runs have finished: choose tau on them, then run each test cell at that tau
        chosen = _chosen_taus(results)
        expected = {}
        for r in runs:
            if r[1] == "train->val" and r[7] in PROPOSED:
                expected.setdefault((r[0], r[4], r[6]), []).append(_run_key(r))
        for run in later:
            group = (run[0], run[4], run[6])
            resolved = _resolve(run, chosen)
            missing = [k for k in expected.get(group, []) if k not in done]
            if resolved is not None and _run_key(resolved) in done:
                attempted.add(_run_key(run))  # an earlier "no tau chosen" entry is settled
                continue
            i += 1
            if resolved is None or missing:
                key = _run_key(run)
                attempted.add(key)
                why = (f"{len(missing)} of its train->val runs failed or are missing" if missing
                       else "no train->val rows to choose from")
                log(f"[{i}/{count}] {key}: waiting for train->val ({why})")
                failed.append({"key": key, "error": f"no tau chosen on validation for {run[0]}, n={run[4]}, {run[6]}: "
                                                    f"{why}; rerun once they succeed"})
                write_failures()
                continue
            attempted.add(_run_key(run))
            attempt(i, resolved)
    finally:
        left = write_failures()
    if len(left) > len(failed):
        log(f"{len(left) - len(failed)} earlier failed runs were not retried this time (outside this grid's "
            f"n/seeds/...): still listed in {out / 'failed.csv'}")
    if results.is_file():
        summarise(out)
    if failed:
        raise SerkitError(f"{len(failed)} of {count} runs failed (each run and its error: {out / 'failed.csv'}); "
                          f"the others are in {results}. Fix the cause and rerun: finished runs are skipped (changed "
                          "parameters of a label with finished runs need a new label)")
    return out


def _label_by_method(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows from before method labels existed were labelled by their method."""
    if "base_method" not in frame:
        frame["base_method"] = frame["method"]
    return frame


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


def best_taus(frame: pd.DataFrame) -> dict:
    """tau per (backbone, n, method label), chosen on the train->val setting: the best mean validation UAR
    among taus whose mean forget UAR is <= 0.1 (or the best validation UAR if none forgets that well)."""
    chosen = {}
    val = frame[(frame.setting == "train->val") & frame.base_method.isin(PROPOSED)]
    for (backbone, n, method), group in val.groupby(["backbone", "n", "method"]):
        stats = group.groupby("tau").agg(forget=("forget_uar", "mean"), unseen=("unseen_uar", "mean"),
                                         runs=("unseen_uar", "size"))
        stats = stats[stats.runs == stats.runs.max()]  # a tau with failed or missing runs is not compared on fewer
        good = stats[stats.forget <= 0.1]
        chosen[(backbone, n, method)] = float((good if len(good) else stats).unseen.idxmax())
    return chosen


def summarise(out: Path) -> None:
    frame = _read_results(out / "results.csv")
    taus = best_taus(frame)

    def selected(group, backbone, n, method):
        if (backbone, n, method) in taus:
            return group[np.isclose(group.tau, taus[(backbone, n, method)])]
        return group

    lines = ["# Table 1: forget-set UAR (lower is better) and unseen-speaker UAR (higher is better)", "",
             "mean ± std over speakers x seeds; tau of the adversarial methods chosen on validation (train->val); "
             "`*` etc.: one-tailed z-test of the best proposed method's unseen UAR against the best random-labelling "
             "row (+ p<.1, * p<.05, ** p<.01, *** p<.001)."]
    privacy = ["# Forget-set accuracy and membership AUC (retrain-like target: both within the retrained models' "
               "spread)", "", "mean ± std over speakers x seeds (same tau as Table 1). A membership AUC near 0.5 "
               "means an attacker cannot tell the forget set from unseen speakers; far below 0.5, the forget set "
               "stands out by being forgotten too well."]
    table2 = ["# Table 2: across backbones (unseen-speaker UAR kept, best proposed vs random labelling)", "",
              "| backbone | setting | N | random labelling | best proposed | method | p |", "|---|---|---|---|---|---|---|"]
    for (backbone, setting), block in frame.groupby(["backbone", "setting"]):
        part = SETTINGS[setting]
        ns = sorted(block.n.unique())
        methods = sorted(block.method.unique())
        base = block.groupby("method").base_method.first()
        lines += ["", f"## {backbone}, {setting} (unseen = {part})", "",
                  "| method | " + " | ".join(f"N={n}: forget UAR | N={n}: {part} UAR" for n in ns) + " |",
                  "|---|" + "---|---|" * len(ns)]
        privacy += ["", f"## {backbone}, {setting}", "",
                    "| method | " + " | ".join(f"N={n}: forget acc. | N={n}: membership AUC" for n in ns) + " |",
                    "|---|" + "---|---|" * len(ns)]
        best, baseline = {}, {}
        runs = {n: max(len(selected(block[(block.method == m) & (block.n == n)], backbone, n, m)) for m in methods)
                for n in ns}
        for method in methods:
            cells, cells_p = [], []
            for n in ns:
                group = selected(block[(block.method == method) & (block.n == n)], backbone, n, method)
                if not len(group):
                    cells += ["-", "-"]
                    cells_p += ["-", "-"]
                    continue
                short = f" ({len(group)} of {runs[n]} runs)" if len(group) < runs[n] else ""  # failed or still to run
                cells += [mean_std(group.forget_uar), mean_std(group.unseen_uar) + short]
                cells_p += [mean_std(group.forget_accuracy), mean_std(group.mia_auc) + short]
                mean = group.unseen_uar.mean()
                pick = best if base[method] in PROPOSED else baseline if base[method] == "random-label" else None
                if pick is not None and mean > pick.get(n, (None, -1))[1]:
                    pick[n] = (method, mean, int(group.n_unseen.iloc[0]), group.kept.mean())
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
            privacy.append(f"| {method} | " + " | ".join(cells_p) + " |")
        for n in ns:
            if n in best and n in baseline:
                method, mean, n_unseen, kept = best[n]
                b_method, b_mean, b_unseen, b_kept = baseline[n]
                z, p = z_test_one_tailed(mean, b_mean, n_unseen, b_unseen)
                lines.append(f"\nN={n}: {method} vs {b_method}: z = {z:.2f}, p = {p:.3g} {significance_marker(p)}")
                table2.append(f"| {backbone} | {setting} | {n} | {b_kept:.1%} ({b_method}) | {kept:.1%} "
                              f"| {method} | {p:.3g}{significance_marker(p)} |")
        privacy += _retrain_spread(block, ns, methods, base, lambda g, n, m, b=backbone: selected(g, b, n, m))
    write_text(out / "table1.md", "\n".join(lines + [""] + privacy) + "\n", overwrite=True)
    write_text(out / "table2.md", "\n".join(table2) + "\n", overwrite=True)
    write_text(out / "chosen_taus.json", json.dumps({"|".join(map(str, k)): v for k, v in taus.items()}, indent=2) + "\n",
               overwrite=True)
    _fig2(frame, out / "fig2.png")


def _retrain_spread(block, ns, methods, base, selected) -> list[str]:
    """Where retrained models are in the grid: is each method's mean forget-set accuracy and membership AUC
    inside the retrained models' range (min..max over their runs) at the same N?"""
    lines = []
    for n in ns:
        ref = block[(block.base_method == "retrain") & (block.n == n)]
        if len(ref) < 2:
            continue
        acc = (ref.forget_accuracy.min(), ref.forget_accuracy.max())
        auc = (ref.mia_auc.min(), ref.mia_auc.max())
        lines += ["", f"N={n}: retrained models ({len(ref)} runs): forget acc. {acc[0]:.2f}..{acc[1]:.2f}, "
                  f"membership AUC {auc[0]:.2f}..{auc[1]:.2f}"]
        for method in methods:
            if base[method] == "retrain":
                continue
            group = selected(block[(block.method == method) & (block.n == n)], n, method)
            if not len(group):
                continue
            a, m = group.forget_accuracy.mean(), group.mia_auc.mean()
            inside = acc[0] <= a <= acc[1] and auc[0] <= m <= auc[1]
            lines.append(f"- {method}: forget acc. {a:.2f}, membership AUC {m:.2f}: "
                         f"{'within' if inside else 'outside'} the retrained spread")
    return lines


def _fig2(frame: pd.DataFrame, path: Path) -> None:
    from serkit.plots import plt, save_png  # the Agg backend is set there

    val = frame[frame.setting == "train->val"]
    if val.empty:
        return
    ns = sorted(val.n.unique())
    fig, axes = plt.subplots(1, len(ns), figsize=(3.2 * len(ns), 3), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], ns):
        block = val[val.n == n]
        for method in sorted(block[block.base_method.isin(PROPOSED)].method.unique()):
            curve = block[block.method == method].groupby("tau").unseen_uar.mean()
            ax.plot(curve.index, curve.values, "o-", label=method)
        for method in sorted(block[block.base_method == "random-label"].method.unique()):
            ax.axhline(block[block.method == method].unseen_uar.mean(), color="gray", ls="--", label=method)
        ax.set_title(f"N = {n}", fontsize=9)
        ax.set_xlabel("tau")
        ax.set_xscale("log")
    axes[0][0].set_ylabel("validation UAR after unlearning")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)
