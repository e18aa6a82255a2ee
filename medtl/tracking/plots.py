"""Figures logged with every run: ROC curve, confusion matrix, and (domain adaptation) the feature embedding."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

__all__ = ["roc_figure", "confusion_figure", "domain_embedding_figure", "embed_2d"]


def roc_figure(labels: np.ndarray, scores: np.ndarray, positive: str, threshold: float | None = None,
               title: str = "Validation ROC") -> Figure:
    """ROC curve of positive-class ``scores`` ``(N,)``, with the operating point at ``threshold`` marked."""
    fig, ax = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(labels, scores, ax=ax, name=f"{positive} vs rest")
    if threshold is not None:
        predicted = scores >= threshold
        tpr = predicted[labels == 1].mean()
        fpr = predicted[labels == 0].mean()
        ax.plot([fpr], [tpr], "o", color="crimson", label=f"threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def confusion_figure(labels: np.ndarray, predicted: np.ndarray, classes: list[str],
                     title: str = "Validation confusion matrix") -> Figure:
    """Confusion matrix (rows: true class, columns: predicted class) with counts."""
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 3, 1.2 * len(classes) + 2.5))
    ConfusionMatrixDisplay.from_predictions(labels, predicted, labels=list(range(len(classes))),
                                            display_labels=classes, ax=ax, colorbar=False, cmap="Blues")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def embed_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(N, F)`` features -> ``(N, 2)``: t-SNE on the first 50 principal components (PCA alone below 20 points)."""
    reduced = PCA(n_components=min(50, *features.shape), random_state=seed).fit_transform(features)  # (N, <=50)
    if len(features) < 20:
        return reduced[:, :2]
    perplexity = min(30.0, (len(features) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


def domain_embedding_figure(source: np.ndarray, target: np.ndarray, source_labels: np.ndarray,
                            target_labels: np.ndarray, classes: list[str], seed: int = 0,
                            max_per_domain: int = 400) -> Figure:
    """Source vs target pooled features ``(N, F)`` in 2D (colour: domain; marker: class, x when unlabelled)."""
    rng = np.random.default_rng(seed)
    keep_s = rng.permutation(len(source))[:max_per_domain]
    keep_t = rng.permutation(len(target))[:max_per_domain]
    points = embed_2d(np.concatenate([source[keep_s], target[keep_t]]), seed)  # (n_s + n_t, 2)
    domains = np.repeat(["source", "target"], [len(keep_s), len(keep_t)])
    labels = np.concatenate([source_labels[keep_s], target_labels[keep_t]])
    markers = "osD^v<>p*h"
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for domain, colour in (("source", "tab:blue"), ("target", "tab:orange")):
        for index in np.unique(labels[domains == domain]):
            chosen = (domains == domain) & (labels == index)
            name = classes[index] if index >= 0 else "unlabelled"
            ax.scatter(*points[chosen].T, s=12, alpha=0.6, color=colour, marker=markers[index % 10] if index >= 0
                       else "x", label=f"{domain}: {name}")
    ax.set_title("Pooled encoder features (t-SNE): source vs target")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", fontsize=8, markerscale=1.5)
    fig.tight_layout()
    return fig
