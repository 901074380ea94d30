"""`serkit audit`: is an unlearned model, utterance by utterance, what retraining would have given?

The receipt's membership attack is the cheap proof: one loss threshold over the whole forget set. A
forget set can pass it while each utterance still stands out from what a retrained model does with
it. The audit asks per utterance (U-LiRA's question; Hayes, Shumailov, Triantafillou, Khalifa and
Papernot, "Inexact unlearning needs more careful evaluations to avoid a false sense of privacy", 2024):

- score: the logit-scaled confidence in the true class, phi = log p_y - log(1 - p_y) (LiRA's, and the
  NeurIPS 2023 unlearning challenge's), of every model on every forget utterance;
- "never seen": for each utterance, a Gaussian fitted to the scores of K models retrained without the
  forget set (`serkit forget --method retrain --set seed=S`). With few models a per-utterance variance is
  noise, so the variance is pooled over the utterances (LiRA's fixed-variance variant) below
  `PER_UTTERANCE_VARIANCE_FROM` models;
- test: z = (phi_unlearned - mu) / sigma per utterance, two-sided (forgetting too hard stands out as surely
  as remembering), with its p-value;
- distinguishability: the AUC of |z| between the unlearned model and the retrained models themselves, each
  retrained model scored against a fit on the other K - 1 and the unlearned model against the same K - 1
  fits (both sides see fits of one size). 0.5: the unlearned model looks like one more retrained model;
  1: it is told apart on every utterance. Per utterance, the share of retrained models it is further out
  than;
- with models trained *with* the forget set (the original and other seeds of its recipe), LiRA's
  likelihood ratio log N(phi; in) - log N(phi; out) per utterance: above 0 the unlearned model looks
  trained on that utterance;
- with several runs of one method on the forget set (a file list, other seeds), the NeurIPS 2023
  unlearning challenge's per-example epsilon, as far as so few models can resolve it.

The retrained models must have forgotten exactly this forget set: each one's receipt commits to it under
its own key, and the audit checks every commitment before it reads any model. Per-utterance rows name an
utterance only by its commitment in the (first) unlearned model's receipt.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from serkit.errors import SerkitError
from serkit.inference.predict import model_outputs
from serkit.models.modeldir import load_model
from serkit.unlearning.commitments import commit, compare
from serkit.unlearning.keys import KEYS_FILE, load_request_keys
from serkit.unlearning.receipts import RECEIPT_FILE, read_receipt

PER_UTTERANCE_VARIANCE_FROM = 16  # below this many models, one variance pooled over the utterances


def confidence_scores(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """phi = log p_y - log(sum_{j != y} p_j), from logits, without overflow."""
    logits = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    log_p = torch.log_softmax(logits, dim=-1)
    true = log_p.gather(1, labels[:, None])[:, 0]
    others = log_p.clone()
    others[torch.arange(len(labels)), labels] = -math.inf
    return (true - torch.logsumexp(others, dim=-1)).numpy()


@dataclass
class Fit:
    """Per-utterance Gaussians fitted to models' scores (rows: models, columns: utterances)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray) -> Fit:
        scores = np.asarray(scores, dtype=float)
        if scores.shape[0] < 2:
            raise ValueError("a fit needs the scores of at least 2 models")
        var = scores.var(axis=0, ddof=1)
        if scores.shape[0] < PER_UTTERANCE_VARIANCE_FROM:
            var = np.full_like(var, var.mean())
        return cls(scores.mean(axis=0), np.sqrt(np.maximum(var, 1e-12)))

    def z(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores) - self.mean) / self.std

    def log_density(self, scores: np.ndarray) -> np.ndarray:
        return sps.norm.logpdf(np.asarray(scores), self.mean, self.std)


def distinguishability(unlearned: np.ndarray, retrained: np.ndarray) -> dict:
    """The per-utterance test of one unlearned model (scores: N) against K retrained models (K x N)."""
    retrained = np.asarray(retrained, dtype=float)
    k = retrained.shape[0]
    if k < 2:
        raise SerkitError(f"the audit needs at least 2 retrained models ({k} given); train more with serkit forget "
                          "--method retrain --set seed=S")
    full = Fit.of(retrained)
    inflation = math.sqrt(1 + 1 / k)  # the new model is a fresh draw, the fit's mean an estimate from k
    z = full.z(unlearned) / inflation
    p = 2 * sps.norm.sf(np.abs(z))
    result = {"retrained_models": k, "z": z.tolist(), "p": p.tolist(), "mean_z": float(z.mean()),
              "share_p_below_0_05": float(np.mean(p < 0.05)), "pooled_variance": k < PER_UTTERANCE_VARIANCE_FROM}
    if k < 3:
        result.update(auc=None, per_utterance_auc=None, note="the AUC needs at least 3 retrained models (one held "
                      "out against the fit of at least 2)")
        return result
    z_unlearned, z_retrained = [], []
    for held in range(k):
        fit = Fit.of(np.delete(retrained, held, axis=0))
        z_unlearned.append(np.abs(fit.z(unlearned)))
        z_retrained.append(np.abs(fit.z(retrained[held])))
    z_unlearned, z_retrained = np.array(z_unlearned), np.array(z_retrained)
    truth = np.r_[np.ones(z_unlearned.size), np.zeros(z_retrained.size)]
    auc = float(roc_auc_score(truth, np.r_[z_unlearned.ravel(), z_retrained.ravel()]))
    further = (z_unlearned > z_retrained) + 0.5 * (z_unlearned == z_retrained)
    result.update(auc=auc, per_utterance_auc=further.mean(axis=0).tolist())
    return result


def likelihood_ratio(unlearned: np.ndarray, trained: np.ndarray, retrained: np.ndarray) -> dict:
    """LiRA with models trained with (`trained`) and without (`retrained`) the forget set."""
    trained, retrained = np.asarray(trained, dtype=float), np.asarray(retrained, dtype=float)
    if trained.shape[0] < 2:
        raise SerkitError(f"the likelihood ratio needs at least 2 models trained with the forget set "
                          f"({trained.shape[0]} given)")
    inside, outside = Fit.of(trained), Fit.of(retrained)
    ratio = inside.log_density(unlearned) - outside.log_density(unlearned)
    return {"trained_models": int(trained.shape[0]), "log_ratio": ratio.tolist(), "mean_log_ratio": float(ratio.mean()),
            "share_looks_trained": float(np.mean(ratio > 0))}


def per_example_epsilon(unlearned: np.ndarray, retrained: np.ndarray, delta: float = 1e-5, cap: float = 50.0) -> np.ndarray:
    """The NeurIPS 2023 unlearning challenge's per-example epsilon (google-deepmind/unlearning_evaluation), from
    several unlearned models (runs of one method on one forget set) and several retrained ones (rows: models).

    Per utterance, every threshold between the two groups' scores is an attack; with its false positive and false
    negative rates, epsilon = max(log(1 - delta - FPR) - log FNR, log(1 - delta - FNR) - log FPR), the largest over
    thresholds, in [0, cap] (groups that never overlap give the cap). With K models a side, no finite epsilon above
    about log(K) can be seen: the challenge used 512 of each."""
    unlearned, retrained = np.asarray(unlearned, dtype=float), np.asarray(retrained, dtype=float)
    if unlearned.shape[0] < 2 or retrained.shape[0] < 2:
        raise SerkitError("a per-example epsilon needs at least 2 unlearned runs of one method on the forget set and 2 "
                          "retrained models")
    epsilons = np.zeros(unlearned.shape[1])
    for e in range(unlearned.shape[1]):
        u, r = unlearned[:, e], retrained[:, e]
        positive, negative = (u, r) if np.median(u) >= np.median(r) else (r, u)
        best = 0.0
        for t in np.unique(np.r_[u, r]):
            fpr, fnr = np.mean(negative >= t), np.mean(positive < t)
            if fpr == 0 and fnr == 0:
                best = cap
                break
            if fpr == 0 or fnr == 0:
                continue  # one error rate 0: its log is unbounded; the challenge skips such thresholds
            with np.errstate(divide="ignore", invalid="ignore"):
                value = max(np.log(max(1 - delta - fpr, 0)) - np.log(fnr), np.log(max(1 - delta - fnr, 0)) - np.log(fpr))
            best = max(best, float(value) if np.isfinite(value) else 0.0)
        epsilons[e] = min(best, cap)
    return epsilons


@dataclass
class AuditModel:
    name: str
    folder: Path
    receipt: dict | None = None
    scores: np.ndarray | None = None


@dataclass
class Audit:
    commitments: list[str]
    unlearned: list[dict] = field(default_factory=list)
    retrained: int = 0
    trained: int = 0
    epsilon: dict = field(default_factory=dict)  # method -> per-example epsilon over its runs

    def to_json(self) -> dict:
        return {"format": "serkit-audit", "n": len(self.commitments), "retrained_models": self.retrained,
                "trained_models": self.trained, "utterances": [c[:16] for c in self.commitments],
                "unlearned": self.unlearned, "per_example_epsilon": self.epsilon}


def _forget_output(folder: Path, what: str) -> tuple[dict, Path]:
    folder = Path(folder)
    receipt_file = folder / RECEIPT_FILE if folder.is_dir() else folder
    if not receipt_file.is_file():
        raise SerkitError(f"{what} {folder} is not an output of serkit forget (no {RECEIPT_FILE}); give the folder "
                          "serkit forget wrote")
    receipt = read_receipt(receipt_file)
    if not (receipt_file.parent / "model").is_dir():
        raise SerkitError(f"{what} {folder} holds a receipt but no model/ (serkit experiment unlearning deletes each "
                          "run's model unless keep_models: true); run the request again (the same request gives the "
                          "same model) and give that folder")
    return receipt, receipt_file.parent


def _check_same_forget_set(receipt: dict, folder: Path, digests: list[bytes], what: str) -> None:
    """The receipt commits to exactly these utterances, under its own request key."""
    keys_file = folder / KEYS_FILE
    if not keys_file.is_file():
        raise SerkitError(f"{what} {folder} has no {KEYS_FILE}: its receipt's commitments cannot be opened to check "
                          "that it forgot this forget set")
    key = bytes.fromhex(load_request_keys(keys_file).get(receipt["request_id"]).key)
    missing, extra = compare(receipt["forget_set"]["commitments"], key, digests)
    if missing or extra:
        raise SerkitError(f"{what} {folder} forgot another forget set than the one named here (by its commitments: "
                          f"{missing} of its utterances are not named, {extra} named ones it did not forget); give "
                          "models of the same request, or name the forget set as it was named")


def score_models(models: list[AuditModel], waves: list[np.ndarray], labels: np.ndarray, device: str = "cpu") -> None:
    for item in models:
        saved = load_model(item.folder / "model" if (item.folder / "model").is_dir() else item.folder)  # trained: a model dir
        saved.model.to(device)
        item.scores = confidence_scores(model_outputs(saved.model, waves)["logits"], labels)


def run_audit(original_dir: Path | str, unlearned: list[Path], retrained: list[Path], trained: list[Path] | None = None,
              *, files: list[str] | None = None, speaker: str | None = None, n: int | None = None, seed: int = 0,
              manifest: Path | str | None = None, split: Path | str | None = None, log=print) -> Audit:
    """Audit each unlearned model (a serkit forget output) against retrained ones (serkit forget --method retrain
    outputs of the same forget set) and optionally models trained with it (model directories)."""
    from serkit.unlearning.evaluation import _label_indices
    from serkit.unlearning.forget_set import build_forget_set, training_data

    if len(retrained) < 2:
        raise SerkitError(f"the audit needs at least 2 retrained models ({len(retrained)} given): serkit forget MODEL "
                          "--method retrain --set seed=S, the forget set named as for the unlearned model")
    if not unlearned:
        raise SerkitError("name at least one unlearned model to audit (--unlearned OUT, a serkit forget output)")
    original = load_model(original_dir)
    outputs = []
    for folder, what in [(u, "unlearned output") for u in unlearned] + [(r, "retrained output") for r in retrained]:
        receipt, folder = _forget_output(folder, what)
        if receipt["model_before"]["weights_sha256"] != original.weights_sha256:
            raise SerkitError(f"{what} {folder} was made from another model than {original_dir} (its receipt's "
                              "model_before differs); give the model the requests were made on")
        if what.startswith("retrained") and receipt["method"]["name"] != "retrain":
            raise SerkitError(f"retrained output {folder} was made by method '{receipt['method']['name']}', not by "
                              "retraining; give serkit forget --method retrain outputs")
        outputs.append((what, AuditModel(folder.name, folder, receipt)))
    data = training_data(original, manifest, split)
    forget_set = build_forget_set(original, files=files, speaker=speaker, n=n, seed=seed, warn=log, data=data)
    digests = forget_set.digests()
    for what, item in outputs:
        _check_same_forget_set(item.receipt, item.folder, digests, what)
    from serkit.data.dataset import load_waves

    waves = load_waves(forget_set.audio_paths(), original.preprocessing)
    labels = _label_indices(original, forget_set.rows)
    models = [m for _, m in outputs] + [AuditModel(Path(t).name, Path(t)) for t in trained or []]
    log(f"scoring {len(models)} models on the {len(waves)} forget utterances")
    score_models(models, waves, labels)
    unlearned_models = models[:len(unlearned)]
    retrained_scores = np.array([m.scores for m in models[len(unlearned):len(unlearned) + len(retrained)]])
    trained_scores = np.array([m.scores for m in models[len(unlearned) + len(retrained):]])
    first = outputs[0][1]  # utterances are named by their commitments in the first unlearned model's receipt
    key = bytes.fromhex(load_request_keys(first.folder / KEYS_FILE).get(first.receipt["request_id"]).key)
    order = np.argsort([commit(key, d) for d in digests])
    audit = Audit(sorted(outputs[0][1].receipt["forget_set"]["commitments"]), retrained=len(retrained),
                  trained=len(trained or []))
    for item in unlearned_models:
        row = {"name": item.name, "method": item.receipt["method"]["name"], "request_id": item.receipt["request_id"],
               **_reorder(distinguishability(item.scores, retrained_scores), order)}
        if len(trained_scores):
            row["likelihood_ratio"] = _reorder(likelihood_ratio(item.scores, trained_scores, retrained_scores), order)
        row["receipt_membership_auc"] = item.receipt["evaluation"]["after"]["membership"]["auc"]
        audit.unlearned.append(row)
    # runs of one method with one set of parameters (seeds apart): an epsilon over a mix of settings says nothing
    by_setting: dict[tuple[str, str], list] = {}
    for item in unlearned_models:
        method = item.receipt["method"]
        key = (method["name"], json.dumps(method["params"], sort_keys=True, default=str))
        by_setting.setdefault(key, []).append(item)
    names = [name for name, _ in by_setting]
    for (method, _), items in by_setting.items():
        if names.count(method) > 1:
            method = f"{method} ({items[0].name})"
        scores = [item.scores for item in items]
        if len(scores) >= 2:
            eps = per_example_epsilon(np.array(scores), retrained_scores)[order]
            audit.epsilon[method] = {"runs": len(scores), "epsilon": eps.tolist(), "median": float(np.median(eps)),
                                     "max": float(eps.max())}
    return audit


def _reorder(result: dict, order: np.ndarray) -> dict:
    """Per-utterance lists in the order of the unlearned receipt's commitments."""
    return {k: ([v[i] for i in order] if isinstance(v, list) and len(v) == len(order) else v) for k, v in result.items()}


def audit_markdown(audit: Audit) -> str:
    lines = [f"# Audit: {len(audit.commitments)} forget utterances against {audit.retrained} retrained models", "",
             "Per utterance, the unlearned model's confidence in the true class (logit-scaled) is tested against a "
             "Gaussian fitted to the retrained models' (U-LiRA). AUC: how well |z| tells the unlearned model from a "
             "retrained one (0.5: not at all). mean z > 0: more confident on the forget set than retrained models "
             "(remembers); < 0: less (over-forgotten).", "",
             "| model | method | AUC vs retrained | mean z | utterances at p < 0.05 | receipt's membership AUC |"
             + (" LiRA: looks trained |" if audit.trained else ""),
             "|---|---|---|---|---|---|" + ("---|" if audit.trained else "")]
    for row in audit.unlearned:
        auc = "-" if row["auc"] is None else f"{row['auc']:.3f}"
        lira = f" {row['likelihood_ratio']['share_looks_trained']:.0%} |" if "likelihood_ratio" in row else ""
        lines.append(f"| {row['name']} | {row['method']} | {auc} | {row['mean_z']:+.2f} | {row['share_p_below_0_05']:.0%} "
                     f"| {row['receipt_membership_auc']:.3f} |{lira}")
    for method, eps in audit.epsilon.items():
        lines += ["", f"Per-example epsilon (the NeurIPS 2023 challenge's), {method} over {eps['runs']} runs against "
                  f"{audit.retrained} retrained models: median {eps['median']:.2f}, max {eps['max']:.2f} (with so few "
                  f"models no finite epsilon much above log {min(eps['runs'], audit.retrained)} can show)."]
    if audit.retrained < PER_UTTERANCE_VARIANCE_FROM:
        lines += ["", f"With {audit.retrained} retrained models the variance is pooled over the utterances (a "
                  f"per-utterance variance needs about {PER_UTTERANCE_VARIANCE_FROM})."]
    lines += ["", "Utterances are named by the first 16 characters of their commitments in the unlearned model's "
              "receipt; `audit.json` holds the per-utterance figures."]
    return "\n".join(lines) + "\n"


def write_audit(audit: Audit, out: Path | str) -> Path:
    from serkit.io import OutputDir, write_text

    with OutputDir(Path(out)) as output:
        staging = output.staging()
        write_text(staging / "audit.json", json.dumps(audit.to_json(), indent=2) + "\n")
        write_text(staging / "audit.md", audit_markdown(audit))
        output.commit()
    return Path(out)
