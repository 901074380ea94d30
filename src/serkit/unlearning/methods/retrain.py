"""Retraining from scratch without the forget set, with the model's own recipe: the gold standard.

It reads all the remaining training data and costs a full training run; its models are the
reference the other methods are measured against (agreement, UAR gap, membership score).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from serkit.config import load_recipe
from serkit.data.manifest import read_manifest, write_manifest
from serkit.data.splits import save_split
from serkit.errors import SerkitError
from serkit.models.modeldir import load_model
from serkit.unlearning.forget_set import training_data
from serkit.unlearning.methods.base import UnlearnContext, UnlearningMethod, UnlearnOutcome, register


class RetrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int | None = Field(None, description="training seed; default: the original model's")
    max_epochs: int | None = Field(None, ge=1, description="override the recipe's epochs")


def retrain_without(ctx: UnlearnContext, out_dir: Path, seed: int | None = None, max_epochs: int | None = None):
    """Train the original recipe on the training data minus the forget set; returns the TrainResult."""
    from serkit.training import train

    prov = ctx.saved.config.get("provenance") or {}
    if "recipe" not in prov:
        raise SerkitError(f"model {ctx.saved.path} records no training recipe; it cannot be retrained")
    data = ctx.data or training_data(ctx.saved)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = data.manifest.frame[~data.manifest.frame["path"].isin(set(ctx.forget.rows["path"]))].copy()
    frame["path"] = [str(p) for p in data.manifest.__class__(frame, data.manifest.file).audio_paths()]
    write_manifest(frame, out_dir / "manifest.csv")
    manifest = read_manifest(out_dir / "manifest.csv")
    save_split(out_dir / "split.json", manifest, seed=0, parts={p: data.parts.get(p, []) for p in ("train", "val", "test")})
    raw = dict(prov["recipe"])
    raw["data"] = {**raw["data"], "split": str(out_dir / "split.json"), "manifest": None, "fold": None}
    raw["output_dir"] = str(out_dir / "run")
    raw["seed"] = prov.get("seed", 0) if seed is None else seed
    accelerator = "gpu" if str(ctx.device).startswith("cuda") else "cpu"  # where `forget --device` put the work
    raw["train"] = {**raw["train"], "progress_bar": False, "accelerator": accelerator, "devices": 1, "strategy": "auto",
                    "importances": False}  # the request keeps the weights alone: the pass would only add to its time
    if max_epochs:
        raw["train"]["max_epochs"] = max_epochs
    return train(load_recipe(raw=raw), log=ctx.log)


@register
class Retrain(UnlearningMethod):
    name = "retrain"
    Params = RetrainParams
    reads_remaining_data = True

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        if ctx.work_dir is None:
            raise SerkitError("retrain needs a working directory")
        result = retrain_without(ctx, ctx.work_dir / "retrain", self.params.seed, self.params.max_epochs)
        replacement = load_model(result.model_dir)
        return UnlearnOutcome({"method": self.name, "train_seconds": result.metrics["training"]["train_seconds"],
                               "epochs_run": result.metrics["training"]["epochs"]}, replacement)
