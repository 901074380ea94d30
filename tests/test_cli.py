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
    assert "probabilit" not in capsys.readouterr().err


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
