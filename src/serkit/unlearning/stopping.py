"""When a deletion request's fine-tuning stops: the targets, and the one figure each one checks.

- misclassify (papers 000/001): no forget utterance is classified correctly;
- retrain-like: forget-set accuracy down to the original model's validation accuracy, a number its
  provenance records (the forget set is recognised like speakers the model never heard);
- calibrated: the forget set's loss-threshold membership AUC, measured against the loss profile of
  the validation speakers that the model directory recorded at training time, down to what the
  held-out utterances of its own training speakers scored there (`data.calibration`, the profile
  "known"). That is where a model retrained without the forget set lands: it still knows the speaker
  from their other utterances, so it fits the forgotten ones better than an unseen speaker's, and
  a forget set pushed down to "unseen" stands out by being worse (an AUC below 0.5 betrays it as
  surely as one above). How far retraining forgets also grows with the share f of the speaker's training
  utterances the request forgets (N over the mean per training speaker): a model retrained without all of
  them treats them as an unseen speaker's (0.5). So the goal falls from the "known" AUC towards 0.5 by
  f ** share_power, 2 by default: little up to half a speaker, steeply past it, as the retrained models of
  bench/RESULTS.md 23v do. Without a "known" profile the goal is 0.5 when asked for by name; the default
  preset falls back to retrain-like instead (an AUC of 0.5 over-forgets as retrain-like does, and says so less
  plainly). Without an "unseen" profile (a model trained on every speaker it did not hold out for testing,
  e.g. train+val) it measures the forget set against the "known" profile itself, down to 0.5: the forgotten
  utterances should look like the training speakers' held-out ones, where retraining puts a few of a speaker's
  (all of them, it puts a little further: this stop then forgets a little less than retraining);
- calibrated-accuracy: forget-set accuracy down to the "known" utterances' accuracy.
Each reads what the model directory recorded, never the training data.

The stored profile is the original model's, and fine-tuning moves every loss: unseen speakers' losses
grow too, so against the stale profile the forget set looks forgotten about twice as early as it is
(bench/RESULTS.md 23g). `stop_reference: held-out` measures the calibrated stop against the CURRENT
model instead: the forget set's AUC against its losses on the held-out calibration utterances of the
model's other training speakers (data.calibration; never trained on, read at request time, which the
receipt says), down to `target_membership_auc`. By default that is where retraining puts it: a model
retrained without a few of a speaker's utterances treats them like those held-out ones (0.5); without
all of them, like an unseen speaker's, which the "known" profile says scored 1 - auc_vs_unseen against
them. Between the two the goal moves with the share f = N / (training utterances per speaker) of a
speaker's utterances the request forgets: 0.5 - f ** share_power (auc_vs_unseen - 0.5), share_power 1 here.
N and the corpus-wide mean are all it reads, so the goal says nothing the receipt does not (a forget set of several speakers gets
a lower goal than its share per speaker would give; bench/RESULTS.md 23h).

Where retraining lands depends on the speaker (bench/RESULTS.md 23p). A reference per speaker, the forget
speaker's own held-out utterances scored by the current model down to 0.5, was tried and dropped (23q): six
held-out utterances carry their own offset, and at N = 30 they drift with the forget set, so the stop ran the
model down to 66 % of its accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from serkit.data.dataset import pad_batch
from serkit.errors import ConfigError
from serkit.metrics import auc_against_profile, membership_auc

TARGETS = ("misclassify", "retrain-like", "calibrated", "calibrated-accuracy")


@dataclass
class HeldOutReference:
    """What stop_reference held-out measures against: held-out utterances of the other training speakers."""

    waves: list[np.ndarray]
    labels: np.ndarray


SHARE_POWER = 2.0  # the stored stop's goal falls late: bench/RESULTS.md 23v
HELD_OUT_SHARE_POWER = 1.0  # the held-out stop's, in a straight line, as measured in 23h


def default_share_power(held_out: bool) -> float:
    return HELD_OUT_SHARE_POWER if held_out else SHARE_POWER


def share_fall(forget_share: float, share_power: float | None) -> float:
    """How far along the way from "a few of a speaker's utterances" to "all of them" a goal has moved: f ** p for
    the share f a request forgets, 0 without a power (the goal stays where it starts)."""
    if share_power is None:
        return 0.0
    return min(max(forget_share, 0.0), 1.0) ** share_power


def held_out_goal(forget_share: float, profiles: dict | None,
                  share_power: float | None = HELD_OUT_SHARE_POWER) -> float:
    """Where a retrained model puts the forget set against held-out utterances of trained speakers (the module's
    docstring): 0.5 for a small share of one speaker, down to an unseen speaker's 1 - auc_vs_unseen."""
    known = (profiles or {}).get("known") or {}
    if known.get("auc_vs_unseen") is None:
        return 0.5
    return 0.5 - share_fall(forget_share, share_power) * max(float(known["auc_vs_unseen"]) - 0.5, 0.0)


def stored_goal(known_auc: float, forget_share: float, share_power: float | None) -> float:
    """Where a retrained model puts the forget set against the stored unseen speakers: the known speakers' held-out
    utterances' AUC for a few of a speaker's utterances, down to an unseen speaker's 0.5 for all of them."""
    return known_auc - share_fall(forget_share, share_power) * max(known_auc - 0.5, 0.0)


@dataclass
class StopRule:
    target: str  # as the receipt says it, with a fallback named
    measure: str  # "accuracy" or "membership_auc"
    goal: float
    unseen: dict | None = None  # the stored loss profile a membership AUC is measured against
    reference: HeldOutReference | None = None  # or held-out utterances the current model scores
    against: str = "unseen speakers"  # whose stored profile `unseen` is

    def check(self, model: nn.Module, waves: list[np.ndarray], labels: np.ndarray) -> tuple[float, float]:
        """(forget-set accuracy, the rule's figure), in eval mode; the caller restores the training mode."""
        accuracy, losses = forget_figures(model, waves, labels)
        if self.measure == "accuracy":
            return accuracy, accuracy
        if self.reference is not None:
            return accuracy, membership_auc(losses, forget_figures(model, self.reference.waves, self.reference.labels)[1])
        return accuracy, auc_against_profile(losses, self.unseen)

    def reached(self, value: float) -> bool:
        return value <= self.goal

    def describe(self, value: float) -> str:
        name = "forget-set accuracy" if self.measure == "accuracy" else \
            f"membership AUC against {self.against}" if self.reference is None else \
            "membership AUC against held-out utterances of trained speakers"
        return f"{name} {value:.2f} <= {self.goal:.2f}"


@torch.no_grad()
def forget_figures(model: nn.Module, waves: list[np.ndarray], labels: np.ndarray,
                   batch_size: int = 32) -> tuple[float, np.ndarray]:
    """Accuracy and per-utterance cross-entropy of the model on the forget set, in eval mode."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, losses = 0, []
    for start in range(0, len(waves), batch_size):
        x, mask = pad_batch(waves[start:start + batch_size])
        y = torch.as_tensor(labels[start:start + batch_size], device=device)
        logits = model(x.to(device), mask.to(device))
        correct += int((logits.argmax(-1) == y).sum())
        losses.append(nn.functional.cross_entropy(logits, y, reduction="none").cpu().numpy())
    model.train(was)
    return correct / max(len(waves), 1), np.concatenate(losses) if losses else np.zeros(0)


def stop_rule(target: str, target_accuracy: float | None, profiles: dict | None, reference_accuracy: float | None,
              chosen_by_preset: bool, log=print, reference: HeldOutReference | None = None,
              target_membership_auc: float | None = None, forget_share: float = 0.0,
              share_power: float | None | str = "default", share_power_chosen: bool = True) -> StopRule:
    """The rule for `target`; where the model lacks what it needs, the preset's choice falls back (and says
    so), an explicit choice is refused. `reference`: what a calibrated stop measures against with the current
    model (stop_reference held-out). `forget_share`: the share of a speaker's training utterances the request
    forgets (TrainingData.forget_share). `share_power`: either stop's calibrated goal falls with that share to this
    power (None: it stays put; "default": default_share_power).
    `share_power_chosen`: set by the user (or a receipt), not filled in by default, so a conflict is refused
    rather than ignored."""
    if share_power == "default":
        share_power, share_power_chosen = default_share_power(reference is not None), False
    if share_power_chosen and share_power is not None:
        if target_membership_auc is not None:
            raise ConfigError("share_power moves the calibrated goal and target_membership_auc fixes it: set one of "
                              "them")
        if target != "calibrated":
            raise ConfigError(f"share_power moves the calibrated stop's goal; target {target} has none to move: set "
                              "target calibrated, or leave share_power out")
        if ((profiles or {}).get("known") or {}).get("auc_vs_unseen") is None:
            log("note: share_power moves nothing here: the model records no membership AUC of held-out utterances "
                "of its training speakers to move the goal from (trained without data.calibration or without "
                "validation speakers)")
    if reference is not None:
        if target != "calibrated":
            raise ConfigError(f"stop_reference held-out measures the calibrated stop; target {target} reads no loss "
                              "profile: set target calibrated, or leave stop_reference stored")
        goal = held_out_goal(forget_share, profiles, share_power) \
            if target_membership_auc is None else float(target_membership_auc)
        return StopRule("calibrated (held-out reference)", "membership_auc", goal, reference=reference)
    profiles = profiles or {}
    if target in ("calibrated", "calibrated-accuracy"):
        unseen, known = profiles.get("unseen"), profiles.get("known")
        if target == "calibrated" and unseen is not None and (known is not None or not chosen_by_preset):
            goal = known.get("auc_vs_unseen") if known is not None else None
            if goal is not None:
                goal = stored_goal(float(goal), forget_share, share_power)
            goal = goal if target_membership_auc is None else target_membership_auc
            return StopRule("calibrated" if goal is not None else "calibrated (no known-speaker profile: goal 0.5)",
                            "membership_auc", 0.5 if goal is None else float(goal), unseen)
        if target == "calibrated-accuracy" and known is not None:
            return StopRule(target, "accuracy", float(known["accuracy"]))
        if target == "calibrated" and unseen is None and known is not None:
            goal = 0.5 if target_membership_auc is None else float(target_membership_auc)
            log("note: the model records no loss profile of unseen speakers (it held none out for validation), so "
                "the calibrated stop measures the forget set against its stored held-out utterances of training "
                f"speakers (data.calibration), down to {goal:.2f}")
            return StopRule("calibrated (against held-out utterances of training speakers)", "membership_auc", goal,
                            known, against="held-out utterances of trained speakers (stored)")
        missing = "loss profile of its validation speakers or of held-out utterances of its training speakers" \
            if target == "calibrated" and unseen is None else "loss profile of held-out utterances of its training speakers"
        if not chosen_by_preset:
            how = "" if unseen is None and target == "calibrated" else " (data.calibration)"
            raise ConfigError(f"target {target} needs a {missing}{how}, which the model directory does not record (it is "
                              "written at training time by serkit train); choose target retrain-like or misclassify")
        log(f"note: the model records no {missing}, so this run stops retrain-like instead of {target}")
        target = "retrain-like"
    if target == "retrain-like":
        goal = target_accuracy if target_accuracy is not None else reference_accuracy
        if goal is None and chosen_by_preset:  # the preset's choice, not the user's: fall back, say so
            log("note: the model records no validation accuracy to stop at (retrain-like), so this run stops "
                "once the forget set is misclassified; set target_accuracy for a retrain-like stop")
            return StopRule("misclassify (no reference accuracy for retrain-like)", "accuracy", 0.0)
        if goal is None:
            raise ConfigError("target retrain-like needs a reference accuracy: the model records no validation "
                              "accuracy, so pass target_accuracy")
        return StopRule("retrain-like", "accuracy", float(goal))
    if target == "misclassify":
        return StopRule("misclassify", "accuracy", 0.0)
    raise ConfigError(f"unknown target '{target}'; choose one of {list(TARGETS)}")
