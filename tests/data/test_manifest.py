from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medtl.data.manifest import manifest_from_tree, patient_id_from_name, read_manifest, write_manifest
from medtl.errors import MedtlError

KERMANY_PATTERNS = [r"^(person\d+)_", r"^((?:NORMAL2-)?IM-\d+)-"]


def test_tree_with_split_folder_derives_patient_ids(tmp_path: Path, write_png) -> None:
    for name in ("person12_bacteria_1.jpeg", "person12_virus_2.jpeg", "person7_bacteria_3.jpeg"):
        write_png(tmp_path / "train" / "PNEUMONIA" / name.replace(".jpeg", ".png"))
    for name in ("IM-0115-0001.png", "NORMAL2-IM-0200-0001.png", "IM-0115-0002.png"):
        write_png(tmp_path / "train" / "NORMAL" / name)
    frame = manifest_from_tree(tmp_path, KERMANY_PATTERNS)
    assert set(frame["split"]) == {"train"}
    assert frame.groupby("label").size().to_dict() == {"NORMAL": 3, "PNEUMONIA": 3}
    assert sorted(frame["patient_id"].unique()) == ["IM-0115", "NORMAL2-IM-0200", "person12", "person7"]
    assert all(Path(p).is_absolute() and Path(p).exists() for p in frame["path"])


def test_tree_without_split_folder_has_no_split_column(tmp_path: Path, write_png) -> None:
    write_png(tmp_path / "a" / "x1.png")
    write_png(tmp_path / "b" / "x2.png")
    frame = manifest_from_tree(tmp_path)
    assert "split" not in frame.columns
    assert list(frame["patient_id"]) == ["x1", "x2"]  # no pattern: each image its own patient


def test_patient_id_falls_back_to_stem() -> None:
    assert patient_id_from_name("person3_virus_9.jpeg", KERMANY_PATTERNS) == "person3"
    assert patient_id_from_name("scan.dcm", KERMANY_PATTERNS) == "scan"


def test_write_then_read_round_trips_with_relative_paths(tmp_path: Path, write_png) -> None:
    image = write_png(tmp_path / "imgs" / "a.png")
    frame = pd.DataFrame({"path": [str(image)], "label": ["A"], "patient_id": ["p1"], "split": ["val"]})
    manifest = write_manifest(frame, tmp_path / "m.csv")
    assert pd.read_csv(manifest)["path"].tolist() == ["imgs/a.png"]
    back = read_manifest(manifest)
    assert back["path"].tolist() == [str(image.resolve())]
    assert back["split"].tolist() == ["val"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("path,label\nimgs/a.png,A\n", "has no column 'patient_id'"),
        ("path,label,patient_id\nimgs/missing.png,A,p1\n", "do not exist, first: "),
        ("path,label,patient_id\nimgs/a.png,,p1\n", "row 2 has an empty 'label'"),
        ("path,label,patient_id\n", "lists no images"),
        ("path,label,patient_id,split\nimgs/a.png,A,p1,holdout\n", "has split 'holdout'"),
    ],
)
def test_bad_manifests_name_the_problem(tmp_path: Path, write_png, content: str, message: str) -> None:
    write_png(tmp_path / "imgs" / "a.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text(content)
    with pytest.raises(MedtlError, match=message) as info:
        read_manifest(manifest)
    assert str(manifest) in str(info.value)


def test_empty_tree_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "NORMAL").mkdir()
    with pytest.raises(MedtlError, match="holds no images"):
        manifest_from_tree(tmp_path)


def test_pseudonymisation_is_keyed_stable_and_keeps_grouping() -> None:
    from medtl.data.manifest import pseudonymise_patient_ids

    frame = pd.DataFrame({"path": ["a", "b", "c"], "label": ["X", "X", "Y"], "patient_id": ["person1", "person1", "person2"]})
    one = pseudonymise_patient_ids(frame, "k" * 32)
    assert one["patient_id"].nunique() == 2 and one.at[0, "patient_id"] == one.at[1, "patient_id"]
    assert all(p.startswith("p-") and "person" not in p for p in one["patient_id"])
    assert one["patient_id"].equals(pseudonymise_patient_ids(frame, "k" * 32)["patient_id"])
    assert not one["patient_id"].equals(pseudonymise_patient_ids(frame, "j" * 32)["patient_id"])
    with pytest.raises(MedtlError, match="at least 16"):
        pseudonymise_patient_ids(frame, "short")
