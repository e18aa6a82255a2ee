"""The target-domain side of a run: metrics at the source's operating point, and how far apart the
two domains sit in feature space (proxy A-distance and a 2D embedding picture).

Source metrics come from the trained model as delivered; target metrics from the model the
adaptation method hands over for the target (``adapt()``: AdaBN swaps in target BatchNorm statistics).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medtl.adaptation.registry import AdaptationMethod
from medtl.data.domains import RunLoaders
from medtl.engine.evaluation import predictions_frame
from medtl.engine.loop import FeatureSet, encode_features
from medtl.engine.metrics import binary_metrics, multiclass_metrics, oracle_accuracy, threshold_or_default
from medtl.tracking.plots import domain_embedding_figure, roc_figure

__all__ = ["DomainReport", "evaluate_target", "proxy_a_distance", "target_metrics"]


@dataclass
class DomainReport:
    metrics: dict[str, float]
    predictions: pd.DataFrame
    figures: dict[str, Figure] = field(default_factory=dict)


def proxy_a_distance(source: np.ndarray, target: np.ndarray, seed: int = 0, max_per_domain: int = 1000) -> float:
    """Proxy A-distance ``2 (1 - 2 err)`` (Ben-David et al. 2007) between features ``(N_s, F)`` and ``(N_t, F)``.

    ``err`` is the 5-fold cross-validated error of a logistic-regression domain classifier on equally
    many (at most ``max_per_domain``) standardised features from each side: 0 means the domains are
    indistinguishable, 2 that a linear classifier separates them perfectly (clipped to [0, 2]).
    NaN with fewer than 5 images on a side.
    """
    n = min(len(source), len(target), max_per_domain)
    if n < 5:
        return float("nan")
    rng = np.random.default_rng(seed)
    features = np.concatenate([source[rng.choice(len(source), n, replace=False)],
                               target[rng.choice(len(target), n, replace=False)]])  # (2n, F)
    domains = np.repeat([0, 1], n)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    error = 1.0 - float(cross_val_score(classifier, features, domains, cv=folds).mean())
    return float(np.clip(2.0 * (1.0 - 2.0 * error), 0.0, 2.0))


def target_metrics(labels: np.ndarray, probs: np.ndarray, source_threshold: float | None) -> dict[str, float]:
    """Target metrics of ``probs`` ``(N, K)`` (unprefixed); binary ones at the threshold chosen on the source, with
    ``oracle_accuracy``, the best any threshold does on the target's own labels (a bound, not an operating point)."""
    if probs.shape[1] != 2:
        return multiclass_metrics(labels, probs)
    at_source = binary_metrics(labels, probs[:, 1], threshold_or_default(source_threshold))
    return {"auroc": at_source.auroc, "accuracy_at_source_threshold": at_source.accuracy,
            "sensitivity_at_source_threshold": at_source.sensitivity,
            "specificity_at_source_threshold": at_source.specificity,
            "oracle_accuracy": oracle_accuracy(labels, probs[:, 1])[0]}


@torch.no_grad()
def evaluate_target(model: torch.nn.Module, adaptation: AdaptationMethod, loaders: RunLoaders,
                    classes: list[str], source_threshold: float | None, device: torch.device,
                    progress: bool = True, seed: int = 0, adapted_threshold: float | None = None) -> DomainReport:
    """Adapt ``model`` to the target, predict the target (``target_test``, else the unlabelled ``target_eval``),
    and compare source-validation and target features. When ``adapt()`` hands over another model (AdaBN),
    the unadapted model's target metrics are reported too, as ``target/unadapted_*``, with ``target/adapt_seconds``.
    Metrics are named ``target/<name>`` (``target/auroc``, ``target/proxy_a_distance``...). The adapted model is
    scored at ``adapted_threshold`` (validation's under AdaBN) when given, else at ``source_threshold``."""
    start = time.perf_counter()
    target_model = adaptation.adapt(model, loaders.target_eval, device)
    adapt_seconds = time.perf_counter() - start
    source = encode_features(model, loaders.source_val, device, progress, "encoding source val")
    at_adapted = target_model is not model and adapted_threshold is not None
    threshold = adapted_threshold if at_adapted else source_threshold
    target, probs, metrics = _target_side(target_model, loaders, source, threshold, device, progress, seed)
    if target_model is not model:
        unadapted = _target_side(model, loaders, source, source_threshold, device, progress, seed)[2]
        metrics.update({f"unadapted_{k}": v for k, v in unadapted.items()})
        metrics["adapt_seconds"] = adapt_seconds
    metrics = {f"target/{k}": v for k, v in metrics.items()}
    figures = {"domain_features.png": _embedding(source, target, classes, seed)}
    if loaders.target_test is not None and len(classes) == 2:
        where = "validation threshold under AdaBN" if at_adapted else "source threshold"
        figures["target_roc_curve.png"] = roc_figure(target.labels, probs[:, 1], classes[1], threshold,
                                                     title=f"Target ROC ({where})")
    names = [classes[i] if i >= 0 else "" for i in target.labels]
    frame = predictions_frame(target.paths, probs, classes, names, threshold)
    return DomainReport(metrics, frame, figures)


def _target_side(model: torch.nn.Module, loaders: RunLoaders, source: FeatureSet, source_threshold: float | None,
                 device: torch.device, progress: bool, seed: int) -> tuple[FeatureSet, np.ndarray, dict[str, float]]:
    """Target features ``(N_t, F)``, probabilities ``(N_t, K)`` and metrics (labelled target) under ``model``."""
    target = encode_features(model, loaders.target_test or loaders.target_eval, device, progress, "encoding target")
    logits = model.encoder.head.to(device).eval()(target.features.to(device))  # (N_t, K)
    probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
    metrics = target_metrics(target.labels, probs, source_threshold) if loaders.target_test is not None else {}
    metrics["proxy_a_distance"] = proxy_a_distance(source.features.numpy(), target.features.numpy(), seed)
    return target, probs, metrics


def _embedding(source: FeatureSet, target: FeatureSet, classes: list[str], seed: int) -> Figure:
    return domain_embedding_figure(source.features.numpy(), target.features.numpy(), source.labels,
                                   target.labels, classes, seed)
