import json

import pandas as pd
import pytest

from serkit.data.manifest import read_manifest
from serkit.data.splits import fold_count, holdout_split, load_split, loso_folds, save_split, speaker_folds
from serkit.errors import ManifestError, SplitError


def _manifest(tmp_path, speakers=("a", "b", "c", "d", "e", "f", "g", "h"), name="manifest.csv"):
    rows = []
    for i, s in enumerate(speakers):
        for k in range(3):
            rows.append({"path": f"{s}_{k}.wav", "speaker": s, "gender": "female" if i % 2 else "male",
                         "emotion": ["anger", "calm", "sadness"][k]})
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_missing_columns_duplicates_and_blanks_are_refused(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame({"path": ["x.wav"], "emotion": ["anger"]}).to_csv(path, index=False)
    with pytest.raises(ManifestError, match=r"m\.csv lacks column\(s\) \['speaker'\]"):
        read_manifest(path)
    pd.DataFrame({"path": ["x.wav", "x.wav"], "speaker": ["1", "1"], "emotion": ["a", "b"]}).to_csv(path, index=False)
    with pytest.raises(ManifestError, match=r"lists x\.wav more than once"):
        read_manifest(path)
    pd.DataFrame({"path": ["x.wav", "y.wav"], "speaker": ["1", ""], "emotion": ["a", "b"]}).to_csv(path, index=False)
    with pytest.raises(ManifestError, match=r"line 3: empty 'speaker'"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "absent.csv")


def test_speaker_ids_stay_strings(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame({"path": ["x.wav"], "speaker": ["01"], "emotion": ["anger"]}).to_csv(path, index=False)
    assert read_manifest(path).frame["speaker"].tolist() == ["01"]


def test_holdout_split_is_speaker_disjoint_balanced_and_seeded(tmp_path):
    m = read_manifest(_manifest(tmp_path))
    parts = holdout_split(m, val=2, test=2, seed=3)
    assert [len(parts[p]) for p in ("train", "val", "test")] == [4, 2, 2]
    assert len(set(parts["train"]) | set(parts["val"]) | set(parts["test"])) == 8
    genders = m.frame.groupby("speaker")["gender"].first()
    for p in ("train", "val", "test"):
        assert genders[parts[p]].value_counts().tolist() == [len(parts[p]) // 2] * 2  # one of each per pair
    assert holdout_split(m, 2, 2, seed=3) == parts
    assert any(holdout_split(m, 2, 2, seed=s) != parts for s in range(4, 10))
    assert [len(v) for v in holdout_split(m, 0.25, 0.25).values()] == [4, 2, 2]


def test_split_file_round_trip_and_leak_audit(tmp_path):
    mpath = _manifest(tmp_path)
    m = read_manifest(mpath)
    out = tmp_path / "split.json"
    save_split(out, m, 0, parts={"train": ["a", "b", "c", "d"], "val": ["e", "f"], "test": ["g", "h"]})
    split = load_split(out)
    assert split.test == ["g", "h"] and len(split.part("train")) == 12
    payload = json.loads(out.read_text())
    payload["parts"]["test"].append("a")
    leaky = tmp_path / "leaky.json"
    leaky.write_text(json.dumps(payload))
    with pytest.raises(SplitError, match=r"leaks speaker 'a': in both 'train' and 'test'"):
        load_split(leaky)
    with pytest.raises(SplitError, match="leaks speaker"):
        save_split(tmp_path / "x.json", m, 0, parts={"train": ["a"], "val": ["a"], "test": []})
    assert not (tmp_path / "x.json").exists()


def test_changed_manifest_and_unknown_speakers_are_refused(tmp_path):
    mpath = _manifest(tmp_path)
    out = tmp_path / "split.json"
    save_split(out, read_manifest(mpath), 0, parts={"train": ["a", "b"], "val": ["c"], "test": ["d"]})
    frame = pd.read_csv(mpath, dtype=str)
    frame.iloc[:-3].to_csv(mpath, index=False)  # drop speaker h
    with pytest.raises(SplitError, match="changed since split"):
        load_split(out)
    payload = json.loads(out.read_text())
    payload["parts"]["test"] = ["zz"]
    out.write_text(json.dumps(payload))
    with pytest.raises(SplitError, match=r"names speaker 'zz' in 'test', not in manifest"):
        load_split(out, manifest=mpath)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SplitError, match="not valid JSON"):
        load_split(tmp_path / "bad.json")


def test_leave_one_speaker_out(tmp_path):
    m = read_manifest(_manifest(tmp_path))
    folds = loso_folds(m, n_val=1, seed=0)
    assert sorted(f["test"][0] for f in folds) == list("abcdefgh")
    out = tmp_path / "loso.json"
    save_split(out, m, 0, folds=folds)
    split = load_split(out, fold=2)
    assert len(split.test) == 1 and split.test[0] not in split.train + split.val
    with pytest.raises(SplitError, match="choose one"):
        load_split(out)
    with pytest.raises(SplitError, match="out of range"):
        load_split(out, fold=8)


def test_speaker_folds_test_every_speaker_once_gender_balanced(tmp_path, capsys):
    from serkit.cli import run

    m = read_manifest(_manifest(tmp_path))  # 8 speakers, 4 female and 4 male
    folds = speaker_folds(m, 4, seed=1)
    assert sorted(s for f in folds for s in f["test"]) == list("abcdefgh")
    genders = m.frame.groupby("speaker")["gender"].first()
    for i, f in enumerate(folds):
        assert sorted(genders[f["test"]]) == ["female", "male"]  # one of each in every test group
        assert f["val"] == folds[(i + 1) % 4]["test"]  # validated on the next fold's test speakers
        assert sorted(f["train"] + f["val"] + f["test"]) == list("abcdefgh")
    with pytest.raises(SplitError, match="at least 3 folds"):
        speaker_folds(m, 2)
    with pytest.raises(SplitError, match="only 8 speakers"):
        speaker_folds(m, 9)
    out = tmp_path / "folds.json"
    assert run(["data", "split", str(m.file), "-o", str(out), "--folds", "4", "--seed", "1"]) == 0
    assert "wrote 4 speaker folds" in capsys.readouterr().out
    assert fold_count(out) == 4 and json.loads(out.read_text())["kind"] == "folds"
    assert load_split(out, fold=3).test == folds[3]["test"]
    with pytest.raises(SplitError, match="has 4 speaker folds; choose one"):
        load_split(out)
    assert run(["data", "split", str(m.file), "-o", str(tmp_path / "x.json"), "--folds", "4", "--loso"]) == 2
    assert "not both" in capsys.readouterr().err


def test_too_many_held_out_speakers(tmp_path):
    m = read_manifest(_manifest(tmp_path, speakers=("a", "b", "c")))
    with pytest.raises(SplitError, match="leave none to train on"):
        holdout_split(m, val=2, test=1)


def _split_file(tmp_path, **changes):
    m = read_manifest(_manifest(tmp_path))
    save_split(tmp_path / "s.json", m, 0, parts={"train": ["a", "b", "c", "d"], "val": ["e", "f"], "test": ["g", "h"]})
    payload = json.loads((tmp_path / "s.json").read_text())
    for key, value in changes.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    (tmp_path / "s.json").write_text(json.dumps(payload))
    return tmp_path / "s.json"


def test_a_split_file_without_its_manifest_entry_says_how_to_give_it(tmp_path):
    path = _split_file(tmp_path, manifest=None)
    with pytest.raises(SplitError, match=r"split file .*s\.json does not name its manifest .*give it with --manifest"):
        load_split(path)
    assert load_split(path, tmp_path / "manifest.csv").test == ["g", "h"]  # given by hand it loads


def test_a_manifest_that_moved_since_the_split_was_made_is_reported_as_moved(tmp_path):
    path = _split_file(tmp_path)
    (tmp_path / "manifest.csv").rename(tmp_path / "moved.csv")
    with pytest.raises(SplitError, match=r"the manifest recorded by split .*s\.json is not at .*manifest\.csv \(moved or deleted\?\); "
                                         r"give its new place with --manifest") as err:
        load_split(path)
    assert "serkit data import" not in str(err.value)


def test_a_part_given_as_a_string_is_refused_not_read_character_by_character(tmp_path):
    path = _split_file(tmp_path, parts={"train": ["a", "b", "c", "d"], "val": [], "test": "gh"})
    with pytest.raises(SplitError, match=r"split .*s\.json: part 'test' must be a list of speaker ids, e\.g\. \[\"04\"\], not \"gh\""):
        load_split(path)
    (tmp_path / "folded").mkdir()
    path = _split_file(tmp_path / "folded", kind="folds", folds={"train": ["a"]}, parts=None)
    with pytest.raises(SplitError, match=r"split file .*s\.json has no list of 'folds'"):
        load_split(path, fold=0)


def test_data_split_to_a_file_that_cannot_be_written_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    from serkit.cli import run

    def not_now(*args, **kwargs):
        raise AssertionError("the manifest was read before the output was checked")

    monkeypatch.setattr("serkit.data.manifest.read_manifest", not_now)
    (tmp_path / "file").write_text("a file")
    for out in (tmp_path / "file" / "s.json", "/proc/s.json"):
        assert run(["data", "split", str(_manifest(tmp_path)), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: cannot write split file {out}: ") and len(err.splitlines()) == 1
