"""Classification metrics and decision thresholds, as pure functions of labels and scores."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve

from medtl.errors import MedtlError

__all__ = ["BinaryMetrics", "choose_threshold", "binary_metrics", "multiclass_metrics", "auroc", "bootstrap_ci",
           "Calibration", "calibration", "threshold_for_specificity", "oracle_accuracy", "DEFAULT_THRESHOLD",
           "threshold_or_default"]

DEFAULT_THRESHOLD = 0.5  # the operating point of a binary model that has no chosen threshold (no validation set)


def threshold_or_default(threshold: float | None) -> float:
    """``threshold``, or :data:`DEFAULT_THRESHOLD` where none was chosen."""
    return DEFAULT_THRESHOLD if threshold is None else threshold


@dataclass(frozen=True)
class BinaryMetrics:
    auroc: float
    accuracy: float
    sensitivity: float
    specificity: float
    threshold: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """AUROC: binary when ``probs`` is ``(N,)`` (positive-class score), else one-vs-rest macro over ``(N, K)``."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    if probs.ndim == 1:
        return float(roc_auc_score(labels, probs))
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=np.arange(probs.shape[1])))


def bootstrap_ci(labels: np.ndarray, probs: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`auroc` over images resampled with replacement; resamples with
    a single class are skipped. Returns ``(nan, nan)`` when no resample has both classes."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        index = rng.integers(0, len(labels), len(labels))
        if len(np.unique(labels[index])) > 1:
            values.append(auroc(labels[index], probs[index]))
    if not values:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def choose_threshold(labels: np.ndarray, scores: np.ndarray, method: str = "youden",
                     target_sensitivity: float = 0.95) -> float:
    """Pick a decision threshold on ``scores`` (positive when ``score >= threshold``).

    ``youden`` maximises sensitivity + specificity - 1; ``sensitivity`` takes the highest
    threshold whose sensitivity is at least ``target_sensitivity``. Either cut is placed halfway between the two
    neighbouring scores it separates.
    """
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, scores)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is +inf
    if method == "youden":
        return _midway_below(scores, float(thresholds[int(np.argmax(tpr - fpr))]))
    if method == "sensitivity":
        reaching = np.flatnonzero(tpr >= target_sensitivity)
        return _midway_below(scores, float(thresholds[reaching[0]]))
    raise MedtlError(f"evaluation.threshold='{method}' is unknown; use youden or sensitivity")


def _midway_below(scores: np.ndarray, threshold: float) -> float:
    """Halfway between ``threshold`` (a score) and the next lower score: the same decisions on ``scores``, with
    the widest margin on both sides. A threshold at the lowest positive score itself would call any slightly
    lower positive of a new set negative (with a perfectly separated validation set it always sits there)."""
    below = scores[scores < threshold]
    return float((threshold + below.max()) / 2) if below.size else float(threshold)


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> BinaryMetrics:
    """Metrics of positive-class ``scores`` ``(N,)`` against 0/1 ``labels`` at ``threshold``."""
    predicted = scores >= threshold
    positives, negatives = labels == 1, labels == 0
    sensitivity = float(predicted[positives].mean()) if positives.any() else float("nan")
    specificity = float((~predicted[negatives]).mean()) if negatives.any() else float("nan")
    return BinaryMetrics(auroc=auroc(labels, scores), accuracy=float((predicted == positives).mean()),
                         sensitivity=sensitivity, specificity=specificity, threshold=float(threshold))


def oracle_accuracy(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The highest accuracy any threshold reaches on ``(labels, scores)`` ``(N,)``, and that threshold (the
    highest one on ties, placed halfway like :func:`choose_threshold`).

    It needs the set's own labels, so it is an upper bound, never an operating point: next to the accuracy at the
    source's threshold it tells whether a site loses accuracy to the threshold (the two differ) or to the ranking
    (both are low; only the AUROC can raise them).
    """
    if len(np.unique(labels)) < 2:
        return float("nan"), float("nan")
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    positives = float(np.sum(labels == 1))
    correct = tpr * positives + (1.0 - fpr) * (len(labels) - positives)  # (T,) right calls at each cut
    best = int(np.argmax(correct))
    if np.isinf(thresholds[best]):  # every image negative: just above the highest score
        return float(correct[best] / len(labels)), float(np.nextafter(np.max(scores), np.inf))
    return float(correct[best] / len(labels)), _midway_below(scores, float(thresholds[best]))


def multiclass_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Macro AUROC, accuracy and balanced accuracy of ``probs`` ``(N, K)`` against labels in ``0..K-1``."""
    predicted = probs.argmax(axis=1)
    return {"auroc": auroc(labels, probs), "accuracy": float((predicted == labels).mean()),
            "balanced_accuracy": float(balanced_accuracy_score(labels, predicted))}


@dataclass(frozen=True)
class Calibration:
    """How well positive-class scores match observed frequencies.

    Attributes:
        ece: expected calibration error, the count-weighted mean |observed - predicted| over equal-width bins.
        brier: mean squared error of the scores against 0/1 labels.
        bin_edges: ``(n_bins + 1,)``; ``predicted``, ``observed``, ``counts``: ``(n_bins,)`` per bin (NaN when empty).
    """

    ece: float
    brier: float
    bin_edges: np.ndarray
    predicted: np.ndarray
    observed: np.ndarray
    counts: np.ndarray


def calibration(labels: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> Calibration:
    """Reliability of positive-class ``scores`` ``(N,)`` against 0/1 ``labels`` in ``n_bins`` equal-width bins."""
    labels, scores = np.asarray(labels, dtype=float), np.asarray(scores, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, n_bins - 1)  # bin index of each score
    counts = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(which, weights=scores, minlength=n_bins) / counts
        observed = np.bincount(which, weights=labels, minlength=n_bins) / counts
    filled = counts > 0
    ece = float(np.sum(counts[filled] * np.abs(observed[filled] - predicted[filled])) / max(1, len(scores)))
    return Calibration(ece, float(np.mean((scores - labels) ** 2)), edges, predicted, observed, counts)


def threshold_for_specificity(labels: np.ndarray, scores: np.ndarray, specificity: float) -> float:
    """The lowest threshold whose specificity on ``(labels, scores)`` is at least ``specificity``
    (so sensitivity is as high as that specificity allows); positive when ``score >= threshold``."""
    negatives = np.sort(np.asarray(scores)[np.asarray(labels) == 0])
    if not len(negatives):
        return 0.5
    allowed_false_positives = int(np.floor((1.0 - specificity) * len(negatives) + 1e-9))
    # Scores above the k-th highest negative are positive: at most k negatives reach the threshold.
    index = len(negatives) - allowed_false_positives - 1
    return float(np.nextafter(negatives[index], np.inf)) if index >= 0 else float(negatives[0])
