"""Shared fixtures: the real corpora in ../shared/data and small manifests cut from them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path | None:
    candidates = [os.environ.get("SERKIT_DATA"), REPO.parent / "shared" / "data", Path("/work/shared/data")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "ravdess" / "manifest.csv").is_file():
            return Path(candidate)
    return None


DATA_ROOT = _data_root()
needs_data = pytest.mark.skipif(DATA_ROOT is None, reason="real corpora not found (set SERKIT_DATA to the folder holding ravdess/ and emodb/)")


@pytest.fixture(scope="session")
def data_root() -> Path:
    if DATA_ROOT is None:
        pytest.skip("real corpora not found (set SERKIT_DATA)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def ravdess_frame(data_root) -> pd.DataFrame:
    frame = pd.read_csv(data_root / "ravdess" / "manifest.csv", dtype=str, keep_default_na=False)
    frame["path"] = [str(data_root / "ravdess" / p) for p in frame["path"]]
    return frame


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory, ravdess_frame) -> Path:
    """72 real RAVDESS utterances: 6 actors (3 f, 3 m) x 4 emotions x 3 takes, absolute paths."""
    rows = []
    for speaker in ["01", "02", "03", "04", "05", "06"]:
        for emotion in ["anger", "happiness", "neutral", "sadness"]:
            sel = ravdess_frame[(ravdess_frame.speaker == speaker) & (ravdess_frame.emotion == emotion)]
            rows.append(sel.iloc[:3])
    frame = pd.concat(rows)[["path", "speaker", "gender", "emotion", "duration_s"]]
    out = tmp_path_factory.mktemp("tiny") / "manifest.csv"
    frame.to_csv(out, index=False)
    return out


@pytest.fixture(scope="session")
def tiny_split(tiny_manifest) -> Path:
    from serkit.data.manifest import read_manifest
    from serkit.data.splits import save_split

    parts = {"train": ["01", "02", "03", "04"], "val": ["05"], "test": ["06"]}
    out = tiny_manifest.parent / "split.json"
    save_split(out, read_manifest(tiny_manifest), seed=0, parts=parts)
    return out


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


@pytest.fixture
def tone():
    return write_tone


def tiny_recipe(tiny_split: Path, output_dir: Path, **train) -> dict:
    """A recipe dict that trains CNN-6 on the tiny manifest in a few seconds."""
    return {
        "name": "tiny",
        "seed": 0,
        "output_dir": str(output_dir),
        "data": {"split": str(tiny_split), "trim_silence_db": 40, "max_seconds": 1.0},
        "model": {"architecture": "cnn6", "options": {}},
        "train": {"batch_size": 8, "max_epochs": 2, "progress_bar": False, **train},
    }
