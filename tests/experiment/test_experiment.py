"""The machinery every experiment grid shares: results table, settings file, how a spread is printed."""

import json

import pandas as pd
import pytest

from serkit.errors import ConfigError
from serkit.experiment import Fingerprint, ResultsTable, mean_std


def test_a_results_table_appends_whole_rows_and_reads_every_value_as_text(tmp_path):
    table = ResultsTable(tmp_path / "results.csv", ["speaker", "uar", "note"])
    assert not table.exists() and list(table.read().columns) == ["speaker", "uar", "note"]
    table.append([{"speaker": "05", "uar": 0.5, "note": ""}])
    table.append([{"speaker": "12", "uar": 0.25, "note": "a, b"}, {"speaker": "07", "uar": 1.0, "note": ""}])
    frame = table.read()
    assert frame.speaker.tolist() == ["05", "12", "07"] and frame.uar.tolist() == ["0.5", "0.25", "1.0"]
    assert frame.note.tolist() == ["", "a, b", ""]  # text, never NaN
    assert not [p for p in tmp_path.iterdir() if p.name != "results.csv"]  # no temporary file left


def test_an_older_results_table_is_upgraded_once_and_a_foreign_one_refused(tmp_path):
    pd.DataFrame([{"speaker": "05", "method": "adv"}]).to_csv(tmp_path / "results.csv", index=False)

    def label_by_method(frame):
        frame["label"] = frame["method"]
        return frame

    table = ResultsTable(tmp_path / "results.csv", ["speaker", "method", "label", "fold"], upgrade=label_by_method)
    frame = table.read()
    assert frame.to_dict("records") == [{"speaker": "05", "method": "adv", "label": "adv", "fold": ""}]
    assert (tmp_path / "results.csv").read_text().splitlines()[0] == "speaker,method,label,fold"  # rewritten in place
    table.append([{"speaker": "12", "method": "adv", "label": "x", "fold": "1"}])
    assert table.read().label.tolist() == ["adv", "x"]
    other = ResultsTable(tmp_path / "results.csv", ["speaker"], what="transfer grid")
    with pytest.raises(ConfigError, match=r"columns \['fold', 'label', 'method'\] are not a serkit transfer grid's"):
        other.read()


def test_a_fingerprint_names_what_differs_and_takes_over_an_older_file_name(tmp_path):
    fingerprint = Fingerprint(tmp_path, "a recovery study", legacy=("experiment.json",))
    assert fingerprint.previous() is None
    (tmp_path / "experiment.json").write_text(json.dumps({"part": "test"}))
    assert fingerprint.previous() == {"part": "test"}
    with pytest.raises(ConfigError, match=r"holds a recovery study with other settings \(part, recipe\); resuming would "
                                          r"mix results: choose another output_dir"):
        fingerprint.refuse(["part", "recipe"])
    fingerprint.refuse([])
    fingerprint.save({"part": "val"})
    assert json.loads((tmp_path / "grid.json").read_text()) == {"part": "val"} and not (tmp_path / "experiment.json").exists()
    (tmp_path / "grid.json").write_text("{broken")
    with pytest.raises(ConfigError, match="grid.json cannot be read"):
        fingerprint.previous()


def test_one_run_has_no_spread_to_print():
    assert mean_std([0.6123]) == "0.612"
    assert mean_std([0.6, 0.7]) == "0.650 ± 0.071"
    assert mean_std([12, 14], 0) == "13 ± 1"
    assert mean_std([]) == "–"


# ------------------------------------------------------------------------------------------ executors

def square_cell(payload) -> list[dict]:
    """A cell for the executor tests: module-level, so worker processes can import it."""
    import os
    import time
    from pathlib import Path

    value, fail, *meet = payload
    if fail:
        raise ValueError(f"cell {value} cannot be computed")
    if meet:  # a folder where each worker leaves its pid: wait (up to 20 s a cell) until two have, so both take cells
        folder = Path(meet[0])
        (folder / str(os.getpid())).touch()
        deadline = time.monotonic() + 20
        while len(list(folder.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    return [{"x": value, "square": value * value, "pid": os.getpid()}]


def _cells(values, fail=()):
    from serkit.experiment import Cell

    return [Cell(str(v), f"x{v}", (v, v in fail)) for v in values]


def test_two_local_workers_run_every_cell_once_in_two_processes(tmp_path):
    from serkit.experiment import Cell, ExecutorConfig, run_cells

    table = ResultsTable(tmp_path / "results.csv", ["x", "square", "pid"])
    lines = []
    meet = tmp_path / "workers"
    meet.mkdir()
    cells = [Cell(c.key, c.tag, (*c.payload, str(meet))) for c in _cells(range(6))]
    run_cells(cells, square_cell, table, ExecutorConfig(kind="pool", workers=2, threads=1), lines.append)
    frame = table.read()
    assert sorted(frame.x.astype(int)) == list(range(6)) and (frame.square.astype(int) == frame.x.astype(int) ** 2).all()
    assert frame.pid.nunique() == 2 and str(__import__("os").getpid()) not in set(frame.pid)
    assert sum("done" in line for line in lines) == 6
    assert not list((tmp_path / "cells").iterdir())  # every cell's hand-over file taken in


def test_a_failing_cell_stops_the_pool_after_the_running_cells_and_keeps_theirs(tmp_path):
    from serkit.experiment import ExecutorConfig, run_cells

    table = ResultsTable(tmp_path / "results.csv", ["x", "square", "pid"])
    lines = []
    with pytest.raises(ValueError, match="cell 1 cannot be computed"):
        run_cells(_cells(range(4), fail={1}), square_cell, table, ExecutorConfig(kind="pool", workers=2, threads=1),
                  lines.append)
    kept = set(table.read().x.astype(int))
    assert 0 in kept and 1 not in kept  # the cell run beside the failure is kept; the failed one is not
    assert any("x1 FAILED: cell 1 cannot be computed" in line for line in lines)


@pytest.mark.parametrize("kind", ["local", "pool"])
def test_a_grid_that_lists_failures_is_told_each_failed_cell_and_the_others_all_run(tmp_path, kind):
    from serkit.experiment import ExecutorConfig, run_cells

    table = ResultsTable(tmp_path / "results.csv", ["x", "square", "pid"])
    failures, lines, bar = [], [], []
    run_cells(_cells(range(5), fail={1, 3}), square_cell, table,
              ExecutorConfig(kind=kind, workers=1 if kind == "local" else 2, threads=1), lines.append,
              on_failure=lambda cell, error: failures.append((cell.key, error)), numbered=(10, 20),
              progress=lambda done, total: bar.append((done, total)))
    assert bar == [(n, 20) for n in range(10, 16)]  # the grid's bar counts failed cells as finished, on the grid's count
    assert sorted(table.read().x.astype(int)) == [0, 2, 4]
    assert sorted(failures) == [("1", "ValueError: cell 1 cannot be computed"), ("3", "ValueError: cell 3 cannot be computed")]
    assert any(line.startswith("[11/20] ") for line in lines) and not any("/5]" in line for line in lines)


def test_rows_a_worker_left_after_the_driver_died_are_taken_in_once(tmp_path):
    from serkit.experiment import take_in_finished
    from serkit.experiment.executor import _cell_file, run_and_keep

    table = ResultsTable(tmp_path / "results.csv", ["x", "square", "pid"])
    (tmp_path / "cells").mkdir()
    table.append(square_cell((1, False)))
    for value in (1, 2):  # 1 was recorded before the driver died, 2 was not
        run_and_keep(square_cell, (value, False), str(_cell_file(tmp_path / "cells", str(value))))
    assert take_in_finished(table, lambda row: row["x"]) == 1
    assert sorted(table.read().x) == ["1", "2"] and not list((tmp_path / "cells").iterdir())
    assert take_in_finished(table, lambda row: row["x"]) == 0


def test_slurm_cells_run_as_submitit_jobs_and_land_in_the_table(tmp_path):
    pytest.importorskip("submitit")
    from serkit.experiment import ExecutorConfig, run_cells

    table = ResultsTable(tmp_path / "results.csv", ["x", "square", "pid"])
    lines = []
    config = ExecutorConfig(kind="slurm", workers=2, cluster="local", slurm={"timeout_min": 5})
    run_cells(_cells(range(3)), square_cell, table, config, lines.append)
    assert sorted(table.read().x.astype(int)) == [0, 1, 2]
    assert "3 cells submitted to local" in lines[0] and (tmp_path / "slurm").is_dir()
    bad = ExecutorConfig(kind="slurm", cluster="local", slurm={"partition_name": "gpu"})
    with pytest.raises(ConfigError, match="executor.slurm: Unknown executor 'partition' in parameter 'partition_name'"):
        run_cells(_cells([5]), square_cell, ResultsTable(tmp_path / "bad.csv", ["x", "square", "pid"]), bad, lines.append)
    with pytest.raises(ConfigError, match="cell x1 failed as job"):
        run_cells(_cells([1], fail={1}), square_cell, ResultsTable(tmp_path / "other.csv", ["x", "square", "pid"]),
                  config, lines.append)


def test_workers_on_the_command_line_mean_a_pool_and_bad_executor_settings_name_the_field():
    from serkit.experiment import ExecutorConfig, executor_config

    assert executor_config(None, workers=2).kind == "pool"
    assert executor_config(ExecutorConfig(kind="slurm"), workers=4).kind == "slurm"
    assert executor_config(None).kind == "local"
    with pytest.raises(ConfigError, match="use --executor pool or --executor slurm"):
        executor_config(None, kind="local", workers=2)
    with pytest.raises(ConfigError, match="executor.devices lists 1 devices for 2 workers"):
        executor_config(ExecutorConfig(devices=["0"]), workers=2)
