"""Patient-level splitting: no patient's images on both sides of a split.

All functions are pure: they take a manifest frame and a seed and return a new frame.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from medtl.errors import MedtlError

__all__ = ["assign_validation_split", "check_patients_disjoint", "subsample_patients", "stratified_group_holdout"]


def assign_validation_split(frame: pd.DataFrame, val_fraction: float, seed: int) -> pd.DataFrame:
    """Return ``frame`` with a ``split`` column in which about ``val_fraction`` of the patients are ``val``.

    A manifest that already has ``val`` rows is returned unchanged (validated only). Otherwise the
    ``train`` rows (all rows when there is no ``split`` column) are split by patient, stratified by
    label, with scikit-learn's ``StratifiedGroupKFold``; ``test`` rows are kept as they are and
    never used for training or model selection.
    """
    frame = frame.copy()
    if "split" not in frame.columns:
        frame["split"] = "train"
    if (frame["split"] == "val").any():
        check_patients_disjoint(frame)
        return frame
    if not 0.0 < val_fraction < 0.5:
        raise MedtlError(f"data.val_fraction={val_fraction} must be in (0, 0.5), e.g. 0.2")
    pool = frame.index[frame["split"] == "train"]
    val_rows = stratified_group_holdout(frame.loc[pool], val_fraction, seed)
    frame.loc[val_rows, "split"] = "val"
    check_patients_disjoint(frame)
    return frame


def check_patients_disjoint(frame: pd.DataFrame) -> None:
    """Raise if any patient has images in more than one split."""
    splits_per_patient = frame.groupby("patient_id")["split"].nunique()
    crossing = splits_per_patient[splits_per_patient > 1]
    if len(crossing):
        patient = crossing.index[0]
        found = sorted(frame.loc[frame["patient_id"] == patient, "split"].unique())
        raise MedtlError(
            f"patient '{patient}' (and {len(crossing) - 1} more) has images in splits {found}; "
            "a patient must sit in one split only: fix the manifest's split column")


def subsample_patients(frame: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """Keep whole patients, in a seeded random order within each label, until about ``max_images`` remain.

    Labels keep their proportions (each label gets its share of ``max_images``).
    """
    if max_images >= len(frame):
        return frame
    rng = np.random.default_rng(seed)
    keep: list[pd.Index] = []
    for _, group in frame.groupby("label", sort=True):
        quota = max(1, round(max_images * len(group) / len(frame)))
        patients = rng.permutation(np.asarray(group["patient_id"].unique(), dtype=object))
        sizes = group.groupby("patient_id").size().loc[patients]
        chosen = patients[: int(np.searchsorted(sizes.cumsum().to_numpy(), quota, side="left")) + 1]
        keep.append(group.index[group["patient_id"].isin(chosen)])
    return frame.loc[sorted(np.concatenate([k.to_numpy() for k in keep]))]


def stratified_group_holdout(pool: pd.DataFrame, val_fraction: float, seed: int,
                             key: str = "data.val_fraction") -> pd.Index:
    """Index of the rows of one fold of a ``round(1 / val_fraction)``-fold stratified group split
    (``key`` names the setting in the error raised when there are too few patients)."""
    n_splits = max(2, round(1.0 / val_fraction))
    n_patients = pool["patient_id"].nunique()
    if n_patients < n_splits:
        raise MedtlError(
            f"only {n_patients} patients to split {round(val_fraction * 100)}% off with {key}={val_fraction}; "
            "add images or give the manifest a split column")
    largest_class = int(pool["label"].value_counts().max())
    if largest_class < n_splits:
        raise MedtlError(
            f"too few images per class to split {round(val_fraction * 100)}% off with {key}={val_fraction} "
            f"(the largest class has {largest_class}); add images or give the manifest a split column")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, val_positions = next(splitter.split(pool, y=pool["label"], groups=pool["patient_id"]))
    return pool.index[val_positions]
