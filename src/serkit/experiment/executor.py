"""Where a grid's cells run: in this process, in a pool of local worker processes, or as SLURM jobs.

A cell is a picklable payload and a module-level `run_cell(payload) -> rows`. Whatever runs it, this
process alone writes results.csv (one writer: no lost or doubled rows). A cell run elsewhere also
leaves its rows in `cells/` (written atomically) the moment it finishes, so that a grid whose driver
was killed takes them in when it is resumed instead of training them again; a cell whose worker was
killed has left nothing and runs again.

Executors: `local` (default: in this process, one cell after another, as serkit always did),
`pool` (`workers` local processes, e.g. one per GPU with `devices`), and `slurm` (one job per cell
through submitit, which SER researchers' university clusters run).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serkit.errors import ConfigError
from serkit.experiment.table import ResultsTable, StepResults
from serkit.io import write_text


class ExecutorConfig(BaseModel):
    """A grid YAML's `executor:` section (`--executor` / `--workers` on the command line override it)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "pool", "slurm"] = Field("local", description="local: in this process; pool: local worker "
                                                    "processes; slurm: one SLURM job per cell (submitit)")
    workers: int = Field(1, ge=1, description="pool: worker processes; slurm: jobs running at once")
    devices: list[str] | None = Field(None, description="pool: one CUDA device per worker, e.g. ['0', '1']")
    threads: int | None = Field(None, ge=1, description="pool: torch threads per worker (default: cores / workers)")
    slurm: dict[str, Any] = Field(default_factory=dict, description="submitit parameters, e.g. slurm_partition: gpu, "
                                  "timeout_min: 240, gpus_per_node: 1, cpus_per_task: 8, mem_gb: 32")
    cluster: Literal["slurm", "local", "debug"] | None = Field(None, description="submitit's cluster (default: SLURM where "
                                                               "sbatch exists); 'local' runs the jobs as local processes")

    @model_validator(mode="after")
    def _one_device_per_worker(self):
        if self.devices is not None and len(self.devices) != self.workers:
            raise ValueError(f"executor.devices lists {len(self.devices)} devices for {self.workers} workers; give one each")
        return self


def executor_config(section: ExecutorConfig | None, kind: str | None = None, workers: int | None = None) -> ExecutorConfig:
    """The grid's executor with the command line's choices applied (`--workers N` alone means a pool)."""
    raw = (section or ExecutorConfig()).model_dump()
    if workers is not None:
        raw["workers"] = workers
        if kind is None and workers > 1 and raw["kind"] == "local":
            raw["kind"] = "pool"
    if kind is not None:
        raw["kind"] = kind
    if raw["kind"] == "local" and raw["workers"] > 1:
        raise ConfigError("--workers N > 1 runs cells in parallel: use --executor pool or --executor slurm")
    try:
        return ExecutorConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"executor{'.' + where if where else ''}: {first['msg'].removeprefix('Value error, ')}") from None


@dataclass
class Cell:
    key: str  # what results.csv knows the cell by
    tag: str  # what the log calls it
    payload: Any  # run_cell's argument: picklable


OnFailure = Callable[[Cell, str], None]


def run_cells(cells: list[Cell], run_cell: Callable[[Any], list[dict]], table: ResultsTable | StepResults, config: ExecutorConfig,
              log=print, on_failure: OnFailure | None = None, numbered: tuple[int, int] | None = None,
              progress: Callable[[int, int], None] | None = None) -> None:
    """Run every cell through the configured executor; append each cell's rows as it finishes.

    A failing cell stops the grid (the cells already running still finish and are kept), unless
    `on_failure(cell, "Type: message")` is given: then it is told and the other cells go on. A grid that
    runs its cells in several calls numbers them on one count with `numbered=(cells before, all cells)`;
    `progress(cells finished, all cells)` follows it (the command line's bar)."""
    if not cells:
        return
    before, total = numbered or (0, len(cells))
    number = lambda i: f"[{before + i}/{total}]"  # noqa: E731
    finished = (lambda i: progress(before + i, total)) if progress is not None else (lambda i: None)  # noqa: E731
    finished(0)
    if config.kind == "local":
        for i, cell in enumerate(cells, 1):
            log(f"{number(i)} {cell.tag}")
            try:
                rows = run_cell(cell.payload)
            except Exception as exc:
                if on_failure is None:
                    raise
                log(f"  failed: {_describe(exc)}")
                on_failure(cell, _describe(exc))
                finished(i)
                continue
            table.append(rows)
            finished(i)
        return
    folder = table.path.parent / "cells"
    folder.mkdir(exist_ok=True)
    jobs = [(cell, _cell_file(folder, cell.key)) for cell in cells]
    if config.kind == "pool":
        _run_pool(jobs, run_cell, table, config, log, on_failure, number, finished)
    else:
        _run_slurm(jobs, run_cell, table, config, log, on_failure, number, finished)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def take_in_finished(table: ResultsTable | StepResults, keys: Callable[[dict], str]) -> int:
    """Rows that workers left in cells/ and results.csv lacks (the driver was stopped first): appended,
    then their files removed. Returns how many cells were taken in."""
    folder = table.path.parent / "cells"
    if not folder.is_dir():
        return 0
    done = table.finished(keys)
    taken = 0
    for path in sorted(folder.glob("*.json")):
        rows = json.loads(path.read_text())
        if rows and keys({k: str(v) for k, v in rows[0].items()}) not in done:
            table.append(rows)
            done.add(keys({k: str(v) for k, v in rows[0].items()}))
            taken += 1
        path.unlink()
    return taken


def _cell_file(folder: Path, key: str) -> Path:
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def run_and_keep(run_cell: Callable[[Any], list[dict]], payload, cell_file: str) -> list[dict]:
    """What a worker runs: the cell, then its rows written where a resumed driver finds them."""
    rows = run_cell(payload)
    write_text(Path(cell_file), json.dumps(rows, default=str), overwrite=True)
    return rows


def _record(table: ResultsTable, rows: list[dict], cell_file: Path) -> None:
    table.append(rows)
    cell_file.unlink(missing_ok=True)


def _init_worker(devices, threads: int) -> None:
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices.get()  # before torch initialises CUDA in this process
    import torch

    torch.set_num_threads(threads)


def _run_pool(jobs, run_cell, table: ResultsTable, config: ExecutorConfig, log, on_failure: OnFailure | None,
              number, finished) -> None:
    context = multiprocessing.get_context("spawn")  # fork would copy the driver's torch threads and CUDA state
    devices = None
    if config.devices is not None:
        devices = context.Manager().Queue()
        for device in config.devices:
            devices.put(str(device))
    threads = config.threads or max(1, (os.cpu_count() or 1) // config.workers)
    log(f"{len(jobs)} cells on {config.workers} worker processes ({threads} threads each"
        + (f", devices {', '.join(config.devices)}" if config.devices else "") + ")")
    failure = None
    with cf.ProcessPoolExecutor(config.workers, mp_context=context, initializer=_init_worker,
                                initargs=(devices, threads)) as pool:
        futures = {pool.submit(run_and_keep, run_cell, cell.payload, str(path)): (cell, path) for cell, path in jobs}
        for done, future in enumerate(cf.as_completed(futures), 1):
            cell, path = futures[future]
            finished(done)
            try:
                _record(table, future.result(), path)
                log(f"{number(done)} {cell.tag} done")
            except cf.CancelledError:
                continue
            except Exception as exc:  # the cells already running still finish and are kept
                log(f"{number(done)} {cell.tag} FAILED: {str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}")
                if on_failure is not None:
                    on_failure(cell, _describe(exc))
                elif failure is None:
                    failure = exc
                    for other in futures:
                        other.cancel()
    if failure is not None:
        raise failure


def _run_slurm(jobs, run_cell, table: ResultsTable, config: ExecutorConfig, log, on_failure: OnFailure | None,
              number, finished) -> None:
    try:
        import submitit
    except ImportError:
        raise ConfigError("executor slurm needs submitit: pip install 'serkit[cluster]'") from None
    folder = table.path.parent / "slurm"
    executor = submitit.AutoExecutor(folder=folder, cluster=config.cluster)
    try:
        executor.update_parameters(**config.slurm, **({"slurm_array_parallelism": config.workers}
                                                      if executor.cluster == "slurm" else {}))
    except (TypeError, ValueError, NameError) as exc:  # submitit names an unknown parameter with a NameError
        raise ConfigError(f"executor.slurm: {str(exc).splitlines()[0]}") from None
    with executor.batch():
        submitted = [(executor.submit(run_and_keep, run_cell, cell.payload, str(path)), cell, path) for cell, path in jobs]
    log(f"{len(submitted)} cells submitted to {executor.cluster} (logs in {folder})")
    failure = None
    by_job = {job.job_id: (cell, path) for job, cell, path in submitted}
    for done, job in enumerate(submitit.helpers.as_completed([j for j, _, _ in submitted]), 1):
        cell, path = by_job[job.job_id]
        finished(done)
        try:
            _record(table, job.result(), path)
            log(f"{number(done)} {cell.tag} done (job {job.job_id})")
        except Exception as exc:  # a failed job: the others finish; resume re-runs it
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            log(f"{number(done)} {cell.tag} FAILED (job {job.job_id}): {last}")
            if on_failure is not None:
                on_failure(cell, f"{last} (job {job.job_id}; its log: {job.paths.stderr})")
            else:
                failure = failure or (cell, job)
    if failure is not None:
        cell, job = failure
        raise ConfigError(f"cell {cell.tag} failed as job {job.job_id}; its log: {job.paths.stderr}; run the grid "
                          "again to retry the failed cells")
