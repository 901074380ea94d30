"""Training end to end on real RAVDESS utterances (a tiny subset: seconds, not minutes)."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from serkit.config import load_recipe
from serkit.data.manifest import read_manifest
from serkit.errors import ConfigError, ManifestError, SerkitError
from serkit.evaluation.classification import evaluate
from serkit.inference.predict import predict_files
from serkit.models import load_model
from serkit.training import train
from tests.helpers import tiny_recipe


@pytest.fixture(scope="module")
def trained(tiny_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    raw = tiny_recipe(tiny_split, out, max_epochs=3)
    del raw["train"]["importances"]  # the default: serkit train stores them
    return train(load_recipe(raw=raw), log=lambda *a: None)


def test_run_folder_is_complete(trained):
    out = trained.output_dir
    for name in ("model/model.safetensors", "model/config.json", "metrics.json", "report.md", "recipe.yaml",
                 "confusion_val.png", "confusion_test.png", "predictions_test.csv", "training_log.csv",
                 "training_curve.png"):
        assert (out / name).is_file(), name
    assert not list(out.parent.glob(".run.partial*"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 12 and metrics["val"]["n"] == 12
    assert metrics["training"]["epochs"] == 3 and metrics["training"]["train_utterances_per_s"] > 0
    assert metrics["model"]["labels"] == ["anger", "happiness", "neutral", "sadness"]
    config = json.loads((out / "model" / "config.json").read_text())
    prov = config["provenance"]
    assert prov["speakers"]["test"] == ["06"] and prov["seed"] == 0 and len(prov["manifest_sha256"]) == 64
    assert config["preprocessing"]["trim_silence_db"] == 40
    assert "UAR" in (out / "report.md").read_text()
    from safetensors import safe_open  # what a deletion request's ssd / pgu read, stored while the data exists

    with safe_open(str(out / "model" / "importances.safetensors"), "pt") as stored:
        assert stored.metadata()["n_utterances"] == "48" and "moments.fc1" in stored.keys()
        assert stored.metadata()["weights_sha256"] == load_model(out / "model").weights_sha256


def test_model_selection_keeps_the_best_validation_epoch(trained):
    history = (trained.output_dir / "training_log.csv").read_text().splitlines()[1:]
    val_uars = [float(line.split(",")[2]) for line in history]
    best = max(val_uars)
    assert trained.metrics["training"]["best_epoch"] == val_uars.index(best) + 1
    # the saved model is the best epoch's: re-evaluating it on val gives that UAR
    assert trained.metrics["val"]["uar"] == pytest.approx(best, abs=1e-6)


def test_reloaded_model_predicts_bit_identically(trained, tiny_manifest):
    saved = load_model(trained.model_dir)
    rows = read_manifest(tiny_manifest).subset(["06"])
    first = evaluate(saved, rows).predictions
    again = evaluate(load_model(trained.model_dir), rows).predictions
    assert first.equals(again)
    metrics = json.loads((trained.output_dir / "metrics.json").read_text())
    assert metrics["test"]["uar"] == evaluate(saved, rows).summary["uar"]
    files = list(rows.audio_paths()[:2])
    out = predict_files(saved, files)
    assert [r["label"] for r in out] == list(first["predicted"][:2])
    assert abs(sum(out[0]["probabilities"].values()) - 1) < 1e-5


def test_same_seed_same_weights_and_another_seed_differs(trained, tiny_split, tmp_path):
    again = train(load_recipe(raw=tiny_recipe(tiny_split, tmp_path / "again", max_epochs=3)), log=lambda *a: None)
    a = load_file(str(trained.model_dir / "model.safetensors"))
    b = load_file(str(again.model_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    raw = tiny_recipe(tiny_split, tmp_path / "other", max_epochs=1)
    raw["seed"] = 1
    other = load_file(str(train(load_recipe(raw=raw), log=lambda *a: None).model_dir / "model.safetensors"))
    assert not torch.equal(a["fc1.weight"], other["fc1.weight"])


def test_existing_output_is_never_overwritten(trained, tiny_split):
    before = (trained.model_dir / "model.safetensors").read_bytes()
    with pytest.raises(SerkitError, match="already exists; serkit never overwrites"):
        train(load_recipe(raw=tiny_recipe(tiny_split, trained.output_dir)), log=lambda *a: None)
    assert (trained.model_dir / "model.safetensors").read_bytes() == before


def test_failed_training_leaves_nothing_behind(tiny_split, tmp_path):
    raw = tiny_recipe(tiny_split, tmp_path / "run")
    raw["data"]["labels"] = ["anger", "boredom"]  # no training utterance is bored
    with pytest.raises(ConfigError, match=r"data.labels \['boredom'\] have no training utterances"):
        train(load_recipe(raw=raw), log=lambda *a: None)
    assert list(tmp_path.iterdir()) == []


def test_evaluating_on_labels_the_model_does_not_know(trained, ravdess_frame, tmp_path):
    frame = ravdess_frame[(ravdess_frame.speaker == "06") & (ravdess_frame.emotion.isin(["anger", "fear"]))]
    path = tmp_path / "m.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ManifestError, match=r"emotion 'fear' \(8 rows\).*not in model .* labels"):
        evaluate(load_model(trained.model_dir), read_manifest(path))


def test_recipe_overrides_and_errors(tiny_split, tmp_path):
    raw = tiny_recipe(tiny_split, tmp_path / "run")
    recipe = load_recipe(raw=raw, overrides=["train.max_epochs=7", "train.lr=0.01", "model.options.dropout=0.3"])
    assert (recipe.train.max_epochs, recipe.train.lr, recipe.model.options["dropout"]) == (7, 0.01, 0.3)
    with pytest.raises(ConfigError, match=r"train.max_epochz: Extra inputs are not permitted"):
        load_recipe(raw=raw, overrides=["train.max_epochz=3"])
    with pytest.raises(ConfigError, match=r"train.batch_size: Input should be a valid integer"):
        load_recipe(raw=raw, overrides=["train.batch_size=many"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_recipe(raw=raw, overrides=["train.max_epochs"])
    with pytest.raises(ConfigError, match=r"model options for 'cnn6': dropout"):
        load_recipe(raw=raw, overrides=["model.options.dropout=2"])
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_ddp_on_two_cpu_processes(tiny_split, tmp_path):
    """The multi-GPU path (DDP) exercised with two CPU processes (gloo): one model, one run folder."""
    import subprocess
    import sys

    import yaml

    raw = tiny_recipe(tiny_split, tmp_path / "ddp", max_epochs=1, accelerator="cpu", devices=2, strategy="ddp")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "serkit", "train", str(tmp_path / "recipe.yaml")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["training"]["epochs"] == 1 and metrics["test"]["n"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "recipe.yaml"]


def test_train_plus_val_setting_keeps_the_last_epoch(tiny_split, tmp_path):
    raw = tiny_recipe(tiny_split, tmp_path / "tv", max_epochs=2)
    raw["data"]["train_parts"] = ["train", "val"]
    raw["train"]["importances"] = False
    result = train(load_recipe(raw=raw), log=lambda *a: None)
    assert not (result.model_dir / "importances.safetensors").exists()
    assert set(result.metrics) == {"test", "training", "model"}
    assert result.metrics["training"]["best_epoch"] == 2 and result.metrics["training"]["best_val_uar"] is None
    config = json.loads((result.model_dir / "config.json").read_text())
    assert config["provenance"]["trained_on"] == ["train", "val"]
    assert config["provenance"]["n_utterances"]["train"] == 60  # 5 actors x 12
    assert "no validation" in (result.output_dir / "report.md").read_text()


def test_init_from_another_model_copies_matching_tensors(trained, tiny_split, tmp_path):
    raw = tiny_recipe(tiny_split, tmp_path / "b", max_epochs=1, lr=1e-12)  # lr ~0: weights stay where they start
    raw["model"]["init_from"] = str(trained.model_dir)
    raw["data"]["labels"] = ["anger", "sadness"]  # a different head: 2 classes
    result = train(load_recipe(raw=raw), log=lambda *a: None)
    a = load_file(str(trained.model_dir / "model.safetensors"))
    b = load_file(str(result.model_dir / "model.safetensors"))
    assert torch.allclose(a["layers.0.conv.weight"], b["layers.0.conv.weight"], atol=1e-6)
    assert b["fc2.weight"].shape[0] == 2
    init = json.loads((result.model_dir / "config.json").read_text())["provenance"]["init_from"]
    assert init["fresh"] == ["fc2.bias", "fc2.weight"]
    raw["model"]["architecture"] = "resnet9"
    raw["output_dir"] = str(tmp_path / "c")
    with pytest.raises(ConfigError, match="is a 'cnn6' model; this recipe trains 'resnet9'"):
        train(load_recipe(raw=raw), log=lambda *a: None)


def _write_recipe(tmp_path, raw) -> str:
    import yaml

    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    return str(tmp_path / "recipe.yaml")


def test_a_second_training_into_an_output_another_run_holds_fails_at_once(tiny_split, tmp_path, capsys):
    import subprocess
    import sys
    import time

    from serkit.cli import run

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom serkit.io import OutputDir\n"
        f"with OutputDir({str(out)!r}, what='output directory') as out:\n"
        "    print(out.staging(), flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        staging = holder.stdout.readline().strip()
        recipe = _write_recipe(tmp_path, tiny_recipe(tiny_split, out, max_epochs=1))
        start = time.perf_counter()
        assert run(["train", recipe]) == 2
        assert time.perf_counter() - start < 5
        captured = capsys.readouterr()
        assert "loaded" not in captured.out  # failed before reading any audio
        assert len(captured.err.strip().splitlines()) == 1
        assert "another serkit run is writing output directory" in captured.err and "right now" in captured.err
        assert os.path.isdir(staging)  # the first run's working folder is untouched
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()


def test_an_unwritable_output_directory_is_named_before_any_audio_is_read(tiny_split, tmp_path, capsys):
    from serkit.cli import run

    (tmp_path / "file").write_text("a file, not a folder")
    for output_dir in (tmp_path / "file" / "run", "/proc/serkit-run"):
        assert run(["train", _write_recipe(tmp_path, tiny_recipe(tiny_split, output_dir))]) == 2
        captured = capsys.readouterr()
        assert "loaded" not in captured.out
        assert captured.err.startswith("error: cannot write output directory") and "not a writable folder" in captured.err
        assert len(captured.err.strip().splitlines()) == 1


def test_a_full_disk_while_saving_is_one_line_and_leaves_nothing(tiny_split, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    from serkit.cli import run

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr("serkit.models.modeldir.save_file", full)
    assert run(["train", _write_recipe(tmp_path, tiny_recipe(tiny_split, tmp_path / "run", max_epochs=1))]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no space left on device while writing output directory {tmp_path / 'run'}")
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_sigterm_during_training_exits_143_and_leaves_nothing(tiny_split, tmp_path):
    import signal
    import subprocess
    import sys

    recipe = _write_recipe(tmp_path, tiny_recipe(tiny_split, tmp_path / "run", max_epochs=200))
    proc = subprocess.Popen([sys.executable, "-m", "serkit", "train", recipe], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in proc.stdout:
            if line.startswith("epoch 1/"):  # training: the working folder exists
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert err.strip() == "interrupted (SIGTERM); nothing was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
