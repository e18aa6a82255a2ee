from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtl.data.split import assign_validation_split, check_patients_disjoint, subsample_patients
from medtl.errors import MedtlError


def make_frame(n_patients: int = 200, seed: int = 0) -> pd.DataFrame:
    """Patients with 1-4 images each, 30% positive, labels constant within a patient."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = "POS" if rng.uniform() < 0.3 else "NEG"
        rows += [{"path": f"/img/{p}_{i}.png", "label": label, "patient_id": f"p{p}"} for i in range(rng.integers(1, 5))]
    return pd.DataFrame(rows)


def test_validation_split_is_patient_disjoint_stratified_and_sized() -> None:
    frame = assign_validation_split(make_frame(), val_fraction=0.2, seed=3)
    train, val = frame[frame["split"] == "train"], frame[frame["split"] == "val"]
    assert set(train["patient_id"]).isdisjoint(val["patient_id"])
    assert 0.15 < val["patient_id"].nunique() / frame["patient_id"].nunique() < 0.25
    assert abs((val["label"] == "POS").mean() - (train["label"] == "POS").mean()) < 0.08


def test_split_is_deterministic_per_seed() -> None:
    frame = make_frame()
    a = assign_validation_split(frame, 0.2, seed=1)["split"]
    assert a.equals(assign_validation_split(frame, 0.2, seed=1)["split"])
    assert not a.equals(assign_validation_split(frame, 0.2, seed=2)["split"])


def test_existing_val_split_is_kept() -> None:
    frame = make_frame().assign(split="train")
    frame.loc[frame["patient_id"].isin(["p0", "p1"]), "split"] = "val"
    assert assign_validation_split(frame, 0.2, seed=0)["split"].equals(frame["split"])


def test_test_rows_are_never_moved_to_val() -> None:
    frame = make_frame().assign(split="train")
    frame.loc[frame["patient_id"].isin([f"p{i}" for i in range(30)]), "split"] = "test"
    out = assign_validation_split(frame, 0.2, seed=0)
    assert (out.loc[frame["split"] == "test", "split"] == "test").all()


def test_patient_in_two_splits_is_refused() -> None:
    frame = pd.DataFrame({"path": ["a", "b"], "label": ["X", "X"], "patient_id": ["p9", "p9"], "split": ["train", "val"]})
    with pytest.raises(MedtlError, match="patient 'p9'"):
        check_patients_disjoint(frame)


def test_subsample_keeps_whole_patients_and_label_mix() -> None:
    frame = make_frame(400)
    small = subsample_patients(frame, 120, seed=0)
    assert 110 <= len(small) <= 135
    for pid, group in small.groupby("patient_id"):
        assert len(group) == (frame["patient_id"] == pid).sum()
    assert abs((small["label"] == "POS").mean() - (frame["label"] == "POS").mean()) < 0.06


def test_too_few_patients_is_an_error() -> None:
    frame = make_frame(3)
    with pytest.raises(MedtlError, match="only 3 patients"):
        assign_validation_split(frame, 0.2, seed=0)
