"""What tests share besides fixtures: where the data is, tiny model configs, a recipe, test audio.

Fixtures live in conftest.py (found by pytest); everything a test imports by name lives here, so no
test file imports from another."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path | None:
    candidates = [os.environ.get("SERKIT_DATA"), REPO.parent / "shared" / "data", Path("/work/shared/data")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "ravdess" / "manifest.csv").is_file():
            return Path(candidate)
    return None


DATA_ROOT = _data_root()
needs_data = pytest.mark.skipif(DATA_ROOT is None, reason="real corpora not found (set SERKIT_DATA to the folder holding ravdess/ and emodb/)")

# A tiny transformers SSL config (hidden 32, 2 layers): the code paths of the real backbones, in ms. Its front end
# strides 320 samples like theirs (50 frames a second): a finer one makes every attention map of a 3-s clip 16x larger.
SSL_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                conv_dim=(32, 32, 32), conv_stride=(5, 8, 8), conv_kernel=(10, 8, 8), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True)
# A tiny Whisper config (d_model 32, 2 encoder layers), standing in for tiny.en.
WHISPER_TINY = dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
                    decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=1500,
                    vocab_size=100)


def ssl_config(backbone: str, **extra) -> dict:
    config = dict(SSL_TINY, **extra)
    if backbone == "wavlm":
        config.update(num_buckets=16, max_bucket_distance=64)
    return config


def batch(lengths, seed=0):
    """Seeded noise waveforms of these lengths, zero-padded, and their mask."""
    gen = torch.Generator().manual_seed(seed)
    wave = 0.1 * torch.randn(len(lengths), max(lengths), generator=gen)
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    return wave * mask, mask


def write_tone(path: Path, seconds: float = 1.0, sr: int = 16000, channels: int = 1, freq: float = 220.0,
               subtype: str = "PCM_16") -> Path:
    """A short harmonic tone with a little noise: decodable, not silent."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(2 * np.pi * 2 * freq * t) + 0.01 * rng.standard_normal(t.size)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def tiny_recipe(tiny_split: Path, output_dir: Path, **train) -> dict:
    """A recipe dict that trains CNN-6 on the tiny manifest in a few seconds. It stores no training importances
    (a third more time per model) unless a test asks with importances=True."""
    train = {"importances": False, **train}
    return {
        "name": "tiny",
        "seed": 0,
        "output_dir": str(output_dir),
        "data": {"split": str(tiny_split), "trim_silence_db": 40, "max_seconds": 1.0},
        "model": {"architecture": "cnn6", "options": {}},
        "train": {"batch_size": 8, "max_epochs": 2, "progress_bar": False, **train},
    }
