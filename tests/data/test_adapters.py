"""Adapters on small label files in the exact published formats."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medtl.data.adapters import AdapterOptions, build_manifest, main
from medtl.errors import MedtlError

NIH_CSV = """Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],
00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143,
00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143,
00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171,
00000003_000.png,Hernia|Pneumonia,0,3,74,F,AP,2500,2048,0.168,0.168,
00000004_000.png,Pneumonia,0,4,64,F,PA,2048,2500,0.168,0.168,
"""

RSNA_CSV = """patientId,x,y,width,height,Target
0004cfab-14fd-4e49-80ba-63a80b6bddd6,,,,,0
00313ee0-9eaa-42f4-b0ab-c148ed3241cd,,,,,0
00436515-870c-4b36-a041-de91049b9ab4,264.0,152.0,213.0,379.0,1
00436515-870c-4b36-a041-de91049b9ab4,562.0,152.0,256.0,453.0,1
"""

CHEXPERT_CSV = """Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices
CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0
CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Female,83,Frontal,AP,,,,1.0,,,-1.0,,,,,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,,,,,,,1.0,
CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Male,41,Frontal,AP,,,,,,1.0,,,,0.0,,,,
"""


def touch(paths: list[Path]) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


@pytest.fixture
def nih(tmp_path: Path) -> tuple[Path, Path]:
    labels = tmp_path / "Data_Entry_2017.csv"
    labels.write_text(NIH_CSV)
    names = pd.read_csv(labels)["Image Index"]
    touch([tmp_path / "nih" / f"images_00{1 + i % 2}" / "images" / n for i, n in enumerate(names)])
    return labels, tmp_path / "nih"


def test_nih_binary_target_with_view_filter(nih: tuple[Path, Path]) -> None:
    frame = build_manifest("nih_chestxray14", *nih, AdapterOptions(("Pneumonia",), views=("PA",)))
    assert list(frame.columns) == ["path", "label", "patient_id"]
    assert frame["label"].tolist() == ["No Pneumonia"] * 3 + ["Pneumonia"]
    assert frame["patient_id"].tolist() == ["1", "1", "2", "4"]
    assert all(Path(p).is_file() for p in frame["path"])  # found inside images_00N/images/


def test_nih_multilabel(nih: tuple[Path, Path]) -> None:
    frame = build_manifest("nih_chestxray14", *nih, AdapterOptions(("Cardiomegaly", "Pneumonia")))
    assert frame["finding_Cardiomegaly"].tolist() == [1, 1, 0, 0, 0]
    assert frame["finding_Pneumonia"].tolist() == [0, 0, 0, 1, 1]
    assert frame["label"].tolist() == ["Cardiomegaly", "Cardiomegaly", "No Finding", "Pneumonia", "Pneumonia"]


def test_rsna_one_row_per_image(tmp_path: Path) -> None:
    labels = tmp_path / "stage_2_train_labels.csv"
    labels.write_text(RSNA_CSV)
    ids = sorted(set(pd.read_csv(labels)["patientId"]))
    touch([tmp_path / "images" / f"{i}.dcm" for i in ids])
    frame = build_manifest("rsna_pneumonia", labels, tmp_path / "images", AdapterOptions(("Lung Opacity",)))
    assert len(frame) == 3
    assert dict(zip(frame["patient_id"], frame["label"])) == {
        ids[0]: "No Lung Opacity", ids[1]: "No Lung Opacity", "00436515-870c-4b36-a041-de91049b9ab4": "Lung Opacity"}


@pytest.mark.parametrize(("policy", "expected"), [
    ("ignore", {"patient00001": "No Consolidation", "patient00003": "No Consolidation"}),
    ("ones", {"patient00001": "No Consolidation", "patient00002": "Consolidation", "patient00003": "No Consolidation"}),
    ("zeros", {"patient00001": "No Consolidation", "patient00002": "No Consolidation", "patient00003": "No Consolidation"}),
])
def test_chexpert_uncertainty_policies_and_frontal_views(tmp_path: Path, policy: str, expected: dict) -> None:
    labels = tmp_path / "train.csv"
    labels.write_text(CHEXPERT_CSV)
    touch([tmp_path / p for p in pd.read_csv(labels)["Path"]])
    frame = build_manifest("chexpert", labels, tmp_path, AdapterOptions(("Consolidation",), ("AP", "PA"), policy))
    assert not frame["path"].str.contains("lateral").any()
    assert frame.groupby("patient_id")["label"].agg(set).to_dict() == {k: {v} for k, v in expected.items()}


def test_chexpert_accepts_the_release_folder_as_root(tmp_path: Path) -> None:
    labels = tmp_path / "train.csv"
    labels.write_text(CHEXPERT_CSV)
    touch([tmp_path / p for p in pd.read_csv(labels)["Path"]])
    frame = build_manifest("chexpert", labels, tmp_path / "CheXpert-v1.0-small", AdapterOptions(("Edema",), (), "zeros"))
    assert frame["label"].tolist().count("Edema") == 1 and len(frame) == 5


def test_bad_label_file_and_target_are_user_errors(tmp_path: Path, nih: tuple[Path, Path]) -> None:
    with pytest.raises(MedtlError, match="has no column 'patientId'"):
        build_manifest("rsna_pneumonia", nih[0], nih[1], AdapterOptions(("Lung Opacity",)))
    with pytest.raises(MedtlError, match="finding 'Pneumonitis' does not occur"):
        build_manifest("nih_chestxray14", *nih, AdapterOptions(("Pneumonitis",)))
    with pytest.raises(MedtlError, match="not under"):
        build_manifest("nih_chestxray14", nih[0], tmp_path / "elsewhere", AdapterOptions(("Pneumonia",)))


def test_cli_writes_a_manifest_medtl_can_read(nih: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    from medtl.data.manifest import read_manifest

    out = tmp_path / "nih.csv"
    main(["nih_chestxray14", "--labels", str(nih[0]), "--images", str(nih[1]), "--target", "Pneumonia", "--out", str(out)])
    assert "wrote 5 images of 4 patients" in capsys.readouterr().out
    assert read_manifest(out)["label"].value_counts().to_dict() == {"No Pneumonia": 3, "Pneumonia": 2}


def test_cli_pseudonymises_with_the_key_from_the_environment(nih: tuple[Path, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["nih_chestxray14", "--labels", str(nih[0]), "--images", str(nih[1]), "--target", "Pneumonia",
            "--out", str(tmp_path / "p.csv"), "--pseudonymise"]
    monkeypatch.delenv("MEDTL_PSEUDONYM_KEY", raising=False)
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    monkeypatch.setenv("MEDTL_PSEUDONYM_KEY", "0123456789abcdef0123456789abcdef")
    main(args)
    ids = pd.read_csv(tmp_path / "p.csv")["patient_id"]
    assert ids.str.startswith("p-").all() and ids.nunique() == 4
