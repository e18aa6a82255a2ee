"""Figures logged with every run: ROC curve and confusion matrix."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

__all__ = ["roc_figure", "confusion_figure"]


def roc_figure(labels: np.ndarray, scores: np.ndarray, positive: str, threshold: float | None = None) -> Figure:
    """ROC curve of positive-class ``scores`` ``(N,)``, with the operating point at ``threshold`` marked."""
    fig, ax = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(labels, scores, ax=ax, name=f"{positive} vs rest")
    if threshold is not None:
        predicted = scores >= threshold
        tpr = predicted[labels == 1].mean()
        fpr = predicted[labels == 0].mean()
        ax.plot([fpr], [tpr], "o", color="crimson", label=f"threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_title("Validation ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def confusion_figure(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> Figure:
    """Confusion matrix (rows: true class, columns: predicted class) with counts."""
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 3, 1.2 * len(classes) + 2.5))
    ConfusionMatrixDisplay.from_predictions(labels, predicted, labels=list(range(len(classes))),
                                            display_labels=classes, ax=ax, colorbar=False, cmap="Blues")
    ax.set_title("Validation confusion matrix")
    fig.tight_layout()
    return fig
