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


# ---- serkit evaluate and serkit embed: a manifest that holds a long recording ----

LABELS = ["anger", "happiness", "neutral", "sadness"]


@pytest.fixture(scope="module")
def whisper_model(tmp_path_factory):
    """A tiny untrained Whisper classifier (seeded): a model with a 30-s input, which refuses a long file whole."""
    import torch

    from serkit.data.dataset import Preprocessing
    from serkit.models import build_model, save_model
    from tests.helpers import WHISPER_TINY

    torch.manual_seed(0)
    model = build_model("whisper", {"hf_config": WHISPER_TINY}, len(LABELS)).eval()
    return save_model(tmp_path_factory.mktemp("whisper") / "model", model, LABELS, Preprocessing())


def _manifests(tiny_manifest, long_file, folder, at: int = 5, **columns):
    """The test speaker's 12 rows (short.csv), and the same with `long_file` inserted as row `at`, its duration_s
    left empty so that serkit reads it from the file's header (long.csv)."""
    short = pd.read_csv(tiny_manifest, dtype=str)
    short = short[short.speaker == "06"].reset_index(drop=True).assign(**columns)
    row = pd.DataFrame([{"path": str(long_file), "speaker": "06", "gender": "m", "emotion": "anger", "duration_s": "",
                         **columns}])
    long = pd.concat([short.iloc[:at], row, short.iloc[at:]], ignore_index=True)
    short.to_csv(folder / "short.csv", index=False)
    long.to_csv(folder / "long.csv", index=False)
    return folder / "short.csv", folder / "long.csv"


@needs_data
def test_evaluate_scores_a_long_row_by_the_aggregate_of_its_windows_and_leaves_the_short_rows_unchanged(
        call, tiny_manifest, whisper_model, tmp_path, capsys, monkeypatch):
    import serkit
    from serkit.inference.long import predict_long

    short, long = _manifests(tiny_manifest, call, tmp_path)
    assert run(["evaluate", str(whisper_model), "--manifest", str(short), "-o", str(tmp_path / "short")]) == 0
    reads = []
    real_read = sf.read
    monkeypatch.setattr(sf, "read", lambda file, *a, **k: reads.append(str(file)) or real_read(file, *a, **k))
    assert run(["evaluate", str(whisper_model), "--manifest", str(long), "-o", str(tmp_path / "long")]) == 0  # not refused
    monkeypatch.undo()
    assert str(call) not in reads and len(reads) == 12  # the long file streamed, never read whole
    shown = capsys.readouterr().out
    assert "1 row was a long recording (over 30 s), scored by its duration-weighted mean over fixed windows of 4 s " \
           "every 2 s" in " ".join(shown.split())
    # the short rows: the very same lines of predictions.csv, the long one's `segments` cell left empty
    before = (tmp_path / "short" / "predictions.csv").read_text().splitlines()
    after = (tmp_path / "long" / "predictions.csv").read_text().splitlines()
    assert "segments" not in before[0] and after[0] == before[0] + ",segments"
    assert after[1:6] + after[7:] == [line + "," for line in before[1:]]
    # the long row: predict_long's aggregate on that file
    expected = predict_long(load_model(whisper_model), call, 4.0, 2.0)
    aggregate = expected.aggregate
    row = pd.read_csv(tmp_path / "long" / "predictions.csv").iloc[5]
    assert row["path"] == str(call) and row["predicted"] == aggregate["label"]
    assert row["segments"] == len(expected.starts) == aggregate["segments"] > 15
    assert row["confidence"] == pytest.approx(aggregate["probabilities"][aggregate["label"]], abs=1e-6)
    assert [row[f"p_{lab}"] for lab in LABELS] == pytest.approx([aggregate["probabilities"][lab] for lab in LABELS], abs=1e-6)
    metrics = json.loads((tmp_path / "long" / "metrics.json").read_text())["all"]
    assert metrics["n"] == 13 and metrics["long_recordings"] == {
        "rows": 1, "long_after": 30.0, "segments": "fixed", "window": 4.0, "hop": 2.0,
        "scored_by": "duration-weighted mean over the segments"}
    assert "1 row was a long recording" in (tmp_path / "long" / "report.md").read_text()
    # the library: the same figures; below --long-after the file is one utterance, which Whisper refuses
    api = serkit.evaluate(whisper_model, manifest=long)
    assert list(api.predictions["predicted"]) == list(pd.read_csv(tmp_path / "long" / "predictions.csv")["predicted"])
    assert run(["evaluate", str(whisper_model), "--manifest", str(long), "--long-after", "60"]) == 2
    assert f"audio file {call} is" in capsys.readouterr().err


@needs_data
def test_embed_gives_a_long_row_the_duration_weighted_mean_of_its_windows_embeddings(call, tiny_manifest, whisper_model,
                                                                                   tmp_path, capsys):
    from serkit.inference.embeddings import layer_values, load_embeddings
    from serkit.inference.long import segment_batches

    short, long = _manifests(tiny_manifest, call, tmp_path)
    assert run(["embed", str(whisper_model), str(short), "-o", str(tmp_path / "short.npy")]) == 0
    assert run(["embed", str(whisper_model), str(long), "-o", str(tmp_path / "long.npy"), "--window", "5",
                "--hop", "2.5"]) == 0
    assert "1 row was a long recording" in capsys.readouterr().out
    before, after = load_embeddings(tmp_path / "short.npy"), load_embeddings(tmp_path / "long.npy")
    assert "long_recordings" not in before.meta and after.meta["long_recordings"]["window"] == 5.0
    assert np.array_equal(np.delete(after.array, 5, axis=0), before.array)  # the short rows untouched
    saved = load_model(whisper_model)
    sums, weights = 0.0, 0.0
    for starts, ends, values in segment_batches(saved, call, 5.0, 2.5, compute=lambda w: layer_values(saved, w, "fc1")):
        w = np.array(ends) - np.array(starts)
        sums, weights = sums + (values * w[:, None]).sum(0), weights + w.sum()
    assert after.array[5] == pytest.approx(sums / weights, abs=1e-5)


@needs_data
def test_a_long_row_where_vad_finds_no_speech_is_an_error_naming_the_file_and_nothing_is_written(
        tiny_manifest, whisper_model, tmp_path, capsys):
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(35 * 16000, dtype=np.float32), 16000)
    _, long = _manifests(tiny_manifest, silence, tmp_path, at=0)
    for argv in (["evaluate", str(whisper_model), "--manifest", str(long), "-o", str(tmp_path / "out")],
                 ["embed", str(whisper_model), str(long), "-o", str(tmp_path / "out.npy")]):
        assert run([*argv, "--segments", "vad"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after evaluate's note that it cannot check speakers
        assert err == f"error: {silence}: no speech found to predict (35 s); try --segments fixed or a shorter --window"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.csv", "short.csv", "silence.wav"]  # no half-written output



def test_a_long_row_that_cannot_be_decoded_is_one_line_naming_the_file_and_nothing_is_written(
        tiny_manifest, whisper_model, tmp_path, capsys):
    broken = tmp_path / "call.flac"
    broken.write_bytes(b"not audio" * 500)
    _, long = _manifests(tiny_manifest, broken, tmp_path, at=0)
    frame = pd.read_csv(long, dtype=str)
    frame.loc[0, "duration_s"] = "45"  # the manifest says long: the header is read only when predicting it
    frame.to_csv(long, index=False)
    assert run(["evaluate", str(whisper_model), "--manifest", str(long), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: cannot decode audio file {broken} (") and "remove it from the manifest" in err
    assert not (tmp_path / "out").exists()

@needs_data
def test_a_dimensional_model_scores_a_long_row_by_the_weighted_mean_of_its_windows_values(call, tiny_manifest, tmp_path):
    import torch

    from serkit.data.dataset import Preprocessing
    from serkit.evaluation.regression import predict_dimensions
    from serkit.inference.long import segment_batches
    from serkit.models import build_model, save_model

    torch.manual_seed(0)
    task = {"type": "regression", "dimensions": ["arousal", "valence"], "scale": [1.0, 5.0]}
    model_dir = save_model(tmp_path / "model", build_model("cnn6", {}, 2).eval(), ["arousal", "valence"], Preprocessing(),
                           task=task)
    _, long = _manifests(tiny_manifest, call, tmp_path, arousal="3", valence="2")
    assert run(["evaluate", str(model_dir), "--manifest", str(long), "-o", str(tmp_path / "out")]) == 0
    row = pd.read_csv(tmp_path / "out" / "predictions.csv").iloc[5]
    saved = load_model(model_dir)
    sums, weights = 0.0, 0.0
    for starts, ends, values in segment_batches(saved, call, None, None, compute=lambda w: predict_dimensions(saved, w)):
        w = np.array(ends) - np.array(starts)
        sums, weights = sums + (values * w[:, None]).sum(0), weights + w.sum()
    assert row["segments"] > 15 and [row["predicted_arousal"], row["predicted_valence"]] == \
        pytest.approx(list(1 + 4 * sums / weights), abs=1e-5)
    assert "1 row was a long recording" in (tmp_path / "out" / "report.md").read_text()
