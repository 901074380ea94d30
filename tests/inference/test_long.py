"""Long recordings: `serkit predict` on a file longer than an utterance, window by window, streamed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import soxr

from serkit.cli import run
from serkit.config import load_recipe
from serkit.data.audio import load_audio
from serkit.inference.predict import predict_proba
from serkit.models import load_model
from serkit.training import train
from tests.helpers import needs_data, tiny_recipe


@pytest.fixture(scope="module")
def call(tiny_manifest, tmp_path_factory):
    """About 40 s of real speech (12 utterances, 0.6 s of silence between them), written as a 44.1 kHz stereo WAV
    as a recorder would: serkit must resample and mix it as it streams."""
    paths = pd.read_csv(tiny_manifest)["path"].iloc[::6].tolist()[:12]
    gap = np.zeros(int(0.6 * 16000), dtype=np.float32)
    wave = np.concatenate([np.concatenate([load_audio(p), gap]) for p in paths])
    wave = soxr.resample(wave, 16000, 44100).astype(np.float32)
    path = tmp_path_factory.mktemp("call") / "call.wav"
    sf.write(path, np.stack([wave, 0.5 * wave], 1), 44100)
    return path


@needs_data
def test_a_long_recording_is_predicted_window_by_window_without_reading_it_whole(call, tiny_split, tiny_manifest,
                                                                                 tmp_path, capsys, monkeypatch):
    model_dir = train(load_recipe(raw=tiny_recipe(tiny_split, tmp_path / "run", max_epochs=1)), log=lambda *a: None).model_dir
    short = pd.read_csv(tiny_manifest)["path"].iloc[1]
    reads = []
    real_read = sf.read
    monkeypatch.setattr(sf, "read", lambda file, *a, **k: reads.append(str(file)) or real_read(file, *a, **k))
    assert run(["predict", str(model_dir), str(call), short, "--window", "3", "--format", "json", "-o", str(tmp_path / "out")]) == 0
    monkeypatch.undo()
    assert str(call) not in reads  # streamed in blocks, never read whole
    results = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in results] == [str(call), short] and "segments" not in results[1]
    long = results[0]
    duration = sf.info(str(call)).duration
    rows = long["segments"]
    assert long["duration"] == pytest.approx(duration, abs=0.01) and long["hop"] == 1.5
    assert rows[0]["start"] == 0 and rows[1]["start"] == pytest.approx(1.5) and rows[-1]["end"] == pytest.approx(duration, abs=0.05)
    assert all(r["end"] - r["start"] <= 3.0 + 1e-6 for r in rows)
    # a window's probabilities are the model's on those seconds of the file read whole
    saved, whole = load_model(model_dir), load_audio(call)
    for row in (rows[0], rows[len(rows) // 2]):
        piece = whole[int(row["start"] * 16000):int(row["end"] * 16000)]
        expected = predict_proba(saved.model, [saved.preprocessing(piece)])[0]
        assert [row[f"p_{lab}"] for lab in saved.labels] == pytest.approx(list(expected), abs=2e-3)
    # the aggregate: duration-weighted mean; the label shares of time add up to 1
    assert long["label"] == max(long["probabilities"], key=long["probabilities"].get)
    assert sum(long["time_share"].values()) == pytest.approx(1.0)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["call.segments.csv", "call.timeline.png", "summary.json"]
    assert len(pd.read_csv(tmp_path / "out" / "call.segments.csv")) == len(rows)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary[0]["file"] == "call.wav" and "segments" not in summary[0]
    # speech regions instead of windows: nothing predicted on the silences between utterances
    assert run(["predict", str(model_dir), str(call), "--segments", "vad", "--window", "3", "--format", "json"]) == 0
    vad = json.loads(capsys.readouterr().out)[0]
    assert 6 <= len(vad["segments"]) and sum(r["end"] - r["start"] for r in vad["segments"]) < duration - 3
    # the table: one row per file, the segment count beside the long one
    assert run(["predict", str(model_dir), str(call)]) == 0
    shown = capsys.readouterr().out
    assert "call.wav (" in shown and "segments" in shown and "give -o DIR" in shown
    for argv, message in ((["--window", "0"], "give a window > 0"), (["--segments", "words"], "choose fixed or vad"),
                          (["-o", str(tmp_path / "out")], "exists")):
        assert run(["predict", str(model_dir), str(call), *argv]) == 2
        assert message in capsys.readouterr().err
