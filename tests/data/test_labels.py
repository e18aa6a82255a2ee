"""The class list is checked against the configuration before training: a typo is not a new class."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medtl.data.datamodule import check_labels
from medtl.errors import MedtlError
from medtl.train import train
from tests.conftest import compose_config


def frame_of(labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"path": [f"/d/img{i}.png" for i in range(len(labels))], "label": labels,
                         "patient_id": [f"p{i}" for i in range(len(labels))]})


def test_typos_beside_a_binary_task_stop_with_their_values_and_rows() -> None:
    labels = ["NORMAL"] * 5 + ["PNEUMONIA"] * 4 + ["pneumonia "] + ["COVID"] * 2
    with pytest.raises(MedtlError) as error:
        check_labels(frame_of(labels), None, "PNEUMONIA", "m.csv")
    message = str(error.value)
    assert "labels outside a binary task ('PNEUMONIA' and 'NORMAL')" in message
    assert "'COVID' (2 rows, first row 12: /d/img10.png)" in message
    assert "'pneumonia ' (1 rows, first row 11: /d/img9.png)" in message


def test_expected_classes_are_enforced_and_a_missing_positive_class_is_named() -> None:
    check_labels(frame_of(["a", "b", "c"]), ["a", "b", "c"], None, "m.csv")
    with pytest.raises(MedtlError, match=r"labels outside data.classes=\['a', 'b'\]: 'c' \(1 rows"):
        check_labels(frame_of(["a", "b", "c"]), ["a", "b"], None, "m.csv")
    with pytest.raises(MedtlError, match=r"data.positive_class='B' is not among the labels \['a', 'b'\]"):
        check_labels(frame_of(["a", "b"]), None, "B", "m.csv")
    check_labels(frame_of(["a", "b", "c", "d"]), None, None, "m.csv")  # multi-class without a list: any labels


def test_a_manifest_with_label_typos_never_trains(tmp_path: Path, demo_manifest: Path) -> None:
    frame = pd.read_csv(demo_manifest)
    frame["path"] = [str(demo_manifest.parent / p) for p in frame["path"]]
    frame.loc[3, "label"], frame.loc[7, "label"] = "pneumonia ", "COVID"
    manifest = tmp_path / "typos.csv"
    frame.to_csv(manifest, index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(MedtlError, match=r"has labels outside a binary task .*'COVID' .*'pneumonia '"):
        train(compose_config(["+experiment=chest_xray", f"data.manifest={manifest}", f"tracking.uri={uri}"]))
    assert not (tmp_path / "mlflow.db").exists()  # stopped before any run was started
