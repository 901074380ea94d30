import pandas as pd
import pytest
import soundfile as sf

from serkit.data.importers import import_corpus, parse_emodb, parse_emovo, parse_ravdess
from serkit.data.manifest import read_manifest
from serkit.errors import AudioError, SerkitError


def test_file_name_schemes():
    r = parse_ravdess("03-01-05-02-01-02-12")
    assert r["emotion"] == "anger" and r["speaker"] == "12" and r["gender"] == "female"
    assert r["intensity"] == "strong" and r["text"] == "Kids are talking by the door"
    assert parse_ravdess("03-02-05-02-01-02-12") is None  # song, not speech
    assert parse_ravdess("01-01-05-02-01-02-12") is None  # audio-video
    e = parse_emodb("03a01Fa")
    assert (e["speaker"], e["gender"], e["emotion"], e["sentence_id"]) == ("03", "male", "happiness", "a01")
    assert parse_emodb("16b10Wb")["emotion"] == "anger" and parse_emodb("16b10Lb")["emotion"] == "boredom"
    assert parse_emodb("99a01Fa") is None
    v = parse_emovo("pau-m2-l3")
    assert (v["speaker"], v["gender"], v["emotion"]) == ("m2", "male", "fear")


def test_ravdess_official_layout_converts_to_16k_mono_flac(tmp_path, tone):
    src = tmp_path / "Audio_Speech_Actors_01-24"
    tone(src / "Actor_01" / "03-01-05-01-01-01-01.wav", sr=48000, channels=2)
    tone(src / "Actor_01" / "03-01-01-01-01-01-01.wav", sr=48000)
    tone(src / "Actor_02" / "03-01-04-02-02-01-02.wav", sr=48000)
    tone(src / "Actor_02" / "03-02-04-02-02-01-02.wav", sr=48000)  # song: ignored
    report = import_corpus("ravdess", src, tmp_path / "out")
    assert (report.n_files, report.n_copied, report.ignored) == (3, 3, 1)
    m = read_manifest(tmp_path / "out" / "manifest.csv")
    assert list(m.frame.columns[:5]) == ["path", "speaker", "gender", "emotion", "duration_s"]
    assert sorted(m.frame["emotion"]) == ["anger", "neutral", "sadness"]
    for path in m.audio_paths():
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    assert m.frame["duration_s"].tolist() == [1.0, 1.0, 1.0]


def test_emodb_and_emovo_layouts(tmp_path, tone):
    tone(tmp_path / "emodb" / "wav" / "03a01Fa.wav")
    tone(tmp_path / "emodb" / "wav" / "08b02Tc.wav")
    m = read_manifest(import_corpus("emodb", tmp_path / "emodb", tmp_path / "e").out_dir / "manifest.csv")
    assert dict(zip(m.frame["speaker"], m.frame["emotion"])) == {"03": "happiness", "08": "sadness"}
    assert m.frame.loc[m.frame.speaker == "03", "text"].item() == "Der Lappen liegt auf dem Eisschrank."
    tone(tmp_path / "emovo" / "f1" / "dis-f1-b1.wav", sr=48000)
    tone(tmp_path / "emovo" / "m3" / "gio-m3-n5.wav", sr=48000)
    m = read_manifest(import_corpus("emovo", tmp_path / "emovo", tmp_path / "v").out_dir / "manifest.csv")
    assert dict(zip(m.frame["speaker"], m.frame["emotion"])) == {"f1": "disgust", "m3": "happiness"}


def test_folder_with_csv(tmp_path, tone):
    tone(tmp_path / "clips" / "a.wav", sr=22050)
    tone(tmp_path / "clips" / "sub" / "b.wav")
    pd.DataFrame({"file": ["a.wav", "sub/b.wav"], "spk": ["s1", "s2"], "label": ["anger", "calm"],
                  "note": ["x", "y"]}).to_csv(tmp_path / "labels.csv", index=False)
    report = import_corpus("folder", tmp_path / "clips", tmp_path / "out", csv=tmp_path / "labels.csv",
                           path_column="file", speaker_column="spk", emotion_column="label")
    m = read_manifest(report.out_dir / "manifest.csv")
    assert m.frame[["speaker", "emotion", "note"]].values.tolist() == [["s1", "anger", "x"], ["s2", "calm", "y"]]
    with pytest.raises(SerkitError, match=r"lacks column\(s\) \['path', 'speaker', 'emotion'\].*--path-column"):
        import_corpus("folder", tmp_path / "clips", tmp_path / "out2", csv=tmp_path / "labels.csv")
    assert not (tmp_path / "out2").exists()


def test_a_corrupt_file_stops_the_import_and_nothing_is_written(tmp_path, tone):
    src = tmp_path / "emodb" / "wav"
    tone(src / "03a01Fa.wav")
    (src / "03a01Nc.wav").write_bytes(b"RIFF....WAVEgarbage" * 20)
    with pytest.raises(AudioError, match=r"03a01Nc\.wav.*--skip-bad"):
        import_corpus("emodb", tmp_path / "emodb", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no partial folder left
    report = import_corpus("emodb", tmp_path / "emodb", tmp_path / "out", skip_bad=True)
    assert report.n_files == 1 and "03a01Nc.wav" in report.skipped[0]


def test_refuses_to_overwrite_and_explains_missing_corpus(tmp_path, tone):
    tone(tmp_path / "emodb" / "wav" / "03a01Fa.wav")
    (tmp_path / "out").mkdir()
    with pytest.raises(SerkitError, match="already exists; serkit never overwrites"):
        import_corpus("emodb", tmp_path / "emodb", tmp_path / "out")
    with pytest.raises(SerkitError, match=r"no ravdess files found .* expected the official layout Actor_XX"):
        import_corpus("ravdess", tmp_path / "emodb", tmp_path / "out3")


def test_duplicate_copies_of_a_file_are_refused(tmp_path, tone):
    tone(tmp_path / "r" / "a" / "Actor_01" / "03-01-05-01-01-01-01.wav")
    tone(tmp_path / "r" / "b" / "Actor_01" / "03-01-05-01-01-01-01.wav")
    with pytest.raises(SerkitError, match="appears twice"):
        import_corpus("ravdess", tmp_path / "r", tmp_path / "out")


def test_shared_ravdess_imports_with_the_same_labels(data_root, tmp_path):
    report = import_corpus("ravdess", data_root / "ravdess", tmp_path / "r", link=True)
    assert (report.n_files, report.n_linked) == (1440, 1440)
    ours = read_manifest(tmp_path / "r" / "manifest.csv").frame
    theirs = pd.read_csv(data_root / "ravdess" / "manifest.csv", dtype=str)
    ours["name"] = ours["path"].str.rsplit("/", n=1).str[-1]
    theirs["name"] = theirs["path"].str.rsplit("/", n=1).str[-1]
    merged = ours.merge(theirs, on="name", suffixes=("", "_ref"))
    assert len(merged) == 1440
    for column in ("speaker", "gender", "emotion", "intensity", "text"):
        assert (merged[column] == merged[f"{column}_ref"]).all(), column


def test_folder_labels_are_folded_into_the_shared_vocabulary_and_unknown_ones_are_warned_about(tmp_path, tone, capsys):
    from serkit.cli import run

    labels = ["angry", "Anger", " ANGER ", "Happy", "sad", "Fearful", "Frustrated"]
    for i in range(len(labels)):
        tone(tmp_path / "clips" / f"{i}.wav")
    pd.DataFrame({"path": [f"{i}.wav" for i in range(len(labels))], "speaker": ["s1"] * len(labels),
                  "emotion": labels}).to_csv(tmp_path / "labels.csv", index=False)
    report = import_corpus("folder", tmp_path / "clips", tmp_path / "out", csv=tmp_path / "labels.csv")
    m = read_manifest(report.out_dir / "manifest.csv")
    assert sorted(m.frame["emotion"]) == ["anger", "anger", "anger", "fear", "frustrated", "happiness", "sadness"]
    assert report.unknown_labels == ["frustrated"] and report.relabelled["angry"] == "anger"
    capsys.readouterr()
    assert run(["data", "import", "folder", str(tmp_path / "clips"), "--csv", str(tmp_path / "labels.csv"),
                "-o", str(tmp_path / "cli")]) == 0
    captured = capsys.readouterr()
    assert "'ANGER' -> anger" in captured.out
    warning = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "label(s) frustrated are not in serkit's vocabulary (anger, boredom, calm" in warning[0]


def test_a_label_csv_with_a_header_but_no_rows_is_called_empty(tmp_path, tone):
    tone(tmp_path / "clips" / "a.wav")
    (tmp_path / "labels.csv").write_text("path,speaker,emotion\n")
    with pytest.raises(SerkitError, match=r"label CSV .*labels\.csv is empty: it has a header but no rows"):
        import_corpus("folder", tmp_path / "clips", tmp_path / "out", csv=tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("")
    with pytest.raises(SerkitError, match=r"label CSV .*labels\.csv is empty \(not even a header\)"):
        import_corpus("folder", tmp_path / "clips", tmp_path / "out", csv=tmp_path / "labels.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips", "labels.csv"]


def test_an_import_into_a_folder_that_cannot_be_written_fails_before_reading_the_corpus(tmp_path, tone, capsys, monkeypatch):
    from serkit.cli import run

    def not_now(*args, **kwargs):
        raise AssertionError("the corpus was read before the output was checked")

    monkeypatch.setattr("serkit.data.importers._rows_from_names", not_now)
    tone(tmp_path / "emodb" / "wav" / "03a01Fa.wav")
    (tmp_path / "file").write_text("a file")
    for out in (tmp_path / "file" / "out", "/proc/serkit-import"):
        assert run(["data", "import", "emodb", str(tmp_path / "emodb"), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: cannot write output folder {out}: ") and len(err.splitlines()) == 1
