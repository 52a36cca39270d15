"""The LFW verification protocol (as SphereFace's evaluation code runs it), on features that
are already concat(f(x), f(flip x)):

for each fold k: the mean feature of the other folds' pairs (both images) is subtracted from
every feature, features are L2-normalised, a pair's score is the cosine of its two features;
the threshold with the best accuracy on the other folds' pairs is applied to fold k.
Accuracy is reported as mean +- std (population std, as the reference code) over folds.
Folds are the pairs file's own `fold` ids (identity-disjoint by construction).

The mean stands for the population only when the training folds hold many identities (LFW:
thousands); the mean of two or three identities is mostly those identities, and subtracting
it from other people's features makes them all look alike. `subtract_mean=False` skips it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve

from maskgen.evaluation.metrics import has_both_classes


class ProtocolError(ValueError):
    """Pairs the protocol cannot run on; the message says why."""


@dataclass(frozen=True, eq=False)
class ProtocolResult:
    scores: np.ndarray  # per pair: cosine after its test fold's mean subtraction
    thresholds: np.ndarray  # per pair: the threshold its test fold was judged with
    fold_ids: np.ndarray
    fold_thresholds: np.ndarray
    fold_accuracies: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(self.fold_accuracies.mean())

    @property
    def accuracy_std(self) -> float:
        return float(self.fold_accuracies.std())


def l2_normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def cosine_scores(features_a: np.ndarray, features_b: np.ndarray, mean: np.ndarray) -> np.ndarray:
    a, b = l2_normalise(features_a - mean), l2_normalise(features_b - mean)
    return np.einsum("ij,ij->i", a, b)


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold with the most correct decisions (score >= threshold: same); of equally
    good ones the highest, placed midway to the next lower score so it sits in the gap."""
    if not has_both_classes(same):
        raise ProtocolError("a threshold needs both same- and different-identity pairs")
    fpr, tpr, thresholds = roc_curve(same, scores, drop_intermediate=False)
    positives = int(same.sum())
    correct = tpr * positives + (1.0 - fpr) * (len(same) - positives)
    best = int(np.argmax(correct))
    below = thresholds[best + 1] if best + 1 < len(thresholds) else thresholds[best] - 1.0
    above = thresholds[best] if np.isfinite(thresholds[best]) else below + 1.0  # +inf: accept nothing
    return float((above + below) / 2)


def _check_folds(same: np.ndarray, folds: np.ndarray) -> np.ndarray:
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ProtocolError(f"the protocol needs at least 2 folds, the pairs have {len(fold_ids)}")
    for k in fold_ids:
        if not has_both_classes(same[folds != k]):
            raise ProtocolError(f"the folds other than {k} lack same- or different-identity pairs: no threshold can be chosen")
    return fold_ids


def lfw_protocol(features_a: np.ndarray, features_b: np.ndarray, same: np.ndarray, folds: np.ndarray,
                 subtract_mean: bool = True) -> ProtocolResult:
    same, folds = np.asarray(same, bool), np.asarray(folds)
    fold_ids = _check_folds(same, folds)
    scores, thresholds = np.empty(len(same)), np.empty(len(same))
    fold_thresholds, fold_accuracies = [], []
    for k in fold_ids:
        test = folds == k
        train = ~test
        mean = np.concatenate([features_a[train], features_b[train]]).mean(axis=0) if subtract_mean else 0.0
        fold_scores = cosine_scores(features_a, features_b, mean)
        threshold = best_threshold(fold_scores[train], same[train])
        scores[test], thresholds[test] = fold_scores[test], threshold
        fold_thresholds.append(threshold)
        fold_accuracies.append(np.mean((fold_scores[test] >= threshold) == same[test]))
    return ProtocolResult(scores, thresholds, fold_ids, np.array(fold_thresholds), np.array(fold_accuracies))
