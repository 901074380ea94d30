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
    assert "--int8, --int8-mode and --calibration are ONNX options" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_import_serkit_registers_with_transformers_whichever_comes_first():
    for order in ("import serkit; import transformers", "import transformers; import serkit"):
        code = f"{order}\nfrom transformers import AutoConfig\nprint(type(AutoConfig.for_model('serkit')).__name__)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert done.stdout.strip() == "SerkitConfig", (order, done.stderr[-1000:])
    # and `import serkit` alone does not pay for importing transformers
    done = subprocess.run([sys.executable, "-c", "import sys, serkit; print('transformers' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False"


def _hf_checkpoint(folder, labels, weighted: bool):
    """A tiny random Wav2Vec2ForSequenceClassification saved as transformers saves one (no real weights exist here)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    torch.manual_seed(0)
    config = Wav2Vec2Config(**ssl_config("wav2vec2"), num_labels=len(labels), id2label=dict(enumerate(labels)),
                            label2id={lab: i for i, lab in enumerate(labels)}, classifier_proj_size=16,
                            use_weighted_layer_sum=weighted)
    Wav2Vec2ForSequenceClassification(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return folder


@needs_data
def test_a_transformers_classifier_imports_with_its_predictions_and_forgets_with_the_split_it_was_trained_on(
        tiny_split, tiny_manifest, tmp_path, capsys):
    import pandas as pd
    from transformers import pipeline

    labels = ["anger", "happiness", "neutral", "sadness"]  # the tiny manifest's emotions
    hf = _hf_checkpoint(tmp_path / "hf", labels, weighted=True)
    assert run(["models", "import-hf", str(hf), "-o", str(tmp_path / "m"), "--split", str(tiny_split)]) == 0
    assert "logits within" in capsys.readouterr().out
    files = pd.read_csv(tiny_manifest)["path"].iloc[[0, 30]].tolist()
    assert run(["predict", str(tmp_path / "m"), *files, "--format", "json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    classify = pipeline("audio-classification", model=str(hf))
    for mine, path in zip(ours, files):
        wave, rate = sf.read(path, dtype="float32")
        theirs = {a["label"]: a["score"] for a in classify({"raw": wave, "sampling_rate": rate}, top_k=None)}
        assert theirs == pytest.approx(mine["probabilities"], abs=1e-4)
    # what serkit does with its own models it does with this one: here, answer a deletion request
    assert run(["forget", str(tmp_path / "m"), "--speaker", "02", "--n", "2", "--method", "neg-grad", "--set", "epochs=1",
                "-o", str(tmp_path / "forgot")]) == 0
    assert (tmp_path / "forgot" / "receipt.json").is_file()
    # ... and evaluate it on unseen speakers, probe its layers, compare it with its unlearned self
    assert run(["evaluate", str(tmp_path / "m"), "--split", str(tiny_split), "--part", "test", "-o", str(tmp_path / "ev")]) == 0
    # --split gave it provenance: evaluate checked that the test speakers are unseen (no "could not check" note)
    assert "seen_speakers" not in json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert run(["probe", str(tmp_path / "m"), "--split", str(tiny_split), "-o", str(tmp_path / "probe")]) == 0
    assert run(["compare", str(tmp_path / "m"), str(tmp_path / "forgot" / "model"), str(tiny_manifest),
                "-o", str(tmp_path / "cmp")]) == 0
    assert run(["attention", str(tmp_path / "m"), str(tmp_path / "forgot" / "model"), str(tiny_manifest),
                "-o", str(tmp_path / "att")]) == 0
    assert all(any((tmp_path / d).iterdir()) for d in ("probe", "cmp", "att"))
    capsys.readouterr()
    # without the split, the command that needs it says what to do
    assert run(["models", "import-hf", str(hf), "-o", str(tmp_path / "bare")]) == 0
    capsys.readouterr()
    assert run(["forget", str(tmp_path / "bare"), "--speaker", "02", "--n", "2", "-o", str(tmp_path / "f2")]) == 2
    assert "import it again with `serkit models import-hf" in capsys.readouterr().err.replace("\n", "")
    assert not (tmp_path / "f2").exists()


def test_checkpoints_serkit_cannot_import_exactly_are_refused_by_name(tmp_path, capsys):
    hf = _hf_checkpoint(tmp_path / "hf", LABELS, weighted=False)
    assert run(["models", "import-hf", str(hf), "-o", str(hf)]) == 2  # never over the source, nor any existing folder
    assert "exists" in capsys.readouterr().err
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (pickled / name).write_text((hf / name).read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    assert run(["models", "import-hf", str(pickled), "-o", str(tmp_path / "a")]) == 2
    assert "never unpickles" in capsys.readouterr().err
    # a Whisper classifier whose feature extractor is not the log-Mel serkit's Whisper computes (here: it dithers)
    whisper = _whisper_checkpoint(tmp_path / "whisper", LABELS, weighted=False)
    extractor = json.loads((whisper / "preprocessor_config.json").read_text())
    (whisper / "preprocessor_config.json").write_text(json.dumps(dict(extractor, dither=1e-5)))
    assert run(["models", "import-hf", str(whisper), "-o", str(tmp_path / "b")]) == 2
    assert "{'dither': 1e-05}; serkit's Whisper computes the log-Mel of" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _whisper_checkpoint(folder, labels, weighted: bool):
    """A tiny random WhisperForAudioClassification (d_model 64, 2 layers, Whisper's 80 bins and 30-s window), saved as
    transformers saves one; its classifier scaled up so that the random model's probabilities are far from uniform."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    torch.manual_seed(0)
    config = WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, decoder_layers=1,
                           decoder_attention_heads=4, decoder_ffn_dim=128, num_mel_bins=80, max_source_positions=1500,
                           vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                           num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)},
                           classifier_proj_size=16, use_weighted_layer_sum=weighted)
    model = WhisperForAudioClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(200.0)
        if weighted:
            model.layer_weights.copy_(torch.tensor([0.5, -1.0, 1.5]))
    model.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def test_a_whisper_audio_classifier_imports_with_the_probabilities_transformers_gives_it(tmp_path, capsys):
    """WhisperForAudioClassification averages over the whole padded 30-s window; the import reproduces that with the
    whisper option input_window: full, checks it within 1e-4 and keeps a model that needs the checkpoint no more."""
    import shutil

    import torch
    from transformers import pipeline

    from serkit.models import load_model

    hf = _whisper_checkpoint(tmp_path / "hf", LABELS, weighted=True)
    assert run(["models", "import-hf", str(hf), "-o", str(tmp_path / "m")]) == 0
    assert "imported WhisperForAudioClassification (3 classes): logits within" in capsys.readouterr().out
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architecture"] == "whisper" and config["options"]["input_window"] == "full"
    assert config["options"]["head_activation"] == "none" and config["options"]["checkpoint"] is None
    assert config["provenance"]["imported"]["max_abs_logit_diff"] < 1e-4
    rng = np.random.default_rng(1)
    files = []
    for name, seconds in (("short.wav", 1.7), ("long.wav", 4.2)):  # noisy chirps of two lengths
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(tmp_path / name, wave.astype(np.float32), 16000, subtype="FLOAT")
        files.append(tmp_path / name)
    classify = pipeline("audio-classification", model=str(hf))
    theirs = []
    for path in files:
        wave, rate = sf.read(path, dtype="float32")
        theirs.append({a["label"]: a["score"] for a in classify({"raw": wave, "sampling_rate": rate}, top_k=None)})
    assert max(theirs[0].values()) - min(theirs[0].values()) > 0.05 and theirs[0] != pytest.approx(theirs[1], abs=1e-3)
    shutil.rmtree(hf)  # the model directory holds everything: the encoder, the head, its config, as safetensors
    assert not list((tmp_path / "m").glob("*.bin")) and str(hf) not in (tmp_path / "m" / "config.json").read_text()
    assert run(["predict", str(tmp_path / "m"), *map(str, files), "--format", "json"]) == 0  # one padded batch of two
    ours = json.loads(capsys.readouterr().out)
    for mine, reference in zip(ours, theirs):
        assert mine["label"] == max(reference, key=reference.get)
        assert reference == pytest.approx(mine["probabilities"], abs=1e-5)
    # an utterance gets the same logits alone as in a padded batch: each is padded to the 30-s window on its own
    model = load_model(tmp_path / "m").model.eval()
    waves = [torch.from_numpy(sf.read(f, dtype="float32")[0]) for f in files]
    batch = torch.zeros(2, len(waves[1]))
    mask = torch.zeros_like(batch, dtype=torch.bool)
    for i, w in enumerate(waves):
        batch[i, :len(w)], mask[i, :len(w)] = w, True
    with torch.no_grad():
        together = model(batch, mask)
        alone = model(waves[0][None], torch.ones(1, len(waves[0]), dtype=torch.bool))
    assert torch.allclose(together[0], alone[0], atol=1e-5)
