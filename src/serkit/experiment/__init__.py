"""What every experiment grid of serkit shares, in one place.

The papers' grids (unlearning, transfer, dimensional, recovery) are hundreds of independent runs that
must resume where they stopped and refuse to mix results made with other settings. This package is
their common machinery: the results table (`ResultsTable`: one row per finished cell, written
atomically, older files upgraded by one hook; `StepResults` for steps with nested results), the settings file (`Fingerprint`: grid.json, a resume
with other settings refused by naming what differs), and the one way tables print a mean and its
spread (`mean_std`), and where cells run (`run_cells` through an `ExecutorConfig`: in this process,
a local process pool, or SLURM via submitit). Each grid keeps its own cells, its run and its summary.
"""

from serkit.experiment.executor import Cell, ExecutorConfig, executor_config, run_cells, take_in_finished
from serkit.experiment.fingerprint import Fingerprint
from serkit.experiment.summary import mean_std
from serkit.experiment.table import ResultsTable, StepResults

__all__ = ["Cell", "ExecutorConfig", "Fingerprint", "ResultsTable", "StepResults", "executor_config", "mean_std", "run_cells",
           "take_in_finished"]
