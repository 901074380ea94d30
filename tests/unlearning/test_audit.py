"""serkit audit: the per-utterance test of an unlearned model against models retrained without the forget set."""

import json

import numpy as np
import pytest

from serkit.cli import run
from serkit.config import load_recipe
from serkit.errors import SerkitError
from serkit.models import load_model
from serkit.training import train
from serkit.unlearning.audit import (
    confidence_scores,
    distinguishability,
    likelihood_ratio,
    per_example_epsilon,
    run_audit,
    write_audit,
)
from serkit.unlearning.forget_set import build_forget_set
from serkit.unlearning.redaction import find_traces, identifiers_of
from serkit.unlearning.run import forget
from tests.helpers import tiny_recipe

quiet = {"log": lambda *a: None}


def test_scores_are_the_logit_scaled_confidence_in_the_true_class():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = [np.log(p[0, 0] / (1 - p[0, 0])), np.log(p[1, 2] / (1 - p[1, 2]))]
    assert confidence_scores(logits, np.array([0, 2])) == pytest.approx(expected)
    assert np.isfinite(confidence_scores(np.array([[800.0, -800.0]]), np.array([0]))).all()  # no overflow


def test_a_model_drawn_like_the_retrained_ones_is_indistinguishable_and_a_shifted_one_is_told_apart():
    rng = np.random.default_rng(0)
    means, k, n = rng.normal(0, 3, 40), 8, 40
    retrained = means + rng.normal(0, 1, (k, n))
    alike = distinguishability(means + rng.normal(0, 1, n), retrained)
    remembers = distinguishability(means + 3 + rng.normal(0, 1, n), retrained)
    over = distinguishability(means - 3 + rng.normal(0, 1, n), retrained)
    assert 0.35 < alike["auc"] < 0.65 and alike["share_p_below_0_05"] < 0.2
    assert remembers["auc"] > 0.9 and remembers["mean_z"] > 2 and over["auc"] > 0.9 and over["mean_z"] < -2
    assert len(alike["per_utterance_auc"]) == n and alike["pooled_variance"] is True
    two = distinguishability(means, retrained[:2])
    assert two["auc"] is None and "at least 3 retrained models" in two["note"] and len(two["p"]) == n
    with pytest.raises(SerkitError, match="at least 2 retrained models \\(1 given\\)"):
        distinguishability(means, retrained[:1])


def test_likelihood_ratio_says_whether_a_model_looks_trained_on_the_utterances():
    rng = np.random.default_rng(1)
    trained, retrained = rng.normal(4, 1, (6, 30)), rng.normal(0, 1, (6, 30))
    assert likelihood_ratio(rng.normal(4, 1, 30), trained, retrained)["share_looks_trained"] > 0.9
    assert likelihood_ratio(rng.normal(0, 1, 30), trained, retrained)["share_looks_trained"] < 0.1
    with pytest.raises(SerkitError, match="at least 2 models trained with the forget set"):
        likelihood_ratio(np.zeros(30), trained[:1], retrained)


def test_per_example_epsilon_is_zero_for_models_alike_and_the_cap_for_models_told_apart():
    rng = np.random.default_rng(2)
    same = rng.normal(0, 1, (6, 5))
    assert per_example_epsilon(same, same.copy()) == pytest.approx(np.zeros(5), abs=1e-3)
    apart = per_example_epsilon(rng.normal(10, 1, (6, 5)), rng.normal(0, 1, (6, 5)))
    assert np.all(apart == 50.0)
    overlap = per_example_epsilon(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([[1.5], [2.5], [3.5], [4.5]]))
    # the best threshold, 2.5: one unlearned run above it (FPR 1/4), one retrained below it (FNR 1/4)
    assert overlap[0] == pytest.approx(np.log((1 - 1e-5 - 0.25) / 0.25), rel=1e-6)
    with pytest.raises(SerkitError, match="at least 2 unlearned runs"):
        per_example_epsilon(same[:1], same)


@pytest.fixture(scope="module")
def requests(tiny_split, tmp_path_factory):
    """A tiny model, one unlearned output and three retrained ones (one epoch each) of one forget set."""
    root = tmp_path_factory.mktemp("audit")
    model = train(load_recipe(raw=tiny_recipe(tiny_split, root / "run", max_epochs=3)), **quiet).model_dir
    request = {"speaker": "02", "n": 4, "seed": 0}
    unlearned = forget(model, root / "neg-grad", method="neg-grad", params={"epochs": 2}, **request, **quiet).out_dir
    retrained = [forget(model, root / f"retrain-{s}", method="retrain", params={"max_epochs": 1, "seed": s}, **request,
                        **quiet).out_dir for s in range(3)]
    return model, unlearned, retrained, request


def test_the_audit_scores_every_utterance_and_writes_nothing_that_names_it(requests, tmp_path):
    model, unlearned, retrained, request = requests
    audit = run_audit(model, [unlearned, unlearned], retrained, **request, **quiet)  # two runs: an epsilon too
    row = audit.unlearned[0]
    assert audit.epsilon["neg-grad"]["runs"] == 2 and len(audit.epsilon["neg-grad"]["epsilon"]) == 4
    assert audit.retrained == 3 and len(audit.commitments) == 4 and row["method"] == "neg-grad"
    assert 0 <= row["auc"] <= 1 and len(row["per_utterance_auc"]) == len(row["z"]) == len(row["p"]) == 4
    write_audit(audit, tmp_path / "audit")
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert saved["utterances"] == [c[:16] for c in sorted(json.loads((unlearned / "receipt.json").read_text())
                                                             ["forget_set"]["commitments"])]

    forget_set = build_forget_set(load_model(model), speaker="02", n=4, seed=0)
    paths = [str(p) for p in forget_set.rows["path"]] + [str(p) for p in forget_set.audio_paths()]
    names = [x for x in identifiers_of(["02"], paths) if len(x) >= 8]
    assert find_traces(tmp_path / "audit", names) == [] and find_traces(tmp_path / "audit", ["02"], raw=False) == []


def test_retrained_models_of_another_forget_set_are_refused_by_their_commitments(requests, tmp_path):
    model, unlearned, retrained, request = requests
    other = forget(model, tmp_path / "other", method="retrain", params={"max_epochs": 1}, speaker="02", n=4, seed=1,
                   **quiet).out_dir
    with pytest.raises(SerkitError, match="forgot another forget set than the one named here \\(by its commitments"):
        run_audit(model, [unlearned], [retrained[0], other], **request, **quiet)
    with pytest.raises(SerkitError, match="made by method 'neg-grad', not by retraining"):
        run_audit(model, [unlearned], [retrained[0], unlearned], **request, **quiet)
    receipt_only = tmp_path / "receipt-only"  # what an unlearning grid keeps of a run without keep_models
    receipt_only.mkdir()
    (receipt_only / "receipt.json").write_bytes((unlearned / "receipt.json").read_bytes())
    with pytest.raises(SerkitError, match="receipt-only holds a receipt but no model/ .*run the request again"):
        run_audit(model, [receipt_only], retrained[:2], **request, **quiet)


def test_audit_command_needs_two_retrained_models_and_names_what_is_missing(requests, tmp_path, capsys):
    model, unlearned, retrained, request = requests
    code = run(["audit", str(model), "--unlearned", str(unlearned), "--retrained", str(retrained[0]),
                "--speaker", "02", "--n", "4"])
    assert code == 2 and "at least 2 retrained models (1 given)" in capsys.readouterr().err
    code = run(["audit", str(model), "--unlearned", str(unlearned), "--retrained", str(retrained[0]), "--retrained",
                str(retrained[1]), "--retrained", str(retrained[2]), "--speaker", "02", "--n", "4", "-o",
                str(tmp_path / "a")])
    assert code == 0 and (tmp_path / "a" / "audit.md").is_file()
    assert "AUC vs retrained" in capsys.readouterr().out


def test_the_grid_audits_each_run_against_the_retrained_runs_of_its_forget_set(requests, tmp_path):
    from serkit.unlearning.experiment import load_grid, run_grid

    model = requests[0]
    recipe = tmp_path / "grid.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'grid'}\nbackbones:\n  cnn6:\n    train->val: {model}\nspeakers: ['02']\n"
        "n: [4]\nseeds: [0]\naudit: true\nmethods:\n  neg-grad: {epochs: 2}\n"
        "  retrain-s0: {method: retrain, seed: 0, max_epochs: 1}\n  retrain-s1: {method: retrain, seed: 1, max_epochs: 1}\n")
    out = run_grid(load_grid(recipe), **quiet)
    audit = (out / "audit.csv").read_text().splitlines()
    assert len(audit) == 2 and audit[1].startswith("cnn6,train->val,02,4,0,neg-grad,,2,,")  # 2 retrained: p, no AUC
    table = (out / "table1.md").read_text()
    assert "# Audit" in table and "| cnn6 | train->val | 4 | neg-grad | 1 | 2 | – |" in table
