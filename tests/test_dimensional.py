"""Dimensional SER (paper 004): targets, 1 − CCC, training and evaluation of a regression model.

The end-to-end test uses GENERATED tones whose pitch carries the arousal value (a test of the
mechanism only, not an emotion result): a model that learns must track arousal, and must not
pretend to predict a dimension that is pure noise.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from serkit.cli import run
from serkit.config import load_recipe
from serkit.data.manifest import read_manifest
from serkit.data.splits import save_split
from serkit.dimensional import ccc_loss, ccc_per_dimension, dimension_targets, regression_summary
from serkit.errors import ConfigError, ManifestError
from serkit.metrics import ccc


def _manifest(tmp_path, rows: dict) -> "Manifest":  # noqa: F821
    frame = pd.DataFrame({"path": [str(tmp_path / f"{i}.wav") for i in range(len(next(iter(rows.values()))))],
                          "speaker": "s1", "emotion": "neutral", **rows})
    file = tmp_path / "m.csv"
    frame.to_csv(file, index=False)
    return read_manifest(file)


def test_ccc_loss_is_one_minus_mean_ccc_per_dimension():
    rng = np.random.default_rng(0)
    truth = rng.uniform(size=(40, 3))
    pred = truth * np.array([1.0, 0.5, 0.0]) + rng.normal(0, 0.1, size=(40, 3)) + np.array([0.0, 0.2, 0.5])
    per = ccc_per_dimension(torch.tensor(pred), torch.tensor(truth)).numpy()
    expected = [ccc(pred[:, j], truth[:, j]) for j in range(3)]
    assert np.allclose(per, expected, atol=1e-6)
    assert float(ccc_loss(torch.tensor(pred), torch.tensor(truth))) == pytest.approx(1 - np.mean(expected), abs=1e-6)
    # hand-computed: x = [1, 2, 3], y = [2, 4, 6]: cov 4/3, var 2/3 and 8/3, mean gap 2 -> 8/3 / (10/3 + 4) = 4/11
    assert float(ccc_per_dimension(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[2.0], [4.0], [6.0]]))[0]) \
        == pytest.approx(4 / 11, abs=1e-6)


def test_regression_summary_reports_mae_on_the_declared_scale():
    truth = np.array([[0.0], [0.5], [1.0]])
    summary = regression_summary(truth, truth + 0.25, ["arousal"], (1, 5))
    assert summary["dimensions"]["arousal"]["mae"] == pytest.approx(1.0)  # 0.25 of a 4-wide scale
    assert summary["dimensions"]["arousal"]["pearson_r"] == pytest.approx(1.0)
    assert summary["dimensions"]["arousal"]["ccc"] < 1.0


def test_targets_are_normalised_and_bad_values_are_refused(tmp_path):
    m = _manifest(tmp_path, {"arousal": [1, 3, 5], "valence": [2, 2, 4]})
    assert np.allclose(dimension_targets(m, ["arousal", "valence"], (1, 5)), [[0, 0.25], [0.5, 0.25], [1, 0.75]])
    with pytest.raises(ManifestError, match=r"no column\(s\) \['dominance'\].*dimensions.names"):
        dimension_targets(m, ["arousal", "dominance"], (1, 5))
    with pytest.raises(ManifestError, match=r"'arousal' of .*2.wav is 5, outside the declared scale \[1, 4\]"):
        dimension_targets(m, ["arousal"], (1, 4))
    empty = _manifest(tmp_path, {"arousal": ["1", "", "2"]})
    with pytest.raises(ManifestError, match=r"'arousal' of .*1.wav is '', not a number"):
        dimension_targets(empty, ["arousal"], (1, 5))


def test_recipe_needs_a_dimensions_section_for_regression(tmp_path):
    base = {"output_dir": str(tmp_path / "o"), "data": {"split": "s.json"}, "task": "regression"}
    with pytest.raises(ConfigError, match="needs a dimensions section"):
        load_recipe(raw=base)
    with pytest.raises(ConfigError, match="low < high"):
        load_recipe(raw={**base, "dimensions": {"scale": [5, 1]}})
    recipe = load_recipe(raw={**base, "dimensions": {"scale": [1, 5]}})
    assert recipe.dimensions.names == ["arousal", "valence", "dominance"]


@pytest.fixture(scope="module")
def tone_corpus(tmp_path_factory):
    """60 generated 1-s tones, 6 'speakers': pitch 150-600 Hz sets arousal (1-5); valence is noise."""
    root = tmp_path_factory.mktemp("dims")
    rng = np.random.default_rng(0)
    rows, t = [], np.arange(16000) / 16000
    for k in range(60):
        arousal = rng.uniform(1, 5)
        freq = 150 + (arousal - 1) / 4 * 450
        wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
        path = root / f"tone{k:02d}.wav"
        sf.write(str(path), wave, 16000)
        rows.append({"path": str(path), "speaker": f"s{k % 6}", "gender": "female" if k % 2 else "male",
                     "emotion": "neutral", "duration_s": 1.0, "arousal": round(arousal, 3), "valence": round(rng.uniform(1, 5), 3)})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    split = root / "split.json"
    save_split(split, read_manifest(manifest), seed=0, parts={"train": ["s0", "s1", "s2", "s3"], "val": ["s4"], "test": ["s5"]})
    return root, manifest, split


@pytest.mark.slow
def test_regression_trains_tracks_the_signal_and_evaluates(tone_corpus, tmp_path, capsys):
    root, manifest, split = tone_corpus
    recipe = {"name": "tones", "seed": 0, "output_dir": str(tmp_path / "run"), "task": "regression",
              "dimensions": {"names": ["arousal", "valence"], "scale": [1, 5]},
              "data": {"split": str(split)}, "model": {"architecture": "cnn6"},
              "train": {"batch_size": 8, "max_epochs": 8, "lr": 1e-3, "progress_bar": False}}
    (tmp_path / "r.yaml").write_text(json.dumps(recipe))
    assert run(["train", str(tmp_path / "r.yaml")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    test = metrics["test"]["dimensions"]
    assert test["arousal"]["ccc"] > 0.5, test  # pitch carries arousal: it is learnt
    assert abs(test["valence"]["pearson_r"]) < 0.7, test  # valence is noise: no pretending
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["task"] == {"type": "regression", "dimensions": ["arousal", "valence"], "scale": [1.0, 5.0], "loss": "1 - CCC"}

    # evaluate the saved model again: same numbers; predict gives values on the declared scale
    capsys.readouterr()
    assert run(["evaluate", str(tmp_path / "run" / "model"), "--split", str(split), "--part", "test",
                "-o", str(tmp_path / "eval")]) == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]["dimensions"]
    assert again["arousal"]["ccc"] == pytest.approx(test["arousal"]["ccc"], abs=1e-6)
    files = [str(root / "tone00.wav"), str(root / "tone01.wav")]
    capsys.readouterr()
    assert run(["predict", str(tmp_path / "run" / "model"), *files, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scale"] == [1.0, 5.0] and all(1 <= p["arousal"] <= 5 for p in out["predictions"])


def test_regression_refuses_a_manifest_without_the_columns(tiny_split, tmp_path, capsys):
    recipe = {"output_dir": str(tmp_path / "run"), "task": "regression", "dimensions": {"scale": [1, 5]},
              "data": {"split": str(tiny_split)}, "train": {"max_epochs": 1, "progress_bar": False}}
    (tmp_path / "r.yaml").write_text(json.dumps(recipe))
    assert run(["train", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no column(s) ['arousal', 'valence', 'dominance']" in err.replace("\n", "")
    assert not (tmp_path / "run").exists()
