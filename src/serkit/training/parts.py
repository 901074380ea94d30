"""A recipe's split, its manifest parts and their decoded audio, checked before any training."""

from __future__ import annotations

import time

from serkit.config import Recipe
from serkit.data.dataset import Preprocessing, load_waves
from serkit.data.manifest import Manifest
from serkit.data.splits import calibration_rows, load_split
from serkit.errors import SplitError
from serkit.inference.predict import check_lengths
from serkit.models.registry import SERModel


def load_parts(recipe: Recipe):
    """The recipe's split and its manifest parts: train (train or train+val speakers), the held-out
    val/test parts, and with data.calibration the utterances of training speakers held out of
    training ("calibration"). Also whether the model is selected on val."""
    split = load_split(recipe.data.split, recipe.data.manifest, recipe.data.fold)
    select_on_val = "val" not in recipe.data.train_parts
    if select_on_val and not split.val:
        raise SplitError(f"split {split.file} has no validation speakers; model selection needs them (serkit data split --val N)")
    train_speakers = [s for part in recipe.data.train_parts for s in split.speakers(part)]
    parts = {"train": split.manifest.subset(train_speakers)}
    if recipe.data.calibration:
        train = parts["train"]
        held = calibration_rows(train.frame, train_speakers, recipe.data.calibration)
        parts["train"] = Manifest(train.frame[~held].reset_index(drop=True), train.file, train.sha256)
        parts["calibration"] = Manifest(train.frame[held].reset_index(drop=True), train.file, train.sha256)
    for name in ("val", "test"):
        if split.speakers(name) and name not in recipe.data.train_parts:
            parts[name] = split.part(name)
    return split, parts, select_on_val


def load_part_waves(recipe: Recipe, parts: dict, log=print) -> tuple[Preprocessing, dict]:
    """The recipe's preprocessing and every part's decoded, preprocessed audio."""
    preprocessing = Preprocessing(trim_silence_db=recipe.data.trim_silence_db, fixed_seconds=recipe.data.fixed_seconds)
    t0 = time.perf_counter()
    waves = {name: load_waves(part.audio_paths(), preprocessing) for name, part in parts.items()}
    log(f"loaded {sum(len(w) for w in waves.values())} utterances in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{n} {len(w)} ({parts[n].frame['speaker'].nunique()} speakers)" for n, w in waves.items()))
    return preprocessing, waves


def check_part_lengths(model: SERModel, recipe: Recipe, parts: dict, waves: dict) -> None:
    """Every clip the model sees whole fits its input window, checked before training rather than at
    the first validation: val and test always, train unless data.max_seconds crops it to fit."""
    limit = model.max_seconds
    for name, part in parts.items():
        cropped = name == "train" and limit is not None and recipe.data.max_seconds is not None and recipe.data.max_seconds <= limit
        if not cropped:
            check_lengths(model, waves[name], part.audio_paths())
