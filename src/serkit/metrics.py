"""Metrics, as pure functions over label arrays: UAR, WAR, macro-F1, confusion matrix, CCC and
the one-tailed two-proportion z-test the papers use to mark significance, a paired
permutation test of a UAR gain for two models scored on the same utterances, and loss profiles:
a held-out part's per-utterance losses summarised by quantiles, against which a membership AUC
can be measured later without the data, or against another part's losses (membership_auc)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm


def _check(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D and of equal length, got {y_true.shape} and {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("no samples to score")
    return y_true, y_pred


def uar(y_true, y_pred) -> float:
    """Unweighted average recall: the mean of per-class recalls over the classes present in y_true."""
    y_true, y_pred = _check(y_true, y_pred)
    return float(skm.recall_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0))


def war(y_true, y_pred) -> float:
    """Weighted average recall, which equals accuracy."""
    y_true, y_pred = _check(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


accuracy = war


def macro_f1(y_true, y_pred) -> float:
    """Mean F1 over the classes present in y_true or y_pred."""
    y_true, y_pred = _check(y_true, y_pred)
    return float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))


def confusion_matrix(y_true, y_pred, labels: Sequence) -> np.ndarray:
    """Counts; rows are true classes, columns predicted, both in the order of `labels`."""
    y_true, y_pred = _check(y_true, y_pred)
    return skm.confusion_matrix(y_true, y_pred, labels=list(labels))


def uar_from_confusion(matrix: np.ndarray) -> float:
    """UAR from a confusion matrix, over the classes that have support."""
    matrix = np.asarray(matrix, dtype=float)
    support = matrix.sum(1)
    present = support > 0
    return float(np.mean(np.diag(matrix)[present] / support[present])) if present.any() else 0.0


def classification_summary(y_true, y_pred, labels: Sequence[str]) -> dict:
    """Everything a report needs: UAR, WAR, macro-F1, per-class recall and support, confusion."""
    y_true, y_pred = _check(y_true, y_pred)
    matrix = confusion_matrix(y_true, y_pred, labels)
    support = matrix.sum(1)
    recall = {
        label: (float(matrix[i, i] / support[i]) if support[i] else None) for i, label in enumerate(labels)
    }
    return {
        "n": int(y_true.size),
        "uar": uar(y_true, y_pred),
        "war": war(y_true, y_pred),
        "accuracy": war(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred),
        "recall": recall,
        "support": {label: int(s) for label, s in zip(labels, support)},
        "labels": list(labels),
        "confusion": matrix.tolist(),
    }


def ccc(x, y) -> float:
    """Concordance correlation coefficient (Lin 1989), population moments."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.size < 2:
        raise ValueError("ccc needs two equal-length arrays of at least 2 values")
    mx, my = x.mean(), y.mean()
    cov = np.mean((x - mx) * (y - my))
    denom = x.var() + y.var() + (mx - my) ** 2
    return float(2 * cov / denom) if denom > 0 else 0.0


def z_test_one_tailed(p1: float, p2: float, n1: int, n2: int) -> tuple[float, float]:
    """Two-proportion pooled z-test of H1: p1 > p2. Returns (z, one-tailed p-value).

    As in the papers, applied to rates such as UAR or accuracy measured on n1 and n2 samples.
    """
    if n1 <= 0 or n2 <= 0:
        raise ValueError("sample sizes must be positive")
    for p in (p1, p2):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"proportions must lie in [0, 1], got {p}")
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return (0.0, 0.5) if p1 == p2 else (math.copysign(math.inf, p1 - p2), 0.0 if p1 > p2 else 1.0)
    z = (p1 - p2) / se
    return z, 0.5 * math.erfc(z / math.sqrt(2))


def paired_uar_test(y_true, pred_a, pred_b, groups=None, n_permutations: int = 10000,
                    seed: int = 0) -> tuple[float, float]:
    """Paired permutation test of H1: UAR(a) > UAR(b), both models scored on the same utterances.

    The statistic is the UAR gain, averaged over `groups` (e.g. seeds: each group is one pair of
    runs, its UAR computed within it). Under H0 the two predictions of an utterance are
    exchangeable, so each permutation swaps them utterance by utterance with probability 1/2.
    Returns (gain, one-tailed p), p = (1 + #{permuted gain >= observed}) / (1 + n_permutations).
    Unlike the z-test, it uses the pairing: utterances both models get right (or wrong) add no
    noise, so it can show a gain the z-test over the same utterances cannot."""
    y_true, pred_a = _check(y_true, pred_a)
    _, pred_b = _check(y_true, pred_b)
    groups = np.zeros(len(y_true), dtype=int) if groups is None else np.asarray(groups)
    if groups.shape != y_true.shape:
        raise ValueError(f"groups must give one group per sample, got {groups.shape} for {y_true.shape}")
    if n_permutations < 1:
        raise ValueError("n_permutations must be at least 1")
    # UAR(a) - UAR(b) within a group is a weighted sum of per-utterance differences in correctness,
    # each utterance weighted 1 / (classes in its group x utterances of its class in its group)
    weight = np.zeros(len(y_true))
    names = np.unique(groups)
    for g in names:
        in_g = groups == g
        labels, counts = np.unique(y_true[in_g], return_counts=True)
        per_class = dict(zip(labels, counts))
        weight[in_g] = [1.0 / (len(labels) * per_class[y] * len(names)) for y in y_true[in_g]]
    diff = (pred_a == y_true).astype(float) - (pred_b == y_true).astype(float)
    contribution = (weight * diff)[diff != 0]
    gain = float(contribution.sum())
    rng = np.random.default_rng(seed)
    at_least, chunk = 0, 2000
    for start in range(0, n_permutations, chunk):
        size = min(chunk, n_permutations - start)
        signs = rng.integers(0, 2, size=(size, len(contribution))) * 2 - 1
        at_least += int((signs @ contribution >= gain - 1e-12).sum())
    return gain, (1 + at_least) / (1 + n_permutations)


def significance_marker(p_value: float) -> str:
    """Marks as used in the papers' tables."""
    if p_value < 0.001:
        return "***"
    if p_value < 0.01:
        return "**"
    if p_value < 0.05:
        return "*"
    if p_value < 0.1:
        return "+"
    return ""


PROFILE_QUANTILES = 101


def loss_profile(losses, y_true, y_pred) -> dict:
    """Per-utterance cross-entropy losses of a held-out part, summarised: n, accuracy, UAR, mean and 101
    quantiles (0 %, 1 %, ... 100 %), enough to measure a membership AUC against it later."""
    losses = np.asarray(losses, dtype=float)
    if losses.ndim != 1 or losses.size == 0 or not np.isfinite(losses).all():
        raise ValueError("loss_profile needs a non-empty 1-D array of finite losses")
    y_true, y_pred = _check(y_true, y_pred)
    if len(losses) != len(y_true):
        raise ValueError(f"loss_profile: {len(losses)} losses but {len(y_true)} labels")
    quantiles = np.quantile(losses, np.linspace(0, 1, PROFILE_QUANTILES))
    return {"n": int(losses.size), "accuracy": war(y_true, y_pred), "uar": uar(y_true, y_pred),
            "loss_mean": float(losses.mean()), "loss_quantiles": [float(f"{q:.6g}") for q in quantiles]}


def auc_against_profile(member_losses, profile: dict) -> float:
    """Loss-threshold membership AUC of `member_losses` against a stored profile's losses: the probability
    that a member's loss is below a profiled utterance's (ties count half). 0.5: the members look like the
    profiled part; above, they are fitted better (remembered); below, worse (over-forgotten)."""
    losses = np.asarray(member_losses, dtype=float)
    quantiles = np.asarray(profile.get("loss_quantiles") or [], dtype=float)
    if losses.ndim != 1 or losses.size == 0:
        raise ValueError("auc_against_profile needs a non-empty 1-D array of losses")
    if quantiles.size < 2 or np.any(np.diff(quantiles) < 0):
        raise ValueError("auc_against_profile: the profile has no increasing loss_quantiles (see loss_profile)")
    levels = np.linspace(0, 1, quantiles.size)
    left, right = np.searchsorted(quantiles, losses, "left"), np.searchsorted(quantiles, losses, "right")
    # a loss equal to stored quantiles (a run of equal losses) is a tie with them: the middle of their levels
    below = np.where(right > left, (left + right - 1) / 2 / (quantiles.size - 1), np.interp(losses, quantiles, levels))
    return float(np.mean(1.0 - below))


def membership_auc(member_losses, other_losses) -> float:
    """Loss-threshold membership AUC of members against others, both measured by the same model: the
    probability that a member's loss is below another's (ties count half). 0.5: the members look like
    the others; above, they are fitted better (remembered); below, worse."""
    members, others = np.asarray(member_losses, dtype=float), np.asarray(other_losses, dtype=float)
    for name, losses in (("member_losses", members), ("other_losses", others)):
        if losses.ndim != 1 or losses.size == 0 or not np.isfinite(losses).all():
            raise ValueError(f"membership_auc: {name} must be a non-empty 1-D array of finite losses")
    truth = np.r_[np.ones(members.size), np.zeros(others.size)]
    return float(skm.roc_auc_score(truth, -np.r_[members, others]))
