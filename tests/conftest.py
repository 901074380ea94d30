"""Shared fixtures: the real corpora in ../shared/data and small manifests cut from them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import DATA_ROOT, write_tone


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


@pytest.fixture
def tone():
    return write_tone
