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
