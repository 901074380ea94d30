"""serkit as a Python library: what the commands do, typed, returning result objects.

    import serkit

    run = serkit.train("configs/ravdess_cnn6.yaml", overrides=["train.max_epochs=2"])
    for p in serkit.predict(run.model_dir, ["clip.wav"]):
        print(p.file, p.label, p.confidence)
    test = serkit.evaluate(run.model_dir, split="runs/data/ravdess/split.json", part="test")
    print(test.uar, test.accuracy)
    done = serkit.forget(run.model_dir, "runs/forget-05", speaker="05", n=10)
    print(done.receipt["outcome"])

Each function is the command of the same name without its printing: the same checks, the same refusals
(`serkit.errors.SerkitError`, one line naming what to fix), the same outputs where it writes any.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from serkit.models.modeldir import SavedModel, load_model
from serkit.training.engine import TrainResult
from serkit.unlearning.run import ForgetResult
from serkit.unlearning.run import forget as _forget

ModelLike = SavedModel | str | Path


@dataclass(frozen=True)
class Prediction:
    """One file's predicted emotion."""

    file: str
    label: str
    confidence: float
    probabilities: dict[str, float]


@dataclass(frozen=True)
class Evaluation:
    """A model's figures on one part of a split (or a manifest): `summary` as metrics.json holds it,
    one row per utterance in `predictions`."""

    name: str
    summary: dict
    predictions: pd.DataFrame = field(repr=False)
    seen_speakers: list[str] | None = None  # speakers the model trained on that were scored anyway (None: unknown)

    @property
    def uar(self) -> float:
        return self.summary["uar"]

    @property
    def accuracy(self) -> float:
        return self.summary["war"]

    @property
    def macro_f1(self) -> float:
        return self.summary["macro_f1"]

    @property
    def n(self) -> int:
        return self.summary["n"]


def load(model: ModelLike) -> SavedModel:
    """A serkit model directory, loaded (safetensors only), or the model given."""
    return model if isinstance(model, SavedModel) else load_model(model)


def train(recipe: str | Path | dict, overrides: Sequence[str] = (), log=print) -> TrainResult:
    """`serkit train`: a recipe file (or the dict it would hold), with `overrides` as `--set` takes them."""
    from serkit.config import load_recipe
    from serkit.training import train as run_training

    loaded = load_recipe(raw=dict(recipe), overrides=list(overrides)) if isinstance(recipe, dict) else \
        load_recipe(recipe, list(overrides))
    return run_training(loaded, log=log)


def predict(model: ModelLike, files: Sequence[str | Path], batch_size: int = 16) -> list[Prediction]:
    """`serkit predict` on utterances: each file's label and class probabilities, in the order given."""
    from serkit.inference.predict import check_batch_size, predict_files

    check_batch_size(batch_size)
    return [Prediction(r["file"], r["label"], r["confidence"], r["probabilities"])
            for r in predict_files(load(model), list(files), batch_size)]


def evaluate(model: ModelLike, split: str | Path | None = None, part: str = "test", manifest: str | Path | None = None,
             fold: int | None = None, batch_size: int = 16, allow_seen_speakers: bool = False,
             out: str | Path | None = None, note=None, long_after: float = 30.0, segments: str = "fixed",
             window: float | None = None, hop: float | None = None) -> Evaluation:
    """`serkit evaluate` of a classifier: refuses speakers the model trained on unless `allow_seen_speakers`;
    with `out`, writes the folder the command writes. `note(kind, text)` hears what the command would print.
    Rows longer than `long_after` seconds are long recordings, scored by the duration-weighted mean over their
    `segments` ("fixed" windows of `window` s every `hop` s, or "vad" speech regions), as `serkit predict` does."""
    from serkit.evaluation.classification import evaluate as run_eval
    from serkit.evaluation.classification import write_evaluation_files
    from serkit.evaluation.rows import check_unseen, rows_to_evaluate
    from serkit.inference.long import check_segments, window_and_hop
    from serkit.inference.predict import check_batch_size
    from serkit.io import OutputDir

    check_batch_size(batch_size)
    check_segments(segments)
    saved = load(model)
    if saved.task:
        raise ValueError("serkit.evaluate scores classifiers; for a dimensional model use `serkit evaluate` (CCC)")
    window, hop = window_and_hop(saved, window, hop)
    long = dict(long_after=long_after, segments=segments, window=window, hop=hop)
    rows, source, name, parts = rows_to_evaluate(split, manifest, part, fold)
    seen = check_unseen(saved, rows, source, allow_seen_speakers, parts, note=note)
    if out is None:
        result = run_eval(saved, rows, name, batch_size, **long)
    else:
        with OutputDir(Path(out), what="output folder") as output:
            result = run_eval(saved, rows, name, batch_size, **long)
            write_evaluation_files(output.staging(), result, saved.path, source, seen)
            output.commit()
    return Evaluation(result.name, result.summary, result.predictions, seen)


def forget(model_dir: str | Path, out: str | Path, **request) -> ForgetResult:
    """`serkit forget`: answer a deletion request (`speaker=`/`n=` or `files=`, `method=`, `params=`, ...; the
    keyword arguments of serkit.unlearning.run.forget). Writes the unlearned model and its receipt to `out`."""
    return _forget(model_dir, out, **request)
