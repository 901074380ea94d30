"""The proof: what a model knows about the forget set, about everyone else, and how it compares.

- UAR and accuracy on the forget set D_e;
- UAR and accuracy on speakers the model never trained on (validation or test);
- accuracy on the forgotten speaker's other training utterances (collateral forgetting);
- a membership-inference attack: per-utterance cross-entropy as the score, forget set vs unseen
  speakers. AUC 1 means the forget set is obviously "in" (memorised), 0.5 that it looks like data
  the model never saw (what retraining gives), well below 0.5 that it stands out by being *worse*
  than unseen data (over-forgetting, which also reveals it). Attack accuracy is the best balanced
  accuracy of a loss threshold;
- agreement with, and UAR gap to, a retrained model when one is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.metrics import roc_curve

from serkit.data.dataset import load_waves
from serkit.data.manifest import Manifest
from serkit.errors import ConfigError, SerkitError
from serkit.inference.predict import model_outputs
from serkit.metrics import membership_auc, uar, war
from serkit.unlearning.stopping import HeldOutReference

if TYPE_CHECKING:
    from serkit.models.modeldir import SavedModel
    from serkit.unlearning.forget_set import ForgetSet, TrainingData


@dataclass
class EvalSet:
    name: str
    waves: list[np.ndarray]
    labels: np.ndarray  # indices into the model's labels

    def __len__(self) -> int:
        return len(self.waves)


def outputs(model, data: EvalSet) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and per-utterance cross-entropy losses."""
    logits = torch.from_numpy(model_outputs(model, data.waves)["logits"])
    loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(data.labels), reduction="none")
    return logits.argmax(-1).numpy(), loss.numpy()


def membership_attack(member_loss: np.ndarray, nonmember_loss: np.ndarray) -> dict:
    """Loss-threshold membership inference: members are predicted where the loss is low."""
    scores = -np.concatenate([member_loss, nonmember_loss])
    truth = np.concatenate([np.ones(len(member_loss)), np.zeros(len(nonmember_loss))])
    fpr, tpr, _ = roc_curve(truth, scores)
    return {"auc": membership_auc(member_loss, nonmember_loss), "attack_accuracy": float(np.max((tpr + 1 - fpr) / 2)),
            "forget_loss_mean": float(np.mean(member_loss)), "unseen_loss_mean": float(np.mean(nonmember_loss))}


def forget_report(model, forget: EvalSet, unseen: EvalSet, other: EvalSet | None, retrained=None) -> dict:
    f_pred, f_loss = outputs(model, forget)
    u_pred, u_loss = outputs(model, unseen)
    report = {
        "forget": {"n": len(forget), "uar": uar(forget.labels, f_pred), "accuracy": war(forget.labels, f_pred)},
        unseen.name: {"n": len(unseen), "uar": uar(unseen.labels, u_pred), "accuracy": war(unseen.labels, u_pred)},
        "membership": membership_attack(f_loss, u_loss),
    }
    if other is not None and len(other):
        o_pred, _ = outputs(model, other)
        report["speaker_other_training"] = {"n": len(other), "accuracy": war(other.labels, o_pred)}
    if retrained is not None:
        r_pred, _ = outputs(retrained, unseen)
        rf_pred, _ = outputs(retrained, forget)
        report["vs_retrained"] = {
            "agreement_unseen": float(np.mean(u_pred == r_pred)),
            "agreement_forget": float(np.mean(f_pred == rf_pred)),
            "uar_gap_unseen": uar(unseen.labels, u_pred) - uar(unseen.labels, r_pred),
        }
    return report


def _label_indices(saved: SavedModel, frame) -> np.ndarray:
    index = {label: i for i, label in enumerate(saved.labels)}
    return np.array([index[e] for e in frame["emotion"]], dtype=np.int64)


def _eval_set(saved: SavedModel, name: str, manifest: Manifest) -> EvalSet:
    manifest.check_labels(saved.labels, f"model {saved.path}")
    return EvalSet(name, load_waves(manifest.audio_paths(), saved.preprocessing), _label_indices(saved, manifest.frame))


def evaluation_sets(saved: SavedModel, data: TrainingData, forget_set: ForgetSet,
                    part: str) -> tuple[EvalSet, EvalSet, EvalSet | None]:
    """The forget set, the unseen speakers of `part`, and the forgotten speakers' other training utterances
    (those held out of training for calibration are not training utterances)."""
    unseen_speakers = data.held_out.get(part)
    if not unseen_speakers:
        raise SerkitError(f"the model has no '{part}' speakers it never trained on to evaluate against "
                          f"(held out: {sorted(k for k, v in data.held_out.items() if v)})")
    frame = data.train_rows()
    forget_eval = EvalSet("forget", load_waves(forget_set.audio_paths(), saved.preprocessing),
                          _label_indices(saved, forget_set.rows))
    unseen = _eval_set(saved, part, data.manifest.subset(unseen_speakers))
    others = frame[frame["speaker"].isin(forget_set.speakers) & ~frame["path"].isin(set(forget_set.rows["path"]))]
    other = _eval_set(saved, "speaker_other_training", Manifest(others.reset_index(drop=True), data.manifest.file)) \
        if len(others) else None
    return forget_eval, unseen, other


MIN_REFERENCE = 20  # below this a membership AUC against the reference moves by 0.05 per utterance


def held_out_reference(saved: SavedModel, data: TrainingData, forget_set: ForgetSet) -> HeldOutReference:
    """What a calibrated stop with stop_reference held-out measures against: the utterances of the model's
    training speakers that data.calibration held out of training, less the forget set's speakers' own (their
    speaker is the one being forgotten)."""
    if not data.calibration:
        raise ConfigError(f"stop_reference held-out needs utterances of the training speakers held out of training "
                          f"(data.calibration), and model {saved.path} was trained without them: use stop_reference "
                          "stored, or train with --set data.calibration=6")
    frame = data.manifest.frame
    rows = frame[data.calibration_mask() & ~frame["speaker"].isin(forget_set.speakers)]
    if len(rows) < MIN_REFERENCE:
        raise ConfigError(f"stop_reference held-out: the model holds out only {len(rows)} utterances of its other "
                          f"training speakers, too few to measure a membership AUC against (at least {MIN_REFERENCE}); "
                          "use stop_reference stored, or train with a larger data.calibration")
    reference = _eval_set(saved, "held_out_reference", Manifest(rows.reset_index(drop=True), data.manifest.file))
    return HeldOutReference(reference.waves, reference.labels)
