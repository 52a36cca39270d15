"""Verification metrics from scores (higher = more alike) and same-identity labels: ROC and
AUC (scikit-learn), TAR at a given FAR, the equal error rate, and the rates at a threshold.
A pair is accepted (called "same") when its score >= the threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import auc, roc_curve

FARS = (1e-2, 1e-3)  # the false accept rates TAR is reported at


@dataclass(frozen=True, eq=False)
class Roc:
    fpr: np.ndarray  # false accept rate, non-decreasing
    tpr: np.ndarray  # true accept rate
    thresholds: np.ndarray  # decreasing; thresholds[0] is +inf (nothing accepted)
    negatives: int  # different-identity pairs behind the FAR axis


@dataclass(frozen=True)
class TarAtFar:
    far: float
    tar: float | None  # None when the negatives are too few to measure this FAR
    threshold: float | None
    note: str = ""


def far_text(far: float) -> str:
    """A false accept rate in percent, as tables and notes name it: 0.001 -> "0.1%"."""
    return f"{100 * far:g}%"


def has_both_classes(same: np.ndarray) -> bool:
    return bool(same.any()) and not bool(same.all())


def roc(scores: np.ndarray, same: np.ndarray) -> Roc:
    # drop_intermediate=False keeps every threshold: TAR at a FAR needs the exact steps
    fpr, tpr, thresholds = roc_curve(same, scores, drop_intermediate=False)
    return Roc(fpr, tpr, thresholds, int((~same).sum()))


def area_under(curve: Roc) -> float:
    return float(auc(curve.fpr, curve.tpr))


def tar_at_far(curve: Roc, far: float) -> TarAtFar:
    """The highest TAR whose FAR is <= `far`. A FAR of 1/N needs N different-identity pairs
    to be observable at all; with fewer the figure is not reported."""
    needed = math.ceil(1 / far)
    if curve.negatives < needed:
        return TarAtFar(far, None, None, f"FAR {far_text(far)} needs >= {needed} different-identity pairs, have {curve.negatives}")
    i = int(np.searchsorted(curve.fpr, far, side="right")) - 1
    return TarAtFar(far, float(curve.tpr[i]), finite_or_none(curve.thresholds[i]))


def equal_error_rate(curve: Roc) -> tuple[float, float | None]:
    """(EER, its threshold): the ROC point where false accepts and false rejects are closest."""
    fnr = 1.0 - curve.tpr
    i = int(np.argmin(np.abs(fnr - curve.fpr)))
    return float((curve.fpr[i] + fnr[i]) / 2), finite_or_none(curve.thresholds[i])


def rates_at(scores: np.ndarray, same: np.ndarray, thresholds: np.ndarray | float) -> dict:
    """Accuracy, TAR (accepted same-identity pairs) and FAR (accepted different ones)."""
    accepted = scores >= thresholds
    return {
        "accuracy": float(np.mean(accepted == same)),
        "tar": float(accepted[same].mean()) if same.any() else None,
        "far": float(accepted[~same].mean()) if (~same).any() else None,
    }


def finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
