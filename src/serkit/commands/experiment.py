"""`serkit experiment <grid>`: the papers' experiment grids, each a resumable grid from one YAML."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import typer

from serkit.commands._shared import console, progress_bar
from serkit.errors import SerkitError


@dataclass(frozen=True)
class Experiment:
    """Where a grid lives: its module, the functions that load and run it, and what it writes."""

    module: str
    loader: str
    runner: str
    outputs: str


EXPERIMENTS = {
    "unlearning": Experiment("serkit.unlearning.experiment", "load_grid", "run_grid", "results.csv, table1.md, table2.md, fig2.png"),
    "transfer": Experiment("serkit.transfer.experiment", "load_transfer_grid", "run_transfer_grid",
                           "results.csv, table3.md, fig2.png, confusion_best.png"),
    "dimensional": Experiment("serkit.dimensional.experiment", "load_dimensional_grid", "run_dimensional_grid",
                              "results.csv, table1.md, table2.md"),
    "recovery": Experiment("serkit.analysis.recovery", "load_recovery", "run_recovery",
                           "tables.md, results.json, fig3.png, <corpus>/attention_*.png"),
}

# the kinds of serkit.experiment.ExecutorConfig, spelt out so that `--help` needs no import of the experiment machinery
EXECUTORS = ("local", "pool", "slurm")

SET = typer.Option([], "--set", help="override an experiment value, e.g. --set seeds=[0]")
EXECUTOR = typer.Option(None, "--executor", metavar="<local|pool|slurm>", help="where the cells run, instead of the YAML's "
                        "executor.kind: local (in this process), pool (local worker processes), slurm (one SLURM job per cell)")
WORKERS = typer.Option(None, "--workers", help="pool: worker processes; slurm: jobs running at once (instead of the YAML's "
                       "executor.workers; alone, more than 1 means a pool)")


def run_experiment(name: str, recipe: Path, overrides: list[str], kind: str | None = None, workers: int | None = None) -> None:
    """Load the grid, run it (on the executor the options make of its own, when given) and say what it wrote."""
    if kind is not None and kind not in EXECUTORS:
        raise SerkitError(f"--executor {kind}: give one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise SerkitError(f"--workers {workers}: give 1 or more (pool: worker processes; slurm: jobs running at once)")
    experiment = EXPERIMENTS[name]
    module = importlib.import_module(experiment.module)
    grid = getattr(module, experiment.loader)(recipe, overrides)
    options = {}
    if kind is not None or workers is not None:  # otherwise the grid's own executor section
        from serkit.experiment.executor import executor_config

        options["executor"] = executor_config(grid.executor, kind, workers)
    with progress_bar("grid cells") as update:
        out = getattr(module, experiment.runner)(grid, log=console.print, progress=update, **options)
    console.print(f"wrote {out}/ ({experiment.outputs})")


def unlearning(recipe: Path = typer.Argument(..., help="experiment YAML (see configs/unlearning_ravdess_whisper.yaml)"),
               set_: list[str] = SET, executor: str | None = EXECUTOR, workers: int | None = WORKERS):
    """The unlearning grid of papers 000/001 (resumable): results.csv, table1.md (with forget accuracy and membership AUC), fig2.png, table2.md, chosen_taus.json; failed.csv lists runs that failed."""  # noqa: E501
    run_experiment("unlearning", recipe, set_, executor, workers)


def transfer(recipe: Path = typer.Argument(..., help="experiment YAML (see configs/transfer_emodb.yaml)"),
             set_: list[str] = SET, executor: str | None = EXECUTOR, workers: int | None = WORKERS):
    """Paper 003's Table 3 grid (resumable): results.csv, table3.md, fig2.png, confusion_best.png."""
    run_experiment("transfer", recipe, set_, executor, workers)


def dimensional(recipe: Path = typer.Argument(..., help="experiment YAML (see configs/dimensional_emodb.yaml)"),
                set_: list[str] = SET, executor: str | None = EXECUTOR, workers: int | None = WORKERS):
    """Paper 004's Tables 1-2 (resumable): results.csv, table1.md (modalities x encoders), table2.md (transcripts)."""
    run_experiment("dimensional", recipe, set_, executor, workers)


def recovery(recipe: Path = typer.Argument(..., help="experiment YAML (see configs/recovery.yaml)"),
             set_: list[str] = SET, executor: str | None = EXECUTOR, workers: int | None = WORKERS):
    """Paper 002's information-recovery study (resumable): tables.md (Tables I-III, attention, run times), PNGs."""
    run_experiment("recovery", recipe, set_, executor, workers)


def register(app: typer.Typer) -> None:
    experiment_app = typer.Typer(help="The papers' experiment grids.", no_args_is_help=True)
    for name, command in (("unlearning", unlearning), ("transfer", transfer), ("dimensional", dimensional),
                          ("recovery", recovery)):
        experiment_app.command(name)(command)
    experiment_app.command("audiotext", hidden=True)(dimensional)  # serkit 0.1's name for it
    app.add_typer(experiment_app, name="experiment")
