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

A model trained on train+val has no validation speakers: no validation accuracy for the retrain-like
stop to aim at, no loss profile of unseen speakers for the calibrated one. Its runs take the backbone's
train->val model's (the same recipe's estimate of how unseen speakers are treated) as `target_accuracy`
and `profiles`, unless the label sets them.

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serkit.errors import ConfigError, SerkitError
from serkit.experiment import Cell, ExecutorConfig, Fingerprint, ResultsTable, mean_std, run_cells, take_in_finished
from serkit.io import write_text
from serkit.metrics import significance_marker, z_test_one_tailed
from serkit.unlearning.methods import get_method, method_class
from serkit.unlearning.run import forget

SETTINGS = {"train->val": "val", "train+val->test": "test"}
COLUMNS = ["backbone", "setting", "speaker", "n", "seed", "method", "tau", "forget_uar", "forget_accuracy",
           "unseen_uar_before", "unseen_uar", "kept", "other_accuracy", "mia_auc_before", "mia_auc", "n_unseen",
           "seconds", "pgd_success", "snr_db", "epochs_run", "stop_reason", "base_method"]
PROPOSED = ("adv", "adv-ewc")
LABEL = re.compile(r"[A-Za-z0-9._-]+")


class Backbone(BaseModel):
    """One backbone: its model directory per setting, and what it sets differently from the grid."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    train_val: Path | None = Field(None, alias="train->val", description="model trained on train, tau chosen on val")
    train_val_test: Path | None = Field(None, alias="train+val->test", description="model trained on train+val, "
                                        "scored on test")
    speakers: list[str] | None = Field(None, description="this backbone's forget speakers (e.g. when backbones are "
                                       "trained on different corpora); wins over the grid's")
    methods: dict[str, dict | None] | None = Field(None, description="label -> parameters merged over the grid's, per "
                                                   "label; null leaves that label out for this backbone")
    taus: list[float] | None = Field(None, description="this backbone's taus")

    @model_validator(mode="before")
    @classmethod
    def _known_settings(cls, value):
        if isinstance(value, dict):
            known = {*SETTINGS, *(n for n in cls.model_fields if n not in ("train_val", "train_val_test"))}
            for key in value:
                if key not in known:
                    raise ValueError(f"unknown setting '{key}'; use {sorted(SETTINGS)} (or speakers, methods, taus)")
        return value

    @field_validator("speakers", mode="before")
    @classmethod
    def _speaker_ids(cls, value):
        if isinstance(value, list) and not all(isinstance(s, str) for s in value):
            raise ValueError("quote the speaker ids, e.g. ['13', '05'] (unquoted, 05 reads as 5)")
        if value is not None and not value:
            raise ValueError("must be a non-empty list of speaker ids")
        return value

    @field_validator("taus")
    @classmethod
    def _some_taus(cls, value):
        if value is not None and not value:
            raise ValueError("must be a non-empty list of numbers")
        return value

    def models(self) -> dict[str, Path]:
        """setting -> model directory, train->val first (its runs choose the test runs' tau)."""
        return {s: m for s, m in (("train->val", self.train_val), ("train+val->test", self.train_val_test)) if m}


class UnlearningGrid(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "unlearning"
    output_dir: Path
    backbones: dict[str, Backbone] = Field(description="backbone -> its model per setting (train->val, "
                                           "train+val->test), and optionally its own speakers, methods, taus")
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
    audit: bool = Field(False, description="audit every run against the runs of a `retrain` label (at least 2, e.g. "
                        "seeds) of its forget set, utterance by utterance (serkit audit): audit.csv and a table in "
                        "table1.md; the models are kept")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="where the runs go: local (in this "
                                     "process), pool (local worker processes) or slurm (submitit)")


def load_grid(path: Path | str, overrides: list[str] | None = None) -> UnlearningGrid:
    from serkit.config import load_experiment

    grid = load_experiment(path, UnlearningGrid, overrides)
    for name, backbone in grid.backbones.items():
        if (grid.test_taus == "chosen" and backbone.train_val_test and not backbone.train_val
                and any(m in PROPOSED for m, _ in _methods(grid, name).values())):
            raise ConfigError(f"{path}: backbones.{name} has train+val->test but no train->val model: its tau cannot "
                              "be chosen on validation. Add the train->val model, or set test_taus: all")
        if not backbone.models():
            raise ConfigError(f"{path}: backbones.{name} names no model: give train->val and/or train+val->test")
        if not _speakers(grid, name):
            raise ConfigError(f"{path}: no forget speakers for backbone {name}: give speakers: [..] at the top level "
                              f"or under backbones.{name}")
        for label, (method, params) in _methods(grid, name).items():  # a typo fails now, not hours into the grid
            where = f"backbones.{name}.methods.{label}" if label in (backbone.methods or {}) else f"methods.{label}"
            if not LABEL.fullmatch(label):
                raise ConfigError(f"{path}: {where}: a method label names run folders: use letters, digits, '.', '_', '-'")
            if method == "remain":
                raise ConfigError(f"{path}: {where}: the grid cannot run 'remain' (it needs the remaining training data, "
                                  "--remain); run it with serkit forget")
            if "tau" in params and method in PROPOSED:
                raise ConfigError(f"{path}: {where}: tau is a grid dimension here: set taus: [..] at the top level or "
                                  f"under backbones.{name}, not in the method's parameters")
            try:
                get_method(method, {**params, "tau": 0.01} if method in PROPOSED else params)
            except ConfigError as err:
                raise ConfigError(f"{path}: {where} (backbone {name}): {err}") from None
    return grid


def _speakers(grid: UnlearningGrid, backbone: str) -> list[str]:
    return list(grid.backbones[backbone].speakers or grid.speakers)


def _methods(grid: UnlearningGrid, backbone: str) -> dict[str, tuple[str, dict]]:
    """label -> (registered method, parameters), with the backbone's own parameters merged in per label. A
    label set to null under the backbone is left out for it. When no top-level `methods:` is given and the
    backbone lists its own, only those run (the defaults do not sneak in)."""
    own = grid.backbones[backbone].methods or {}
    shared = grid.methods if ("methods" in grid.model_fields_set or not own) else {}
    merged = {label: {**shared.get(label, {}), **(own.get(label) or {})} for label in {**shared, **own}
              if not (label in own and own[label] is None)}
    return {label: (str(params.pop("method", label)), params) for label, params in merged.items()}


CHOSEN = "chosen"  # the tau of a train+val->test run that waits for the train->val runs to choose it


@dataclass
class Run:
    """One `forget` call of the grid, under its row label (`method` is the registered method it runs)."""

    backbone: str
    setting: str
    model_dir: Path
    speaker: str
    n: int
    seed: int
    label: str
    method: str
    params: dict
    tau: float | str | None  # None for methods without tau; CHOSEN until validation has chosen it

    @property
    def key(self) -> str:
        return _key(self.backbone, self.setting, self.speaker, self.n, self.seed, self.label, self.tau)

    @property
    def group(self) -> tuple:
        """The runs validation chooses one tau for."""
        return self.backbone, self.n, self.label

    def resolved(self, chosen: dict) -> Run | None:
        """This run with its tau filled in from the taus chosen on validation (None: none chosen yet)."""
        if self.tau != CHOSEN:
            return self
        tau = chosen.get(self.group)
        return None if tau is None else replace(self, tau=tau)


def _runs(grid: UnlearningGrid):
    """Every run of the grid, train->val settings first; a train+val->test run of an adversarial method has
    tau CHOSEN when it is to use the tau that won on validation."""
    for backbone, settings in grid.backbones.items():
        methods = _methods(grid, backbone)
        for setting, model_dir in settings.models().items():
            for n in grid.n:
                for speaker in _speakers(grid, backbone):
                    for seed in grid.seeds:
                        for label, (method, params) in methods.items():
                            if method not in PROPOSED:
                                taus = [None]
                            elif setting == "train+val->test" and grid.test_taus == "chosen":
                                taus = [CHOSEN]
                            else:
                                taus = settings.taus or grid.taus
                            for tau in taus:
                                yield Run(backbone, setting, model_dir, speaker, n, seed, label, method,
                                          params, tau)


def _key(backbone, setting, speaker, n, seed, method, tau) -> str:
    tau = "" if tau is None else tau if tau == CHOSEN else f"{tau:g}"
    return f"{backbone}|{setting}|{speaker}|{n}|{seed}|{method}|{tau}"


def _row_key(row: dict) -> str:
    """The key of a results row (its values as text, as ResultsTable reads them)."""
    return _key(row["backbone"], row["setting"], row["speaker"], row["n"], row["seed"], row["method"],
                float(row["tau"]) if row["tau"] else None)


@dataclass
class Payload:
    """What a worker needs to run one run: its parameters as run (tau and any target filled in)."""

    run: Run
    params: dict
    run_dir: Path
    keep_models: bool


def run_cell(payload: Payload) -> list[dict]:
    """One `forget` call and its results row (run in this process or in a worker)."""
    run = payload.run
    # a run folder without its results row is a run that died before the row was written: run it again
    # (an experiment's request keys are worth nothing once its row is gone)
    shutil.rmtree(payload.run_dir, ignore_errors=True)
    result = forget(run.model_dir, payload.run_dir, speaker=run.speaker, n=run.n, seed=run.seed, method=run.method,
                    params=payload.params, eval_part=SETTINGS[run.setting], log=lambda *a: None)
    if not payload.keep_models:
        shutil.rmtree(result.model_dir, ignore_errors=True)
    row = _row(result.receipt, run.backbone, run.setting, run.speaker, run.n, run.seed, run.label, run.tau)
    return [row | {"base_method": run.method}]

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


def _set_fields(recorded: dict) -> dict:
    """A recorded fingerprint's parameters less those at their defaults: the record lists every field, and a
    method may refuse a field set beside another (pgu's paper weights beside forget_loss ascent)."""
    fields = method_class(recorded["method"]).Params.model_fields
    return {k: v for k, v in recorded.items()
            if k != "method" and not (k in fields and fields[k].default is not None and fields[k].default == v)}


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
                old = _fingerprint(old["method"], _set_fields(old))
            except (ConfigError, KeyError):
                pass
            changed = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))  # a field added since reads None
            if changed:
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


def run_grid(grid: UnlearningGrid, log=print, executor: ExecutorConfig | None = None,
             progress=None) -> Path:
    """Run the grid's missing runs (through `executor`, default the grid's own), then summarise."""
    out = Path(grid.output_dir)
    table = ResultsTable(out / "results.csv", COLUMNS, "unlearning grid", upgrade=_label_by_method)
    if take_in_finished(table, _row_key):
        log("took in runs that finished after the last grid stopped")
    done, finished = _finished(grid, table)
    recorded = _check_fingerprint(grid, out, finished)
    runs = list(_runs(grid))
    known = _chosen_taus(table.path)
    first = [r for r in runs if r.tau != CHOSEN and r.key not in done]
    later = [r for r in runs if r.tau == CHOSEN]
    waiting = [r for r in later if r.resolved(known) is None or r.resolved(known).key not in done]
    _check_sizes(grid, {(r.model_dir, r.speaker) for r in first + waiting})
    out.mkdir(parents=True, exist_ok=True)  # only once the grid can run: a bad model path leaves no empty folder
    count = len(first) + len(waiting)
    log(f"{len(done)} runs done, {count} to go")
    for backbone in grid.backbones:  # each label's parameters, fixed by its first finished run
        for label, (method, params) in _methods(grid, backbone).items():
            if (backbone, label) not in finished or label not in recorded.get(backbone, {}):
                recorded.setdefault(backbone, {})[label] = _fingerprint(method, params)
    Fingerprint(out).save({"methods": recorded})
    config = executor or grid.executor
    failures = _FailedRuns(out / "failed.csv", done)
    sibling = _Sibling(grid, log)
    cell = lambda run: Cell(run.key, run.key, Payload(run, _params(run, sibling), out / "runs" / _slug(run.key),  # noqa: E731
                                                      grid.keep_models or grid.audit))
    try:
        failures.attempted |= {r.key for r in first}
        run_cells([cell(r) for r in first], run_cell, table, config, log, failures.add, (0, count), progress)
        # the train->val runs have finished: choose tau on them, then run each test cell at that tau
        done |= _finished(grid, table)[0]
        chosen = _chosen_taus(table.path)
        expected = {}
        for r in runs:
            if r.setting == "train->val" and r.method in PROPOSED:
                expected.setdefault(r.group, []).append(r.key)
        ready = []
        for run in later:
            failures.attempted.add(run.key)  # an earlier "no tau chosen" entry is settled or replaced
            resolved = run.resolved(chosen)
            if resolved is not None and resolved.key in done:
                continue
            missing = [k for k in expected.get(run.group, []) if k not in done]
            if resolved is None or missing:
                why = (f"{len(missing)} of its train->val runs failed or are missing" if missing
                       else "no train->val rows to choose from")
                log(f"{run.key}: waiting for train->val ({why})")
                failures.add(run.key, f"no tau chosen on validation for {run.backbone}, n={run.n}, {run.label}: "
                                      f"{why}; rerun once they succeed")
                continue
            failures.attempted.add(resolved.key)
            ready.append(cell(resolved))
        run_cells(ready, run_cell, table, config, log, failures.add, (count - len(ready), count), progress)
    finally:
        done |= _finished(grid, table)[0]
        left = failures.write()
    if len(left) > len(failures.failed):
        log(f"{len(left) - len(failures.failed)} earlier failed runs were not retried this time (outside this grid's "
            f"n/seeds/...): still listed in {failures.path}")
    if table.exists() and grid.audit:
        audit_grid(grid, out, log)
    if table.exists():
        summarise(out)
    if failures.failed:
        raise SerkitError(f"{len(failures.failed)} of {count} runs failed (each run and its error: {failures.path}); "
                          f"the others are in {table.path}. Fix the cause and rerun: finished runs are skipped (changed "
                          "parameters of a label with finished runs need a new label)")
    return out


def _finished(grid: UnlearningGrid, table: ResultsTable) -> tuple[set, set]:
    """The keys of the finished runs, and the (backbone, label) pairs that have any; a label whose method
    changed under finished rows is refused."""
    done, finished = set(), set()
    if not table.exists():
        return done, finished
    methods = {b: _methods(grid, b) for b in grid.backbones}
    for row in table.read().to_dict("records"):
        now = methods.get(row["backbone"], {}).get(row["method"])
        if now and now[0] != row["base_method"]:
            raise ConfigError(f"{table.path}: label '{row['method']}' ran as method '{row['base_method']}' there, but the "
                              f"grid now makes it '{now[0]}': use a new label or another output_dir")
        done.add(_row_key(row))
        finished.add((row["backbone"], row["method"]))
    return done, finished


AUDIT_COLUMNS = ["backbone", "setting", "speaker", "n", "seed", "method", "tau", "retrained", "audit_auc",
                 "audit_mean_z", "audit_share_p05"]


def audit_grid(grid: UnlearningGrid, out: Path, log=print) -> None:
    """serkit audit for every run whose forget set has at least 2 runs of a `retrain` label, against those runs;
    one audit.csv row per run (redone when more retrained runs have come in)."""
    from serkit.unlearning.audit import run_audit

    frame = _read_results(out / "results.csv")
    path = out / "audit.csv"
    earlier = pd.read_csv(path, dtype={"speaker": str, "method": str}) if path.is_file() else pd.DataFrame(columns=AUDIT_COLUMNS)
    done = {(_row_key(r), int(r["retrained"])) for r in earlier.fillna("").to_dict("records")}
    rows = [r for r in earlier.to_dict("records")]
    keyed = lambda r: _row_key({**r, "tau": "" if pd.isna(r["tau"]) else r["tau"]})  # noqa: E731
    for (backbone, setting, speaker, n, seed), group in frame.groupby(["backbone", "setting", "speaker", "n", "seed"]):
        records = group.to_dict("records")
        folders = {keyed(r): out / "runs" / _slug(keyed(r)) for r in records}
        retrained = [folders[keyed(r)] for r in records if r["base_method"] == "retrain" and
                     (folders[keyed(r)] / "model").is_dir()]
        if len(retrained) < 2:
            continue
        todo = [r for r in records if r["base_method"] != "retrain" and (keyed(r), len(retrained)) not in done
                and (folders[keyed(r)] / "model").is_dir()]
        if not todo:
            continue
        model_dir = grid.backbones[backbone].models()[setting] if backbone in grid.backbones else None
        if model_dir is None:
            continue
        log(f"audit: {backbone} {setting} speaker {speaker} N={n} seed {seed}: {len(todo)} runs against "
            f"{len(retrained)} retrained")
        audit = run_audit(model_dir, [folders[keyed(r)] for r in todo], retrained, speaker=str(speaker), n=int(n),
                          seed=int(seed), log=lambda *a: None)
        rows = [r for r in rows if (keyed(r) not in {keyed(t) for t in todo})]
        for r, result in zip(todo, audit.unlearned):
            rows.append({**{c: r[c] for c in AUDIT_COLUMNS[:7]}, "retrained": len(retrained), "audit_auc": result["auc"],
                         "audit_mean_z": result["mean_z"], "audit_share_p05": result["share_p_below_0_05"]})
    if rows:
        write_text(path, pd.DataFrame(rows, columns=AUDIT_COLUMNS).to_csv(index=False), overwrite=True)


def _audit_table(out: Path) -> list[str]:
    path = out / "audit.csv"
    if not path.is_file():
        return []
    audit = pd.read_csv(path, dtype={"speaker": str, "method": str})
    lines = ["", "# Audit: each forget utterance against the retrained runs of its forget set (serkit audit)", "",
             "AUC of |z| between the run and the retrained models (0.5: indistinguishable from retraining); mean z > 0: "
             "the forget set is remembered, < 0: forgotten harder than retraining does. Mean ± std over forget sets.", "",
             "| backbone | setting | N | method | forget sets | retrained per set | AUC | mean z | utterances at p < 0.05 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (backbone, setting, n, method), group in audit.groupby(["backbone", "setting", "n", "method"]):
        lines.append(f"| {backbone} | {setting} | {n} | {method} | {len(group)} | {group.retrained.min()}"
                     f"{'' if group.retrained.nunique() == 1 else f'..{group.retrained.max()}'} | "
                     f"{mean_std(group.audit_auc.dropna())} | {mean_std(group.audit_mean_z)} | "
                     f"{mean_std(group.audit_share_p05)} |")
    return lines


def _slug(key: str) -> str:
    return key.replace("|", "_").replace(">", "").replace("+", "p")


def _params(run: Run, sibling: _Sibling) -> dict:
    """The label's parameters with the run's tau. A train+val->test run borrows from the backbone's train->val
    model what its own model cannot record, having no validation speakers (unless the label sets it): the
    validation accuracy for the retrain-like stop (named, or the preset's fallback), and for the calibrated
    stop the loss profiles."""
    params = dict(run.params)
    if run.tau is not None:
        params["tau"] = run.tau
    if run.setting != "train+val->test":
        return params
    unlearner = get_method(run.method, params)
    fields, target = unlearner.Params.model_fields, getattr(unlearner.params, "target", None)
    if "target_accuracy" in fields and "target_accuracy" not in params and (
            target == "retrain-like" or (unlearner.params._preset_target and target != "misclassify")):
        reference = sibling.accuracy(run.backbone)
        if reference is not None:
            params["target_accuracy"] = reference
    if "profiles" in fields and "profiles" not in params and target in ("calibrated", "calibrated-accuracy") \
            and not (sibling.recorded(run.model_dir) or {}).get("unseen"):
        lent = sibling.profiles(run.backbone)
        if lent is not None:
            params["profiles"] = lent
    return params


class _Sibling:
    """What a backbone's train->val model recorded that its train+val->test model cannot (it trains on the
    validation speakers): the validation accuracy (the retrain-like stop) and the loss profiles (the
    calibrated stop), the same recipe's estimates of how unseen speakers are treated. Read once per backbone."""

    def __init__(self, grid: UnlearningGrid, log):
        self.grid, self.log, self.cache = grid, log, {}

    def accuracy(self, backbone: str) -> float | None:
        return self._read(backbone)[0]

    def profiles(self, backbone: str) -> dict | None:
        return self._read(backbone)[1]

    @staticmethod
    def recorded(model_dir: Path) -> dict | None:
        """The model's own profiles; an unreadable model is left for its run to report."""
        try:
            config = json.loads((Path(model_dir) / "config.json").read_text())
        except (OSError, ValueError):
            return None
        return (config.get("provenance") or {}).get("calibration")

    def _read(self, backbone: str) -> tuple[float | None, dict | None]:
        if backbone not in self.cache:
            self.cache[backbone] = self._load(backbone)
        return self.cache[backbone]

    def _load(self, backbone: str) -> tuple[float | None, dict | None]:
        from serkit.models import load_model
        from serkit.unlearning.run import _reference_accuracy

        source = self.grid.backbones[backbone].train_val
        if source is None:
            self.log(f"{backbone}: no train->val model to take a validation accuracy or loss profiles from")
            return None, None
        try:
            saved = load_model(source)
        except SerkitError as err:
            self.log(f"{backbone}: nothing to lend from its train->val model ({err})")
            return None, None
        value, profiles = _reference_accuracy(saved), (saved.config.get("provenance") or {}).get("calibration")
        if value is not None:
            value = round(value, 4)
            self.log(f"{backbone}: train+val->test runs whose target is retrain-like stop at {value:.3f}, the "
                     "validation accuracy of its train->val model (unless a label sets target_accuracy)")
        if not (profiles or {}).get("unseen"):
            profiles = None
        elif profiles.get("known"):
            self.log(f"{backbone}: train+val->test runs with the calibrated target stop against the loss profiles "
                     f"of its train->val model (membership AUC {profiles['known']['auc_vs_unseen']:.3f})")
        return value, profiles


class _FailedRuns:
    """failed.csv, kept current while the grid runs: this run's failures, and earlier ones it did not
    attempt (outside this run's n, seeds, ...) that have not finished since."""

    def __init__(self, path: Path, done: set):
        self.path, self.done = path, done
        self.earlier = pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records") if path.is_file() else []
        self.failed, self.attempted = [], set()

    def add(self, key, error: str) -> None:
        key = getattr(key, "key", key)  # run_cells reports the Cell
        self.failed.append({"key": key, "error": error})
        self.write()

    def write(self) -> list[dict]:
        rows = [f for f in self.earlier if f["key"] not in self.attempted and f["key"] not in self.done] + self.failed
        if rows:
            write_text(self.path, pd.DataFrame(rows).to_csv(index=False), overwrite=True)
        else:
            self.path.unlink(missing_ok=True)
        return rows


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
    privacy = ["# Forget-set accuracy and membership AUC (both within the retrained models' spread is the aim), unseen "
               "UAR kept, the forgotten speaker's other training utterances, time", "", "mean ± std over speakers x "
               "seeds (same tau as Table 1). A membership AUC near 0.5 means an attacker cannot tell the forget set from "
               "unseen speakers; far below 0.5, the forget set stands out by being forgotten too well."]
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
                    "| method | " + " | ".join(f"N={n}: forget acc. | N={n}: membership AUC | N={n}: {part} UAR kept | "
                                                f"N={n}: speaker's other utts | N={n}: seconds" for n in ns) + " |",
                    "|---|" + "---|---|---|---|---|" * len(ns)]
        best, baseline = {}, {}
        runs = {n: max(len(selected(block[(block.method == m) & (block.n == n)], backbone, n, m)) for m in methods)
                for n in ns}
        for method in methods:
            cells, cells_p = [], []
            for n in ns:
                group = selected(block[(block.method == method) & (block.n == n)], backbone, n, method)
                if not len(group):
                    cells += ["-", "-"]
                    cells_p += ["-"] * 5
                    continue
                short = f" ({len(group)} of {runs[n]} runs)" if len(group) < runs[n] else ""  # failed or still to run
                cells += [mean_std(group.forget_uar), mean_std(group.unseen_uar) + short]
                other = pd.to_numeric(group.other_accuracy, errors="coerce").dropna()
                cells_p += [mean_std(group.forget_accuracy), mean_std(group.mia_auc), _percent(group.kept), mean_std(other, 2),
                            f"{group.seconds.mean():.0f}" + short]
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
    write_text(out / "table1.md", "\n".join(lines + [""] + privacy + _audit_table(out)) + "\n", overwrite=True)
    write_text(out / "table2.md", "\n".join(table2) + "\n", overwrite=True)
    write_text(out / "chosen_taus.json", json.dumps({"|".join(map(str, k)): v for k, v in taus.items()}, indent=2) + "\n",
               overwrite=True)
    _fig2(frame, out / "fig2.png")


def _percent(values) -> str:
    values = np.asarray(values, dtype=float) * 100
    return f"{values[0]:.1f} %" if len(values) == 1 else f"{values.mean():.1f} ± {values.std(ddof=1):.1f} %"


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
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)
