"""Source and target domains: target formats, the simulated site, patient-level target splits, loaders."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from medtl.data import DomainAdaptationData, ImageClassificationData
from medtl.data.domains import read_target_frame, run_loaders, simulated_site
from medtl.data.inventory import Inventory
from medtl.data.pipelines import RadiographPipeline
from medtl.errors import MedtlError
from medtl.models.registry import WeightsInfo
from tests.conftest import SMALL_DEMO

WEIGHTS = WeightsInfo(source="test", mean=(0.5,), std=(0.5,), in_channels=1)


def _demo(demo_cache: Path, **kwargs: object) -> dict:
    return {"demo": {"n_patients": SMALL_DEMO.n_patients, "image_size": SMALL_DEMO.image_size,
                     "seed": SMALL_DEMO.seed}, "demo_dir": str(demo_cache), "image_size": 32, "batch_size": 8,
            "cache": "none", "positive_class": "PNEUMONIA", "split_seed": 0, **kwargs}


def test_target_formats(tmp_path: Path, write_png, demo_manifest: Path) -> None:
    for name in ("b.png", "a.png"):
        write_png(tmp_path / "plain" / name)
    (tmp_path / "plain" / "notes.txt").write_text("site notes\n")
    found = Inventory()
    plain = read_target_frame(str(tmp_path / "plain"), [], found)
    assert list(plain["label"]) == ["", ""] and list(plain["patient_id"]) == ["a", "b"]
    assert [(Path(o["path"]).name, o["status"]) for o in found.others] == [("notes.txt", "skipped")]
    write_png(tmp_path / "tree" / "NORMAL" / "x.png")
    write_png(tmp_path / "tree" / "PNEUMONIA" / "y.png")
    assert sorted(read_target_frame(str(tmp_path / "tree"), [])["label"]) == ["NORMAL", "PNEUMONIA"]
    unlabelled = pd.read_csv(demo_manifest).drop(columns="label")
    unlabelled["path"] = [str(demo_manifest.parent / p) for p in unlabelled["path"]]
    unlabelled.to_csv(tmp_path / "unlabelled.csv", index=False)
    assert read_target_frame(str(tmp_path / "unlabelled.csv"), [])["label"].eq("").all()
    with pytest.raises(MedtlError, match="data.target=.*nowhere is neither a manifest CSV nor a folder"):
        read_target_frame(str(tmp_path / "nowhere"), [])


def test_simulated_site_is_patient_disjoint_and_written_once(tmp_path: Path, demo_manifest: Path) -> None:
    frame = pd.read_csv(demo_manifest)
    frame["path"] = [str(demo_manifest.parent / p) for p in frame["path"]]
    rest, target = simulated_site(frame, str(tmp_path / "sites"), "mild", 0.25, 0, RadiographPipeline())
    assert not set(rest["patient_id"]) & set(target["patient_id"])
    assert len(rest) + len(target) == len(frame)
    assert 0.15 < target["patient_id"].nunique() / frame["patient_id"].nunique() < 0.35
    assert set(target["label"]) == {"NORMAL", "PNEUMONIA"}
    assert all(Path(p).is_file() and str(tmp_path / "sites") in p for p in target["path"])
    assert not any(pid in Path(p).name for p, pid in zip(target["path"], target["patient_id"]))
    mtimes = [os.stat(p).st_mtime_ns for p in target["path"]]
    again = simulated_site(frame, str(tmp_path / "sites"), "mild", 0.25, 0, RadiographPipeline())[1]
    assert list(again["path"]) == list(target["path"]) and mtimes == [os.stat(p).st_mtime_ns for p in again["path"]]
    assert len(list((tmp_path / "sites").iterdir())) == 1  # cached, no stray staging folder


def test_labelled_target_splits_into_adapt_and_test_by_patient(tmp_path: Path, demo_cache: Path) -> None:
    data = DomainAdaptationData(sites_dir=str(tmp_path / "sites"), target_simulation={"fraction": 0.4},
                                **_demo(demo_cache))
    source = data.setup()
    target = data.target_frame
    adapt, test = target[target["split"] == "adapt"], target[target["split"] == "test"]
    assert len(adapt) and len(test) and not set(adapt["patient_id"]) & set(test["patient_id"])
    assert not set(source["patient_id"]) & set(target["patient_id"])
    assert data.target_labelled
    assert data.summary()["n_images.target_test.PNEUMONIA"] == int((test["label"] == "PNEUMONIA").sum())
    loaders = run_loaders(data, WEIGHTS, augment=True, method="dann", needs_target=True, trains_on_target_labels=False)
    batch = next(iter(loaders.target_test))
    assert batch["image"].shape[1:] == (1, 32, 32) and set(batch["label"].tolist()) <= {0, 1}
    assert loaders.target_train is not None and loaders.val is loaders.source_val
    oracle = run_loaders(data, WEIGHTS, augment=True, method="target_oracle", needs_target=False,
                         trains_on_target_labels=True)
    oracle_paths = {p for b in oracle.train for p in b["path"]} | {p for b in oracle.val for p in b["path"]}
    assert oracle_paths == set(adapt["path"])  # the oracle never sees the target test patients
    assert oracle.target_train is None


def test_unlabelled_folder_target_adapts_on_everything_and_has_no_test(tmp_path: Path, demo_cache: Path,
                                                                        write_png) -> None:
    for index in range(6):
        write_png(tmp_path / "site" / f"img{index}.png", seed=index)
    data = DomainAdaptationData(target=str(tmp_path / "site"), **_demo(demo_cache))
    data.setup()
    assert not data.target_labelled and data.target_frame["split"].eq("adapt").all()
    loaders = run_loaders(data, WEIGHTS, augment=True, method="mmd", needs_target=True, trains_on_target_labels=False)
    assert loaders.target_test is None and len(loaders.target_eval.dataset) == 6
    assert set(next(iter(loaders.target_eval))["label"].tolist()) == {-1}
    with pytest.raises(MedtlError, match="adaptation=target_oracle needs target labels"):
        data.oracle_loaders(WEIGHTS)


def test_target_labels_must_be_source_classes_after_the_label_map(tmp_path: Path, demo_cache: Path,
                                                                  write_png) -> None:
    write_png(tmp_path / "site" / "NORMAL" / "a.png")
    write_png(tmp_path / "site" / "COVID" / "b.png")
    data = DomainAdaptationData(target=str(tmp_path / "site"), **_demo(demo_cache))
    with pytest.raises(MedtlError, match=r"target labels \['COVID'\] are not source classes"):
        data.setup()


def test_missing_source_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(MedtlError, match="data.source=.*brain_mri/train does not exist"):
        DomainAdaptationData(source=str(tmp_path / "brain_mri" / "train"))


def test_plain_data_refuses_a_method_that_needs_a_target(demo_cache: Path) -> None:
    data = ImageClassificationData(**_demo(demo_cache))
    data.setup()
    with pytest.raises(MedtlError, match="adaptation=adabn needs a target domain"):
        run_loaders(data, WEIGHTS, augment=True, method="adabn", needs_target=False, trains_on_target_labels=False)
    assert run_loaders(data, WEIGHTS, augment=True, method="none", needs_target=False,
                       trains_on_target_labels=False).target_eval is None


def test_label_map_renames_source_and_target_and_names_unmapped_labels(tmp_path: Path, demo_cache: Path,
                                                                       write_png) -> None:
    for index in range(3):
        write_png(tmp_path / "site" / "NORMAL" / f"a{index}.png", seed=index)
        write_png(tmp_path / "site" / "PNEUMONIA" / f"b{index}.png", seed=index + 3)
    mapping = {"NORMAL": "no_finding", "PNEUMONIA": "finding"}
    data = DomainAdaptationData(target=str(tmp_path / "site"), label_map=mapping,
                                **{**_demo(demo_cache), "positive_class": "finding"})
    data.setup()
    assert data.classes == ["no_finding", "finding"]
    assert sorted(set(data.target_frame["label"])) == ["finding", "no_finding"]
    partial = DomainAdaptationData(target=str(tmp_path / "site"), label_map={"NORMAL": "no_finding"},
                                   **_demo(demo_cache))
    with pytest.raises(MedtlError, match=r"labels \['PNEUMONIA'\] have no entry in data.label_map"):
        partial.setup()


def test_a_target_too_small_to_split_names_the_setting(tmp_path: Path, demo_cache: Path, write_png) -> None:
    write_png(tmp_path / "site" / "NORMAL" / "a.png")
    write_png(tmp_path / "site" / "PNEUMONIA" / "b.png")
    data = DomainAdaptationData(target=str(tmp_path / "site"), **_demo(demo_cache))
    with pytest.raises(MedtlError, match="too few images per class to split 50% off with data.target_eval_fraction"):
        data.setup()


def test_a_volume_source_gets_a_simulated_volume_site(tmp_path: Path, volume_demo_manifest: Path) -> None:
    """For volumes the simulated site is a scanner and export of medtl.data.volume_shift: here thick slices
    written as DICOM series, patient-disjoint from the source; a radiograph severity is refused in one line."""
    from medtl.data.pipelines import VolumePipeline

    pipeline = VolumePipeline(spacing=(6.0, 6.0, 6.0), shape=(32, 32, 28))
    data = DomainAdaptationData(manifest=str(volume_demo_manifest), sites_dir=str(tmp_path / "sites"), check=False,
                                target_simulation={"severity": "thick_slices_dicom", "fraction": 0.3},
                                positive_class="FLAIR", pipeline=pipeline)
    source = data.setup()
    target = data.target_frame
    assert len(target) and not set(source["patient_id"]) & set(target["patient_id"])
    assert all(Path(p).is_dir() and any(Path(p).iterdir()) for p in target["path"])  # one DICOM series folder each
    assert set(target["label"]) == {"T1", "FLAIR"}
    wrong = DomainAdaptationData(manifest=str(volume_demo_manifest), sites_dir=str(tmp_path / "sites"), check=False,
                                 target_simulation={"severity": "strong"}, pipeline=pipeline)
    with pytest.raises(MedtlError, match="severity='strong' is not a simulated volume site; .*thick_slices_dicom"):
        wrong.setup()
