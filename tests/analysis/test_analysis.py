"""Representation analysis (paper 002): decision mismatch, cosine distances, attention distances."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from serkit.analysis.attention import attention_distance, attention_maps, bhattacharyya
from serkit.analysis.compare import compare_models, cosine_distance, threshold_table
from serkit.cli import run
from serkit.data.dataset import Preprocessing, pad_batch
from serkit.data.manifest import Manifest, read_manifest
from serkit.errors import SerkitError
from serkit.models import build_model, load_model, save_model
from tests.helpers import WHISPER_TINY as TINY
from tests.helpers import ssl_config

LABELS = ["anger", "happiness", "neutral", "sadness"]


def _save(model, path, labels=LABELS):
    torch.manual_seed(0)
    return save_model(path, model.eval(), labels, Preprocessing(trim_silence_db=40))


@pytest.fixture(scope="module")
def small(tiny_manifest) -> Manifest:
    m = read_manifest(tiny_manifest)
    return Manifest(m.frame.iloc[::6].reset_index(drop=True), m.file, m.sha256)  # 12 utterances, 6 speakers


@pytest.fixture(scope="module")
def cnn_pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("pair")
    torch.manual_seed(0)
    a = build_model("cnn6", {}, 4)
    b = build_model("cnn6", {}, 4)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():  # B: A with its head moved, its body untouched
        b.fc2.weight.add_(torch.randn_like(b.fc2.weight))
    return _save(a, base / "a"), _save(b, base / "b")


def test_bhattacharyya_on_hand_computed_distributions():
    p = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [1.0, 0.0, 0.0]])
    q = torch.tensor([[0.2, 0.3, 0.5], [0.5, 0.5, 0.0], [0.75, 0.25, 0.0], [0.0, 1.0, 0.0]])
    d = bhattacharyya(p, q).tolist()
    assert d[0] == pytest.approx(0.0, abs=1e-7)
    assert d[1] == pytest.approx(-math.log(math.sqrt(0.5)))  # 0.3466
    assert d[2] == pytest.approx(-math.log(2 * math.sqrt(0.25 * 0.75)))  # 0.1438
    assert d[3] == pytest.approx(-math.log(1e-12))  # disjoint: floored, not infinite
    assert bhattacharyya(q, p).tolist() == pytest.approx(d)  # symmetric


def test_cosine_distance_and_threshold_table_by_hand():
    a = np.array([[1.0, 0], [1, 0], [1, 0], [0, 0]])
    b = np.array([[2.0, 0], [0, 1], [-1, 0], [1, 0]])
    assert cosine_distance(a, b).tolist() == pytest.approx([0.0, 1.0, 2.0, 1.0])
    match = np.array([True, True, False, False])
    rows = threshold_table(np.array([0.0, 1.0, 2.0, 1.0]), match, [0.5, 1.0])
    assert rows == [{"threshold": 0.5, "data_fraction": 0.25, "decision_match": 1.0},
                    {"threshold": 1.0, "data_fraction": 0.75, "decision_match": pytest.approx(2 / 3)}]


def test_compare_a_model_with_itself_and_with_its_head_moved(cnn_pair, small):
    a_dir, b_dir = cnn_pair
    a, b = load_model(a_dir), load_model(b_dir)
    same = compare_models(a, a, small)
    assert same["decision_mismatch"] == 0.0 and max(same["distances"]) < 1e-6
    assert same["uar"]["a"] == same["uar"]["b"]
    moved = compare_models(a, b, small)
    # the head moved, the body did not: identical fc1 embeddings, yet other decisions
    assert max(moved["distances"]) < 1e-6 and moved["decision_mismatch"] > 0
    body = compare_models(a, b, small, layer="fc2")
    assert body["distance"]["mean"] > 0.01
    assert body["table"][0]["data_fraction"] >= 0.7 and body["threshold_rule"].startswith("smallest distance covering 70%")
    given = compare_models(a, b, small, layer="fc2", thresholds=[0.0, 2.0])
    assert given["table"][1]["data_fraction"] == 1.0
    assert given["table"][1]["decision_match"] == pytest.approx(1 - given["decision_mismatch"])


def test_compare_refusals_and_label_mismatch(cnn_pair, small, tmp_path):
    a = load_model(cnn_pair[0])
    other = load_model(_save(build_model("cnn6", {}, 4), tmp_path / "other", ["w", "x", "y", "z"]))
    result = compare_models(a, other, small)
    assert result["decision_mismatch"] is None and "different label lists" in result["note"]
    wide = load_model(_save(build_model("cnn6", {"fc_dim": 128}, 4), tmp_path / "wide"))
    with pytest.raises(SerkitError, match="layer 'fc1' has 256 dimensions .* but 128"):
        compare_models(a, wide, small)
    with pytest.raises(SerkitError, match="lies in \\[0, 2\\]"):
        compare_models(a, a, small, thresholds=[3.0])
    with pytest.raises(SerkitError, match="layer 'hidden:3' does not exist"):
        compare_models(a, a, small, layer="hidden:3")


def test_whisper_attention_maps_are_row_distributions_over_real_frames():
    model = build_model("whisper", {"hf_config": TINY}, 4).eval()
    saved = type("Saved", (), {"model": model, "config": {"architecture": "whisper"}, "path": None})()
    x, mask = pad_batch([np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1,
                         np.random.default_rng(1).standard_normal(8000).astype(np.float32) * 0.1])
    maps, frames = attention_maps(saved, x, mask)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 50, 50)
    assert frames.sum(1).tolist() == [50, 25]
    rows = maps[1][1, :, :25, :]  # the short utterance's real query frames
    assert torch.allclose(rows.sum(-1), torch.ones_like(rows.sum(-1)), atol=1e-5)
    assert rows[..., 25:].abs().max() < 1e-6  # padding is never attended to
    assert model.encoder.config._attn_implementation == "sdpa"  # the fast kernel is back after the capture


def test_attention_distance_is_zero_for_itself_and_points_at_the_changed_layer_and_head(small, tmp_path):
    torch.manual_seed(0)
    model = build_model("whisper", {"hf_config": TINY}, 4)
    a_dir = _save(model, tmp_path / "a")
    with torch.no_grad():  # B: A with the queries of layer 2, head 1 (dims 16..31) sharpened
        attention = model.encoder.layers[1].self_attn
        attention.q_proj.weight[16:] *= 40
        attention.k_proj.weight[16:] *= 40
    b_dir = _save(model, tmp_path / "b")
    a, b = load_model(a_dir), load_model(b_dir)
    itself = attention_distance(a, a, small, max_utterances=4)
    assert np.abs(np.array(itself["distance"])).max() < 1e-5 and itself["utterances"] == 4
    other = np.array(attention_distance(a, b, small, max_utterances=4)["distance"])
    assert other.shape == (2, 2)
    assert other[1, 1] > 0.1 and other[1, 1] > 100 * max(other[0, 0], other[0, 1], other[1, 0])


def test_attention_refuses_models_without_attention(cnn_pair, small, tmp_path):
    cnn = load_model(cnn_pair[0])
    with pytest.raises(SerkitError, match="'cnn6' model, which has no self-attention"):
        attention_distance(cnn, cnn, small)
    w = load_model(_save(build_model("ssl", {"backbone": "wavlm", "hf_config": ssl_config("wavlm")}, 4), tmp_path / "wavlm"))
    with pytest.raises(SerkitError, match="WavLM's attention does not expose per-head maps"):
        attention_distance(w, w, small)
    deeper = load_model(_save(build_model("whisper", {"hf_config": {**TINY, "encoder_layers": 3}}, 4), tmp_path / "deep"))
    shallow = load_model(_save(build_model("whisper", {"hf_config": TINY}, 4), tmp_path / "shallow"))
    with pytest.raises(SerkitError, match="3 attention layers .* 2"):
        attention_distance(deeper, shallow, small)


def test_ssl_attention_distance_runs_on_wav2vec2(small, tmp_path):
    config = ssl_config("wav2vec2")
    torch.manual_seed(0)
    a = load_model(_save(build_model("ssl", {"backbone": "wav2vec2", "hf_config": config}, 4), tmp_path / "a"))
    torch.manual_seed(1)
    b = load_model(_save(build_model("ssl", {"backbone": "wav2vec2", "hf_config": config}, 4), tmp_path / "b"))
    result = attention_distance(a, b, small, max_utterances=2)
    assert np.array(result["distance"]).shape == (2, 2) and np.array(result["distance"]).min() > 0


def test_compare_and_attention_commands(cnn_pair, tiny_manifest, tiny_split, tmp_path, capsys):
    a_dir, b_dir = cnn_pair
    out = tmp_path / "cmp"
    assert run(["compare", str(a_dir), str(b_dir), str(tiny_manifest), "--split", str(tiny_split), "--part", "test",
                "--layer", "fc2", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "compare.md", "cosine_distance.png", "distances.csv"]
    result = json.loads((out / "compare.json").read_text())
    assert result["n"] == 12 and "decision mismatch" in capsys.readouterr().out
    assert (out / "cosine_distance.png").stat().st_size > 1000
    assert run(["attention", str(a_dir), str(b_dir), str(tiny_manifest), "-o", str(tmp_path / "att")]) == 2
    assert "no self-attention" in capsys.readouterr().err
    assert not (tmp_path / "att").exists()
    torch.manual_seed(0)
    w = _save(build_model("whisper", {"hf_config": TINY}, 4), tmp_path / "w")
    assert run(["attention", str(w), str(w), str(tiny_manifest), "--max-utterances", "3", "-o", str(tmp_path / "att")]) == 0
    assert json.loads((tmp_path / "att" / "attention.json").read_text())["utterances"] == 3
    assert (tmp_path / "att" / "attention.png").stat().st_size > 1000


def test_probe_matches_scikit_learn_run_directly(cnn_pair, tiny_manifest, tiny_split, tmp_path, capsys):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from serkit.data.dataset import load_waves
    from serkit.data.splits import load_split
    from serkit.inference.predict import model_outputs

    a_dir = cnn_pair[0]
    assert run(["probe", str(a_dir), "--split", str(tiny_split), "--layer", "fc1", "--layer", "pooled", "-o", str(tmp_path / "p")]) == 0
    rows = {r["layer"]: r for r in json.loads((tmp_path / "p" / "probe.json").read_text())["rows"]}
    assert (tmp_path / "p" / "probe.png").is_file()
    # the same protocol in plain scikit-learn: standardise, linear SVM, C by 5-fold CV (4 speakers < 5 folds: stratified)
    split = load_split(tiny_split)
    saved = load_model(a_dir)
    feats = {p: model_outputs(saved.model, load_waves(split.part(p).audio_paths(), saved.preprocessing), layers=("fc1",))["fc1"]
             for p in ("train", "test")}
    y = {p: np.array(split.part(p).frame["emotion"]) for p in ("train", "test")}
    search = GridSearchCV(make_pipeline(StandardScaler(), SVC(kernel="linear")), {"svc__C": [1e-3, 1e-2, 1e-1, 1.0, 10.0]},
                          scoring="balanced_accuracy", cv=StratifiedKFold(5, shuffle=True, random_state=0)).fit(feats["train"], y["train"])
    predicted = search.predict(feats["test"])
    assert rows["fc1"]["C"] == search.best_params_["svc__C"]
    assert rows["fc1"]["test_uar"] == pytest.approx(balanced_accuracy_score(y["test"], predicted))
    assert rows["fc1"]["test_war"] == pytest.approx(accuracy_score(y["test"], predicted))
    # from an embedding file of the whole manifest: the same answer
    emb = tmp_path / "fc1.npy"
    assert run(["embed", str(a_dir), str(tiny_manifest), "--layer", "fc1", "-o", str(emb)]) == 0
    assert run(["probe", str(emb), "--split", str(tiny_split), "-o", str(tmp_path / "p2")]) == 0
    again = json.loads((tmp_path / "p2" / "probe.json").read_text())["rows"][0]
    assert again["test_uar"] == pytest.approx(rows["fc1"]["test_uar"], abs=1e-6)
    capsys.readouterr()
    assert run(["probe", str(a_dir), "--split", str(tiny_split), "--layer", "hidden:2", "-o", str(tmp_path / "p3")]) == 2
    assert "layer 'hidden:2' does not exist" in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "p3").exists()
