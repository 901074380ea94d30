import math

import numpy as np
import pytest

from serkit import metrics


def test_uar_war_f1_against_hand_computed_values():
    # class a: 3 of 4 right; class b: 1 of 2 right; class c: 0 of 1 right (predicted a)
    y_true = ["a", "a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "a", "b", "b", "a", "a"]
    assert metrics.uar(y_true, y_pred) == pytest.approx((3 / 4 + 1 / 2 + 0) / 3)
    assert metrics.war(y_true, y_pred) == pytest.approx(4 / 7)
    # F1 a: P = 3/5, R = 3/4 -> 2/3; b: P = 1/2, R = 1/2 -> 1/2; c: 0
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_uar_ignores_classes_absent_from_the_truth():
    # 'c' is predicted once but never true: it must not count as a zero-recall class
    assert metrics.uar(["a", "a", "b"], ["a", "c", "b"]) == pytest.approx((0.5 + 1.0) / 2)


def test_confusion_matrix_rows_are_truth_in_label_order():
    m = metrics.confusion_matrix(["b", "a", "a"], ["a", "a", "b"], labels=["a", "b", "c"])
    assert m.tolist() == [[1, 1, 0], [1, 0, 0], [0, 0, 0]]
    assert metrics.uar_from_confusion(m) == pytest.approx(0.25)


def test_classification_summary_reports_per_class_recall_and_support():
    s = metrics.classification_summary(["a", "a", "b"], ["a", "b", "b"], ["a", "b", "c"])
    assert s["recall"] == {"a": 0.5, "b": 1.0, "c": None}
    assert s["support"] == {"a": 2, "b": 1, "c": 0}
    assert s["uar"] == pytest.approx(0.75)


def test_z_test_matches_hand_computation():
    # p1 = .6, p2 = .5, n = 100 each: pooled .55, se = sqrt(.55 * .45 * .02) = .070356, z = 1.4213
    z, p = metrics.z_test_one_tailed(0.6, 0.5, 100, 100)
    assert z == pytest.approx(1.42134, abs=1e-4)
    assert p == pytest.approx(0.07761, abs=1e-4)
    z2, p2 = metrics.z_test_one_tailed(0.5, 0.6, 100, 100)
    assert z2 == pytest.approx(-z) and p2 == pytest.approx(1 - p)
    assert metrics.significance_marker(p) == "+"
    assert metrics.significance_marker(0.0004) == "***"


def test_ccc_known_values():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert metrics.ccc(x, x) == pytest.approx(1.0)
    centred = x - x.mean()
    assert metrics.ccc(centred, -centred) == pytest.approx(-1.0)
    # shift by 1: cov = var = 1.25, denominator 1.25 + 1.25 + 1 -> 2.5 / 3.5
    assert metrics.ccc(x, x + 1) == pytest.approx(2.5 / 3.5)


@pytest.mark.parametrize("bad", [([], []), (["a"], ["a", "b"])])
def test_bad_inputs_are_refused(bad):
    with pytest.raises(ValueError):
        metrics.uar(*bad)
    with pytest.raises(ValueError):
        metrics.z_test_one_tailed(1.2, 0.5, 10, 10)
    assert math.isfinite(metrics.z_test_one_tailed(0.5, 0.5, 10, 10)[0])


def test_paired_uar_test_gain_is_the_mean_uar_gain_over_groups():
    y = np.array(["a", "a", "b", "b", "a", "b", "b", "b"])
    a = np.array(["a", "a", "b", "a", "a", "b", "b", "a"])
    b = np.array(["a", "b", "a", "a", "b", "b", "b", "b"])
    g = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    want = np.mean([metrics.uar(y[g == k], a[g == k]) - metrics.uar(y[g == k], b[g == k]) for k in (0, 1)])
    gain, p = metrics.paired_uar_test(y, a, b, g, n_permutations=500)
    assert gain == pytest.approx(want)
    assert 0 < p <= 1


def test_paired_uar_test_p_matches_the_exact_permutation_distribution():
    # three utterances, a right and b wrong on each: of the 8 equally likely swaps only "no swap" reaches the gain
    gain, p = metrics.paired_uar_test(["x", "x", "x"], ["x", "x", "x"], ["y", "y", "y"], n_permutations=40000)
    assert gain == pytest.approx(1.0)
    assert p == pytest.approx(1 / 8, abs=0.01)
    same = metrics.paired_uar_test(["x", "y"], ["x", "x"], ["x", "x"], n_permutations=100)
    assert same == (0.0, 1.0)


def test_paired_uar_test_sees_a_consistent_gain_the_z_test_misses():
    # 200 utterances, 2 balanced classes; b gets 120 right, a the same 120 and 10 more
    y = np.array(["a", "b"] * 100)
    b = np.where(np.arange(200) < 120, y, np.where(y == "a", "b", "a"))
    a = np.where(np.arange(200) < 130, y, b)
    gain, p = metrics.paired_uar_test(y, a, b)
    assert gain == pytest.approx(metrics.uar(y, a) - metrics.uar(y, b))
    assert p < 0.01
    _, p_z = metrics.z_test_one_tailed(metrics.uar(y, a), metrics.uar(y, b), 200, 200)
    assert p_z > 0.1
    with pytest.raises(ValueError, match="groups"):
        metrics.paired_uar_test(y, a, b, groups=[0, 1])


def test_membership_auc_against_a_stored_profile_matches_the_auc_on_the_losses_themselves():
    from sklearn.metrics import roc_auc_score

    from serkit.metrics import auc_against_profile, loss_profile

    rng = np.random.default_rng(0)
    unseen, members = rng.exponential(1.0, 800), rng.exponential(0.5, 60)
    profile = loss_profile(unseen, np.zeros(800, int), np.zeros(800, int))
    exact = roc_auc_score(np.r_[np.ones(60), np.zeros(800)], -np.r_[members, unseen])
    assert auc_against_profile(members, profile) == pytest.approx(exact, abs=0.01)
    assert auc_against_profile(unseen, profile) == pytest.approx(0.5, abs=0.01)
    assert auc_against_profile([0.0] * 5, loss_profile(np.zeros(10), np.zeros(10, int), np.zeros(10, int))) == 0.5
    with pytest.raises(ValueError, match="no increasing loss_quantiles"):
        auc_against_profile([1.0], {"loss_quantiles": [2.0, 1.0]})
    with pytest.raises(ValueError, match="finite losses"):
        loss_profile([np.inf], [0], [0])


def test_membership_auc_of_two_parts_says_which_one_the_model_fits_better():
    from serkit.metrics import membership_auc

    assert membership_auc([0.1, 0.2], [0.5, 0.9]) == 1.0  # every member fitted better: remembered
    assert membership_auc([0.5, 0.9], [0.1, 0.2]) == 0.0  # every member fitted worse: over-forgotten
    assert membership_auc([0.3, 0.3], [0.3, 0.3]) == 0.5
    assert membership_auc([0.1, 0.4], [0.2, 0.3]) == 0.5
    with pytest.raises(ValueError, match="other_losses must be a non-empty 1-D array of finite losses"):
        membership_auc([0.1], [])
    with pytest.raises(ValueError, match="member_losses must be"):
        membership_auc([np.nan], [0.1])
