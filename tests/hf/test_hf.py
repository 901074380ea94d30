"""serkit models in transformers: `serkit export --hf` and the Auto classes `import serkit` registers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from serkit.cli import run
from serkit.config import load_recipe
from serkit.data.dataset import Preprocessing
from serkit.models import build_model
from serkit.models.modeldir import save_model
from serkit.training import train
from tests.helpers import WHISPER_TINY, needs_data, ssl_config, tiny_recipe

LABELS = ["anger", "happiness", "neutral"]

# what a pipeline user writes: import serkit, then transformers, nothing else of serkit
USER = """
import json, sys
import numpy as np, soundfile as sf
import serkit
from transformers import pipeline
classify = pipeline("audio-classification", model=sys.argv[1])
answers = []
for path in sys.argv[2:]:
    wave, rate = sf.read(path, dtype="float32")
    answers.append({a["label"]: a["score"] for a in classify({"raw": wave, "sampling_rate": rate}, top_k=None)})
print(json.dumps(answers))
"""


def _pipeline(hf_dir, files) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", USER, str(hf_dir), *map(str, files)], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_data
def test_an_exported_model_runs_in_a_transformers_pipeline_with_the_probabilities_of_serkit_predict(
        tiny_split, tiny_manifest, tmp_path, capsys):
    model_dir = train(load_recipe(raw=tiny_recipe(tiny_split, tmp_path / "run", max_epochs=1)), log=lambda *a: None).model_dir
    assert run(["export", str(model_dir), "--hf", "-o", str(tmp_path / "hf")]) == 0
    assert "every label the same" in capsys.readouterr().out
    import pandas as pd

    files = pd.read_csv(tiny_manifest)["path"].iloc[[0, 13, 40]].tolist()  # the recipe trims silence: the model does too
    assert run(["predict", str(model_dir), *files, "--format", "json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    got = _pipeline(tmp_path / "hf", files)
    for mine, theirs in zip(expected, got):
        assert max(theirs, key=theirs.get) == mine["label"]
        assert theirs == pytest.approx(mine["probabilities"], abs=1e-5)
    # a directory to share: no provenance, no path of this machine
    shared = " ".join(p.read_text() for p in (tmp_path / "hf").glob("*.json"))
    assert "provenance" not in shared and "speakers" not in shared and str(tmp_path) not in shared and "/work" not in shared
    # written whole or not at all; an existing folder is never replaced
    assert run(["export", str(model_dir), "--hf", "-o", str(tmp_path / "hf")]) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("architecture, options", [
    ("whisper", {"hf_config": WHISPER_TINY}),
    ("ssl", {"backbone": "wav2vec2", "hf_config": ssl_config("wav2vec2")}),
])
def test_transformer_backbones_export_with_their_config_and_without_a_checkpoint_path(architecture, options, tmp_path, capsys):
    model_dir = save_model(tmp_path / "m", build_model(architecture, options, 3), LABELS, Preprocessing())
    config = json.loads((model_dir / "config.json").read_text())
    config["options"].update(checkpoint=str(tmp_path / "a" / "local" / "checkpoint"), hf_config=None)  # as trained from one
    (model_dir / "config.json").write_text(json.dumps(config))
    assert run(["export", str(model_dir), "--hf", "-o", str(tmp_path / "hf")]) == 0
    assert "noise signals" in capsys.readouterr().out  # no manifest to check on: said so
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())["serkit"]
    assert exported["options"]["checkpoint"] is None and exported["options"]["hf_config"] == exported["files"]["backbone_config.json"]
    tone = (0.1 * np.sin(np.linspace(0, 2000, 24000))).astype(np.float32)
    sf.write(tmp_path / "tone.wav", tone, 16000)
    got = _pipeline(tmp_path / "hf", [tmp_path / "tone.wav"])[0]
    assert set(got) == set(LABELS) and sum(got.values()) == pytest.approx(1.0, abs=1e-5)


def test_what_a_pipeline_cannot_hold_is_refused_by_name(tmp_path, capsys):
    dims = build_model("cnn6", {}, 3)
    save_model(tmp_path / "dims", dims, ["arousal", "valence", "dominance"], Preprocessing(),
               task={"type": "regression", "dimensions": ["arousal", "valence", "dominance"], "scale": [1, 5]})
    assert run(["export", str(tmp_path / "dims"), "--hf", "-o", str(tmp_path / "out")]) == 2
    assert "dimensional model" in capsys.readouterr().err and not (tmp_path / "out").exists()
    save_model(tmp_path / "cnn", build_model("cnn6", {}, 3), LABELS, Preprocessing())
    assert run(["export", str(tmp_path / "cnn"), "--hf", "--int8", "-o", str(tmp_path / "out")]) == 2
    assert "--int8 is an ONNX option" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_import_serkit_registers_with_transformers_whichever_comes_first():
    for order in ("import serkit; import transformers", "import transformers; import serkit"):
        code = f"{order}\nfrom transformers import AutoConfig\nprint(type(AutoConfig.for_model('serkit')).__name__)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert done.stdout.strip() == "SerkitConfig", (order, done.stderr[-1000:])
    # and `import serkit` alone does not pay for importing transformers
    done = subprocess.run([sys.executable, "-c", "import sys, serkit; print('transformers' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False"
