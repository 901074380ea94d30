"""The CLI as a user meets it: the commands in order on real EmoDB audio, and bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr

from serkit.cli import run


@pytest.fixture(scope="module")
def emodb_run(data_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    assert run(["data", "import", "emodb", str(data_root / "emodb"), "-o", str(base / "data"), "--link"]) == 0
    assert run(["data", "split", str(base / "data" / "manifest.csv"), "-o", str(base / "split.json"),
                "--val", "2", "--test", "2", "--seed", "1"]) == 0
    recipe = base / "recipe.yaml"
    recipe.write_text(f"output_dir: {base / 'run'}\ndata:\n  split: {base / 'split.json'}\n  max_seconds: 1.0\n"
                      "model:\n  architecture: cnn6\ntrain:\n  max_epochs: 1\n  progress_bar: false\n")
    assert run(["train", str(recipe), "--set", "train.batch_size=32"]) == 0
    return base


def test_train_evaluate_predict(emodb_run, capsys):
    model = emodb_run / "run" / "model"
    assert "batch_size: 32" in (emodb_run / "run" / "recipe.yaml").read_text()
    capsys.readouterr()
    assert run(["evaluate", str(model), "--split", str(emodb_run / "split.json"), "--part", "test",
                "-o", str(emodb_run / "eval")]) == 0
    assert "test: UAR" in capsys.readouterr().out
    metrics = json.loads((emodb_run / "eval" / "metrics.json").read_text())
    train_metrics = json.loads((emodb_run / "run" / "metrics.json").read_text())
    assert metrics["test"]["uar"] == train_metrics["test"]["uar"]  # same model, same data, same answer
    assert (emodb_run / "eval" / "confusion.png").stat().st_size > 1000
    manifest = (emodb_run / "data" / "manifest.csv").read_text().splitlines()
    files = [line.split(",")[0] for line in manifest[1:3]]
    assert run(["predict", str(model), *files, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in out] == files and set(out[0]["probabilities"]) == set(metrics["test"]["labels"])
    assert run(["predict", str(model), *files]) == 0
    shown = capsys.readouterr()
    assert "probabilit" not in shown.err
    # an 80-column terminal shows each file's name and label whole, with the likeliest classes
    assert max(len(line) for line in shown.out.splitlines()) <= 80
    for r in out:
        row = next(line for line in shown.out.splitlines() if r["file"].split("/")[-1] in line)
        assert f"{r['label']} {r['confidence']:.2f}" in row
    runner_up = sorted(out[0]["probabilities"].items(), key=lambda item: -item[1])[1][0]
    assert runner_up in shown.out
    assert run(["predict", str(model), *files, "--all"]) == 0
    every = capsys.readouterr().out
    assert all(label in every for label in metrics["test"]["labels"]), every


def test_bad_input_gives_one_clear_line(emodb_run, tmp_path, capsys):
    model = emodb_run / "run" / "model"
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF1234WAVEnot really audio" * 8)
    cases = [
        (["predict", str(model), str(corrupt)], "cannot decode audio file"),
        (["predict", str(model), str(tmp_path / "absent.wav")], "audio file not found"),
        (["predict", str(tmp_path / "model.pt"), str(corrupt)], "pickle checkpoint"),
        (["evaluate", str(model), "--split", str(tmp_path / "nosplit.json")], "split file not found"),
        (["train", str(tmp_path / "none.yaml")], "recipe not found"),
        (["data", "import", "ravdess", str(tmp_path), "-o", str(tmp_path / "o")], "no ravdess files found"),
    ]
    for argv, message in cases:
        assert run(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "o").exists()


def test_stereo_44k_file_is_predicted(emodb_run, data_root, tmp_path, capsys):
    wave, sr = sf.read(data_root / "emodb" / "audio" / "03a01Fa.flac")
    stereo = soxr.resample(wave, sr, 44100)
    sf.write(tmp_path / "stereo.wav", np.stack([stereo, 0.5 * stereo], 1), 44100)
    assert run(["predict", str(emodb_run / "run" / "model"), str(tmp_path / "stereo.wav"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"]


def test_installed_command_prints_errors_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "serkit", "data", "split", str(tmp_path / "none.csv"),
                             "-o", str(tmp_path / "s.json")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "manifest not found" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_models_list_names_every_architecture(capsys):
    assert run(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("cnn6", "resnet9", "vgg15", "ssl", "whisper", "fused", "audiotext"):
        assert name in out


def test_an_os_error_no_command_expected_is_one_line_not_a_traceback(monkeypatch, capsys):
    import errno

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", "/mnt/disk/registry.json")

    monkeypatch.setattr("serkit.models.architectures", broken)
    assert run(["models", "list"]) == 2
    assert capsys.readouterr().err.strip() == "error: Input/output error: /mnt/disk/registry.json"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_evaluating_speakers_the_model_trained_on_is_refused_unless_allowed_and_then_marked(emodb_run, tmp_path, capsys):
    from serkit.data.manifest import read_manifest
    from serkit.data.splits import save_split

    model = emodb_run / "run" / "model"
    trained = json.loads((model / "config.json").read_text())["provenance"]["speakers"]["train"]
    m = read_manifest(emodb_run / "data" / "manifest.csv")
    # another split of the same corpus whose test part holds two of the model's training speakers
    save_split(tmp_path / "other.json", m, 0, parts={"train": [s for s in m.speakers if s not in trained[:2]], "val": [],
                                                      "test": trained[:2]})
    capsys.readouterr()
    assert run(["evaluate", str(model), "--split", str(tmp_path / "other.json"), "-o", str(tmp_path / "e")]) == 2
    err = _one_error_line(capsys)
    assert f"trained on speaker(s) {', '.join(trained[:2])}" in err and "--allow-seen-speakers" in err
    assert not (tmp_path / "e").exists()
    assert run(["evaluate", str(model), "--split", str(tmp_path / "other.json"), "-o", str(tmp_path / "e"),
                "--allow-seen-speakers"]) == 0
    assert "warning:" in capsys.readouterr().err
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["seen_speakers"] == trained[:2]
    assert "Not speaker-independent" in (tmp_path / "e" / "report.md").read_text()


def test_a_model_that_does_not_list_its_training_speakers_is_evaluated_with_a_note(emodb_run, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(emodb_run / "run" / "model", model)
    config = json.loads((model / "config.json").read_text())
    config["provenance"] = {}
    (model / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert run(["evaluate", str(model), "--split", str(emodb_run / "split.json"), "-o", str(tmp_path / "e")]) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "serkit cannot check that the evaluated speakers are unseen" in err
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["seen_speakers"] is None


def test_an_evaluation_output_that_cannot_be_written_fails_before_scoring_and_a_full_disk_leaves_nothing(
        emodb_run, tmp_path, capsys, monkeypatch):
    import errno
    import os

    model, split = str(emodb_run / "run" / "model"), str(emodb_run / "split.json")
    (tmp_path / "file").write_text("a file")

    def not_now(*args, **kwargs):
        raise AssertionError("scored before the output was checked")

    with monkeypatch.context() as patch:
        patch.setattr("serkit.evaluation.classification.evaluate", not_now)
        assert run(["evaluate", model, "--split", split, "-o", str(tmp_path / "file" / "e")]) == 2
        assert "cannot write output folder" in _one_error_line(capsys)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("serkit.evaluation.classification.confusion_png", full)
    assert run(["evaluate", model, "--split", split, "-o", str(tmp_path / "e")]) == 2
    assert f"no space left on device while writing output folder {tmp_path / 'e'}" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("size", ["0", "-1"])
def test_a_batch_size_below_one_is_one_line(emodb_run, size, capsys):
    model = str(emodb_run / "run" / "model")
    clip = (emodb_run / "data" / "manifest.csv").read_text().splitlines()[1].split(",")[0]
    for argv in (["predict", model, clip], ["evaluate", model, "--split", str(emodb_run / "split.json")]):
        assert run([*argv, "--batch-size", size]) == 2
        assert f"batch size {size}: give 1 or more" in _one_error_line(capsys)


def test_predict_speaks_of_the_files_given_not_of_a_manifest(emodb_run, tmp_path, capsys):
    model = str(emodb_run / "run" / "model")
    (tmp_path / "clips").mkdir()
    for path, message in ((tmp_path / "absent.wav", "audio file not found"), (tmp_path / "clips", "is a folder, not an audio file")):
        assert run(["predict", model, str(path)]) == 2
        err = _one_error_line(capsys)
        assert message in err and "manifest" not in err, err


# ------------------------------------------------------------------------------ experiment executors
def _transfer_grid(tmp_path, **extra):
    import yaml

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "recipe": str(tmp_path / "recipe.yaml"),
                                    "upstream": str(tmp_path / "model"), **extra}))
    return grid


def _record_runner(monkeypatch, tmp_path) -> list[dict]:
    """Stand in for the transfer grid's runner: the grid is not run, the executor it is given is kept."""
    calls = []

    def runner(grid, log=print, **kwargs):
        calls.append({"grid": grid, **kwargs})
        return tmp_path / "out"

    monkeypatch.setattr("serkit.transfer.experiment.run_transfer_grid", runner)
    return calls


def test_a_bad_executor_or_worker_count_is_one_line_that_names_the_option(tmp_path, monkeypatch, capsys):
    calls = _record_runner(monkeypatch, tmp_path)
    grid = str(_transfer_grid(tmp_path))
    for options, message in ((["--workers", "0"], "--workers 0: give 1 or more"),
                             (["--executor", "bogus"], "--executor bogus: give one of local, pool, slurm"),
                             (["--executor", "local", "--workers", "2"], "use --executor pool or --executor slurm")):
        assert run(["experiment", "transfer", grid, *options]) == 2, options
        assert message in _one_error_line(capsys), options
    assert calls == [] and not (tmp_path / "out").exists()


def test_executor_options_reach_the_runner_over_the_yaml_section_and_without_them_the_grid_keeps_its_own(
        tmp_path, monkeypatch, capsys):
    calls = _record_runner(monkeypatch, tmp_path)
    assert run(["experiment", "transfer", str(_transfer_grid(tmp_path)), "--workers", "2"]) == 0
    assert (calls[-1]["executor"].kind, calls[-1]["executor"].workers) == ("pool", 2)  # --workers alone: a pool
    slurm = _transfer_grid(tmp_path, executor={"kind": "slurm", "workers": 4, "slurm": {"slurm_partition": "gpu"}})
    assert run(["experiment", "transfer", str(slurm), "--workers", "8"]) == 0
    executor = calls[-1]["executor"]
    assert (executor.kind, executor.workers, executor.slurm) == ("slurm", 8, {"slurm_partition": "gpu"})
    assert run(["experiment", "transfer", str(slurm), "--executor", "local", "--workers", "1"]) == 0
    assert (calls[-1]["executor"].kind, calls[-1]["executor"].slurm) == ("local", {"slurm_partition": "gpu"})
    assert run(["experiment", "transfer", str(slurm)]) == 0
    assert "executor" not in calls[-1] and calls[-1]["grid"].executor.kind == "slurm"
    assert f"wrote {tmp_path / 'out'}/" in capsys.readouterr().out


def test_the_executor_kinds_the_command_line_offers_are_the_executor_configs():
    from typing import get_args

    from serkit.commands.experiment import EXECUTORS
    from serkit.experiment import ExecutorConfig

    assert EXECUTORS == get_args(ExecutorConfig.model_fields["kind"].annotation)
