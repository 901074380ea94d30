"""Knowledge transfer (paper 003): embeddings from any model, the similarity graph, and their checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from serkit.cli import run
from serkit.config import load_recipe
from serkit.data.dataset import Preprocessing, load_waves
from serkit.data.manifest import read_manifest
from serkit.embeddings import available_layers, embed, load_embeddings, save_embeddings
from serkit.errors import SerkitError
from serkit.models import build_model, load_model, save_model
from serkit.training import train
from serkit.transfer.graph import build_graph, isolation_warning, load_graph, save_graph
from tests.conftest import tiny_recipe
from tests.test_whisper import TINY


@pytest.fixture(scope="module")
def cnn_dir(tiny_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer") / "run"
    return train(load_recipe(raw=tiny_recipe(tiny_split, out, max_epochs=1)), log=lambda *a: None).model_dir


def brute_force(x: np.ndarray, threshold: float, k: int) -> list[list[int]]:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -2)
    out = []
    for row in sims:
        order = [int(j) for j in np.argsort(-row, kind="stable") if row[j] > threshold][:k]
        out.append(order)
    return out


def test_graph_links_the_most_similar_utterances_above_the_threshold():
    # two tight clusters of three and one outlier
    x = np.array([[1, 0, 0], [0.99, 0.05, 0], [0.98, 0, 0.06], [0, 1, 0], [0.02, 0.99, 0], [0, 0.97, 0.08], [0, 0, 1]],
                 dtype=np.float32)
    graph = build_graph(x, threshold=0.95, max_neighbours=6)
    assert [set(r[r >= 0].tolist()) for r in graph.neighbours] == [{1, 2}, {0, 2}, {0, 1}, {4, 5}, {3, 5}, {3, 4}, set()]
    assert graph.stats()["isolated"] == 1 and graph.stats()["edges"] == 12
    assert np.all(graph.similarity[graph.neighbours >= 0] > 0.95) and np.all(graph.similarity[graph.neighbours < 0] == 0)
    capped = build_graph(x, threshold=0.95, max_neighbours=1)
    assert capped.neighbours[0, 0] == 1 and capped.candidates[0] == 2 and capped.degree.max() == 1
    # most nodes isolated: the user is told to lower the threshold
    assert isolation_warning(build_graph(x, threshold=0.9999, max_neighbours=3)) is not None
    assert isolation_warning(graph) is None


def test_blocked_search_equals_the_full_similarity_matrix():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 16))
    x = (centres[rng.integers(0, 20, 500)] + 0.3 * rng.standard_normal((500, 16))).astype(np.float32)
    expected = brute_force(x, 0.9, 6)
    graph = build_graph(x, threshold=0.9, max_neighbours=6, block_mb=0)  # one row per block
    got = [[int(j) for j in row if j >= 0] for row in graph.neighbours]
    assert got == expected
    assert sum(len(r) for r in expected) > 1000  # the case is not trivial


def test_graph_refuses_bad_input(tmp_path):
    x = np.ones((4, 3), dtype=np.float32)
    for threshold in (1.5, -1.0):
        with pytest.raises(SerkitError, match=r"outside \(-1, 1\]"):
            build_graph(x, threshold=threshold)
    with pytest.raises(SerkitError, match="at least 1"):
        build_graph(x, max_neighbours=0)
    with pytest.raises(SerkitError, match=r"rows \[2\] are all zeros"):
        build_graph(np.array([[1, 0], [0, 1], [0, 0]], dtype=np.float32))
    not_a_graph = tmp_path / "other.npz"
    np.savez(not_a_graph, a=np.zeros(3))
    with pytest.raises(SerkitError, match="not a serkit graph file"):
        load_graph(not_a_graph)
    with pytest.raises(SerkitError, match="graph file not found"):
        load_graph(tmp_path / "absent.npz")


def test_graph_file_round_trip_and_no_overwrite(tmp_path):
    x = np.random.default_rng(1).standard_normal((30, 8)).astype(np.float32)
    graph = build_graph(x, threshold=0.3, max_neighbours=3)
    graph.paths = [f"a/{i}.flac" for i in range(30)]
    graph.manifest_sha256 = "ab" * 32
    graph.meta = {"layer": "fc1"}
    path = save_graph(tmp_path / "g.npz", graph)
    back = load_graph(path)
    assert np.array_equal(back.neighbours, graph.neighbours) and back.paths == graph.paths
    assert back.manifest_sha256 == graph.manifest_sha256 and back.meta == {"layer": "fc1"} and back.threshold == 0.3
    with pytest.raises(SerkitError, match="already exists"):
        save_graph(path, graph)
    assert [p.name for p in tmp_path.iterdir()] == ["g.npz"]  # no temp file left behind


def test_embeddings_follow_manifest_order_and_match_the_model(cnn_dir, tiny_manifest):
    saved = load_model(cnn_dir)
    manifest = read_manifest(tiny_manifest)
    array = embed(saved, manifest, "fc1", batch_size=5, chunk=7)  # chunks and batches that do not divide 72
    assert array.shape == (72, 256) and array.dtype == np.float32
    waves = load_waves(manifest.audio_paths()[:3], saved.preprocessing)
    with torch.no_grad():
        for i, wave in enumerate(waves):
            one = saved.model.features(torch.from_numpy(wave)[None], torch.ones(1, len(wave), dtype=torch.bool))["fc1"]
            np.testing.assert_allclose(array[i], one[0].numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(SerkitError, match="layer 'hidden:1' does not exist.*choose one of: pooled, fc1, fc2, logits"):
        embed(saved, manifest, "hidden:1")


def test_transformer_hidden_states_can_be_embedded(tmp_path, tiny_manifest):
    model = build_model("whisper", {"hf_config": TINY}, 4).eval()
    path = save_model(tmp_path / "whisper", model, ["anger", "happiness", "neutral", "sadness"], Preprocessing(trim_silence_db=40))
    saved = load_model(path)
    assert available_layers(saved)[-3:] == ["hidden:0", "hidden:1", "hidden:2"]
    manifest = read_manifest(tiny_manifest)
    manifest.frame = manifest.frame.iloc[:4]
    h1 = embed(saved, manifest, "hidden:1")
    pooled = embed(saved, manifest, "pooled")  # the last hidden state, pooled
    assert h1.shape == (4, 32) and not np.allclose(h1, pooled)
    np.testing.assert_allclose(embed(saved, manifest, "hidden:2"), pooled, rtol=1e-4, atol=1e-5)


def test_embed_and_graph_commands(cnn_dir, tiny_manifest, tiny_split, tmp_path, capsys):
    emb = tmp_path / "train_fc1.npy"
    assert run(["embed", str(cnn_dir), str(tiny_manifest), "--split", str(tiny_split), "--part", "train",
                "--layer", "fc1", "-o", str(emb)]) == 0
    meta = json.loads(emb.with_suffix(".json").read_text())
    train_rows = pd.read_csv(tiny_manifest, dtype=str).query("speaker in ['01', '02', '03', '04']")
    assert meta["paths"] == list(train_rows["path"]) and meta["n"] == 48 and meta["part"] == "train"
    assert meta["manifest_sha256"] == read_manifest(tiny_manifest).sha256
    graph_file = tmp_path / "graph.npz"
    capsys.readouterr()
    assert run(["graph", str(emb), "--threshold", "0.9", "--max-neighbours", "3", "-o", str(graph_file)]) == 0
    out = capsys.readouterr().out
    assert "48 nodes" in out and "nearest-neighbour cosine similarity" in out
    graph = load_graph(graph_file)
    assert graph.paths == meta["paths"] and graph.manifest_sha256 == meta["manifest_sha256"] and graph.meta["layer"] == "fc1"
    # bad input: one clear line, nothing written
    assert run(["embed", str(cnn_dir), str(tiny_manifest), "--layer", "fc9", "-o", str(tmp_path / "x.npy")]) == 2
    assert "choose one of: pooled, fc1, fc2, logits" in capsys.readouterr().err.replace("\n", " ")
    assert run(["graph", str(emb), "--threshold", "1.2", "-o", str(tmp_path / "g2.npz")]) == 2
    assert "outside (-1, 1]" in capsys.readouterr().err
    np.save(tmp_path / "short.npy", np.load(emb)[:10])
    (tmp_path / "short.json").write_text(emb.with_suffix(".json").read_text())
    assert run(["graph", str(tmp_path / "short.npy"), "-o", str(tmp_path / "g3.npz")]) == 2
    assert "do not belong together" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "g2.npz").exists() and not (tmp_path / "g3.npz").exists()


def test_embeddings_files_are_checked(tmp_path):
    with pytest.raises(SerkitError, match="embedding file not found"):
        load_embeddings(tmp_path / "none.npy")
    np.save(tmp_path / "bare.npy", np.ones((3, 2), dtype=np.float32))
    with pytest.raises(SerkitError, match="bare.json is missing"):
        load_embeddings(tmp_path / "bare.npy")
    with pytest.raises(SerkitError, match="must end in .npy"):
        save_embeddings(tmp_path / "e.txt", np.ones((1, 2)), {"paths": ["a"]})
    save_embeddings(tmp_path / "e.npy", np.ones((1, 2)), {"paths": ["a"]})
    with pytest.raises(SerkitError, match="already exists"):
        save_embeddings(tmp_path / "e.npy", np.ones((1, 2)), {"paths": ["a"]})
