"""What every unlearning method shares: its context, the registry, and the fine-tuning loop.

The loop draws a batch of the forget set together with a batch of any extra data (adversarial
samples, remaining data) at every step, keeps batch-norm statistics frozen (a batch of ten
forget utterances is no estimate of the training distribution), and stops by a rule
(serkit.unlearning.stopping: misclassify, retrain-like, calibrated, calibrated-accuracy), or after
`epochs` epochs, whichever comes first.

`preset` fills the parameters a user leaves unset: "measured" (the default; bench/RESULTS.md sections
3, 11, 16, 23: the calibrated stop, retrain-like on a model trained without data.calibration, and for the
adversarial methods P 20, M 10) or "paper" (papers 000/001: misclassify, P 50, M 20). Values set
explicitly always win.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from torch import nn

from serkit.data.dataset import pad_batch
from serkit.data.manifest import Manifest
from serkit.errors import ConfigError
from serkit.models.modeldir import SavedModel
from serkit.unlearning.forget_set import ForgetSet, TrainingData
from serkit.unlearning.stopping import HeldOutReference, default_share_power, stop_rule

HELD_OUT_LR_SHARE = 1 / 3  # Whisper's 3e-5 -> 1e-5 (RESULTS 23g/h); the CNN grids' 1e-4 is a third of its 3e-4 too


class FinetuneParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(15, ge=1, description="upper bound on epochs (the papers: 15)")
    lr: float | None = Field(None, gt=0, description="learning rate; default: the one the model was trained with")
    optimizer: Literal["adam", "sgd"] = Field(
        "adam", description="adam (the papers) or sgd (plain gradient steps; Adam moves every weight by about lr per "
        "step). On CNN-6 / EmoDB neither kept the model: bench/RESULTS.md section 14")
    batch_size: int = Field(16, ge=1, description="adversarial / remaining samples per step")
    preset: Literal["measured", "paper"] = Field(
        "measured", description="fills what is left unset: measured (target calibrated, or retrain-like on a model "
        "without calibration profiles; adversarial methods P 20, M 10; bench/RESULTS.md 16, 23) or paper "
        "(misclassify; P 50, M 20)")
    target: Literal["misclassify", "retrain-like", "calibrated", "calibrated-accuracy"] | None = Field(
        None, description="misclassify (the papers'), retrain-like (forget-set accuracy down to the validation "
        "accuracy), calibrated (membership AUC down to what held-out utterances of training speakers scored at "
        "training time against unseen speakers; on a model that recorded no unseen speakers, against those held-out "
        "utterances, down to 0.5) or calibrated-accuracy; default from the preset (serkit.unlearning.stopping)")
    stop_early: bool = Field(True, description="stop as soon as the target is reached (checked every `check_every` steps)")
    check_every: int | None = Field(None, ge=1, description="steps between the stop's checks (default 5; 1 with "
                                    "stop_reference held-out, whose steps are smaller)")
    target_accuracy: float | None = Field(None, ge=0, le=1, description="retrain-like: forget-set accuracy to stop at "
                                          "(default: the original model's validation accuracy)")
    target_membership_auc: float | None = Field(
        None, ge=0, le=1, description="calibrated: the forget set's membership AUC to stop at (default: what the "
        "model's held-out utterances of its training speakers scored against its unseen speakers at training time, "
        "0.5 where it recorded no unseen speakers; with stop_reference held-out, where retraining puts the forget "
        "set against held-out utterances, from 0.5 "
        "for a few of a speaker's utterances down to an unseen speaker's: serkit.unlearning.stopping)")
    share_power: float | None = Field(
        None, gt=0, description="calibrated: the goal falls with the share f of a speaker's training utterances the "
        "request forgets (N over the mean per training speaker), from where retraining puts a few of a speaker's "
        "utterances towards an unseen speaker's, by f ** share_power: 1 falls in a straight line, 2 late (a "
        "retrained model still knows a speaker from half their utterances), null not at all (the goal of serkit "
        "before 2026-12-06). Default: 2 with stop_reference stored, 1 with held-out (bench/RESULTS.md 23v, 23h)")
    stop_reference: Literal["stored", "held-out"] = Field(
        "stored", description="calibrated: what the forget set's losses are compared with at each check. stored: "
        "the unseen speakers' loss profile the model recorded at training time (reads nothing but the forget set; "
        "stale once fine-tuning moves every loss, bench/RESULTS.md 23g). held-out: the CURRENT model's losses on "
        "the held-out utterances (data.calibration) of the model's other training speakers, read at request time "
        "(the receipt says so)")
    update: Literal["all", "head"] = Field(
        "all", description="which weights the fine-tuning moves: all (the papers) or head (the classification head "
        "only: fc1, fc2 and any layer weights; the backbone stays as trained, and its gradients are not computed). "
        "Alone it forgets no better on either testbed (bench/RESULTS.md 23i); pgu projects head-only steps")
    profiles: dict | None = Field(
        None, description="calibrated: the loss profiles to stop against, in the form serkit train records them "
        "(provenance.calibration), instead of the model's own. A model trained on train+val has no unseen speakers "
        "to profile; the unlearning grid lends its runs those of the same recipe's train->val model")

    _preset_target: bool = PrivateAttr(False)
    _share_power_chosen: bool = PrivateAttr(False)

    PRESETS: ClassVar[dict[str, dict]] = {"measured": {"target": "calibrated"}, "paper": {"target": "misclassify"}}

    @model_validator(mode="after")
    def _sgd_lr(self):
        if self.optimizer == "sgd" and self.lr is None:
            raise ValueError("optimizer sgd needs its own lr (the model's training lr is an Adam rate): set lr")
        return self

    @field_validator("profiles")
    @classmethod
    def _profiles_have_quantiles(cls, value):
        for key in ("unseen", "known"):
            part = (value or {}).get(key)
            if part is not None and not (isinstance(part, dict) and len(part.get("loss_quantiles") or []) >= 2):
                raise ValueError(f"profiles.{key} has no loss_quantiles: pass provenance.calibration of a model "
                                 "trained by serkit train with data.calibration")
        if value is not None and value.get("unseen") is None:
            raise ValueError("profiles has no 'unseen' profile: pass provenance.calibration of a model trained by "
                             "serkit train with validation speakers")
        return value

    @model_validator(mode="after")
    def _fill_from_preset(self):
        self._preset_target = self.target is None
        for name, value in self.PRESETS[self.preset].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.check_every is None:
            object.__setattr__(self, "check_every", 1 if self.stop_reference == "held-out" else 5)
        self._share_power_chosen = "share_power" in self.model_fields_set
        if not self._share_power_chosen and self.target == "calibrated" and self.target_membership_auc is None:
            object.__setattr__(self, "share_power", default_share_power(self.stop_reference == "held-out"))
        return self

    def learning_rate(self, saved: SavedModel) -> float:
        """lr, or the model's training rate; a third of it with stop_reference held-out, the steps it was measured
        with (bench/RESULTS.md 23h: a stop that sees the drift can wait for smaller steps to land)."""
        if self.lr is not None:
            return self.lr
        if self.stop_reference != "held-out":
            return default_lr(saved)
        return float(f"{default_lr(saved) * HELD_OUT_LR_SHARE:.6g}")  # 1e-05, not 9.999999999999999e-06


@dataclass
class UnlearnContext:
    saved: SavedModel  # its model is modified in place: the caller passes a copy
    forget: ForgetSet
    forget_waves: list[np.ndarray]
    forget_labels: np.ndarray  # indices into saved.labels
    seed: int = 0
    log: Callable = print
    reference_accuracy: float | None = None
    profiles: dict | None = None  # the loss profiles the model recorded at training time (provenance.calibration)
    remain: Manifest | None = None
    work_dir: Path | None = None
    device: str = "cpu"
    data: TrainingData | None = None  # where the model's training data is (retraining reads it)
    progress: Callable | None = None  # progress(label): a context giving update(done, total); the CLI's bar
    stop_reference: HeldOutReference | None = None  # what stop_reference held-out measures against
    forget_share: float = 0.0  # the share of a speaker's training utterances the request forgets (share_power)
    retained_moments: Path | None = None  # the head moments an earlier request left beside its keys (pgu reads them)

    def steps(self, label: str):
        """A progress report for a step of the request that takes a while (a bar on the command line)."""
        return self.progress(label) if self.progress is not None else nullcontext(lambda done, total: None)


@dataclass
class UnlearnOutcome:
    stats: dict = field(default_factory=dict)
    replacement: SavedModel | None = None  # retrain returns a new model instead of editing one


class UnlearningMethod(abc.ABC):
    name: str = ""
    Params: type[BaseModel] = FinetuneParams
    reads_remaining_data: bool = False

    def __init__(self, params: dict | BaseModel | None = None):
        if isinstance(params, BaseModel):
            self.params = params
        else:
            try:
                self.params = self.Params.model_validate(params or {})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(map(str, first["loc"]))
                raise ConfigError(f"method '{self.name}': {where + ': ' if where else ''}"
                                  f"{first['msg'].removeprefix('Value error, ')}") from None

    @abc.abstractmethod
    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        """Make ctx.saved.model forget ctx.forget; return statistics for the receipt."""


METHODS: dict[str, type[UnlearningMethod]] = {}


def register(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[UnlearningMethod]:
    from serkit.unlearning.methods import adversarial, amun, jit, l2ul, neg_grad, pgu, random_label, remain, retrain, ssd  # noqa: F401  (registers)

    if name not in METHODS:
        raise ConfigError(f"unknown unlearning method '{name}'; choose one of {sorted(METHODS)}")
    return METHODS[name]


def get_method(name: str, params: dict | None = None) -> UnlearningMethod:
    return method_class(name)(params)


def random_wrong_labels(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """One label per utterance, drawn uniformly from the classes other than its own (seeded)."""
    rng = np.random.default_rng(seed)
    return (np.asarray(labels) + rng.integers(1, num_classes, size=len(labels))) % num_classes


def freeze_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


@dataclass
class _Pairs:
    waves: list[np.ndarray]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.waves)

    def take(self, indices) -> tuple[list[np.ndarray], np.ndarray]:
        return [self.waves[i] for i in indices], self.targets[indices]


def finetune(ctx: UnlearnContext, params: FinetuneParams, forget_targets: np.ndarray,
             extra: tuple[list[np.ndarray], np.ndarray] | None, loss_fn: Callable, lr: float,
             after_step: Callable | None = None) -> dict:
    """The shared loop. `loss_fn(model, forget_batch, extra_batch)` returns (loss, parts dict), or (None, parts)
    when it has put the gradients in place itself. `extra`: (waves, targets), or a set that makes its pairs
    when first asked (`len()` and `take(indices) -> (waves, targets)`, e.g. pgd.OnDemandAdversarial).
    `after_step(model)` runs after every optimizer step (e.g. a projection of the weights' change)."""
    model = ctx.saved.model
    frozen = [p for name, p in model.named_parameters()
              if p.requires_grad and params.update == "head" and not model.is_head_parameter(name)]
    trainable = [p for p in model.parameters() if p.requires_grad and not any(p is f for f in frozen)]
    if not trainable:
        raise ConfigError(f"update head: this {type(model).__name__} has no trainable head parameters "
                          f"({', '.join(model.head_prefixes)}); use update all")
    for p in frozen:
        p.requires_grad_(False)  # no backbone gradients: a head-only step costs the forward pass and little else
    try:
        return _finetune(ctx, params, forget_targets, extra, loss_fn, lr, model, trainable, after_step)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _finetune(ctx, params, forget_targets, extra, loss_fn, lr, model, trainable, after_step) -> dict:
    device = next(model.parameters()).device
    rng = np.random.default_rng(ctx.seed)
    n_forget = len(ctx.forget_waves)
    if isinstance(extra, tuple):
        waves, targets = extra
        extra = _Pairs(waves, np.asarray(targets))
    if extra is not None:
        steps_per_epoch = max(1, math.ceil(len(extra) / params.batch_size))
    else:
        steps_per_epoch = max(1, math.ceil(n_forget / params.batch_size))
    forget_batch = max(1, math.ceil(n_forget / steps_per_epoch))
    optimizer = torch.optim.Adam(trainable, lr=lr) if params.optimizer == "adam" else torch.optim.SGD(trainable, lr=lr)
    rule = stop_rule(params.target, params.target_accuracy, ctx.profiles, ctx.reference_accuracy,
                     params._preset_target, ctx.log, reference=ctx.stop_reference,
                     target_membership_auc=params.target_membership_auc, forget_share=ctx.forget_share,
                     share_power=params.share_power, share_power_chosen=params._share_power_chosen)
    history, stop_reason, step = [], f"{params.epochs} epochs", 0
    start = time.perf_counter()
    model.train()
    freeze_batchnorm(model)
    reached = False
    for epoch in range(params.epochs):
        forget_order = rng.permutation(n_forget)
        extra_order = rng.permutation(len(extra)) if extra is not None else None
        losses = []
        for s in range(steps_per_epoch):
            fi = forget_order[(s * forget_batch) % n_forget:][:forget_batch]
            if len(fi) < forget_batch:
                fi = np.concatenate([fi, forget_order[: forget_batch - len(fi)]])
            fx, fm = pad_batch([ctx.forget_waves[i] for i in fi])
            fbatch = (fx.to(device), fm.to(device), torch.as_tensor(forget_targets[fi], device=device))
            ebatch = None
            if extra is not None:
                ei = extra_order[s * params.batch_size:(s + 1) * params.batch_size]
                ewaves, etargets = extra.take(ei)
                ex, em = pad_batch(ewaves)
                ebatch = (ex.to(device), em.to(device), torch.as_tensor(etargets, device=device))
            optimizer.zero_grad()
            loss, parts = loss_fn(model, fbatch, ebatch)
            if loss is not None:  # None: loss_fn accumulated the gradients itself (an objective too large for one graph)
                loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(model)
            losses.append({k: float(v) for k, v in parts.items()})
            step += 1
            if params.stop_early and step % params.check_every == 0:
                _, value = rule.check(model, ctx.forget_waves, ctx.forget_labels)
                freeze_batchnorm(model)
                if rule.reached(value):
                    reached = True
                    stop_reason = f"{rule.describe(value)} after {step} steps"
                    break
        acc, value = rule.check(model, ctx.forget_waves, ctx.forget_labels)
        freeze_batchnorm(model)
        mean_parts = {k: float(np.mean([p[k] for p in losses])) for k in losses[0]} if losses else {}
        # against held-out utterances of other speakers an AUC is a fraction over N x their count, which says how
        # many speakers the forget set holds: the receipt keeps two decimals, as the stop reason does
        figure = {} if rule.measure == "accuracy" else \
            {"forget_membership_auc": round(value, 2) if rule.reference is not None else value}
        history.append({"epoch": epoch + 1, "forget_accuracy": acc, **figure, **mean_parts})
        ctx.log(f"unlearning epoch {epoch + 1}: forget-set accuracy {acc:.2f}, "
                + "".join(f"membership AUC {v:.2f}, " for v in figure.values())
                + ", ".join(f"{k} {v:.3g}" for k, v in mean_parts.items()))
        if reached or (params.stop_early and rule.reached(value)):
            if not reached:
                stop_reason = f"{rule.describe(value)} after epoch {epoch + 1}"
            reached = True
            break
    model.eval()
    reached = reached or bool(history and rule.reached(value))
    goal = {"target_accuracy": rule.goal} if rule.measure == "accuracy" else {"target_membership_auc": rule.goal}
    return {"epochs_run": len(history), "steps": step, "stop_reason": stop_reason, "target": rule.target,
            "target_measure": rule.measure, **goal, "target_reached": reached, "lr": lr, "optimizer": params.optimizer,
            "history": history, "finetune_seconds": round(time.perf_counter() - start, 2)}


def default_lr(saved: SavedModel) -> float:
    from serkit.models.registry import get_architecture

    training = (saved.config.get("provenance") or {}).get("training") or {}
    return float(training.get("learning_rate") or get_architecture(saved.config["architecture"]).default_lr)
