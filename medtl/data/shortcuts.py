"""Shortcuts in a labelled set: which label-free properties predict the label, and which collections the images
came from.

Public medical sets are often stitched together from several collections whose labels differ (most tumour slices
from one, most normal ones from another); a model then learns the collection. The data check (``medtl.data.check``)
calls this module to say

- how well label-free properties alone predict the label (:func:`probe_shortcut`: a patient-grouped,
  cross-validated boosted-tree probe) and which property groups carry it (the AUROC the probe loses on held-out
  folds when a group's columns are shuffled together);
- which collections the images form (:func:`infer_collections`: k-means on the same properties, standardised,
  the number of clusters chosen by silhouette; one collection when no clustering reaches 0.25) or, when the
  manifest has a ``domain`` or ``site`` column, those; and the label balance of each (:func:`describe_collections`).

Tables here are ``(N images, F properties)`` frames whose columns are :class:`~medtl.data.check.ImageFacts`
feature names and ``tag_<Tag>`` integer codes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import silhouette_score
from sklearn.model_selection import StratifiedGroupKFold

from medtl.engine.metrics import auroc

if TYPE_CHECKING:
    from medtl.data.check import ImageFacts

__all__ = ["PROPERTY_GROUPS", "ShortcutProbe", "property_group", "facts_table", "probe_shortcut",
           "infer_collections", "describe_collections", "collection_warnings", "feature_collection_probe",
           "COLLECTION_COLUMNS", "COLLECTION_WARNING", "imbalanced_collections"]

#: property group -> the feature-name prefixes it holds (first match wins; other names are their own group)
PROPERTY_GROUPS: dict[str, tuple[str, ...]] = {
    "size": ("height", "width", "voxels", "shape_", "extent_"),
    "aspect": ("aspect",),
    "spacing": ("spacing_",),
    "borders and background": ("border_", "background_"),
    "intensity histogram": ("p1", "p5", "p25", "p50", "p75", "p95", "p99", "intensity_", "integer_"),
    "acquisition tags": ("tag_",),
}
COLLECTION_COLUMNS = ("domain", "site")  # a manifest column naming each image's collection, used when present
MAX_COLLECTIONS = 6
# Kaufman and Rousseeuw's reading of the mean silhouette: below 0.25 "no substantial structure" has been found.
MIN_SILHOUETTE = 0.25
SILHOUETTE_SAMPLE = 2000
IMBALANCE_WARNING = 0.2  # a collection whose label shares differ this much from the whole set's is reported
COLLECTION_WARNING = "the label follows the collection"  # in each such warning


def property_group(name: str) -> str:
    """The group of the feature ``name`` (:data:`PROPERTY_GROUPS`), or the name itself."""
    return next((group for group, prefixes in PROPERTY_GROUPS.items() if name.startswith(prefixes)), name)


def facts_table(facts: Sequence[ImageFacts]) -> pd.DataFrame:
    """``(N, F)`` numeric table of the label-free facts: features as they are, acquisition tags as integer codes
    (the geometry tags ``shape`` and ``PhotometricInterpretation`` are left out: the features carry them)."""
    table = pd.DataFrame([f.features for f in facts]).astype(float)
    tags = pd.DataFrame([f.tags for f in facts]).drop(columns=["PhotometricInterpretation", "shape"], errors="ignore")
    for column in tags.columns:
        table[f"tag_{column}"] = pd.Categorical(tags[column].fillna("")).codes.astype(float)
    return table


@dataclass
class ShortcutProbe:
    """What label-free properties say about the label.

    Attributes:
        auroc: cross-validated AUROC of the probe (patient-grouped folds; one-vs-rest macro for several classes).
        importances: property group -> mean AUROC the probe loses on held-out folds when that group's columns are
            shuffled together across images, largest first (0: the probe does not use the group).
    """

    auroc: float
    importances: dict[str, float] = field(default_factory=dict)


def probe_shortcut(table: pd.DataFrame, labels: Sequence, patients: Sequence, folds: int = 5,
                   seed: int = 0) -> ShortcutProbe | None:
    """Cross-validated boosted-tree probe of ``labels`` from the ``(N, F)`` ``table``, folds grouped by patient;
    ``None`` when there is one class or fewer than 10 patients."""
    codes = np.asarray(pd.Categorical(labels).codes)
    groups = np.asarray(patients)
    if len(set(codes)) < 2 or len(set(groups)) < 10:
        return None
    values = table.to_numpy(dtype=float)
    columns_of = _columns_by_group(list(table.columns))
    rng = np.random.default_rng(seed)
    scores = np.zeros((len(codes), len(set(codes))))
    drops: dict[str, list[float]] = {group: [] for group in columns_of}
    splitter = StratifiedGroupKFold(n_splits=min(folds, len(set(groups))), shuffle=True, random_state=seed)
    for train, test in splitter.split(values, codes, groups):
        model = _probe_model(len(train), seed).fit(values[train], codes[train])
        scores[test] = model.predict_proba(values[test])
        held_out = _auroc(codes[test], scores[test])
        for group, columns in columns_of.items():
            shuffled = values[test].copy()
            shuffled[:, columns] = shuffled[rng.permutation(len(test))][:, columns]  # the group moves together
            drops[group].append(held_out - _auroc(codes[test], model.predict_proba(shuffled)))
    importances = {group: max(0.0, float(np.nanmean(d))) for group, d in drops.items()}
    return ShortcutProbe(auroc=_auroc(codes, scores),
                         importances=dict(sorted(importances.items(), key=lambda item: -item[1])))


def _probe_model(n_train: int, seed: int) -> HistGradientBoostingClassifier:
    # sklearn's default leaf size (20) cannot split a set of a few dozen volumes; small sets get smaller leaves.
    return HistGradientBoostingClassifier(max_iter=100, random_state=seed, min_samples_leaf=max(2, min(20, n_train // 10)))


def _columns_by_group(columns: list[str]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for index, name in enumerate(columns):
        grouped.setdefault(property_group(name), []).append(index)
    return grouped


def _auroc(codes: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of class scores ``(n, K)``: the positive column for two classes; ``nan`` when a fold has one class."""
    if len(set(codes)) < 2:
        return float("nan")
    return float(auroc(codes, scores[:, 1] if scores.shape[1] == 2 else scores))


def infer_collections(table: pd.DataFrame, max_collections: int = MAX_COLLECTIONS, seed: int = 0,
                      count: int | None = None) -> np.ndarray:
    """``(N,)`` collection index of each image, inferred from its ``(N, F)`` properties without labels.

    Columns are standardised (z-scores; constant columns dropped), then k-means for
    k = 2..``max_collections``; the k with the best mean silhouette wins if that silhouette reaches
    :data:`MIN_SILHOUETTE`, otherwise every image is one collection (index 0). ``count``: exactly that many
    k-means clusters instead (a leave-one-collection-out split needs at least three). Collections are numbered by
    size, largest first.
    """
    standardised, _ = _standardise(table)
    if standardised.shape[1] == 0 or len(standardised) < 4:
        return np.zeros(len(table), dtype=int)
    if count is not None:
        return _numbered_by_size(KMeans(n_clusters=count, n_init=4, random_state=seed).fit_predict(standardised))
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(standardised), size=min(SILHOUETTE_SAMPLE, len(standardised)), replace=False)
    best, best_score = np.zeros(len(table), dtype=int), MIN_SILHOUETTE
    for k in range(2, min(max_collections, len(standardised) - 1) + 1):
        assignment = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(standardised)
        if len(set(assignment[sample])) < 2:
            continue
        score = silhouette_score(standardised[sample], assignment[sample])
        if score >= best_score:
            best, best_score = assignment, score
    return _numbered_by_size(best)


def _standardise(table: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """``(N, F')`` z-scores of the columns, and the names of those ``F'`` columns (constant columns dropped).
    The standard deviation, not a robust spread, on purpose: a property that splits the set into two collections
    is bimodal, and the inter-quartile range of a bimodal column spans the gap between its modes."""
    values = table.to_numpy(dtype=float)
    values = np.where(np.isfinite(values), values, np.nanmedian(values, axis=0))
    spread = values.std(axis=0)
    keep = spread > 1e-12
    return (values[:, keep] - values[:, keep].mean(axis=0)) / spread[keep], list(table.columns[keep])


def _numbered_by_size(assignment: np.ndarray) -> np.ndarray:
    order = pd.Series(assignment).value_counts().index  # largest first
    return pd.Series(assignment).map({old: new for new, old in enumerate(order)}).to_numpy()


def describe_collections(labels: Sequence, names: Sequence, table: pd.DataFrame) -> list[dict]:
    """Per collection: its name, image count, label counts and the (up to) three properties that set it apart
    most (standardised mean difference from the other images, signed)."""
    labels, names = pd.Series(list(labels)), pd.Series(list(names)).astype(str)
    values, kept = _standardise(table)
    standardised = pd.DataFrame(values, columns=kept)
    described = []
    for name in names.value_counts().index:
        inside = (names == name).to_numpy()
        differences = {} if inside.all() or not kept else (
            standardised[inside].mean() - standardised[~inside].mean()).to_dict()
        top = sorted(differences.items(), key=lambda item: -abs(item[1]))[:3]
        described.append({"name": name, "images": int(inside.sum()),
                          "labels": {str(k): int(v) for k, v in labels[inside].value_counts().sort_index().items()},
                          "distinguishing": {key: round(float(value), 2) for key, value in top}})
    return described


def imbalanced_collections(collections: list[dict]) -> list[tuple[dict, str, float, float]]:
    """``(collection, label, share, overall share)`` for each collection whose share of some label differs from
    the whole set's by :data:`IMBALANCE_WARNING` or more; ``label`` is the one it holds more of than the set."""
    if len(collections) < 2:
        return []
    totals = pd.DataFrame([c["labels"] for c in collections]).fillna(0).sum()
    overall = totals / totals.sum()
    found = []
    for collection in collections:
        shares = pd.Series(collection["labels"], dtype=float).reindex(overall.index, fill_value=0.0)
        shares = shares / max(1.0, shares.sum())
        label = (shares - overall).idxmax()
        if float((shares - overall).abs().max()) >= IMBALANCE_WARNING:
            found.append((collection, str(label), float(shares[label]), float(overall[label])))
    return found


def collection_warnings(collections: list[dict], source: str) -> list[str]:
    """One warning per collection of :func:`imbalanced_collections`."""
    return [f"collection {collection['name']} ({source}, {collection['images']} images) is {share:.0%} '{label}' "
            f"against {overall:.0%} overall: {COLLECTION_WARNING}, so a model can learn the collection instead of "
            "the finding" for collection, label, share, overall in imbalanced_collections(collections)]


def feature_collection_probe(features: np.ndarray, labels: Sequence, collections: Sequence, folds: int = 5,
                             seed: int = 0, min_images: int = 10) -> float | None:
    """How well a model's own ``(N, F)`` features tell an image's collection *within its class*: per class, the
    cross-validated AUROC of a logistic regression from features to collection (collections with at least
    ``min_images`` images of that class), averaged over classes weighted by their images. 0.5: the features do not
    say where an image came from beyond its label; 1.0: they say it exactly. ``None`` when no class has two such
    collections."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels, collections = np.asarray(labels), np.asarray(collections).astype(str)
    scores, weights = [], []
    for label in np.unique(labels):
        inside = labels == label
        counts = pd.Series(collections[inside]).value_counts()
        kept = inside & np.isin(collections, counts[counts >= min_images].index)
        if kept.sum() == 0 or len(set(collections[kept])) < 2:
            continue
        codes = pd.Categorical(collections[kept]).codes
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        splitter = StratifiedKFold(n_splits=min(folds, int(np.bincount(codes).min())), shuffle=True, random_state=seed)
        probs = cross_val_predict(model, features[kept], codes, cv=splitter, method="predict_proba")  # (n, C)
        scores.append(_auroc(codes, probs))
        weights.append(int(kept.sum()))
    return float(np.average(scores, weights=weights)) if scores else None
