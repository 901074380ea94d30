"""Forget-set-only unlearning: the forget set, PGD, EWC, the methods and the receipt."""

import json
import math

import numpy as np
import pytest
import torch

from serkit.config import load_recipe
from serkit.errors import ConfigError, SerkitError
from serkit.io import sha256_file
from serkit.models import build_model, load_model
from serkit.training import train
from serkit.unlearning.forget_set import build_forget_set
from serkit.unlearning.importance import AnchorPenalty, fisher_diagonal, mas_importance, min_max_per_tensor
from serkit.unlearning.methods import get_method
from serkit.unlearning.pgd import TargetedPGD, draw_targets
from serkit.unlearning.run import forget, reproduce
from tests.helpers import tiny_recipe

QUICK = {"adversarial_per_sample": 3, "pgd_steps": 8, "epochs": 2, "tau": 0.05}


@pytest.fixture(scope="module")
def model_dir(tiny_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("unlearn") / "run"
    return train(load_recipe(raw=tiny_recipe(tiny_split, out, importances=True, max_epochs=4)), log=lambda *a: None).model_dir


def test_forget_set_by_speaker_random_and_files(model_dir, tiny_manifest, tmp_path):
    saved = load_model(model_dir)
    whole = build_forget_set(saved, speaker="02")
    assert len(whole) == 12 and whole.mode == "speaker"
    drawn = build_forget_set(saved, speaker="02", n=5, seed=3)
    assert len(drawn) == 5 and set(drawn.rows["path"]) <= set(whole.rows["path"])
    assert list(build_forget_set(saved, speaker="02", n=5, seed=3).rows["path"]) == list(drawn.rows["path"])
    files = list(drawn.rows["path"][:2]) + ["/nowhere/not-trained.wav"]
    warnings = []
    listed = build_forget_set(saved, files=files, warn=warnings.append)
    assert len(listed) == 2 and listed.skipped == ["/nowhere/not-trained.wav"] and "not in the model's training data" in warnings[0]
    with pytest.raises(SerkitError, match="not training utterances of this model.*--strict"):
        build_forget_set(saved, files=files, strict=True)
    assert len(set(drawn.digests())) == 5 and all(len(d) == 32 for d in drawn.digests())  # audio content, in memory only


def test_forget_set_refusals(model_dir, tiny_manifest):
    saved = load_model(model_dir)
    test_file = [p for p in __import__("pandas").read_csv(tiny_manifest, dtype=str).query("speaker == '06'")["path"]][:1]
    with pytest.raises(SerkitError, match="in the test split .* never trained on it"):
        build_forget_set(saved, files=test_file)
    with pytest.raises(SerkitError, match="speaker '06' is in the test split"):
        build_forget_set(saved, speaker="06")
    with pytest.raises(SerkitError, match="not among the model's training speakers"):
        build_forget_set(saved, speaker="99")
    with pytest.raises(SerkitError, match="more than speaker '02' has \\(12"):
        build_forget_set(saved, speaker="02", n=13)
    with pytest.raises(SerkitError, match="forget set is empty"):
        build_forget_set(saved, files=["/a.wav"], warn=lambda *a: None)
    with pytest.raises(SerkitError, match="exactly one of"):
        build_forget_set(saved)


class BandEnergy(torch.nn.Module):
    """A toy classifier whose class c is the loudest of 4 fixed random filter bands: on white noise
    every target is within reach of a small perturbation, so PGD must hit nearly all of them."""

    def __init__(self):
        super().__init__()
        self.filters = torch.nn.Parameter(torch.randn(4, 1, 33, generator=torch.Generator().manual_seed(0)))

    def forward(self, x, mask):
        bands = torch.nn.functional.conv1d((x * mask)[:, None], self.filters, padding=16) ** 2
        energy = (bands * mask[:, None]).sum(-1) / mask.sum(-1, keepdim=True)
        return 5 * torch.log(energy + 1e-8)


def noise_and_labels(model) -> tuple[list[np.ndarray], np.ndarray]:
    """Three white-noise utterances of different lengths and the classes `model` gives them."""
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (6000, 4000, 5000)]
    with torch.no_grad():
        labels = np.array([int(model(torch.from_numpy(w)[None], torch.ones(1, len(w)))[0].argmax()) for w in waves])
    return waves, labels


def test_pgd_reaches_targets_inside_the_ball():
    model = BandEnergy().eval()
    waves, labels = noise_and_labels(model)
    targets = draw_targets(labels, 4, 3, seed=0)
    assert (targets != labels[:, None]).all()
    pgd = TargetedPGD(tau=0.1, steps=40, tau_mode="relative", batch_size=4)
    reported = []
    adv = pgd.generate(model, waves, targets, progress=lambda done, total: reported.append((done, total)))
    assert len(adv) == 9 and adv.success.mean() >= 0.8
    assert reported == [(4, 9), (8, 9), (9, 9)]  # the command line's bar: batch by batch, to the last sample
    for wave, src, target, ok in zip(adv.waves, adv.source_index, adv.targets, adv.success):
        assert wave.shape == waves[src].shape
        assert np.abs(wave - waves[src]).max() <= 0.1 * waves[src].std() * 1.001
        with torch.no_grad():
            predicted = int(model(torch.from_numpy(wave)[None], torch.ones(1, len(wave)))[0].argmax())
        assert (predicted == target) == ok
        assert wave.base is None  # its own array: a view would keep its whole padded batch in memory
    assert np.median(adv.snr_db) > 15
    exhaustive = TargetedPGD(tau=0.1, steps=40, early_stop=False, batch_size=4).generate(model, waves, targets)
    assert adv.steps_taken.sum() < exhaustive.steps_taken.sum() == 9 * 40
    assert all(p.requires_grad for p in model.parameters())  # restored after the attack


def test_a_cosine_step_schedule_moves_a_sample_by_sigma_first_and_by_less_at_each_later_step():
    """Without a random start or early stop, step t of P moves each sample point by sigma (1 + cos(pi t / P)) / 2
    (the ball is wide enough never to clip): over P = 4, sigma, then 0.85, 0.5 and 0.15 of it; the constant schedule
    moves by sigma every time; without a sigma, cosine starts at four times the constant default. A schedule serkit does
    not know is refused by name."""
    model = BandEnergy().eval()
    waves, labels = noise_and_labels(model)
    targets = draw_targets(labels, 4, 1, seed=0)
    moved = {}
    for schedule in ("constant", "cosine"):
        for steps in range(1, 5):
            pgd = TargetedPGD(tau=10.0, sigma=0.01, steps=steps, tau_mode="absolute", random_start=False,
                              early_stop=False, batch_size=4, step_schedule=schedule)
            adv = pgd.generate(model, waves, targets)
            moved[schedule, steps] = max(np.abs(w - waves[i]).max() for w, i in zip(adv.waves, adv.source_index))
        assert pgd.params()["step_schedule"] == schedule
    assert [moved["constant", p] for p in range(1, 5)] == pytest.approx([0.01, 0.02, 0.03, 0.04], abs=1e-6)
    # a point whose gradient keeps its sign moves by the sum of the steps: 1, 1.5, 2 and 2.5 sigma over P = 1 to 4
    cosine = [0.01 * sum(0.5 * (1 + math.cos(math.pi * t / p)) for t in range(p)) for p in range(1, 5)]
    assert cosine == pytest.approx([0.01, 0.015, 0.02, 0.025])
    assert [moved["cosine", p] for p in range(1, 5)] == pytest.approx(cosine, abs=1e-6)
    # unless sigma is given, cosine starts at four times the constant step 2.5 tau / P (the setting RESULTS 36 measured)
    assert TargetedPGD(tau=0.03, steps=20).sigma == pytest.approx(0.00375)
    assert TargetedPGD(tau=0.03, steps=20, step_schedule="cosine").sigma == pytest.approx(0.015)
    with pytest.raises(ValueError, match="PGD step_schedule 'linear': choose constant or cosine"):
        TargetedPGD(step_schedule="linear")


class BandEnergyRecorded(BandEnergy):
    """BandEnergy recording, at each call, whether autocast is on and the dtype its band filters ran in."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, mask):
        logits = super().forward(x, mask)
        self.seen.append((torch.is_autocast_enabled("cpu"), logits.dtype))
        return logits


def test_pgd_in_bfloat16_runs_the_model_in_bfloat16_and_still_reaches_targets_inside_the_ball():
    model = BandEnergyRecorded().eval()
    waves, labels = noise_and_labels(model)
    model.seen.clear()
    adv = TargetedPGD(tau=0.1, steps=40, batch_size=4, precision="bfloat16").generate(model, waves, draw_targets(labels, 4, 3, seed=0))
    steps = [dtype for on, dtype in model.seen if on]
    assert steps and all(dtype == torch.bfloat16 for dtype in steps)
    assert model.seen[-1] == (False, torch.float32)  # success is judged by the float32 model the fine-tuning uses
    assert adv.success.mean() >= 0.8
    for wave, src in zip(adv.waves, adv.source_index):
        assert np.abs(wave - waves[src]).max() <= 0.1 * waves[src].std() * 1.001
    model.seen.clear()
    TargetedPGD(tau=0.1, steps=5, batch_size=4).generate(model, waves, draw_targets(labels, 4, 3, seed=0))
    assert model.seen and not any(on for on, _ in model.seen)  # float32, the default: no autocast anywhere
    with pytest.raises(ValueError, match="PGD precision 'float16': choose float32 or bfloat16"):
        TargetedPGD(precision="float16")


def test_log_mel_front_ends_compute_in_float32_inside_autocast_and_the_layers_after_them_do_not():
    from serkit.models import build_model
    from serkit.models.whisper import WhisperLogMel

    cnn = build_model("cnn6", {}, 4).eval()
    x = torch.from_numpy((0.1 * np.random.default_rng(0).standard_normal((2, 8000))).astype(np.float32))
    mask = torch.ones_like(x, dtype=torch.bool)
    for frontend in (cnn.frontend, WhisperLogMel(80)):
        plain = frontend(x, mask)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = frontend(x, mask)[0]
        assert mixed.dtype == torch.float32
        torch.testing.assert_close(mixed, plain, rtol=0, atol=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert cnn(x, mask).dtype == torch.bfloat16  # the convolutions after it do run in bfloat16


def test_pgd_gives_freed_memory_back_after_each_batch_and_when_its_rows_shrink_without_changing_a_sample(monkeypatch):
    from serkit.unlearning import pgd as pgd_module

    model = BandEnergy().eval()
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (6000, 4000, 5000)]
    targets = draw_targets(np.zeros(3, dtype=int), 4, 3, seed=0)
    attack = TargetedPGD(tau=0.1, steps=40, batch_size=4)
    trims = []
    monkeypatch.setattr(pgd_module, "give_back_freed_memory", lambda: trims.append(1))
    trimmed = attack.generate(model, waves, targets)
    shrinks = len(trims) - 3  # one after each of the three batches
    monkeypatch.setattr(pgd_module, "TRIM_WHEN_ROWS_DROP", False)
    trims.clear()
    plain = attack.generate(model, waves, targets)
    assert len(trims) == 3
    # a shrink is a step after which fewer rows attack; the rows reaching their target at the batch's last
    # check end it without one
    assert 1 <= shrinks <= int(trimmed.success.sum())
    for a, b in zip(trimmed.waves, plain.waves):
        np.testing.assert_array_equal(a, b)
    assert (trimmed.steps_taken == plain.steps_taken).all()


def test_pgd_samples_made_on_demand_are_the_ones_made_up_front_and_only_those_asked_for():
    from serkit.unlearning.pgd import OnDemandAdversarial

    torch.manual_seed(0)
    model = build_model("cnn6", {}, 4).eval()
    rng = np.random.default_rng(1)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (6000, 4000, 5000)]
    targets = draw_targets(np.array([0, 1, 2]), 4, 3, seed=0)
    pgd = TargetedPGD(tau=0.05, steps=6, batch_size=4, seed=3)
    upfront = pgd.generate(model, waves, targets)
    before = [p.detach().clone() for p in model.parameters()]
    reported = []
    lazy = OnDemandAdversarial(pgd, model, waves, targets, progress=lambda done, total: reported.append((done, total)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # the model trains meanwhile: the samples still come from the original
    got, labels = lazy.take([7, 2, 7])
    assert len(lazy.made) == 2 and reported == [(2, 9)]  # 7 once, 2: nothing else is attacked
    assert (labels == upfront.targets[[7, 2, 7]]).all()
    for wave, i in zip(got, [7, 2, 7]):
        np.testing.assert_allclose(wave, upfront.waves[i], atol=1e-6)
    assert lazy.summary()["samples"] == 2 and lazy.summary()["samples_planned"] == 9
    for p, b in zip(model.parameters(), before):
        p.data.copy_(b)


def test_an_adversarial_request_stopped_early_makes_only_the_pgd_samples_its_steps_used(model_dir, tmp_path):
    params = {**QUICK, "epochs": 1, "batch_size": 4, "check_every": 1, "target": "retrain-like", "target_accuracy": 1.0,
              "adversarial_generation": "on-demand"}
    lazy = forget(model_dir, tmp_path / "lazy", speaker="02", n=6, method="adv-ewc", params=params, log=lambda *a: None)
    pgd = lazy.receipt["stats"]["pgd"]
    assert (pgd["samples"], pgd["samples_planned"], lazy.receipt["stats"]["steps"]) == (4, 18, 1)  # one step of 4
    full = {**params, "stop_early": False}
    made = {g: forget(model_dir, tmp_path / g, speaker="02", n=6, method="adv-ewc", params={**full, "adversarial_generation": g},
                      log=lambda *a: None) for g in ("on-demand", "upfront")}
    assert made["on-demand"].receipt["stats"]["pgd"]["samples"] == made["upfront"].receipt["stats"]["pgd"]["samples"] == 18
    a, b = (load_model(made[g].model_dir).model.state_dict() for g in ("on-demand", "upfront"))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)  # the same samples, the same model
    with pytest.raises(ConfigError, match="adversarial_keep=successful.*use adversarial_generation=upfront"):
        forget(model_dir, tmp_path / "x", speaker="02", n=6, method="adv-ewc", log=lambda *a: None,
               params={**QUICK, "adversarial_keep": "successful", "adversarial_generation": "on-demand"})


def test_fisher_and_ewc_penalty():
    torch.manual_seed(0)
    model = build_model("cnn6", {}, 3)
    waves = [np.random.default_rng(i).standard_normal(8000).astype(np.float32) * 0.1 for i in range(3)]
    fisher = fisher_diagonal(model, waves, np.array([0, 1, 2]))
    assert all((f >= 0).all() for f in fisher.values()) and sum(float(f.sum()) for f in fisher.values()) > 0
    penalty = AnchorPenalty(model, fisher)
    assert float(penalty(model).detach()) == 0.0
    with torch.no_grad():
        model.fc2.weight.add_(0.1)
    assert float(penalty(model).detach()) > 0
    normalized = fisher_diagonal(model, waves, np.array([0, 1, 2]), normalize=True)
    assert max(float(f.max()) for f in normalized.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["adv-ewc", "adv-ewc/successful-sgd", "random-label", "neg-grad", "l2ul", "jit",
                                    "amun"])
def test_forget_writes_a_new_model_and_a_receipt(model_dir, tmp_path, method):
    before = sha256_file(model_dir / "model.safetensors")
    params = {"adv-ewc": QUICK, "random-label": {"epochs": 2}, "neg-grad": {"epochs": 2}, "l2ul": QUICK,
              "jit": {"lr": 1e-3, "n_samples": 4}, "amun": {"epochs": 2, "pgd_steps": 10, "max_doublings": 2},
              "adv-ewc/successful-sgd": {**QUICK, "adversarial_keep": "successful", "optimizer": "sgd", "lr": 1e-2}}[method]
    variant, method = method, method.split("/")[0]
    result = forget(model_dir, tmp_path / "out", speaker="02", n=6, method=method, params=params, log=lambda *a: None)
    assert sha256_file(model_dir / "model.safetensors") == before  # the input is untouched
    receipt = json.loads((tmp_path / "out" / "receipt.json").read_text())
    assert receipt["model_before"]["weights_sha256"] == before != receipt["model_after"]["weights_sha256"]
    assert receipt["forget_set"]["n"] == 6 and len(receipt["forget_set"]["commitments"]) == 6
    ev = receipt["evaluation"]
    assert ev["unseen_part"] == "val" and set(ev["after"]) >= {"forget", "val", "membership", "speaker_other_training"}
    if method != "amun":  # AMUN also trains on the forget set's true labels: a weak model may gain on it
        assert ev["after"]["forget"]["accuracy"] <= ev["before"]["forget"]["accuracy"]
    else:
        assert receipt["stats"]["attack"]["samples"] == 6 and receipt["stats"]["attack"]["norm"] == "l2"
    assert receipt["method"]["reads_remaining_data"] is False
    if method == "adv-ewc":
        stats = receipt["stats"]
        assert stats["pgd"]["samples"] == 18 and "fisher_sum" in stats["ewc"]
        if variant.endswith("successful-sgd"):  # only the samples that reached their target are trained on
            assert stats["adversarial_used"] == round(18 * stats["pgd"]["target_success_rate"]) and stats["optimizer"] == "sgd"
        else:
            assert stats["adversarial_used"] == 18 and stats["optimizer"] == "adam"
    new = load_model(result.model_dir)
    assert new.config["provenance"]["unlearning"]["method"] == method
    assert "forget set only" in (tmp_path / "out" / "report.md").read_text()


def test_output_rules_and_interrupted_runs(model_dir, tmp_path, monkeypatch):
    with pytest.raises(SerkitError, match="overwrite or sit inside the input model"):
        forget(model_dir, model_dir, speaker="02", n=2, method="adv-ewc", params=QUICK, log=lambda *a: None)
    with pytest.raises(SerkitError, match="overwrite or sit inside the input model"):
        forget(model_dir, model_dir / "sub", speaker="02", n=2, method="adv-ewc", params=QUICK, log=lambda *a: None)
    (tmp_path / "exists").mkdir()
    with pytest.raises(SerkitError, match="already exists.*--overwrite"):
        forget(model_dir, tmp_path / "exists", speaker="02", n=2, method="adv-ewc", params=QUICK, log=lambda *a: None)
    with pytest.raises(SerkitError, match="exists and is not a serkit output of this kind, so --overwrite will not delete it"):
        forget(model_dir, tmp_path / "exists", speaker="02", n=2, method="adv-ewc", params=QUICK, overwrite=True, log=lambda *a: None)
    first = forget(model_dir, tmp_path / "done", speaker="02", n=2, method="random-label", params={"epochs": 1},
                   log=lambda *a: None)
    first.keys_file.rename(tmp_path / "first-keys.json")  # the owner keeps the first request's key; then may replace it
    again = forget(model_dir, tmp_path / "done", speaker="02", n=2, method="random-label", params={"epochs": 1},
                   overwrite=True, log=lambda *a: None)
    assert json.loads((tmp_path / "done" / "receipt.json").read_text())["request_id"] == again.receipt["request_id"] \
        != first.receipt["request_id"]

    from serkit.unlearning.methods import random_label

    def boom(self, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(random_label.RandomLabel, "unlearn", boom)
    with pytest.raises(KeyboardInterrupt):
        forget(model_dir, tmp_path / "never", speaker="02", n=2, method="random-label", log=lambda *a: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done", "exists", "first-keys.json"]


def test_adversarial_keep_successful_drops_failed_samples(model_dir, tmp_path, monkeypatch):
    from serkit.unlearning import pgd

    real = pgd.TargetedPGD.generate
    failed = {"every": slice(None)}

    def some_failed(self, model, waves, targets, progress=None):
        made = real(self, model, waves, targets, progress)
        made.success[failed["every"]] = False
        return made

    monkeypatch.setattr(pgd.TargetedPGD, "generate", some_failed)
    params = {**QUICK, "adversarial_keep": "successful"}
    with pytest.raises(ConfigError, match="none of the 6 PGD samples reached its target.*raise tau or pgd_steps"):
        forget(model_dir, tmp_path / "out", speaker="02", n=2, method="adv-ewc", params=params, log=lambda *a: None)
    assert not (tmp_path / "out").exists()
    failed["every"] = slice(None, None, 2)  # samples 0, 2, 4 failed: at most 3 of 6 are trained on
    result = forget(model_dir, tmp_path / "half", speaker="02", n=2, method="adv-ewc", params=params, log=lambda *a: None)
    stats = result.receipt["stats"]
    assert stats["adversarial_used"] == round(6 * stats["pgd"]["target_success_rate"]) <= 3
    with pytest.raises(ConfigError, match="optimizer sgd needs its own lr"):
        forget(model_dir, tmp_path / "sgd", speaker="02", n=2, method="adv-ewc", params={**QUICK, "optimizer": "sgd"}, log=lambda *a: None)


def test_method_errors_are_clear(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown unlearning method 'magic'"):
        get_method("magic")
    with pytest.raises(ConfigError, match="method 'adv-ewc': pgd_stepz"):
        get_method("adv-ewc", {"pgd_stepz": 3})
    with pytest.raises(SerkitError, match="pass --remain"):
        forget(model_dir, tmp_path / "r", speaker="02", n=2, method="remain", params={"epochs": 1}, log=lambda *a: None)
    assert not (tmp_path / "r").exists()


def test_remain_and_retrain_baselines(model_dir, tiny_manifest, tmp_path):
    remain = forget(model_dir, tmp_path / "remain", speaker="02", n=3, method="remain", params={"epochs": 1},
                    remain=tiny_manifest, log=lambda *a: None)
    assert remain.receipt["method"]["reads_remaining_data"] is True
    assert remain.receipt["stats"]["remaining_utterances"] == 48 - 3
    retrain = forget(model_dir, tmp_path / "retrain", speaker="02", n=3, method="retrain", params={"max_epochs": 1},
                     log=lambda *a: None)
    assert retrain.receipt["stats"]["epochs_run"] == 1
    compared = forget(model_dir, tmp_path / "cmp", speaker="02", n=3, method="random-label", params={"epochs": 1},
                      retrained=retrain.model_dir, log=lambda *a: None)
    assert 0 <= compared.receipt["evaluation"]["after"]["vs_retrained"]["agreement_unseen"] <= 1
    assert compared.receipt["timing"]["speedup_over_retraining"] > 0


def test_neg_grad_raises_the_forget_loss_only_up_to_its_bound(model_dir, tmp_path):
    """Gradient ascent on the true labels lowers forget-set accuracy; an utterance whose loss is past the
    bound no longer pulls: with a bound below every utterance's loss, no weight moves at all."""
    from safetensors.torch import load_file

    result = forget(model_dir, tmp_path / "ga", speaker="02", n=6, method="neg-grad",
                    params={"epochs": 3, "target": "misclassify"}, log=lambda *a: None)
    receipt = result.receipt
    assert receipt["stats"]["loss_bound"] == pytest.approx(np.log(4))  # ln K for the tiny model's 4 emotions
    assert receipt["evaluation"]["after"]["forget"]["accuracy"] < receipt["evaluation"]["before"]["forget"]["accuracy"]
    capped = forget(model_dir, tmp_path / "capped", speaker="02", n=6, method="neg-grad",
                    params={"epochs": 1, "loss_bound": 1e-6, "stop_early": False}, log=lambda *a: None)
    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(capped.model_dir / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)



def test_a_head_only_request_moves_the_head_and_leaves_every_backbone_weight_as_trained(model_dir, tmp_path):
    """update head: the fine-tuning steps change fc1 / fc2 only; the convolutional blocks and their batch-norm
    statistics are bit for bit the trained ones, and the model still learns what the method asks of it."""
    from safetensors.torch import load_file

    result = forget(model_dir, tmp_path / "head", speaker="02", n=6, method="random-label",
                    params={"epochs": 3, "update": "head", "lr": 1e-2, "stop_early": False}, log=lambda *a: None)
    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(result.model_dir / "model.safetensors"))
    head = [k for k in before if k.startswith(("fc1.", "fc2."))]
    assert head and all(not torch.equal(before[k], after[k]) for k in head)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in head)
    assert result.receipt["method"]["params"]["update"] == "head"

def test_mas_importance_ranks_the_weights_an_utterance_uses_and_min_max_scales_each_tensor():
    torch.manual_seed(0)
    model = build_model("cnn6", {}, 3)
    waves = [np.random.default_rng(i).standard_normal(8000).astype(np.float32) * 0.1 for i in range(3)]
    with torch.no_grad():
        model.fc2.weight[1].zero_()  # class 1's logit is now 0 for every input: its row has no say in the output
        model.fc2.bias[1] = 0
    importance = mas_importance(model, waves)
    row = importance["fc2.weight"]
    assert float(row[1].abs().max()) == 0 < float(row[0].sum())
    scaled = min_max_per_tensor(importance)
    assert all(float(w.min()) == 0 and float(w.max()) == pytest.approx(1) for w in scaled.values() if w.numel() > 1)


def test_l2ul_anchor_holds_the_weights_the_forget_set_does_not_use_and_frees_those_it_does(model_dir, tmp_path):
    """The inverted-importance anchor at its default weight, against the same run without it: the weights least
    important to the forget set move far less, the most important ones about as much (EWC's anchor does the opposite)."""
    from safetensors.torch import load_file

    from serkit.data.dataset import load_waves

    saved = load_model(model_dir)
    forgotten = build_forget_set(saved, speaker="02", n=6, seed=0)
    importance = min_max_per_tensor(mas_importance(saved.model, load_waves(forgotten.audio_paths(), saved.preprocessing)))
    before = load_file(str(model_dir / "model.safetensors"))

    def movement(reg_lamb):
        result = forget(model_dir, tmp_path / f"l2ul-{reg_lamb}", speaker="02", n=6, method="l2ul",
                        params={**QUICK, "stop_early": False, **({} if reg_lamb is None else {"reg_lamb": reg_lamb})},
                        log=lambda *a: None)
        after = load_file(str(result.model_dir / "model.safetensors"))
        moved = {n: (after[n] - before[n]).abs() for n in importance}
        important = torch.cat([moved[n][importance[n] > 0.9] for n in moved]).mean()
        unimportant = torch.cat([moved[n][importance[n] < 0.1] for n in moved]).mean()
        return float(important), float(unimportant), result.receipt["stats"]["anchor"]

    free_important, free_unimportant, _ = movement(0.0)
    important, unimportant, anchor = movement(None)
    assert unimportant < 0.5 * free_unimportant
    assert important > 0.8 * free_important
    assert 0 < anchor["share_important"] < 0.5


def test_experiment_grid_runs_resumes_and_summarises(model_dir, tmp_path):
    from serkit.unlearning.experiment import load_grid, run_grid

    recipe = tmp_path / "grid.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'grid'}\nbackbones:\n  cnn6:\n    train->val: {model_dir}\nspeakers: ['02']\n"
        "n: [3]\nseeds: [0]\nmethods:\n  random-label: {epochs: 1}\n"
        "  adv: {epochs: 1, adversarial_per_sample: 2, pgd_steps: 3}\ntaus: [0.02, 0.05]\n")
    messages = []
    out = run_grid(load_grid(recipe), log=messages.append)
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 and messages[0] == "0 runs done, 3 to go"
    assert "random-label" in (out / "table1.md").read_text() and (out / "fig2.png").stat().st_size > 1000
    assert not any((out / "runs").glob("*/model"))  # unlearned models are dropped unless keep_models
    messages.clear()
    run_grid(load_grid(recipe), log=messages.append)
    assert messages[0] == "3 runs done, 0 to go"
    with pytest.raises(ConfigError, match="unknown setting 'train->test'"):
        load_grid(recipe, ["backbones.cnn6={'train->test': x}"])
    # speaker 02 has 12 utterances in the tiny manifest: n = 20 is refused before any run starts
    with pytest.raises(ConfigError, match=r"up to 20 utterances per forget speaker, but speaker 02 has 12"):
        run_grid(load_grid(recipe, ["n=[3, 20]", f"output_dir={tmp_path / 'g2'}"]), log=messages.append)
    assert not (tmp_path / "g2" / "results.csv").exists()


def test_experiment_grid_speakers_per_backbone(model_dir, tmp_path):
    """Backbones trained on different corpora have different speakers: each backbone may list its own."""
    import pandas as pd

    from serkit.unlearning.experiment import load_grid, run_grid

    recipe = tmp_path / "grid.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'grid'}\nbackbones:\n  a:\n    train->val: {model_dir}\n"
        f"  b:\n    train->val: {model_dir}\n    speakers: ['01']\nspeakers: ['02']\n"
        "n: [2]\nseeds: [0]\nmethods:\n  random-label: {epochs: 1}\n")
    out = run_grid(load_grid(recipe), log=lambda *a: None)
    rows = pd.read_csv(out / "results.csv", dtype=str)
    assert sorted(zip(rows.backbone, rows.speaker)) == [("a", "02"), ("b", "01")]
    with pytest.raises(ConfigError, match="no forget speakers for backbone a"):
        load_grid(recipe, ["speakers=[]"])
    with pytest.raises(ConfigError, match=r"backbones.b.speakers: must be a non-empty list"):
        load_grid(recipe, ["backbones.b.speakers=[]"])
    with pytest.raises(ConfigError, match=r"quote the speaker ids"):
        load_grid(recipe, ["backbones.b.speakers=[13]"])


def test_experiment_grid_method_labels_and_backbone_overrides(model_dir, tmp_path):
    """Variants of one method share a grid under their own labels; a backbone may override methods and taus;
    an older results.csv (no base_method column) is upgraded in place, not misaligned."""
    import pandas as pd

    from serkit.unlearning.experiment import load_grid, run_grid

    recipe = tmp_path / "grid.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'grid'}\nbackbones:\n  a:\n    train->val: {model_dir}\n"
        f"  b:\n    train->val: {model_dir}\n    taus: [0.03]\n    methods:\n      adv-quick: {{epochs: 2}}\n"
        "speakers: ['02']\nn: [2]\nseeds: [0]\ntaus: [0.05]\nmethods:\n  random-label: {epochs: 1}\n"
        "  random-label-rl: {method: random-label, epochs: 1, target: retrain-like}\n"
        "  adv-quick: {method: adv, epochs: 1, adversarial_per_sample: 2, pgd_steps: 3}\n")
    out = tmp_path / "grid"
    out.mkdir()
    # an older grid's file: same columns less base_method, one finished run of backbone a
    old = pd.DataFrame([{"backbone": "a", "setting": "train->val", "speaker": "02", "n": 2, "seed": 0,
                         "method": "random-label", "tau": "", "forget_uar": 0.0, "forget_accuracy": 0.0,
                         "unseen_uar_before": 0.5, "unseen_uar": 0.4, "kept": 0.8, "other_accuracy": 0.5,
                         "mia_auc_before": 0.7, "mia_auc": 0.5, "n_unseen": 12, "seconds": 1.0, "pgd_success": "",
                         "snr_db": "", "epochs_run": 1, "stop_reason": "x"}])
    old.to_csv(out / "results.csv", index=False)
    messages = []
    run_grid(load_grid(recipe), log=messages.append)
    assert messages[0] == "1 runs done, 5 to go"
    rows = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
    assert rows.base_method.tolist().count("random-label") == 4  # the old row was labelled by its method
    quick = rows[rows.method == "adv-quick"].set_index("backbone")
    assert quick.base_method.tolist() == ["adv", "adv"]
    assert float(quick.loc["a", "tau"]) == 0.05 and float(quick.loc["b", "tau"]) == 0.03
    receipts = {b: json.loads((out / "runs" / f"{b}_train-val_02_2_0_adv-quick_{t}" / "receipt.json").read_text())
                for b, t in (("a", "0.05"), ("b", "0.03"))}
    assert receipts["a"]["method"]["params"]["epochs"] == 1 and receipts["b"]["method"]["params"]["epochs"] == 2
    rl = json.loads((out / "runs" / "b_train-val_02_2_0_random-label-rl_" / "receipt.json").read_text())
    assert rl["method"]["name"] == "random-label" and rl["method"]["params"]["target"] == "retrain-like"
    table1 = (out / "table1.md").read_text()
    assert "| random-label-rl |" in table1 and "| adv-quick |" in table1 and "membership AUC" in table1
    assert " (1 of 2 runs)" not in table1  # every cell has its runs
    with pytest.raises(ConfigError, match="label 'adv-quick' ran as method 'adv' there, but the grid now makes it 'adv-ewc'"):
        run_grid(load_grid(recipe, ["methods.adv-quick.method=adv-ewc"]), log=messages.append)
    with pytest.raises(ConfigError, match=r"methods.adv-quick: tau is a grid dimension"):
        load_grid(recipe, ["methods.adv-quick.tau=0.1"])
    with pytest.raises(ConfigError, match=r"cannot run 'remain'"):
        load_grid(recipe, ["methods.r={method: remain}"])
    # a label left out for one backbone; without top-level methods the defaults do not sneak in
    only = load_grid(recipe, ["backbones.b.methods.random-label=null"])
    from serkit.unlearning.experiment import _methods
    assert "random-label" not in _methods(only, "b") and "random-label" in _methods(only, "a")
    bare = tmp_path / "bare.yaml"
    bare.write_text(f"output_dir: {out}\nbackbones:\n  a:\n    train->val: {model_dir}\n    methods:\n"
                    "      random-label: {epochs: 1}\nspeakers: ['02']\n")
    assert list(_methods(load_grid(bare), "a")) == ["random-label"]
    with pytest.raises(ConfigError, match=r"methods.adv-quick \(backbone a\).*pgd_stepz"):
        load_grid(recipe, ["methods.adv-quick.pgd_stepz=3"])
    with pytest.raises(ConfigError, match=r"methods.oops .*unknown unlearning method 'nope'"):
        load_grid(recipe, ["methods.oops={method: nope}"])


def _pgd_never_reaches_its_target(monkeypatch):
    """Every PGD sample is marked as short of its target (so `adversarial_keep: successful` runs fail)."""
    from serkit.unlearning import pgd

    real = pgd.TargetedPGD.generate

    def all_failed(self, model, waves, targets, progress=None):
        made = real(self, model, waves, targets, progress)
        made.success[:] = False
        return made

    monkeypatch.setattr(pgd.TargetedPGD, "generate", all_failed)


def test_experiment_grid_goes_on_past_a_failed_run(model_dir, tmp_path, monkeypatch):
    """A run that fails (here: no PGD sample reached its target) is listed, the others still run, the
    command ends with an error naming the list, and a rerun retries only the failed run."""
    from serkit.unlearning.experiment import load_grid, run_grid

    _pgd_never_reaches_its_target(monkeypatch)
    recipe = tmp_path / "grid.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'grid'}\nbackbones:\n  a:\n    train->val: {model_dir}\nspeakers: ['02']\n"
        "n: [2]\nseeds: [0]\ntaus: [0.05]\nmethods:\n  adv: {epochs: 1, adversarial_per_sample: 2, pgd_steps: 2, "
        "adversarial_keep: successful}\n  random-label: {epochs: 1}\n")
    out = tmp_path / "grid"
    with pytest.raises(SerkitError, match=r"1 of 2 runs failed .*failed.csv"):
        run_grid(load_grid(recipe), log=lambda *a: None)
    assert "none of the 4 PGD samples" in (out / "failed.csv").read_text()
    assert (out / "results.csv").read_text().count("\n") == 2 and (out / "table1.md").is_file()
    # a partial rerun that does not attempt the failed run keeps it listed
    messages = []
    run_grid(load_grid(recipe, ["methods={random-label: {epochs: 1}}"]), log=messages.append)
    assert messages[0] == "1 runs done, 0 to go" and "not retried this time" in messages[-1]
    assert "none of the 4 PGD samples" in (out / "failed.csv").read_text()
    monkeypatch.undo()
    messages = []
    # the failed label has no finished runs, so its parameters may change on the rerun
    run_grid(load_grid(recipe, ["methods.adv.pgd_steps=3"]), log=messages.append)
    assert messages[0] == "1 runs done, 1 to go" and not (out / "failed.csv").exists()
    assert json.loads((out / "grid.json").read_text())["methods"]["a"]["adv"]["pgd_steps"] == 3


def test_experiment_grid_on_two_worker_processes_gives_the_rows_of_one_process(model_dir, tmp_path):
    """The unlearning grid through a pool of two local workers: every run once, in another process, with the
    figures of the in-process grid; the test runs still wait for validation to choose tau."""
    import pandas as pd
    import torch

    from serkit.experiment import ExecutorConfig
    from serkit.unlearning.experiment import load_grid, run_grid

    recipe = tmp_path / "grid.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'local'}\nbackbones:\n  a:\n    train->val: {model_dir}\n"
        f"    train+val->test: {model_dir}\nspeakers: ['02']\nn: [2]\nseeds: [0]\ntaus: [0.001, 0.05]\n"
        "methods:\n  adv: {epochs: 1, adversarial_per_sample: 2, pgd_steps: 2}\n  random-label: {epochs: 1}\n")
    figures = ["setting", "method", "tau", "forget_uar", "unseen_uar", "kept", "mia_auc", "epochs_run"]
    tables = {}
    for kind in ("local", "pool"):
        executor = ExecutorConfig(kind=kind, workers=1 if kind == "local" else 2, threads=torch.get_num_threads())
        run_grid(load_grid(recipe, [f"output_dir={tmp_path / kind}"]), log=lambda *a: None, executor=executor)
        tables[kind] = pd.read_csv(tmp_path / kind / "results.csv").sort_values(["setting", "method", "tau"])[figures]
    assert len(tables["pool"]) == 5 and (tables["pool"].setting == "train+val->test").sum() == 2
    pd.testing.assert_frame_equal(tables["local"].reset_index(drop=True), tables["pool"].reset_index(drop=True))
    assert (tmp_path / "pool" / "table1.md").is_file() and not list((tmp_path / "pool" / "cells").iterdir())



def test_experiment_grid_test_runs_wait_for_validation(model_dir, tmp_path, monkeypatch):
    """While the train->val runs of a cell fail, its test runs wait (listed, not run at a provisional tau);
    once they succeed, a rerun runs the test at the chosen tau and clears failed.csv."""
    import pandas as pd

    from serkit.unlearning.experiment import load_grid, run_grid

    _pgd_never_reaches_its_target(monkeypatch)
    recipe = tmp_path / "grid.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'grid'}\nbackbones:\n  a:\n    train->val: {model_dir}\n"
        f"    train+val->test: {model_dir}\nspeakers: ['02']\nn: [2]\nseeds: [0]\ntaus: [0.05]\n"
        "methods:\n  adv: {epochs: 1, adversarial_per_sample: 2, pgd_steps: 2, adversarial_keep: successful}\n")
    out = tmp_path / "grid"
    with pytest.raises(SerkitError, match="2 of 2 runs failed"):
        run_grid(load_grid(recipe), log=lambda *a: None)
    failed = pd.read_csv(out / "failed.csv")
    assert failed.key.tolist()[-1] == "a|train+val->test|02|2|0|adv|chosen" and "1 of its train->val runs" in failed.error.iloc[-1]
    assert not (out / "results.csv").exists()
    monkeypatch.undo()
    run_grid(load_grid(recipe), log=lambda *a: None)
    rows = pd.read_csv(out / "results.csv")
    assert rows.setting.tolist() == ["train->val", "train+val->test"] and not (out / "failed.csv").exists()


def test_experiment_grid_test_setting_uses_the_tau_chosen_on_validation(model_dir, tmp_path):
    """train+val->test runs only the tau that won on train->val (the papers' protocol), after the train->val
    runs; a resume with a label's parameters changed is refused (grid.json)."""
    import pandas as pd

    from serkit.unlearning.experiment import best_taus, load_grid, run_grid

    recipe = tmp_path / "grid.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'grid'}\nbackbones:\n  a:\n    train+val->test: {model_dir}\n"
        f"    train->val: {model_dir}\nspeakers: ['02']\nn: [2]\nseeds: [0]\ntaus: [0.001, 0.05]\n"
        "methods:\n  adv: {epochs: 1, adversarial_per_sample: 2, pgd_steps: 3}\n  random-label: {epochs: 1}\n")
    messages = []
    out = run_grid(load_grid(recipe), log=messages.append)
    assert messages[0] == "0 runs done, 5 to go"
    runs = [m for m in messages if m.startswith("[")]
    assert "|train->val|" in runs[0] and "|train+val->test|" in runs[-1]  # validation first
    frame = pd.read_csv(out / "results.csv", dtype={"speaker": str})
    test = frame[frame.setting == "train+val->test"]
    chosen = best_taus(frame)[("a", 2, "adv")]
    assert sorted(frame[frame.setting == "train->val"].tau.dropna()) == [0.001, 0.05]
    assert test.tau.dropna().tolist() == [chosen] and len(test) == 2
    assert (test.n_unseen == 12).all()  # the test speaker's 12 utterances, not the val speaker's
    # a train+val model has no val accuracy: the retrain-like stop takes the train->val model's
    from serkit.unlearning.run import _reference_accuracy
    receipt = json.loads(next((out / "runs").glob("a_trainpval-test_02_2_0_adv_*/receipt.json")).read_text())
    assert receipt["method"]["params"]["target_accuracy"] == round(_reference_accuracy(load_model(model_dir)), 4)
    assert any("whose target is retrain-like stop at" in m for m in messages)
    messages.clear()
    run_grid(load_grid(recipe), log=messages.append)
    assert messages[0] == "5 runs done, 0 to go"
    everything = load_grid(recipe, ["test_taus=all", f"output_dir={tmp_path / 'all'}"])
    from serkit.unlearning.experiment import _runs
    assert sorted(str(r.tau) for r in _runs(everything) if r.setting == "train+val->test") == ["0.001", "0.05", "None"]
    with pytest.raises(ConfigError, match="label 'adv' of backbone a has finished runs with epochs=1, but the grid "
                                          "now gives epochs=2: give the new parameters a new label"):
        run_grid(load_grid(recipe, ["methods.adv.epochs=2"]), log=messages.append)
    run_grid(load_grid(recipe, ["methods.adv.preset=measured"]), log=lambda *a: None)  # the default, now explicit: same run
    with pytest.raises(ConfigError, match="train\\+val->test but no train->val model.*test_taus: all"):
        load_grid(recipe, [f"backbones.a={{'train+val->test': {model_dir}}}"])


def test_a_grid_label_recorded_with_every_field_resumes_even_where_the_method_refuses_a_field_beside_another():
    """grid.json records every field of a label; pgu refuses its paper weights beside forget_loss ascent, and a
    field added since an older record reads as unset: neither is a change of the label's parameters."""
    from serkit.unlearning.experiment import _fingerprint, _set_fields

    params = {"retained_var": 0.8, "lr": 1.0e-2, "epochs": 30, "forget_loss": "ascent"}
    recorded = _fingerprint("pgu", params)
    assert recorded["loss2_w"] == 0.2  # recorded at its default, which set by hand would be refused
    older = {k: v for k, v in recorded.items() if k != "share_power"}
    for record in (recorded, older):
        assert _fingerprint("pgu", _set_fields(record)) == _fingerprint("pgu", params)
    assert _fingerprint("pgu", _set_fields({**recorded, "lr": 0.02})) != _fingerprint("pgu", params)


def test_grid_summary_tables_from_known_rows(tmp_path):
    """Table 1 on hand-made rows: tau chosen among taus with all their runs, the z-test against the best
    random-labelling row, cells with missing runs marked, and each method placed against the retrained spread."""
    import pandas as pd

    from serkit.unlearning.experiment import COLUMNS, summarise

    rows = []

    def add(method, base, speaker, unseen, forget_acc, mia, tau=""):
        rows.append({c: "" for c in COLUMNS} | dict(
            backbone="x", setting="train->val", speaker=speaker, n=10, seed=0, method=method, base_method=base, tau=tau,
            forget_uar=0.05, forget_accuracy=forget_acc, unseen_uar_before=0.7, unseen_uar=unseen, kept=unseen / 0.7,
            mia_auc_before=0.8, mia_auc=mia, n_unseen=480))

    for speaker in ("05", "12"):
        add("random-label", "random-label", speaker, 0.30, 0.0, 0.2)
        add("random-label-rl", "random-label", speaker, 0.50, 0.7, 0.5)
        add("adv-q", "adv-ewc", speaker, 0.65, 0.7, 0.5, 0.01)
        add("adv-q", "adv-ewc", speaker, 0.68, 0.7, 0.5, 0.02)
        add("retrain", "retrain", speaker, 0.70, 0.8 if speaker == "05" else 0.6, 0.45 if speaker == "05" else 0.55)
    add("adv-q", "adv-ewc", "19", 0.69, 0.7, 0.5, 0.03)  # the best mean, but one run of three: not chosen
    add("random-label-rl", "random-label", "19", 0.50, 0.7, 0.5)
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    summarise(tmp_path)
    table1 = (tmp_path / "table1.md").read_text()
    assert json.loads((tmp_path / "chosen_taus.json").read_text()) == {"x|10|adv-q": 0.02}
    assert "N=10: adv-q vs random-label-rl: z = " in table1
    assert "| adv-q | 0.050 ± 0.000 | 0.680 ± 0.000 (2 of 3 runs) |" in table1
    assert "retrained models (2 runs): forget acc. 0.60..0.80, membership AUC 0.45..0.55" in table1
    assert "- adv-q: forget acc. 0.70, membership AUC 0.50: within" in table1
    assert "- random-label: forget acc. 0.00, membership AUC 0.20: outside" in table1
    assert "| x | train->val | 10 | 71.4% (random-label-rl) | 97.1% | adv-q |" in (tmp_path / "table2.md").read_text()


def test_presets_fill_what_is_left_unset():
    """The measured preset is the default (the calibrated stop, P 20, M 10); the papers' values stay one switch
    away; a value set explicitly wins over either preset."""
    measured = get_method("adv-ewc").params
    assert (measured.target, measured.pgd_steps, measured.adversarial_per_sample) == ("calibrated", 20, 10)
    paper = get_method("adv-ewc", {"preset": "paper"}).params
    assert (paper.target, paper.pgd_steps, paper.adversarial_per_sample) == ("misclassify", 50, 20)
    mixed = get_method("adv", {"preset": "paper", "pgd_steps": 7, "target": "retrain-like"}).params
    assert (mixed.target, mixed.pgd_steps, mixed.adversarial_per_sample) == ("retrain-like", 7, 20)
    assert get_method("random-label").params.target == "calibrated"
    assert get_method("random-label", {"preset": "paper"}).params.target == "misclassify"
    with pytest.raises(ConfigError, match="preset"):
        get_method("adv-ewc", {"preset": "fast"})


def test_preset_retrain_like_without_a_reference_falls_back_and_says_so(model_dir, tmp_path, monkeypatch):
    """A model that records no validation accuracy has nothing to stop at: the preset's retrain-like target
    falls back to misclassify with a note, while an explicit retrain-like target is refused."""
    from serkit.unlearning import run as run_module

    monkeypatch.setattr(run_module, "_reference_accuracy", lambda saved: None)
    notes = []
    result = forget(model_dir, tmp_path / "fallback", speaker="02", n=2, method="random-label",
                    params={"epochs": 2}, log=notes.append)
    assert any("stops once the forget set is misclassified" in str(n) for n in notes)
    assert result.receipt["stats"]["target"].startswith("misclassify (no reference")  # the receipt says what ran
    with pytest.raises(ConfigError, match="needs a reference accuracy"):
        forget(model_dir, tmp_path / "explicit", speaker="02", n=2, method="random-label",
               params={"epochs": 2, "target": "retrain-like"}, log=lambda *a: None)


@pytest.fixture(scope="module")
def calibrated_dir(tiny_split, tmp_path_factory):
    """The tiny recipe holding 2 utterances of each training speaker out of training (data.calibration)."""
    out = tmp_path_factory.mktemp("calibrated") / "run"
    recipe = tiny_recipe(tiny_split, out, max_epochs=4)
    recipe["data"]["calibration"] = 2
    return train(load_recipe(raw=recipe), log=lambda *a: None).model_dir


def test_calibration_utterances_are_held_out_of_training_and_profiled_in_the_model_directory(calibrated_dir):
    saved = load_model(calibrated_dir)
    provenance = saved.config["provenance"]
    assert provenance["n_utterances"]["train"] == 4 * 12 - 4 * 2 and provenance["n_utterances"]["calibration"] == 8
    profiles = provenance["calibration"]
    assert profiles["per_speaker"] == 2 and profiles["unseen"]["part"] == "val" and profiles["known"]["n"] == 8
    assert len(profiles["unseen"]["loss_quantiles"]) == 101 and 0 <= profiles["known"]["auc_vs_unseen"] <= 1
    assert profiles["unseen"]["accuracy"] == pytest.approx(provenance["training"]["best_val_accuracy"])
    assert "calibration" not in json.dumps(provenance["speakers"])  # a part of the training data, not of the split


def test_a_forget_set_never_holds_an_utterance_the_model_did_not_train_on(calibrated_dir, tiny_manifest):
    from serkit.unlearning.forget_set import training_data

    saved = load_model(calibrated_dir)
    data = training_data(saved)
    frame = data.manifest.frame
    held = set(frame["path"][data.calibration_mask()])
    whole = build_forget_set(saved, speaker="02")
    assert len(whole) == 10 and not held & set(whole.rows["path"])
    held_02 = sorted(held & set(frame["path"][frame["speaker"] == "02"]))
    warnings = []
    listed = build_forget_set(saved, files=[held_02[0], whole.rows["path"].iloc[0]], warn=warnings.append)
    assert len(listed) == 1 and listed.skipped == [held_02[0]] and "not in the model's training data" in warnings[0]


def test_calibration_rows_do_not_depend_on_the_other_rows_or_where_the_manifest_is():
    import pandas as pd

    from serkit.data.splits import calibration_rows

    frame = pd.DataFrame({"speaker": ["a"] * 6 + ["b"] * 6, "path": [f"x/{s}{i}.wav" for s in "ab" for i in range(6)]})
    chosen = set(frame["path"][calibration_rows(frame, ["a", "b"], 2)])
    assert len(chosen) == 4
    moved = frame.assign(path=["/elsewhere/" + p.split("/")[1] for p in frame["path"]]).iloc[::-1]
    fewer = moved[~moved["path"].str.endswith(tuple(p.split("/")[1] for p in frame["path"][:6] if p not in chosen)[:2])]
    again = {p.split("/")[-1] for p in fewer["path"][calibration_rows(fewer.reset_index(drop=True), ["a", "b"], 2)]}
    assert again == {p.split("/")[1] for p in chosen}
    with pytest.raises(SerkitError, match="data.calibration 6: speaker 'a' has only 6 utterances"):
        calibration_rows(frame, ["a"], 6)


def test_calibrated_stop_ends_where_the_forget_set_scores_the_known_speakers_membership_auc(calibrated_dir, tmp_path):
    """The calibrated target, the default on a model with calibration profiles, stops once the forget set's
    membership AUC against the recorded unseen-speaker profile is down to what held-out utterances of training
    speakers scored, lowered towards 0.5 by the square of the share of the speaker forgotten; the receipt says
    what it aimed for and the history shows the figure falling to it."""
    from serkit.unlearning.forget_set import training_data

    saved = load_model(calibrated_dir)
    known_auc = saved.config["provenance"]["calibration"]["known"]["auc_vs_unseen"]
    share = training_data(saved).forget_share(build_forget_set(saved, speaker="02", n=6))
    goal = known_auc - share ** 2 * (known_auc - 0.5)
    result = forget(calibrated_dir, tmp_path / "calibrated", speaker="02", n=6, method="neg-grad",
                    params={"epochs": 30, "check_every": 1}, log=lambda *a: None)
    stats, outcome = result.receipt["stats"], result.receipt["outcome"]
    assert stats["target"] == "calibrated" and outcome["target_measure"] == "membership_auc"
    assert outcome["target_membership_auc"] == pytest.approx(goal) and outcome["target_reached"] is True
    assert "membership AUC against unseen speakers" in stats["stop_reason"]
    first = stats["history"][0]["forget_membership_auc"]
    assert first > goal or stats["steps"] <= stats["history"][0]["epoch"]  # it had to fall, or fell within epoch 1
    accuracy = forget(calibrated_dir, tmp_path / "accuracy", speaker="02", n=6, method="neg-grad",
                      params={"target": "calibrated-accuracy", "epochs": 30, "check_every": 1}, log=lambda *a: None)
    known = saved.config["provenance"]["calibration"]["known"]["accuracy"]
    assert accuracy.receipt["outcome"]["target_accuracy"] == pytest.approx(known)


def test_a_held_out_stop_measures_the_forget_set_against_the_current_models_losses_on_other_speakers_held_out_utterances(
        calibrated_dir, tmp_path, monkeypatch):
    """stop_reference held-out: each check scores the held-out calibration utterances of the OTHER training speakers
    with the model as it is now (the stored profile goes stale as fine-tuning moves every loss), and stops at
    target_membership_auc (by default where retraining puts the forget set; this 4-epoch model fits its forget
    set no better than that, so the test asks for less); the receipt and report say the request read them,
    never how many."""
    import re

    from serkit.data.manifest import Manifest
    from serkit.metrics import membership_auc
    from serkit.unlearning import evaluation
    from serkit.unlearning.evaluation import outputs
    from serkit.unlearning.forget_set import training_data
    from serkit.unlearning.stopping import HeldOutReference, stop_rule

    monkeypatch.setattr(evaluation, "MIN_REFERENCE", 4)  # the tiny corpus holds out 2 utterances of 4 speakers
    result = forget(calibrated_dir, tmp_path / "held-out", speaker="02", n=6, method="random-label",
                    params={"epochs": 30, "stop_reference": "held-out", "target_membership_auc": 0.2},
                    log=lambda *a: None)
    receipt = result.receipt
    stats, outcome = receipt["stats"], receipt["outcome"]
    assert stats["target"] == "calibrated (held-out reference)" and outcome["target_membership_auc"] == 0.2
    assert outcome["target_reached"] is True and "against held-out utterances of trained speakers" in stats["stop_reason"]
    assert "read at request time" in receipt["data"]["stop_reference"]
    # the steps it was measured with, unless set: checked after each, a third of the model's training rate
    trained_lr = load_model(calibrated_dir).config["provenance"]["training"]["learning_rate"]
    assert receipt["method"]["params"]["check_every"] == 1 and stats["lr"] == pytest.approx(trained_lr / 3)
    assert "read at request time" in (result.out_dir / "report.md").read_text()
    # a fraction over N x their count would say how many speakers the forget set holds: two decimals only
    assert all(round(h["forget_membership_auc"], 2) == h["forget_membership_auc"] for h in stats["history"])
    # the figure it stopped at is the new model's forget-set AUC against speakers 01, 03 and 04's held-out utterances
    saved, data = load_model(result.model_dir), training_data(load_model(calibrated_dir))
    frame = data.manifest.frame
    others = frame[data.calibration_mask() & (frame["speaker"] != "02")].reset_index(drop=True)
    assert sorted(others["speaker"].unique()) == ["01", "03", "04"]
    forgotten = build_forget_set(load_model(calibrated_dir), speaker="02", n=6)
    forget_part = evaluation._eval_set(saved, "f", Manifest(forgotten.rows, data.manifest.file))
    reference = evaluation._eval_set(saved, "r", Manifest(others, data.manifest.file))

    def auc(model):
        return membership_auc(outputs(model, forget_part)[1], outputs(model, reference)[1])

    stopped_at = float(re.search(r"trained speakers (\d\.\d\d) <=", stats["stop_reason"]).group(1))
    assert auc(saved.model) == pytest.approx(stopped_at, abs=0.006) and stopped_at <= 0.2
    assert auc(load_model(calibrated_dir).model) > 0.2 and stats["steps"] > 1  # it had to fall
    # the default goal: where retraining puts the forget set, from a few of a speaker's utterances to all of them
    known = {"known": {"auc_vs_unseen": 0.56}}
    goals = [stop_rule("calibrated", None, known, None, True, reference=HeldOutReference([], np.zeros(0)),
                       forget_share=share).goal for share in (0.0, 0.5, 1.0)]
    assert goals == pytest.approx([0.5, 0.47, 0.44])
    assert stop_rule("calibrated", None, None, None, True, reference=HeldOutReference([], np.zeros(0)),
                     forget_share=1.0).goal == 0.5


def test_the_calibrated_goal_falls_with_the_square_of_the_share_of_a_speaker_forgotten_unless_share_power_says_otherwise(
        calibrated_dir, tmp_path):
    from serkit.unlearning.forget_set import training_data

    known = load_model(calibrated_dir).config["provenance"]["calibration"]["known"]["auc_vs_unseen"]
    share = training_data(load_model(calibrated_dir)).forget_share(build_forget_set(load_model(calibrated_dir),
                                                                                    speaker="02", n=6))
    assert 0 < share < 1
    goals, powers = {}, {}
    for power in ("unset", None, 1.0, 2.0, 3.0):
        params = {"epochs": 1} if power == "unset" else {"epochs": 1, "share_power": power}
        receipt = forget(calibrated_dir, tmp_path / f"p{power}", speaker="02", n=6, method="random-label",
                         params=params, log=lambda *a: None).receipt
        goals[power] = receipt["outcome"]["target_membership_auc"]
        powers[power] = receipt["method"]["params"]["share_power"]
    assert powers["unset"] == 2.0 and goals["unset"] == pytest.approx(known - share ** 2 * (known - 0.5))
    assert powers[None] is None and goals[None] == pytest.approx(known)  # null: the goal stays put
    assert goals[1.0] == pytest.approx(known - share * (known - 0.5))
    assert goals[1.0] < goals[2.0] < goals[3.0] < goals[None]  # the higher the power, the later the goal falls
    # the held-out stop falls in a straight line unless told otherwise; a fixed goal fills in no power
    from serkit.unlearning.methods import get_method
    assert get_method("random-label", {"stop_reference": "held-out"}).params.share_power == 1.0
    assert get_method("random-label", {"target_membership_auc": 0.55}).params.share_power is None
    assert get_method("random-label", {"preset": "paper"}).params.share_power is None


def test_a_receipt_from_before_share_power_reproduces_with_the_goal_it_had(calibrated_dir, tmp_path):
    from serkit.unlearning.run import reproduce

    old = forget(calibrated_dir, tmp_path / "old", speaker="02", n=6, method="random-label",
                 params={"epochs": 3, "share_power": None}, log=lambda *a: None)
    receipt = json.loads((old.out_dir / "receipt.json").read_text())
    del receipt["method"]["params"]["share_power"]  # as serkit wrote it before the field existed
    (old.out_dir / "receipt.json").write_text(json.dumps(receipt))
    again = reproduce(calibrated_dir, old.out_dir / "receipt.json", speaker="02", n=6, log=lambda *a: None)
    assert again.identical and again.receipt["method"]["params"]["share_power"] is None
    assert again.receipt["outcome"]["target_membership_auc"] == receipt["outcome"]["target_membership_auc"]


def test_share_power_is_refused_before_any_output_where_it_conflicts_with_the_stop(calibrated_dir, tmp_path):
    cases = [({"share_power": 2, "target_membership_auc": 0.55},
              "share_power moves the calibrated goal and target_membership_auc fixes it: set one of them"),
             ({"share_power": 2, "target": "retrain-like"},
              "share_power moves the calibrated stop's goal; target retrain-like has none to move")]
    for params, message in cases:
        with pytest.raises(ConfigError, match=message):
            forget(calibrated_dir, tmp_path / "x", speaker="02", n=2, method="random-label",
                   params={"epochs": 1, **params}, log=lambda *a: None)
    with pytest.raises(ConfigError, match="method 'random-label': share_power: Input should be greater than 0"):
        forget(calibrated_dir, tmp_path / "x", speaker="02", n=2, method="random-label",
               params={"epochs": 1, "share_power": 0}, log=lambda *a: None)
    assert not (tmp_path / "x").exists()


def test_share_power_on_a_model_without_a_known_speaker_profile_says_it_moves_nothing(model_dir, tmp_path):
    notes = []
    forget(model_dir, tmp_path / "x", speaker="02", n=2, method="random-label",
           params={"epochs": 1, "target": "calibrated", "share_power": 2}, log=notes.append)
    assert any(m.startswith("note: share_power moves nothing here") for m in notes)
    notes.clear()
    forget(model_dir, tmp_path / "y", speaker="02", n=2, method="random-label", params={"epochs": 1}, log=notes.append)
    assert not any("share_power" in m for m in notes)  # the default is not the user's choice: nothing to say


def test_a_held_out_stop_is_refused_before_any_output_where_the_model_holds_out_too_little(
        model_dir, calibrated_dir, tmp_path):
    from serkit.unlearning.stopping import HeldOutReference, stop_rule

    with pytest.raises(ConfigError, match=r"stop_reference held-out needs utterances of the training speakers held out "
                                          r"of training \(data.calibration\)"):
        forget(model_dir, tmp_path / "x", speaker="02", n=2, method="neg-grad",
               params={"epochs": 1, "stop_reference": "held-out"}, log=lambda *a: None)
    with pytest.raises(ConfigError, match="holds out only 6 utterances of its other training speakers, too few"):
        forget(calibrated_dir, tmp_path / "x", speaker="02", n=2, method="neg-grad",
               params={"epochs": 1, "stop_reference": "held-out"}, log=lambda *a: None)
    with pytest.raises(ConfigError, match="stop_reference held-out measures the calibrated stop; target misclassify"):
        stop_rule("misclassify", None, None, None, False, reference=HeldOutReference([], np.zeros(0)))
    assert not (tmp_path / "x").exists()


def test_calibrated_target_on_a_model_without_profiles_is_refused_unless_a_preset_chose_it(model_dir, tmp_path):
    from serkit.unlearning.stopping import stop_rule

    with pytest.raises(ConfigError, match="target calibrated-accuracy needs a loss profile of held-out utterances"):
        forget(model_dir, tmp_path / "x", speaker="02", n=2, method="random-label",
               params={"epochs": 1, "target": "calibrated-accuracy"}, log=lambda *a: None)
    assert not (tmp_path / "x").exists()
    notes = []
    rule = stop_rule("calibrated", None, None, 0.7, chosen_by_preset=True, log=notes.append)
    assert (rule.target, rule.goal) == ("retrain-like", 0.7) and "stops retrain-like instead of calibrated" in notes[0]
    unseen_only = stop_rule("calibrated", None, {"unseen": {"loss_quantiles": [0.0, 1.0]}}, 0.7, False, print)
    assert unseen_only.goal == 0.5 and unseen_only.measure == "membership_auc"
    # the default preset asks for calibrated: on a model without held-out utterances of its training speakers
    # it stops retrain-like and says why, rather than pushing the forget set down to unseen speakers' losses
    notes.clear()
    preset = stop_rule("calibrated", None, {"unseen": {"loss_quantiles": [0.0, 1.0]}}, 0.7, True, notes.append)
    assert (preset.target, preset.goal) == ("retrain-like", 0.7)
    assert "no loss profile of held-out utterances of its training speakers" in notes[0]
    # a model that recorded no unseen speakers (train+val) measures against its held-out utterances, to 0.5
    known_only = {"known": {"loss_quantiles": [0.0, 1.0]}}
    for chosen in (True, False):
        rule = stop_rule("calibrated", None, known_only, None, chosen, print)
        assert (rule.goal, rule.against, rule.unseen) == (0.5, "held-out utterances of trained speakers (stored)",
                                                          known_only["known"])
    assert stop_rule("calibrated", None, known_only, None, True, print, target_membership_auc=0.45).goal == 0.45
    with pytest.raises(ConfigError, match="needs a loss profile of its validation speakers or of held-out utterances"):
        stop_rule("calibrated", None, None, None, False, print)


def test_a_train_val_model_stops_calibrated_against_the_profiles_its_train_val_sibling_recorded(
        model_dir, calibrated_dir, tiny_split, tmp_path):
    """A model trained on train+val has no unseen speakers to profile: its grid runs borrow the train->val
    model's loss profiles, so the default calibrated stop is the one chosen on validation, not a fallback;
    the receipt carries them (a replay needs them). Profiles without an unseen part are refused by name."""
    import pandas as pd

    from serkit.unlearning.experiment import load_grid, run_grid

    raw = tiny_recipe(tiny_split, tmp_path / "trainval", max_epochs=2)
    raw["data"].update(calibration=2, train_parts=["train", "val"])
    trainval = train(load_recipe(raw=raw), log=lambda *a: None).model_dir
    assert set(load_model(trainval).config["provenance"]["calibration"]) == {"per_speaker", "known"}
    recipe = tmp_path / "grid.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'grid'}\nbackbones:\n  a:\n    train->val: {calibrated_dir}\n"
        f"    train+val->test: {trainval}\nspeakers: ['02']\nn: [2]\nseeds: [0]\n"
        "methods:\n  neg-grad: {epochs: 2}\n")
    messages = []
    out = run_grid(load_grid(recipe), log=messages.append)
    lent = load_model(calibrated_dir).config["provenance"]["calibration"]
    receipt = json.loads(next((out / "runs").glob("a_trainpval-test_02_2_0_neg-grad*/receipt.json")).read_text())
    assert receipt["method"]["params"]["profiles"] == lent and receipt["stats"]["target"] == "calibrated"
    from serkit.unlearning.forget_set import training_data
    share = training_data(load_model(trainval)).forget_share(build_forget_set(load_model(trainval), speaker="02", n=2))
    known = lent["known"]["auc_vs_unseen"]  # lowered by the square of the share of the speaker forgotten
    assert receipt["outcome"]["target_membership_auc"] == pytest.approx(known - share ** 2 * (known - 0.5))
    assert any("calibrated target stop against the loss profiles of its train->val model" in m for m in messages)
    frame = pd.read_csv(out / "results.csv", dtype={"speaker": str})
    assert sorted(frame.setting) == ["train+val->test", "train->val"]
    with pytest.raises(ConfigError, match="method 'neg-grad': profiles: .*no 'unseen' profile"):
        forget(model_dir, tmp_path / "x", speaker="02", n=2, method="neg-grad",
               params={"profiles": {"known": lent["known"]}}, log=lambda *a: None)
    assert not (tmp_path / "x").exists()
    # asked directly, with nothing lent, it stops against its own held-out utterances of training speakers (not at
    # "every forget utterance misclassified", the old fallback, which cost such a model up to 18 % of its UAR)
    notes = []
    alone = forget(trainval, tmp_path / "alone", speaker="02", n=2, method="neg-grad", params={"epochs": 2},
                   log=notes.append)
    assert alone.receipt["stats"]["target"] == "calibrated (against held-out utterances of training speakers)"
    assert alone.receipt["outcome"]["target_membership_auc"] == 0.5
    assert any(n.startswith("note: the model records no loss profile of unseen speakers") for n in notes)


def test_ssd_dampens_exactly_the_weights_the_forget_set_needs_far_more_than_the_training_data(model_dir, tmp_path):
    """SSD reads the training importances that training stored (or `serkit models importances` later, the same
    figures): a weight whose forget-set Fisher exceeds alpha x its training Fisher is scaled by
    min(lambda I_D / I_f, 1); every other weight stays bit-identical. Adding the importances file leaves the model's
    file hashes (a receipt's model check) as they were."""
    import shutil

    from safetensors.torch import load_file

    from serkit.cli import run
    from serkit.data.dataset import load_waves
    from serkit.models.modeldir import file_hashes
    from serkit.unlearning.importance import fisher_diagonal

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    stored_by_training = load_file(str(model / "importances.safetensors"))
    (model / "importances.safetensors").unlink()
    hashes = file_hashes(model)
    with pytest.raises(SerkitError, match="no stored training importances .*serkit models importances"):
        forget(model, tmp_path / "none", speaker="02", n=6, method="ssd", log=lambda *a: None)
    assert run(["models", "importances", str(model)]) == 0
    assert file_hashes(model) == hashes and (model / "importances.safetensors").is_file()
    recomputed = load_file(str(model / "importances.safetensors"))
    assert set(recomputed) == set(stored_by_training) and any(k.startswith("moments.") for k in recomputed)
    assert all(torch.allclose(recomputed[k], stored_by_training[k], rtol=1e-4, atol=1e-10) for k in recomputed)
    assert run(["models", "importances", str(model)]) == 2  # never overwritten without --overwrite
    alpha = 2.0  # below N_D / N_f = 48 / 6; at the paper's 10 no weight can be selected here
    result = forget(model, tmp_path / "ssd", speaker="02", n=6, method="ssd", params={"selection_weighting": alpha},
                    log=lambda *a: None)
    saved = load_model(model)
    forgotten = build_forget_set(saved, speaker="02", n=6, seed=0)
    labels = np.array([saved.labels.index(e) for e in forgotten.rows["emotion"]])
    f_forget = fisher_diagonal(saved.model, load_waves(forgotten.audio_paths(), saved.preprocessing), labels)
    f_data = load_file(str(model / "importances.safetensors"))
    before, after = load_file(str(model / "model.safetensors")), load_file(str(result.model_dir / "model.safetensors"))
    dampened = 0
    for name, value in f_forget.items():
        chosen = value > alpha * f_data[name]
        factor = torch.clamp(f_data[name] / value.clamp_min(1e-30), max=1.0)
        assert torch.equal(after[name][~chosen], before[name][~chosen])
        assert torch.allclose(after[name][chosen], before[name][chosen] * factor[chosen])
        dampened += int(chosen.sum())
    assert dampened == result.receipt["stats"]["dampened"] > 0
    assert "target_reached" not in result.receipt["stats"] and result.receipt["outcome"]["target_reached"] is None


def test_ssd_refuses_importances_of_other_weights(model_dir, tmp_path):
    import shutil

    from serkit.unlearning.importance import save_importances

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    saved = load_model(model)
    save_importances(model, {n: torch.ones_like(p) for n, p in saved.model.named_parameters()}, "0" * 64, 10,
                     overwrite=True)
    with pytest.raises(SerkitError, match="computed for other weights .*--overwrite"):
        forget(model, tmp_path / "x", speaker="02", n=2, method="ssd", log=lambda *a: None)
    assert not (tmp_path / "x").exists()


def test_pgu_moves_the_head_only_off_the_directions_the_retained_training_utterances_use(model_dir, tmp_path):
    """PGU reads the head layers' input moments stored with the model, less the forget set's own: its
    weight change is orthogonal to the protected directions (a retained input in them gets the same output), the
    biases and the backbone stay bit for bit, and the forget set's true-class probability falls. An importances
    file from before the moments were stored is refused with the command that adds them."""
    import shutil

    from safetensors.torch import load_file

    from serkit.cli import run
    from serkit.data.dataset import load_waves
    from serkit.unlearning.importance import head_moments, load_moments, save_importances
    from serkit.unlearning.methods.pgu import protected_directions

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    saved = load_model(model)
    save_importances(model, {n: torch.ones_like(p) for n, p in saved.model.named_parameters()}, saved.weights_sha256, 48,
                     overwrite=True)  # as `serkit models importances` wrote them before 2026-12-05
    with pytest.raises(SerkitError, match="no training moments of the head layers .*serkit models importances.*--overwrite"):
        forget(model, tmp_path / "old", speaker="02", n=6, method="pgu", log=lambda *a: None)
    assert not (tmp_path / "old").exists()
    with pytest.raises(ConfigError, match="method 'pgu': pgu moves the head's linear layers only.*leave update at head"):
        forget(model, tmp_path / "all", speaker="02", n=6, method="pgu", params={"update": "all"}, log=lambda *a: None)
    assert run(["models", "importances", str(model), "--overwrite"]) == 0
    params = {"retained_var": 0.9, "lr": 1e-2, "epochs": 5, "stop_early": False}
    result = forget(model, tmp_path / "pgu", speaker="02", n=6, method="pgu", params=params, log=lambda *a: None)
    before, after = load_file(str(model / "model.safetensors")), load_file(str(result.model_dir / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith(("fc1.weight", "fc2.weight")))
    forgotten = build_forget_set(saved, speaker="02", n=6, seed=0)
    waves = load_waves(forgotten.audio_paths(), saved.preprocessing)
    retained = {name: m - head_moments(saved.model, waves)[name] for name, m in load_moments(saved).items()}
    kept = result.receipt["stats"]["protected_directions"]
    for name in ("fc1", "fc2"):
        projector, k = protected_directions(retained[name], 0.9)
        change = after[f"{name}.weight"] - before[f"{name}.weight"]
        assert k == kept[name] >= 1 and change.abs().max() > 1e-4
        assert (change @ projector).abs().max() < 1e-5 * change.abs().max() + 1e-7
    history = result.receipt["stats"]["history"]
    assert result.receipt["evaluation"]["after"]["forget"]["accuracy"] <= result.receipt["evaluation"]["before"]["forget"]["accuracy"]
    assert history[-1]["L_1"] < history[0]["L_1"]


def test_pgu_with_the_ascent_forget_loss_raises_the_forget_loss_up_to_ln_k_off_the_same_protected_directions(
        model_dir, tmp_path):
    """forget_loss ascent swaps the paper's loss for neg-grad's bounded ascent and keeps the projection: only fc1 /
    fc2 move, orthogonally to the retained inputs' main directions, the forget set's cross-entropy rises, and the
    receipt records the loss and its bound. The paper's loss weights are refused beside it."""
    from safetensors.torch import load_file

    from serkit.data.dataset import load_waves
    from serkit.unlearning.importance import head_moments, load_moments
    from serkit.unlearning.methods.pgu import protected_directions

    with pytest.raises(ConfigError, match="method 'pgu': loss2_w: part of the paper's forget loss, which forget_loss "
                                          "ascent replaces: leave it out, or set forget_loss paper"):
        forget(model_dir, tmp_path / "x", speaker="02", n=6, method="pgu",
               params={"forget_loss": "ascent", "loss2_w": 0.5}, log=lambda *a: None)
    assert not (tmp_path / "x").exists()
    model = model_dir
    saved = load_model(model)
    params = {"retained_var": 0.9, "lr": 1e-2, "epochs": 5, "stop_early": False, "forget_loss": "ascent"}
    result = forget(model, tmp_path / "ascent", speaker="02", n=6, method="pgu", params=params, log=lambda *a: None)
    assert result.receipt["method"]["params"]["forget_loss"] == "ascent"
    assert result.receipt["stats"]["loss_bound"] == pytest.approx(np.log(4))  # ln K for the tiny model's 4 emotions
    before, after = load_file(str(model / "model.safetensors")), load_file(str(result.model_dir / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith(("fc1.weight", "fc2.weight")))
    waves = load_waves(build_forget_set(saved, speaker="02", n=6, seed=0).audio_paths(), saved.preprocessing)
    retained = {name: m - head_moments(saved.model, waves)[name] for name, m in load_moments(saved).items()}
    for name in ("fc1", "fc2"):
        change = after[f"{name}.weight"] - before[f"{name}.weight"]
        assert change.abs().max() > 1e-4
        assert (change @ protected_directions(retained[name], 0.9)[0]).abs().max() < 1e-5 * change.abs().max() + 1e-7
    history = result.receipt["stats"]["history"]
    assert history[-1]["L_ce"] > history[0]["L_ce"] and "L_1" not in history[0]


def test_bounded_ascent_pulls_hardest_on_the_utterances_the_model_is_least_sure_of_and_not_past_its_bound():
    """The forget loss of neg-grad and of pgu's ascent: an utterance pulls on its logits by |p - onehot(y)| / N,
    so one the model is sure of barely pulls and one it doubts pulls most (a retrained model gets the doubted
    ones wrong and keeps the rest); one whose loss is past the bound does not pull at all. Descent lowers the true
    logit: the cross-entropy rises."""
    from serkit.unlearning.methods.neg_grad import bounded_ascent

    logits = torch.tensor([[6.0, 0.0, 0.0], [0.5, 0.0, 0.0], [-4.0, 0.0, 0.0]], requires_grad=True)
    loss, ce = bounded_ascent(logits, torch.tensor([0, 0, 0]), bound=math.log(3))
    loss.backward()
    pull = logits.grad.norm(dim=1)
    assert pull[1] > 10 * pull[0] > 0 and pull[2] == 0
    assert logits.grad[0, 0] > 0 and logits.grad[1, 0] > 0  # a descent step lowers the true class's logit
    assert ce == pytest.approx(torch.nn.functional.cross_entropy(logits.detach(), torch.tensor([0, 0, 0])).item())


def test_a_request_naming_no_method_runs_pgu_where_the_model_stores_its_head_moments_and_adv_ewc_where_not(
        model_dir, tiny_split, tmp_path):
    """serkit train stores the head moments, so its models answer with pgu (its lr and the stored file's hash in the
    receipt). The output of a request carries none in its model directory (beside the original's they would tell the
    forget set's moments): a request that moved only the head leaves the retained ones beside its keys, private as
    they are, and the next request of the lineage answers with pgu from them; a request that moved the backbone
    leaves none, and the next answers with adv-ewc, while `serkit models importances` refuses to add them (its
    recorded training data still holds what it forgot). A model trained before the moments were stored answers with
    adv-ewc too, and the log names the command that adds them. Parameters of another method name the default they
    were checked against."""
    import shutil

    from safetensors import safe_open

    from serkit.cli import run
    from serkit.data.dataset import load_waves
    from serkit.unlearning.importance import head_moments, load_moments

    logs = []
    first = forget(model_dir, tmp_path / "first", speaker="02", n=4, params={"epochs": 2}, log=logs.append)
    assert first.receipt["method"]["name"] == "pgu" and any(line.startswith("method pgu: the default") for line in logs)
    assert first.receipt["method"]["params"]["lr"] == 1e-2
    assert first.receipt["stats"]["importances_sha256"] == sha256_file(model_dir / "importances.safetensors")
    assert not (first.model_dir / "importances.safetensors").exists()
    assert (first.out_dir / "forget-keys.moments.safetensors").is_file()
    logs.clear()
    second = forget(first.model_dir, tmp_path / "second", speaker="03", n=2, split=tiny_split, params={"epochs": 2},
                    keys_out=tmp_path / "second-keys.json", log=logs.append)
    assert second.receipt["method"]["name"] == "pgu"
    assert any(line.startswith("method pgu: the default: the head moments of the training utterances this model "
                               "still holds") for line in logs)
    assert "importances_sha256" not in second.receipt["stats"]  # an unkeyed hash would confirm a guessed forget set
    saved = load_model(model_dir)
    waves = {speaker: load_waves(build_forget_set(saved, speaker=speaker, n=k, seed=0).audio_paths(), saved.preprocessing)
             for speaker, k in (("02", 4), ("03", 2))}
    stored, forgotten = load_moments(saved), {s: head_moments(saved.model, w) for s, w in waves.items()}
    with safe_open(str(first.out_dir / "forget-keys.moments.safetensors"), "pt") as handle:  # both layers exact here
        for layer in ("fc1", "fc2"):
            assert torch.allclose(handle.get_tensor(f"moments.{layer}"), stored[layer] - forgotten["02"][layer])
    assert (first.out_dir / "forget-keys.moments.safetensors").stat().st_mode & 0o777 == 0o600
    expected = stored["fc1"] - forgotten["02"]["fc1"] - forgotten["03"]["fc1"]  # the backbone never moved
    retained = tmp_path / "second-keys.moments.safetensors"  # with the keys, wherever --key-out puts them
    assert not (second.out_dir / "forget-keys.moments.safetensors").exists()
    with safe_open(str(retained), "pt") as handle:
        assert handle.metadata()["weights_sha256"] == second.receipt["model_after"]["weights_sha256"]
        assert handle.metadata()["n_utterances"] == "42"  # 48 trained on, 6 forgotten
        assert torch.allclose(handle.get_tensor("moments.fc1"), expected.double(), rtol=1e-6, atol=1e-6)
    assert not list(second.model_dir.glob("*moments*")) and not (second.model_dir / "importances.safetensors").exists()
    again = reproduce(first.model_dir, second.out_dir, speaker="03", n=2, split=tiny_split,
                      keys=tmp_path / "second-keys.json", log=lambda *a: None)
    assert again.identical, again.lines  # it reads the retained moments beside the first request's keys again

    logs.clear()
    quick = {"epochs": 1, "adversarial_per_sample": 2, "pgd_steps": 2}
    moved = forget(model_dir, tmp_path / "moved", speaker="03", n=2, method="random-label", params={"epochs": 1},
                   log=lambda *a: None)
    assert not (moved.out_dir / "forget-keys.moments.safetensors").exists()  # only pgu leaves them
    after_moved = forget(moved.model_dir, tmp_path / "after-moved", speaker="02", n=2, split=tiny_split,
                         log=logs.append, params=quick)
    assert after_moved.receipt["method"]["name"] == "adv-ewc"
    assert any(line.startswith("method adv-ewc: the default for the output of an earlier request that left no head "
                               "moments") for line in logs)
    with pytest.raises(SerkitError, match="answered a deletion request and no head moments .*--key, or name another"):
        forget(moved.model_dir, tmp_path / "x", speaker="02", n=2, split=tiny_split, method="pgu", log=lambda *a: None)
    assert run(["models", "importances", str(first.model_dir), "--split", str(tiny_split)]) == 2
    assert not (first.model_dir / "importances.safetensors").exists()
    older = tmp_path / "older"
    shutil.copytree(model_dir, older)
    (older / "importances.safetensors").unlink()
    logs.clear()
    assert forget(older, tmp_path / "third", speaker="02", n=2, params=quick, log=logs.append).receipt["method"]["name"] == "adv-ewc"
    assert any(line.startswith("method adv-ewc: the default") and f"serkit models importances {older}`" in line
               for line in logs)
    with pytest.raises(ConfigError, match="method 'pgu': tau: .*pgu is the default method for this model.*--method"):
        forget(model_dir, tmp_path / "x", speaker="02", n=2, params={"tau": 0.02}, log=lambda *a: None)
    with pytest.raises(ConfigError, match=r"method 'pgu': stop_reference: Input should be 'stored' or 'held-out'$"):
        forget(model_dir, tmp_path / "x", speaker="02", n=2, params={"stop_reference": "speaker"}, log=lambda *a: None)
    assert not (tmp_path / "x").exists()


def test_jit_smooths_the_model_around_the_forget_utterances(model_dir, tmp_path):
    """After JiT the logits move less per unit of noise around the forget utterances than before."""
    from serkit.data.dataset import load_waves, pad_batch

    saved = load_model(model_dir)
    forgotten = build_forget_set(saved, speaker="02", n=6, seed=0)
    x, mask = pad_batch(load_waves(forgotten.audio_paths(), saved.preprocessing))

    def sensitivity(model):
        model.eval()
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * 0.01 * mask
        with torch.no_grad():
            moved = torch.linalg.vector_norm(model(x, mask) - model(x + noise, mask), dim=-1)
        return float((moved / torch.linalg.vector_norm(noise, dim=-1)).mean())

    result = forget(model_dir, tmp_path / "jit", speaker="02", n=6, method="jit",
                    params={"lr": 1e-3, "epochs": 3, "stop_early": False, "n_samples": 5}, log=lambda *a: None)
    assert sensitivity(load_model(result.model_dir).model) < 0.8 * sensitivity(saved.model)
    history = [h["L_lipschitz"] for h in result.receipt["stats"]["history"]]
    assert history[-1] < history[0]


def test_a_method_that_diverges_is_one_line_naming_the_learning_rate_and_writes_nothing(model_dir, tmp_path):
    with pytest.raises(SerkitError, match="method 'jit' diverged: .*not finite.*nothing was written. Lower its learning rate"):
        forget(model_dir, tmp_path / "blown", speaker="02", n=6, method="jit",
               params={"lr": 10.0, "epochs": 3, "stop_early": False, "n_samples": 2}, log=lambda *a: None)
    assert not (tmp_path / "blown").exists()


def test_nearest_adversarial_finds_misclassified_neighbours_labelled_as_the_model_sees_them(model_dir):
    from serkit.data.dataset import load_waves, pad_batch
    from serkit.unlearning.pgd import NearestAdversarial

    saved = load_model(model_dir)
    forgotten = build_forget_set(saved, speaker="02", n=6, seed=0)
    waves = load_waves(forgotten.audio_paths(), saved.preprocessing)
    labels = np.array([saved.labels.index(e) for e in forgotten.rows["emotion"]])
    attack = NearestAdversarial(eps=0.002, steps=10, max_doublings=6)
    found = attack.generate(saved.model, waves, labels)
    saved.model.eval()
    with torch.no_grad():
        x, mask = pad_batch(found.waves)
        predicted = saved.model(x, mask).argmax(-1).numpy()
        clean = saved.model(*pad_batch(waves)).argmax(-1).numpy()
    assert np.array_equal(predicted, found.targets)  # labelled with the model's own prediction on it
    assert np.array_equal(found.success, predicted != labels) and found.success.mean() >= 0.5
    for wave, adv, ok, right in zip(waves, found.waves, found.success, clean == labels):
        assert adv.base is None  # its own array: a view would keep its whole padded batch in memory
        if not right:  # already misclassified: nothing to attack, kept as it is
            assert np.array_equal(wave, adv)
        elif ok:
            assert np.linalg.norm(adv - wave) <= 0.002 * 2 ** 6 * np.linalg.norm(wave) * 1.0001


def test_pgd_batches_close_where_padding_would_pass_its_share_of_the_longest_sample():
    lengths = [100, 95, 80, 50, 49, 100, 10]
    assert TargetedPGD(batch_size=3).batches(lengths) == [[0, 5, 1], [2, 3, 4], [6]]  # longest first, full batches
    assert TargetedPGD(batch_size=3, max_padding=0.1).batches(lengths) == [[0, 5, 1], [2], [3, 4], [6]]
    assert TargetedPGD(batch_size=8, max_padding=0.0).batches([7, 7, 7]) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="max_padding"):
        TargetedPGD(max_padding=1.5)
