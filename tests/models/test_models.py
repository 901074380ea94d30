"""Models: sizes, padding invariance, gradients to the waveform, SSL backbones on tiny configs."""

import numpy as np
import pytest
import torch
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from serkit.errors import ConfigError
from serkit.models import build_model
from serkit.models.frontends import LogMel, LogMelConfig
from tests.helpers import SSL_TINY as TINY
from tests.helpers import batch as _batch
from tests.helpers import ssl_config as tiny_config

CNNS = ["cnn6", "resnet9", "vgg15"]
PAPER_SIZES = {"cnn6": 4.44e6, "resnet9": 4.96e6, "vgg15": 14.86e6}  # paper 003, 7 classes (DEMoS)

BACKBONES = ["wav2vec2", "hubert", "wavlm", "distilhubert"]


def test_logmel_matches_an_independent_reference():
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    config = LogMelConfig(normalize="none")
    ours, mask = LogMel(config)(torch.from_numpy(wave)[None], torch.ones(1, 16000, dtype=torch.bool))
    filters = mel_filter_bank(257, 64, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    reference = spectrogram(wave, window_function(512, "hann"), 512, 256, power=2.0, center=False,
                            mel_filters=filters, log_mel="dB", min_value=1e-10, dtype=np.float64).T
    assert ours.shape[1] == reference.shape[0] == 1 + (16000 - 512) // 256
    assert np.abs(ours[0].numpy() - reference).max() < 1e-3  # dB


def test_logmel_instance_norm_cancels_recording_gain():
    wave, mask = _batch([16000])
    frontend = LogMel()
    quiet, _ = frontend(wave * 0.01, mask)
    loud, _ = frontend(wave, mask)
    assert torch.allclose(quiet, loud, atol=1e-3)


@pytest.mark.parametrize("name", CNNS)
def test_cnn_sizes_match_the_paper(name):
    model = build_model(name, {}, 7)
    assert model.total_parameters() == pytest.approx(PAPER_SIZES[name], rel=0.01)


@pytest.mark.parametrize("name", CNNS)
def test_cnn_gives_the_same_output_alone_or_in_a_padded_batch(name):
    model = build_model(name, {}, 5).eval()
    lengths = [24000, 17000, 9000]
    wave, mask = _batch(lengths)
    with torch.no_grad():
        batched = model(wave, mask)
        for i, n in enumerate(lengths):
            alone = model(wave[i:i + 1, :n], mask[i:i + 1, :n])
            assert torch.allclose(alone[0], batched[i], atol=1e-5)


@pytest.mark.parametrize("name", CNNS)
def test_cnn_gradient_reaches_the_waveform_and_not_the_padding(name):
    model = build_model(name, {}, 4).eval()
    wave, mask = _batch([12000, 8000])
    wave.requires_grad_(True)
    model(wave, mask)[:, 1].sum().backward()
    assert wave.grad.abs()[0].sum() > 0 and wave.grad.abs()[1, :8000].sum() > 0
    assert wave.grad[1, 8000:].abs().sum() == 0


def test_cnn_embeddings_have_the_documented_sizes():
    model = build_model("cnn6", {}, 8).eval()
    feats = model.features(*_batch([16000, 12000]))
    assert feats["fc1"].shape == (2, 256) and feats["logits"].shape == (2, 8) and feats["pooled"].shape == (2, 512)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_ssl_forward_backward_to_waveform_and_frozen_feature_encoder(backbone):
    model = build_model("ssl", {"backbone": backbone, "hf_config": tiny_config(backbone)}, 4)
    encoder = list(model.backbone.feature_extractor.parameters())
    assert encoder and not any(p.requires_grad for p in encoder)
    assert all(p.requires_grad for p in model.backbone.encoder.parameters())
    wave, mask = _batch([8000, 5000])
    wave.requires_grad_(True)
    logits = model(wave, mask)
    assert logits.shape == (2, 4)
    logits[:, 0].sum().backward()
    assert wave.grad[0].abs().sum() > 0 and wave.grad[1, 5000:].abs().sum() == 0
    assert model.fc1.weight.grad is not None and encoder[0].grad is None


@pytest.mark.parametrize("backbone", BACKBONES)
def test_ssl_padding_invariance(backbone):
    model = build_model("ssl", {"backbone": backbone, "hf_config": tiny_config(backbone)}, 3).eval()
    wave, mask = _batch([8000, 5000])
    with torch.no_grad():
        batched = model(wave, mask)
        alone = model(wave[1:, :5000], mask[1:, :5000])
    assert torch.allclose(alone[0], batched[1], atol=1e-4)


@pytest.mark.parametrize("options", [{}, {"layer": 1}, {"layer_weights": True}])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_group_norm_encoders_do_not_depend_on_the_batch(backbone, options):
    # wav2vec2-base, HuBERT-base and DistilHuBERT normalise over the whole padded input and take no
    # attention mask: without care an utterance's prediction changes with its batch neighbours
    config = tiny_config(backbone, feat_extract_norm="group", do_stable_layer_norm=False)
    model = build_model("ssl", {"backbone": backbone, "hf_config": config, **options}, 3).eval()
    wave, mask = _batch([8000, 5000, 6400])
    with torch.no_grad():
        batched = model(wave, mask)
        alone = [model(wave[i:i + 1, :n], mask[i:i + 1, :n])[0] for i, n in enumerate([8000, 5000, 6400])]
        states = model.pooled_hidden_states(wave, mask)
        states_alone = model.pooled_hidden_states(wave[1:2, :5000], mask[1:2, :5000])
    assert torch.allclose(torch.stack(alone), batched, atol=1e-5)
    assert torch.allclose(states_alone[:, 0], states[:, 1], atol=1e-5)
    x = wave.clone().requires_grad_(True)
    model(x, mask)[:, 0].sum().backward()
    assert x.grad[1, :5000].abs().sum() > 0 and x.grad[1, 5000:].abs().sum() == 0


def test_ssl_layer_selection_and_layer_weights():
    config = tiny_config("hubert")
    layer0 = build_model("ssl", {"backbone": "hubert", "hf_config": config, "layer": 0}, 3).eval()
    weighted = build_model("ssl", {"backbone": "hubert", "hf_config": config, "layer_weights": True}, 3)
    assert weighted.layer_weights().shape == (3,)  # conv output + 2 transformer layers
    wave, mask = _batch([8000])
    weighted(wave, mask).sum().backward()
    assert weighted.layer_logits.grad.abs().sum() > 0
    assert layer0(wave, mask).shape == (1, 3)
    with pytest.raises(ConfigError, match=r"layer 5 out of range.*0\.\.2"):
        build_model("ssl", {"backbone": "hubert", "hf_config": config, "layer": 5}, 3)


def test_ssl_probe_freezes_everything_but_the_head():
    model = build_model("ssl", {"backbone": "wav2vec2", "hf_config": TINY, "freeze_backbone": True}, 3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}


def test_group_norm_backbone_runs_without_a_mask():
    config = dict(TINY, feat_extract_norm="group", do_stable_layer_norm=False)
    model = build_model("ssl", {"backbone": "wav2vec2", "hf_config": config}, 3).eval()
    assert model(*_batch([8000, 4000])).shape == (2, 3)


def test_bad_model_options_are_clear():
    with pytest.raises(ConfigError, match="unknown model architecture 'cnn7'"):
        build_model("cnn7", {}, 3)
    with pytest.raises(ConfigError, match=r"model options for 'cnn6': dropuot"):
        build_model("cnn6", {"dropuot": 0.1}, 3)
    with pytest.raises(ConfigError, match="exactly one of 'checkpoint'"):
        build_model("ssl", {"backbone": "hubert"}, 3)
    with pytest.raises(ConfigError, match="is not a local directory; serkit never downloads"):
        build_model("ssl", {"backbone": "hubert", "checkpoint": "facebook/hubert-base-ls960"}, 3)
