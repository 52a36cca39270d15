"""The LFW protocol and the metrics on constructed features and scores with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from maskgen.evaluation import metrics
from maskgen.evaluation.protocol import ProtocolError, best_threshold, lfw_protocol


def clustered_pairs(folds=10, per_fold=60, identities_per_fold=12, dim=64, noise=0.1, seed=0):
    """Pairs of identity-disjoint folds, half same half different; features = centre + noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((folds * identities_per_fold, dim))
    fold = np.repeat(np.arange(folds), per_fold)
    same = np.tile(np.arange(per_fold) % 2 == 0, folds)
    first = fold * identities_per_fold + rng.integers(0, identities_per_fold, len(fold))
    shift = rng.integers(1, identities_per_fold, len(fold))
    second = np.where(same, first, fold * identities_per_fold + (first % identities_per_fold + shift) % identities_per_fold)
    a = centres[first] + noise * rng.standard_normal((len(fold), dim))
    b = centres[second] + noise * rng.standard_normal((len(fold), dim))
    return a, b, same, fold


def test_perfectly_separable_pairs_score_100_percent_in_every_fold():
    a, b, same, fold = clustered_pairs()
    result = lfw_protocol(a, b, same, fold)
    assert result.accuracy == 1.0 and result.accuracy_std == 0.0
    assert len(result.fold_accuracies) == 10
    curve = metrics.roc(result.scores, same)
    assert metrics.area_under(curve) == 1.0 and metrics.equal_error_rate(curve)[0] == 0.0


def test_random_features_score_about_50_percent():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((6000, 128)), rng.standard_normal((6000, 128))
    same, fold = rng.random(6000) < 0.5, np.repeat(np.arange(10), 600)
    result = lfw_protocol(a, b, same, fold)
    assert 0.45 < result.accuracy < 0.55
    assert 0.45 < metrics.area_under(metrics.roc(result.scores, same)) < 0.55


def unit_vectors(cosines) -> np.ndarray:
    angles = np.arccos(np.asarray(cosines, float))
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def test_the_threshold_comes_from_the_training_folds_even_when_the_test_fold_prefers_another():
    # folds 0-2: same pairs score 0.8, different 0.2 -> best threshold 0.5 (the gap's middle);
    # fold 3 alone would be best split at ~0.275 (same 0.45, different 0.1), so 0.5 rejects its positives
    train_scores, test_scores = [0.8, 0.2] * 3, [0.45, 0.1]
    scores = np.array(train_scores * 4 + test_scores * 4)
    same = np.array([True, False] * 16)
    fold = np.repeat([0, 1, 2, 3], 8)
    a, b = unit_vectors(scores), unit_vectors(np.ones(len(scores)))
    result = lfw_protocol(a, b, same, fold, subtract_mean=False)
    np.testing.assert_allclose(result.scores, scores, atol=1e-12)
    assert result.fold_thresholds[3] == pytest.approx(0.5)
    assert best_threshold(scores[fold == 3], same[fold == 3]) == pytest.approx(0.275)
    assert result.fold_accuracies[3] == 0.5  # every positive rejected: it did not adapt
    assert result.fold_accuracies[:3].tolist() == [1.0, 1.0, 1.0]


def test_a_folds_threshold_does_not_move_when_only_that_fold_changes():
    a, b, same, fold = clustered_pairs(noise=1.2, seed=3)
    before = lfw_protocol(a, b, same, fold)
    rng = np.random.default_rng(4)
    test = fold == 4
    a2, b2, same2 = a.copy(), b.copy(), same.copy()
    a2[test] = 5 * rng.standard_normal(a2[test].shape)  # new features and labels, fold 4 only
    same2[test] = ~same2[test]
    after = lfw_protocol(a2, b2, same2, fold)
    assert after.fold_thresholds[4] == before.fold_thresholds[4]
    assert after.fold_accuracies[4] != before.fold_accuracies[4]
    # the change is visible to the folds that train on fold 4, so the check above can fail
    assert not np.array_equal(np.delete(after.fold_thresholds, 4), np.delete(before.fold_thresholds, 4))


def test_mean_subtraction_uses_the_training_folds_only():
    a, b, same, fold = clustered_pairs(noise=0.8, seed=5)
    b_shifted = b.copy()
    b_shifted[fold == 0] += 3.0  # fold 0's own offset must not be removed for fold 0
    result = lfw_protocol(a, b_shifted, same, fold)
    train = fold != 0
    mean = np.concatenate([a[train], b_shifted[train]]).mean(0)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    expected = np.sum(unit(a[~train] - mean) * unit(b_shifted[~train] - mean), axis=1)
    np.testing.assert_allclose(result.scores[~train], expected, rtol=1e-10)


def test_best_threshold_sits_in_the_gap_and_needs_both_classes():
    assert best_threshold(np.array([0.9, 0.7, 0.3, 0.1]), np.array([True, True, False, False])) == pytest.approx(0.5)
    # a negative above a positive: accepting nothing is (first) best, so the threshold is above both
    assert best_threshold(np.array([0.9, 0.1]), np.array([False, True])) > 0.9
    with pytest.raises(ProtocolError):
        best_threshold(np.array([0.9, 0.1]), np.array([True, True]))


def test_one_fold_or_a_training_split_without_negatives_is_refused():
    a, b, same, fold = clustered_pairs(folds=2)
    with pytest.raises(ProtocolError, match="at least 2 folds"):
        lfw_protocol(a, b, same, np.zeros_like(fold))
    same_only = same.copy()
    same_only[fold == 1] = True
    with pytest.raises(ProtocolError, match="other than 0"):
        lfw_protocol(a, b, same_only, fold)


def test_tar_at_far_on_known_scores():
    negatives = np.arange(1000) / 1000  # 0.000 .. 0.999
    positives = np.array([0.9995] * 50 + [0.995] * 25 + [0.5] * 25)
    scores = np.concatenate([positives, negatives])
    same = np.arange(len(scores)) < len(positives)
    curve = metrics.roc(scores, same)
    at_1e3, at_1e2 = metrics.tar_at_far(curve, 1e-3), metrics.tar_at_far(curve, 1e-2)
    assert at_1e3.tar == 0.5 and at_1e3.threshold == pytest.approx(0.999)
    assert at_1e2.tar == 0.75 and at_1e2.threshold == pytest.approx(0.99)


def test_tar_at_far_says_when_the_negatives_are_too_few():
    scores, same = np.linspace(0, 1, 600), np.arange(600) % 2 == 0
    curve = metrics.roc(scores, same)
    too_few = metrics.tar_at_far(curve, 1e-3)
    assert too_few.tar is None and too_few.note == "FAR 0.1% needs >= 1000 different-identity pairs, have 300"
    assert metrics.tar_at_far(curve, 1e-2).tar is not None


def test_equal_error_rate_of_two_unit_gaussians_two_apart():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(1, 1, 20000), rng.normal(-1, 1, 20000)])
    same = np.arange(40000) < 20000
    eer, threshold = metrics.equal_error_rate(metrics.roc(scores, same))
    assert eer == pytest.approx(0.1587, abs=0.01)  # Phi(-1)
    assert threshold == pytest.approx(0.0, abs=0.05)


def test_rates_at_a_threshold():
    scores = np.array([0.9, 0.4, 0.6, 0.1])
    same = np.array([True, True, False, False])
    assert metrics.rates_at(scores, same, 0.5) == {"accuracy": 0.5, "tar": 0.5, "far": 0.5}
