"""Knowledge transfer (paper 003): embeddings from any model, the similarity graph, and their checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from serkit.cli import run
from serkit.config import load_recipe
from serkit.data.dataset import Preprocessing, load_waves
from serkit.data.manifest import read_manifest
from serkit.errors import SerkitError
from serkit.inference.embeddings import available_layers, embed, load_embeddings, save_embeddings
from serkit.models import build_model, load_model, save_model
from serkit.training import train
from serkit.transfer.graph import build_graph, isolation_warning, load_graph, save_graph
from serkit.unlearning.redaction import private_training_provenance
from tests.helpers import REPO, tiny_recipe
from tests.helpers import WHISPER_TINY as TINY


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


def _train_graph(cnn_dir, tiny_manifest, tiny_split, path, threshold=0.5, k=3):
    """A graph over the tiny split's training speakers, from the CNN's fc1 embeddings."""
    from serkit.data.splits import load_split

    rows = load_split(tiny_split).part("train")
    graph = build_graph(embed(load_model(cnn_dir), rows, "fc1"), threshold=threshold, max_neighbours=k)
    graph.paths, graph.manifest_sha256 = list(rows.frame["path"]), rows.sha256
    graph.meta = {"model": str(cnn_dir), "layer": "fc1"}  # what `serkit graph` records
    return save_graph(path, graph), rows


def test_graph_alignment_refuses_foreign_graphs_and_drops_outside_edges(cnn_dir, tiny_manifest, tiny_split, tmp_path):
    from serkit.transfer.nsl import align_graph

    path, rows = _train_graph(cnn_dir, tiny_manifest, tiny_split, tmp_path / "g.npz")
    graph = load_graph(path)
    table, stats = align_graph(graph, rows, log=lambda *a: None)
    assert table.shape == (48, 3) and stats["edges"] == int((graph.neighbours >= 0).sum())
    # rows of the training manifest in another order: the same edges, re-indexed by path
    shuffled = rows.frame.sample(frac=1, random_state=0).reset_index(drop=True)
    from serkit.data.manifest import Manifest

    table2, _ = align_graph(graph, Manifest(shuffled, rows.file, rows.sha256), log=lambda *a: None)
    position = {p: i for i, p in enumerate(shuffled["path"])}
    for i, p in enumerate(rows.frame["path"]):
        mine = [rows.frame["path"][j] for j in table[i] if j >= 0]
        theirs = [shuffled["path"][j] for j in table2[position[p]] if j >= 0]
        assert mine == theirs
    capped, _ = align_graph(graph, rows, max_neighbours=1, log=lambda *a: None)
    assert capped.shape == (48, 1)
    with pytest.raises(SerkitError, match="exceeds the 3 neighbours"):
        align_graph(graph, rows, max_neighbours=4)
    graph.manifest_sha256 = "0" * 64
    with pytest.raises(SerkitError, match="built on another manifest"):
        align_graph(graph, rows)
    graph.manifest_sha256 = rows.sha256
    fewer = Manifest(rows.frame.iloc[:40].reset_index(drop=True), rows.file, rows.sha256)
    table3, stats3 = align_graph(graph, fewer, log=lambda *a: None)  # edges to the 8 left out are dropped
    assert table3.max() < 40 and stats3["dropped_edges_outside_training"] > 0
    more = Manifest(pd.concat([rows.frame, rows.frame.assign(path=rows.frame["path"] + ".x")]).reset_index(drop=True),
                    rows.file, rows.sha256)
    with pytest.raises(SerkitError, match="does not cover 48 of the 96 training utterances"):
        align_graph(graph, more)


class ToyModel(torch.nn.Module):
    """A linear model on the first 64 samples: embeddings that start spread out, unlike a CNN's."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(64, 16)
        self.fc2 = torch.nn.Linear(16, 3)

    def features(self, wave, mask):
        fc1 = self.fc1(wave[:, :64] * mask[:, :64])
        logits = self.fc2(fc1)
        return {"pooled": wave[:, :64], "fc1": fc1, "fc2": logits, "logits": logits}

    def forward(self, wave, mask):
        return self.features(wave, mask)["logits"]


class ToyData:
    def __init__(self, n=40):
        rng = np.random.default_rng(0)
        self.waves = [torch.from_numpy(rng.standard_normal(100).astype(np.float32)) for _ in range(n)]
        self.targets = rng.integers(0, 3, n)

    def __len__(self):
        return len(self.waves)

    def __getitem__(self, i):
        return self.waves[i], int(self.targets[i]), i


def test_neighbour_loss_pulls_graph_neighbours_together():
    """The training step's neighbour loss makes linked utterances' embeddings closer: with alpha > 0
    the linked pairs of a random graph end far closer in fc1 than the same training gives without."""
    from serkit.data.dataset import collate
    from serkit.training import TaskModule
    from serkit.training.classification import ClassificationTask
    from serkit.transfer.nsl import Neighbours

    data = ToyData()
    rng = np.random.default_rng(1)
    table = np.stack([rng.choice([j for j in range(40) if j != i], 2, replace=False) for i in range(40)])
    table[::5, 1] = -1  # some utterances with one neighbour only

    def linked_distance(alpha):
        model = ToyModel()
        module = TaskModule(model, ClassificationTask(), lr=1e-2, loss_hook=Neighbours(table, data, alpha, "fc1"))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        order = np.random.default_rng(2)
        for _ in range(150):
            batch = collate([data[int(i)] for i in order.choice(40, 8, replace=False)])
            loss = module.training_step(batch, 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            wave, mask, _, _ = collate([data[i] for i in range(40)])
            e = torch.nn.functional.normalize(model.features(wave, mask)["fc1"], dim=1)
        src, slot = np.nonzero(table >= 0)
        return float((1 - (e[src] * e[table[src, slot]]).sum(1)).mean())

    without, with_graph = linked_distance(0.0), linked_distance(1.0)
    assert with_graph < 0.5 * without, (without, with_graph)


def test_neighbour_loss_reduction_per_utterance_or_per_edge(tiny_split, tmp_path):
    """'utterances' (paper 003, Eq. 2): the edges' (1 - cos) summed, over the batch's utterances;
    'edges' (TensorFlow NSL): their mean. With 3 edges in a batch of 2 they differ by 3 / 2."""
    from serkit.errors import ConfigError
    from serkit.transfer.nsl import NeighbourBatch, neighbour_loss

    main = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    near = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])  # cos 1, -1 with row 0; cos 1 with row 1
    nb = NeighbourBatch(near, torch.ones(3, 1, dtype=torch.bool), torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2]))
    assert neighbour_loss(main, near, nb, 2).item() == pytest.approx(2.0 / 2)
    assert neighbour_loss(main, near, nb, 2, "edges").item() == pytest.approx(2.0 / 3)
    raw = tiny_recipe(tiny_split, tmp_path / "r")
    raw["graph"] = {"file": str(tmp_path / "g.npz"), "reduction": "nodes"}
    with pytest.raises(ConfigError, match="graph.reduction"):
        load_recipe(raw=raw)


class ToyBNModel(ToyModel):
    """ToyModel with batch normalisation on fc1, as the CNNs have after each convolution."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(16)

    def features(self, wave, mask):
        fc1 = self.bn(self.fc1(wave[:, :64] * mask[:, :64]))
        logits = self.fc2(torch.relu(fc1))
        return {"pooled": wave[:, :64], "fc1": fc1, "fc2": logits, "logits": logits}


def test_neighbours_leave_the_batch_normalisation_of_the_batch_alone():
    """With alpha = 0, NSL training is the base model's training, step for step: the neighbours must
    not join the batch's batch-norm statistics nor its running statistics (the first version ran
    them as extra rows of the batch, unlike TensorFlow's NSL)."""
    from serkit.data.dataset import collate
    from serkit.training import TaskModule
    from serkit.training.classification import ClassificationTask
    from serkit.transfer.nsl import Neighbours

    data = ToyData()
    rng = np.random.default_rng(1)
    table = np.stack([rng.choice([j for j in range(40) if j != i], 3, replace=False) for i in range(40)])

    def train(alpha, steps):
        model = ToyBNModel()
        graph = None if alpha is None else Neighbours(table, data, alpha, "fc1")
        module = TaskModule(model, ClassificationTask(), lr=1e-2, loss_hook=graph)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        order = np.random.default_rng(2)
        for _ in range(steps):
            loss = module.training_step(collate([data[int(i)] for i in order.choice(40, 8, replace=False)]), 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return model.state_dict()

    base, nsl = train(None, 10), train(0.0, 10)
    for name, value in base.items():
        assert torch.allclose(value.float(), nsl[name].float(), atol=1e-6), name
    # alpha > 0 changes the weights, never the running statistics the neighbours pass through
    base, nsl = train(None, 1), train(1.0, 1)
    assert torch.equal(base["bn.running_mean"], nsl["bn.running_mean"])
    assert torch.equal(base["bn.running_var"], nsl["bn.running_var"])
    assert not torch.allclose(base["fc1.weight"], nsl["fc1.weight"])


def test_neighbours_in_chunks_of_the_batch_give_the_figures_of_one_neighbour_pass():
    """On a CPU a CNN-6 step runs its neighbours `chunk` rows at a time (graph_neighbours: the recipe's batch
    size): the same loss bit for bit as one pass of them all (batch norm frozen, every row independent), the
    gradients the same up to the order of their sums, the same running statistics."""
    from serkit.data.dataset import collate
    from serkit.transfer.nsl import Neighbours

    data = ToyData(12)
    data.waves = [torch.from_numpy(np.resize(w.numpy(), 4000 + 400 * i)) for i, w in enumerate(data.waves)]
    table = np.array([[(i + 1) % 12, (i + 5) % 12, (i + 7) % 12] for i in range(12)])  # rows 0-3: 10 distinct neighbours
    results, rows = {}, {}
    for chunk in (4, 0):
        torch.manual_seed(0)
        model = build_model("cnn6", None, 3)
        model.train()
        seen = rows[chunk] = []
        model.fc1.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(len(args[0])))
        loss, _ = Neighbours(table, data, 1.0, "fc1", chunk=chunk)(model, collate([data[i] for i in range(4)]),
                                                                   torch.nn.functional.cross_entropy)
        loss.backward()
        results[chunk] = (loss.item(), {k: p.grad.clone() for k, p in model.named_parameters()},
                          {k: v.clone() for k, v in model.state_dict().items() if "running" in k})
    assert rows == {4: [4, 4, 4, 2], 0: [4, 10]}  # the batch, then its neighbours
    (loss_c, grads_c, stats_c), (loss_1, grads_1, stats_1) = results[4], results[0]
    assert loss_c == loss_1
    for name, g in grads_1.items():
        assert torch.allclose(grads_c[name], g, rtol=1e-4, atol=1e-6 * g.abs().max().item()), name
    assert all(torch.equal(stats_c[k], v) for k, v in stats_1.items())
    with pytest.raises(ValueError, match="chunk -1"):
        Neighbours(table, data, 1.0, "fc1", chunk=-1)


def test_transfer_command_trains_nsl_and_base_and_compares(cnn_dir, tiny_manifest, tiny_split, tmp_path, capsys):
    import yaml

    path, _ = _train_graph(cnn_dir, tiny_manifest, tiny_split, tmp_path / "g.npz")
    raw = tiny_recipe(tiny_split, tmp_path / "out", max_epochs=1)
    raw["graph"] = {"file": str(path), "alpha": 0.1, "max_neighbours": 2}
    recipe = tmp_path / "nsl.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    assert run(["transfer", str(recipe), "--baseline", "base", "--baseline", "max"]) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["base", "comparison.json", "comparison.md", "nsl", "tl-max"]
    comparison = json.loads((out / "comparison.json").read_text())
    test = comparison["parts"]["test"]
    models = test["models"]
    assert test["nsl_vs"]["base"]["uar_gain"] == pytest.approx(models["nsl"]["uar"] - models["base"]["uar"])
    assert 0 <= test["nsl_vs"]["tl-max"]["p_one_tailed"] <= 1 and comparison["graph"]["max_neighbours"] == 2
    # the paired test reads both runs' predictions on the same utterances
    assert 0 < test["nsl_vs"]["base"]["p_paired"] <= 1 and "| p (paired) |" in (out / "comparison.md").read_text()
    assert json.loads((out / "base" / "metrics.json").read_text())["training"]["graph"] is None
    # the transfer-learning model carries the upstream model (the graph's) inside it
    params = comparison["parameters"]
    assert params["tl-max"] == params["base"] + load_model(cnn_dir).model.total_parameters()
    fused = load_model(out / "tl-max" / "model")
    assert fused.config["options"]["upstream_architecture"] == "cnn6" and fused.config["options"]["mode"] == "max"
    assert "| test | nsl |" in capsys.readouterr().out
    # refused: no graph section; a graph of another manifest; an existing output. Nothing half-written.
    del raw["graph"]
    recipe.write_text(yaml.safe_dump({**raw, "output_dir": str(tmp_path / "o2")}))
    assert run(["transfer", str(recipe)]) == 2
    assert "needs a graph section" in capsys.readouterr().err
    graph = load_graph(path)
    graph.manifest_sha256 = "f" * 64
    save_graph(tmp_path / "foreign.npz", graph)
    raw["graph"] = {"file": str(tmp_path / "foreign.npz")}
    recipe.write_text(yaml.safe_dump({**raw, "output_dir": str(tmp_path / "o3")}))
    assert run(["transfer", str(recipe)]) == 2
    assert "built on another manifest" in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_onnx_export_matches_pytorch_and_int8_is_reported(cnn_dir, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    from serkit.transfer.export import frontend_nodes

    out = tmp_path / "onnx"
    assert run(["export", str(cnn_dir), "--onnx", "--int8", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.int8.onnx", "model.onnx", "serkit_model.json"]
    report = json.loads((out / "export.json").read_text())
    assert "held-out utterances" in report["checked_on"]  # real audio from the model's own manifest
    assert report["fp32"]["max_abs_logit_diff"] <= 1e-3 and report["fp32"]["prediction_agreement"] == 1.0
    assert report["int8"]["bytes"] < 0.5 * report["fp32"]["bytes"]
    assert 0 <= report["int8"]["prediction_agreement"] <= 1
    # static by default: activations quantised too, their ranges read from the training speakers' audio
    assert report["int8"]["mode"] == "static" and "the model's training speakers" in report["int8"]["calibrated_on"]
    # the log-Mel front end stays float in the int8 model (its power spectrum does not fit int8)
    front = set(frontend_nodes(out / "model.onnx"))
    assert report["int8"]["float_frontend_nodes"] == len(front) > 0
    graph = onnx.load(str(out / "model.int8.onnx")).graph
    int8_ops = {n.name: n.op_type for n in graph.node}
    assert any(int8_ops.get(name) == "MatMul" for name in front)
    dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(n.input[0] in dequantised and n.input[1] in dequantised for n in convs)
    assert not [n.name for n in graph.node if n.name in front and set(n.input) & dequantised]
    # nothing in the export names the machine or the folders it came from (a device's files are shared)
    for name in ("export.json", "serkit_model.json", "model.onnx", "model.int8.onnx"):
        shared = (out / name).read_bytes()
        for machine_path in (str(cnn_dir), str(tmp_path), str(REPO), "site-packages", "/work/", "/tmp/"):
            assert machine_path.encode() not in shared, (name, machine_path)
    # the exported graph takes any batch and length, with padding masked as in PyTorch
    saved = load_model(cnn_dir)
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (20000, 36000, 9000)]
    from serkit.data.dataset import pad_batch

    x, mask = pad_batch(waves)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"waveform": x.numpy(), "mask": mask.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, saved.model(x, mask).numpy(), atol=1e-3)
    labels = json.loads((out / "serkit_model.json").read_text())["labels"]
    assert labels == saved.labels
    assert run(["export", str(cnn_dir), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_int8_export_is_dynamic_on_request_and_static_needs_audio_the_model_may_use(cnn_dir, tmp_path, capsys):
    import onnx

    out = tmp_path / "dyn"
    assert run(["export", str(cnn_dir), "--int8", "--int8-mode", "dynamic", "-o", str(out)]) == 0
    report = json.loads((out / "export.json").read_text())["int8"]
    assert report["mode"] == "dynamic" and "calibrated_on" not in report
    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert "ConvInteger" in ops or "MatMulInteger" in ops
    # a forgotten model's provenance names neither its speakers nor its manifest: static int8 needs audio given
    private = tmp_path / "private"
    shutil.copytree(cnn_dir, private)
    config = json.loads((private / "config.json").read_text())
    config["provenance"] = private_training_provenance(config["provenance"])
    (private / "config.json").write_text(json.dumps(config))
    assert run(["export", str(private), "--int8", "-o", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "static int8 needs calibration audio" in err and "--calibration MANIFEST" in err and "--int8-mode dynamic" in err
    assert not (tmp_path / "p").exists()
    manifest = load_model(cnn_dir).config["provenance"]["manifest"]
    assert run(["export", str(private), "--int8", "--calibration", manifest, "-o", str(tmp_path / "p")]) == 0
    report = (tmp_path / "p" / "export.json").read_text()
    assert json.loads(report)["int8"]["calibrated_on"].endswith("of a manifest given with --calibration")
    assert Path(manifest).name not in report and Path(manifest).parent.name not in report
    assert run(["export", str(cnn_dir), "--calibration", manifest, "-o", str(tmp_path / "q")]) == 2
    assert "add --int8" in capsys.readouterr().err
    assert run(["export", str(cnn_dir), "--int8-mode", "dynamic", "-o", str(tmp_path / "q")]) == 2
    assert "--int8-mode dynamic chooses how --int8 quantises: add --int8" in capsys.readouterr().err.replace("\n", " ")
    assert run(["export", str(cnn_dir), "--int8", "--int8-mode", "float16", "-o", str(tmp_path / "q")]) == 2
    assert "choose static or dynamic" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_export_without_onnx_names_the_install_command(cnn_dir, tmp_path, monkeypatch):
    import sys

    from serkit.transfer.export import export_onnx

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(SerkitError, match=r"needs onnxruntime: pip install 'serkit\[export\]'"):
        export_onnx(load_model(cnn_dir), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_transfer_learning_model_fuses_a_frozen_upstream_and_reloads_without_it(cnn_dir, tmp_path):
    import shutil

    from serkit.errors import ConfigError

    upstream_dir = tmp_path / "upstream"
    shutil.copytree(cnn_dir, upstream_dir)
    options = {"downstream": "cnn6", "upstream": str(upstream_dir), "mode": "avg"}
    model = build_model("fused", options, 4)
    upstream = load_model(upstream_dir).model
    assert model.trainable_parameters() == build_model("cnn6", {}, 4).total_parameters()
    model.train()
    assert not model.upstream.training and all(not p.requires_grad for p in model.upstream.parameters())
    model.eval()
    wave = torch.from_numpy((0.1 * np.random.default_rng(0).standard_normal((2, 16000))).astype(np.float32))
    mask = torch.ones_like(wave, dtype=torch.bool)
    with torch.no_grad():
        feats = model.features(wave, mask)
        down_fc1 = model.downstream.features(wave, mask)["fc1"]
        np.testing.assert_allclose(feats["upstream"].numpy(), upstream.features(wave, mask)["fc1"].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(feats["fc1"].numpy(), ((down_fc1 + feats["upstream"]) / 2).numpy(), rtol=1e-5, atol=1e-6)
    # gradients reach the waveform through both models (PGD needs them)
    x = wave.clone().requires_grad_(True)
    model(x, mask).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    path = save_model(tmp_path / "fused", model, ["anger", "happiness", "neutral", "sadness"], Preprocessing())
    shutil.rmtree(upstream_dir)  # the saved model needs no upstream directory
    again = load_model(path).model
    with torch.no_grad():
        assert torch.equal(again(wave, mask), model(wave, mask))
    with pytest.raises(ConfigError, match="upstream layer 'pooled' has 512 dimensions but the downstream FC1 has 256"):
        build_model("fused", {**options, "upstream": str(cnn_dir), "upstream_layer": "pooled"}, 4)
    with pytest.raises(ConfigError, match="give the serkit model directory of the upstream model"):
        build_model("fused", {"downstream": "cnn6"}, 4)


def test_experiment_transfer_grid_is_resumable_and_tabulated(cnn_dir, tiny_split, tmp_path, capsys):
    recipe = tmp_path / "down.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_split, tmp_path / "unused", max_epochs=1)))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "grid"), "recipe": str(recipe), "upstream": str(cnn_dir),
                                    "models": ["cnn6"], "layers": ["fc1"], "neighbours": [2], "alphas": [0.1],
                                    "threshold": 0.0, "seeds": [0], "embedding": "fc2", "reduction": "edges"}))
    assert run(["experiment", "transfer", str(grid)]) == 0
    out = tmp_path / "grid"
    rows = pd.read_csv(out / "results.csv")
    assert list(rows.variant) == ["base", "nsl"] and rows.loc[1, "n"] == 2 and rows.loc[1, "alpha"] == 0.1
    used = json.loads((out / "runs" / "cnn6-s0-nsl-fc1-n2-a0.1" / "metrics.json").read_text())["training"]["graph"]
    assert (used["embedding"], used["reduction"], used["alpha"]) == ("fc2", "edges", 0.1)
    assert (rows.test_uar.between(0, 1)).all() and (rows.n_test == 12).all()
    table = (out / "table3.md").read_text()
    assert "| base |" in table and "| nsl | fc1 | 2 | 0.1 | 1 |" in table
    # p (paired): the NSL run against the base run of its seed, on the same test utterances
    from serkit.metrics import paired_uar_test

    a, b = (pd.read_csv(out / "runs" / name / "predictions_test.csv", dtype=str)
            for name in ("cnn6-s0-nsl-fc1-n2-a0.1", "cnn6-s0-base"))
    assert list(a.path) == list(b.path)
    p_paired = paired_uar_test(a.emotion, a.predicted, b.predicted, [0] * len(a))[1]
    assert table.split("| nsl | fc1 |")[1].split("\n")[0].rstrip(" |").split("|")[-1].strip().split()[0] == f"{p_paired:.3g}"
    assert (out / "fig2.png").stat().st_size > 1000 and (out / "confusion_best.png").is_file()
    assert (out / "graphs" / "fc1.npz").is_file() and not (out / "runs" / "cnn6-s0-base" / "model").exists()
    capsys.readouterr()
    old = pd.read_csv(out / "results.csv", keep_default_na=False).drop(columns="fold")
    old.to_csv(out / "results.csv", index=False)  # as written before grids had folds
    assert run(["experiment", "transfer", str(grid)]) == 0  # resumable: nothing left to train
    assert "2 trainings done, 0 to go" in capsys.readouterr().out
    assert len(pd.read_csv(out / "results.csv")) == 2
    # resuming with other settings would mix two experiments in one table: refused
    grid.write_text(grid.read_text().replace("threshold: 0.0", "threshold: 0.5"))
    assert run(["experiment", "transfer", str(grid)]) == 2
    assert "other settings (threshold)" in capsys.readouterr().err.replace("\n", "")


def test_grid_table_compares_a_cell_with_the_base_runs_of_its_own_seeds(tmp_path):
    """An unfinished cell (seed 0 only) is set against seed 0's base run, not the mean of every base run."""
    from serkit.transfer.experiment import COLUMNS, summarise

    rows = [{"model": "cnn6", "seed": s, "variant": v, "layer": layer, "n": n, "alpha": a, "val_uar": 0.5, "val_accuracy": 0.5,
             "test_uar": uar, "test_accuracy": uar, "n_val": 100, "n_test": 100, "train_seconds": 1.0, "parameters": 1000,
             "run_dir": str(tmp_path / "runs" / f"r{s}{v}")}
            for s, v, layer, n, a, uar in [(0, "base", "", 0, 0.0, 0.50), (1, "base", "", 0, 0.0, 0.90),
                                           (0, "nsl", "fc1", 3, 0.01, 0.60)]]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp_path / "results.csv", index=False)
    summarise(tmp_path)
    line = next(x for x in (tmp_path / "table3.md").read_text().splitlines() if x.startswith("| nsl"))
    assert "| +0.100 |" in line and line.endswith("| n/a |")  # no prediction files: no paired test


def test_experiment_transfer_runs_every_fold_of_a_folded_split(cnn_dir, tiny_manifest, tmp_path, capsys):
    """With speaker folds every training runs once per fold, each fold's graph covers its own training
    speakers only, and the paired test pairs each NSL run with the base run of its seed and fold."""
    from serkit.data.splits import load_split, save_split, speaker_folds
    from serkit.metrics import paired_uar_test

    manifest = read_manifest(tiny_manifest)
    split = tmp_path / "folds.json"
    save_split(split, manifest, 0, folds=speaker_folds(manifest, 3, seed=0), kind="folds")
    recipe = tmp_path / "down.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(split, tmp_path / "unused", max_epochs=1)))
    grid = tmp_path / "grid.yaml"
    settings = {"output_dir": str(tmp_path / "grid"), "recipe": str(recipe), "upstream": str(cnn_dir), "models": ["cnn6"],
                "layers": ["fc1"], "neighbours": [2], "alphas": [0.1], "threshold": 0.0, "seeds": [0]}
    grid.write_text(yaml.safe_dump(settings))
    grid.write_text(yaml.safe_dump({**settings, "folds": [1]}))
    assert run(["experiment", "transfer", str(grid)]) == 0
    grid.write_text(yaml.safe_dump(settings))  # then every fold: the cached embeddings cover fold 1's speakers only
    capsys.readouterr()
    assert run(["experiment", "transfer", str(grid)]) == 0
    assert "2 trainings done, 4 to go" in capsys.readouterr().out
    assert run(["experiment", "transfer", str(grid)]) == 0
    assert "6 trainings done, 0 to go" in capsys.readouterr().out
    out = tmp_path / "grid"
    rows = pd.read_csv(out / "results.csv").sort_values(["fold", "variant"], kind="stable")
    assert list(zip(rows.fold, rows.variant)) == [(0, "base"), (0, "nsl"), (1, "base"), (1, "nsl"), (2, "base"), (2, "nsl")]
    truth, nsl, base, groups = [], [], [], []
    for fold in range(3):
        parts = load_split(split, fold=fold)
        graph = load_graph(out / "graphs" / f"fold{fold}" / "fc1.npz")
        assert graph.paths == list(parts.part("train").frame["path"])  # no validation or test speaker in the graph
        a, b = (pd.read_csv(out / "runs" / f"cnn6-s0-f{fold}-{v}" / "predictions_test.csv", dtype=str)
                for v in ("nsl-fc1-n2-a0.1", "base"))
        assert set(a.path) == set(parts.part("test").frame["path"]) and list(a.path) == list(b.path)
        truth += list(a.emotion)
        nsl += list(a.predicted)
        base += list(b.predicted)
        groups += [fold] * len(a)
    assert sorted(truth) == sorted(manifest.frame.emotion)  # every utterance tested once
    table = (out / "table3.md").read_text()
    assert "Speaker folds 0, 1, 2" in table and "| nsl | fc1 | 2 | 0.1 | 1 × 3 folds |" in table
    line = table.split("| nsl | fc1 |")[1].split("\n")[0]
    mean = rows[rows.variant == "nsl"].test_uar.mean()
    assert f"| {mean:.3f} |" in line  # one seed: its UAR (the mean over its folds), no spread to show
    assert line.rstrip(" |").split("|")[-1].strip().split()[0] == f"{paired_uar_test(truth, nsl, base, groups)[1]:.3g}"
    assert (out / "confusion_best.png").stat().st_size > 1000  # the folds' predictions pooled
    # folds the split does not have, and folds of a hold-out split, are refused before anything runs
    capsys.readouterr()
    grid.write_text(yaml.safe_dump({**settings, "folds": [3]}))
    assert run(["experiment", "transfer", str(grid)]) == 2
    assert "has folds 0..2" in capsys.readouterr().err
    holdout = tmp_path / "holdout.yaml"
    holdout.write_text(yaml.safe_dump({**settings, "output_dir": str(tmp_path / "h"), "folds": [0],
                                       "set": [f"data.split={tmp_path / 'none.json'}"]}))
    assert run(["experiment", "transfer", str(holdout)]) == 2
    assert "split file not found" in capsys.readouterr().err and not (tmp_path / "h").exists()


def test_a_bad_grid_fails_before_its_output_folder_exists(cnn_dir, tiny_split, tmp_path, capsys):
    """Bad settings are named before anything is written or trained: a folded-split option on a hold-out
    split, a missing upstream, an unknown model or upstream layer; and, as the grid is read, a negative
    alpha, zero neighbours, a repeated seed."""
    recipe = tmp_path / "down.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_split, tmp_path / "unused", max_epochs=1)))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "grid"), "recipe": str(recipe),
                                    "upstream": str(tmp_path / "no-model"), "folds": [0]}))
    assert run(["experiment", "transfer", str(grid)]) == 2
    err = capsys.readouterr().err
    assert "single hold-out split" in err and not (tmp_path / "grid").exists()
    grid.write_text(grid.read_text().replace("folds:\n- 0\n", ""))
    assert run(["experiment", "transfer", str(grid)]) == 2
    assert "model directory not found" in capsys.readouterr().err and not (tmp_path / "grid").exists()
    grid.write_text(grid.read_text().replace(str(tmp_path / "no-model"), str(cnn_dir)))
    for setting, message in [("models=[cnn6,cnn7]", "unknown model architecture 'cnn7'"),
                             ("layers=[fc1,hidden:3]", "hidden:3"), ("alphas=[0.1,-1]", "alphas.1"),
                             ("neighbours=[0]", "neighbours.0"), ("seeds=[0,1,0]", "repeats 0"),
                             ("embedding=fc3", "embedding")]:
        assert run(["experiment", "transfer", str(grid), "--set", setting]) == 2, setting
        assert message in capsys.readouterr().err.replace("\n", ""), setting
        assert not (tmp_path / "grid").exists()


def test_results_from_before_folds_gain_an_empty_fold_column(tmp_path):
    from serkit.experiment import ResultsTable
    from serkit.transfer.experiment import COLUMNS, summarise

    old = [c for c in COLUMNS if c != "fold"]
    rows = [{"model": "cnn6", "seed": 0, "variant": v, "layer": layer, "n": n, "alpha": a, "val_uar": 0.5,
             "val_accuracy": 0.5, "test_uar": uar, "test_accuracy": uar, "n_val": 10, "n_test": 10, "train_seconds": 1.0,
             "parameters": 1000, "run_dir": f"r{v}"} for v, layer, n, a, uar in [("base", "", 0, 0.0, 0.5), ("nsl", "fc1", 3, 0.1, 0.7)]]
    pd.DataFrame(rows, columns=old).to_csv(tmp_path / "results.csv", index=False)
    ResultsTable(tmp_path / "results.csv", COLUMNS, "transfer grid").read()  # how the grid reads it on a resume
    frame = pd.read_csv(tmp_path / "results.csv", keep_default_na=False)
    assert list(frame.columns) == COLUMNS and list(frame.fold) == ["", ""] and list(frame.test_uar) == [0.5, 0.7]
    summarise(tmp_path)
    assert "| +0.200 |" in (tmp_path / "table3.md").read_text()


def test_transfer_grid_on_two_worker_processes_gives_the_rows_of_one_process(cnn_dir, tiny_split, tmp_path):
    """The same cells through a pool of two local workers: each trained once, in another process,
    with the figures the in-process run gives (every cell is seeded; the workers use as many torch
    threads as this process, so the sums run in the same order)."""
    import torch

    from serkit.experiment import ExecutorConfig
    from serkit.transfer.experiment import load_transfer_grid, run_transfer_grid

    recipe = tmp_path / "down.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_split, tmp_path / "unused", max_epochs=1)))
    figures = ["model", "seed", "variant", "layer", "n", "alpha", "val_uar", "val_accuracy", "test_uar", "test_accuracy"]
    tables = {}
    for kind in ("local", "pool"):
        grid = tmp_path / f"{kind}.yaml"
        grid.write_text(yaml.safe_dump({"output_dir": str(tmp_path / kind), "recipe": str(recipe), "upstream": str(cnn_dir),
                                        "models": ["cnn6"], "layers": ["fc1"], "neighbours": [2], "alphas": [1.0],
                                        "threshold": 0.0, "seeds": [0]}))
        executor = ExecutorConfig(kind=kind, workers=1 if kind == "local" else 2, threads=torch.get_num_threads())
        run_transfer_grid(load_transfer_grid(grid), log=lambda *a: None, executor=executor)
        tables[kind] = pd.read_csv(tmp_path / kind / "results.csv").sort_values(["variant", "alpha"])[figures]
    assert len(tables["pool"]) == 2  # the base model and the NSL one: a cell for each worker
    pd.testing.assert_frame_equal(tables["local"].reset_index(drop=True), tables["pool"].reset_index(drop=True))
    assert (tmp_path / "pool" / "table3.md").is_file() and not list((tmp_path / "pool" / "cells").iterdir())
