"""Handcrafted features: openSMILE functionals and bags of audio words, as embedding files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serkit.cli import run

opensmile = pytest.importorskip("opensmile")


def test_opensmile_functionals_feed_the_probe(tiny_manifest, tiny_split, tmp_path, capsys):
    out = tmp_path / "egemaps.npy"
    assert run(["features", "opensmile", str(tiny_manifest), "--set", "eGeMAPSv02", "-o", str(out)]) == 0
    assert "research and education only" in capsys.readouterr().out.replace("\n", " ")
    array = np.load(out)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert array.shape == (72, 88) and len(meta["names"]) == 88 and np.isfinite(array).all()
    # the same numbers as openSMILE run directly on the first file
    from serkit.data.dataset import Preprocessing, load_waves
    from serkit.data.manifest import read_manifest

    wave = load_waves(read_manifest(tiny_manifest).audio_paths()[:1], Preprocessing())[0]
    direct = opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.Functionals).process_signal(wave, 16000)
    assert np.allclose(array[0], direct.values[0], rtol=1e-5, atol=1e-6)
    assert run(["probe", str(out), "--split", str(tiny_split), "-o", str(tmp_path / "probe")]) == 0
    assert (tmp_path / "probe" / "probe.json").is_file()
    assert run(["features", "opensmile", str(tiny_manifest), "--set", "NoSuchSet", "-o", str(tmp_path / "x.npy")]) == 2
    assert "ComParE_2016" in capsys.readouterr().err


def test_bag_of_audio_words_learns_its_codebook_on_training_speakers_only(tiny_manifest, tiny_split, tmp_path):
    out = tmp_path / "boaw.npy"
    assert run(["features", "boaw", str(tiny_split), "--set", "eGeMAPSv02", "--words", "20", "-o", str(out)]) == 0
    array = np.load(out)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert array.shape == (72, 40)
    assert np.allclose(array[:, :20].sum(1), 1) and np.allclose(array[:, 20:].sum(1), 1)  # a histogram per stream
    assert meta["codebook_speakers"] == ["01", "02", "03", "04"]
    # the codebook saw exactly the training speakers' frames
    from serkit.data.dataset import Preprocessing, load_waves
    from serkit.data.manifest import read_manifest

    rows = read_manifest(tiny_manifest)
    train = rows.subset(["01", "02", "03", "04"])
    smile = opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.LowLevelDescriptors)
    frames = sum(len(smile.process_signal(w, 16000)) for w in load_waves(train.audio_paths(), Preprocessing()))
    assert meta["streams"][0]["codebook_frames"] == frames
