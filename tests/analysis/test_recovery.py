"""`serkit experiment recovery` (paper 002) end to end on real RAVDESS audio with a tiny Whisper checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from serkit.cli import run
from tests.helpers import WHISPER_TINY as TINY


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A transformers Whisper directory (config + safetensors encoder), standing in for tiny.en."""
    path = tmp_path / "ckpt"
    config = WhisperConfig(**TINY)
    config.save_pretrained(path)
    torch.manual_seed(7)
    encoder = WhisperEncoder(config)
    save_file({f"model.encoder.{k}": v.contiguous() for k, v in encoder.state_dict().items()}, str(path / "model.safetensors"))
    return path


def _whisper_recipe(tmp_path, tiny_split, checkpoint):
    """A one-epoch Whisper recipe on the tiny split (the study's corpus)."""
    recipe = tmp_path / "whisper.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "w", "seed": 0, "output_dir": str(tmp_path / "unused"),
        "data": {"split": str(tiny_split), "trim_silence_db": 40, "max_seconds": 1.0},
        "model": {"architecture": "whisper", "options": {"checkpoint": str(checkpoint)}},
        "train": {"batch_size": 8, "max_epochs": 1, "progress_bar": False, "head_lr": 1e-3}}))
    return recipe


def test_recovery_study_tables_resume_and_refusal(tiny_checkpoint, tiny_split, tmp_path, capsys):
    recipe = _whisper_recipe(tmp_path, tiny_split, tiny_checkpoint)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "study"), "corpora": {"tiny": str(recipe)},
                                     "seeds": [0, 1], "handcrafted": ["eGeMAPSv02"], "attention_utterances": 4}))
    assert run(["experiment", "recovery", str(study)]) == 0
    out = tmp_path / "study"
    done = json.loads((out / "results.json").read_text())
    steps = {k.split("/", 1)[1] for k in done}
    assert {"train/asr-to-ser-s0", "train/asr-to-ser-s1", "train/ser-scratch", "probe/asr", "probe/eGeMAPSv02",
            "compare/ser-scratch|asr-to-ser-s0", "compare/asr-to-ser-s0|asr-to-ser-s1",
            "attention/asr|asr-to-ser-s0"} <= steps
    assert all(v["seconds"] >= 0 for v in done.values())

    # the three systems are what they claim: frozen pretrained, fine-tuned from it, and from scratch
    reference = load_file(str(tiny_checkpoint / "model.safetensors"))["model.encoder.layers.0.fc1.weight"]
    def layer0(system):
        return load_file(str(out / "tiny" / system / "model" / "model.safetensors"))["encoder.layers.0.fc1.weight"]
    assert torch.equal(layer0("asr"), reference)
    tuned = layer0("asr-to-ser-s0")
    assert not torch.equal(tuned, reference) and (tuned - reference).abs().max() < 0.05  # moved a little from it
    assert (layer0("ser-scratch") - reference).abs().mean() > 0.01  # never saw the checkpoint's weights
    scratch = json.loads((out / "tiny" / "ser-scratch" / "model" / "config.json").read_text())
    assert scratch["options"]["pretrained"] is False and scratch["options"]["freeze_feature_encoder"] is False
    assert scratch["provenance"]["recipe"]["train"]["lr"] == 1e-4  # scratch_set: random weights need a larger lr

    # the frozen encoder is probed layer by layer; the test part has one speaker (12 utterances)
    asr = {r["layer"]: r for r in done["tiny/probe/asr"]["rows"]}
    assert set(asr) == {"hidden:0", "hidden:1", "hidden:2", "pooled"}
    assert asr["pooled"]["test_uar"] == asr["hidden:2"]["test_uar"]
    mismatch = done["tiny/compare/ser-scratch|asr-to-ser-s0"]["decision_mismatch"]
    assert 0 <= mismatch <= 1 and done["tiny/compare/ser-scratch|asr-to-ser-s0"]["n"] == 12
    attention = done["tiny/attention/asr|asr-to-ser-s0"]
    assert attention["utterances"] == 4 and len(attention["mean_per_layer"]) == 2
    assert all(v > 0 for v in attention["mean_per_layer"])  # fine-tuning moved the attention

    tables = (out / "tables.md").read_text()
    assert "| G-1 handcrafted | eGeMAPSv02 | 88 |" in tables
    assert "| G-4 two-step | ASR → SER | 32 |" in tables and "ASR → SER (seed 0) vs ASR → SER (seed 1)" in tables
    assert "| probe/eGeMAPSv02 |" in tables  # its run time
    assert (out / "fig3.png").stat().st_size > 1000 and (out / "tiny" / "attention_asr_asr-to-ser-s0.png").is_file()

    capsys.readouterr()
    assert run(["experiment", "recovery", str(study)]) == 0  # resumable: every step is done
    assert "..." not in capsys.readouterr().out
    # resuming with other settings would mix two studies in one table: refused
    study.write_text(study.read_text().replace("attention_utterances: 4", "attention_utterances: 5"))
    assert run(["experiment", "recovery", str(study)]) == 2
    assert "other settings (attention_utterances)" in capsys.readouterr().err.replace("\n", "")


def test_recovery_study_on_two_worker_processes_gives_the_figures_of_one_process(tiny_checkpoint, tiny_split, tmp_path):
    """Its trainings, then the encoders, then the probes and comparisons run as cells of a pool: each step
    once, with the figures of the in-process study (seeded, same torch threads)."""
    from serkit.analysis.recovery import load_recovery, run_recovery
    from serkit.experiment import ExecutorConfig

    recipe = _whisper_recipe(tmp_path, tiny_split, tiny_checkpoint)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "local"), "corpora": {"tiny": str(recipe)},
                                     "seeds": [0], "handcrafted": [], "attention_utterances": 2}))
    done = {}
    for kind in ("local", "pool"):
        executor = ExecutorConfig(kind=kind, workers=1 if kind == "local" else 2, threads=torch.get_num_threads())
        out = run_recovery(load_recovery(study, [f"output_dir={tmp_path / kind}"]), log=lambda *a: None, executor=executor)
        done[kind] = json.loads((out / "results.json").read_text())
    assert set(done["pool"]) == set(done["local"]) and len(done["pool"]) == 9
    figures = lambda d: {k: {f: v for f, v in r.items() if f not in ("seconds", "train_seconds", "model_dir", "model_a", "model_b")}  # noqa: E731
                         for k, r in d.items()}
    assert figures(done["pool"]) == figures(done["local"])
    assert (tmp_path / "pool" / "tables.md").is_file() and not list((tmp_path / "pool" / "cells").iterdir())
