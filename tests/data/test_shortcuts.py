from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from medtl.data.check import check_frame, format_report
from medtl.data.shortcuts import (
    collection_warnings,
    feature_collection_probe,
    describe_collections,
    infer_collections,
    probe_shortcut,
    property_group,
)

SHARED_BRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "brain_mri" / "train"


def _table(n: int, seed: int = 0) -> pd.DataFrame:
    """``(n, 11)`` label-free properties of one homogeneous collection: size fixed, the rest noisy."""
    rng = np.random.default_rng(seed)
    columns = {"height": np.full(n, 224.0), "width": np.full(n, 224.0), "aspect": np.ones(n),
               "border_mean": rng.normal(0.1, 0.02, n), "border_std": rng.normal(0.05, 0.01, n),
               "background_fraction": rng.normal(0.3, 0.05, n)}
    columns.update({f"p{q}": rng.normal(q / 100, 0.05, n) for q in (1, 5, 25, 50, 75)})
    return pd.DataFrame(columns)


def test_property_groups_cover_radiograph_volume_and_tag_facts() -> None:
    assert property_group("border_mean") == property_group("background_fraction") == "borders and background"
    assert property_group("p99") == property_group("intensity_max") == "intensity histogram"
    assert property_group("shape_z") == property_group("height") == "size"
    assert property_group("spacing_x") == "spacing" and property_group("tag_Manufacturer") == "acquisition tags"
    assert property_group("something_new") == "something_new"


def test_probe_names_the_property_group_that_carries_the_label() -> None:
    """The label follows the border only: the probe finds it, and loses nearly all of it without the border."""
    table = _table(400)
    labels = np.where(table["border_mean"] > 0.1, "tumour", "normal")
    probe = probe_shortcut(table, labels, [f"p{i}" for i in range(400)])
    assert probe is not None and probe.auroc > 0.95
    assert next(iter(probe.importances)) == "borders and background"
    assert probe.importances["borders and background"] > 0.3
    assert probe.importances["intensity histogram"] < 0.02 and probe.importances["size"] == 0.0


def test_probe_needs_two_classes_and_ten_patients() -> None:
    table = _table(40)
    assert probe_shortcut(table, ["a"] * 40, range(40)) is None
    assert probe_shortcut(table, ["a", "b"] * 20, [i % 5 for i in range(40)]) is None


def test_two_collections_are_recovered_and_one_homogeneous_set_stays_one() -> None:
    first, second = _table(300, seed=1), _table(200, seed=2)
    # another collection, as the brain set's differ: brighter borders, less background, other mid-tones
    second["border_mean"] += 0.3
    second["background_fraction"] -= 0.2
    second["p25"] += 0.2
    second["p50"] -= 0.3
    truth = np.r_[np.zeros(300), np.ones(200)]
    inferred = infer_collections(pd.concat([first, second], ignore_index=True))
    assert adjusted_rand_score(truth, inferred) > 0.95
    assert (inferred[:300] == 0).mean() > 0.95  # numbered by size: the larger one is 0
    assert set(infer_collections(_table(500, seed=3))) == {0}


def test_a_collection_whose_labels_differ_is_described_and_warned_about() -> None:
    table = pd.concat([_table(300, seed=1), _table(100, seed=2).assign(border_mean=lambda t: t.border_mean + 0.3)],
                      ignore_index=True)
    labels = ["glioma"] * 150 + ["notumor"] * 150 + ["notumor"] * 95 + ["glioma"] * 5
    described = describe_collections(labels, ["c0"] * 300 + ["c1"] * 100, table)
    assert [c["name"] for c in described] == ["c0", "c1"] and described[1]["labels"] == {"glioma": 5, "notumor": 95}
    assert next(iter(described[1]["distinguishing"])) == "border_mean"
    assert described[1]["distinguishing"]["border_mean"] > 1.5  # z-scores over the whole set
    warnings = collection_warnings(described, "inferred from image properties")
    assert len(warnings) == 1 and "collection c1" in warnings[0] and "95% 'notumor'" in warnings[0]
    assert collection_warnings(described[:1], "x") == []


def _two_collection_images(folder: Path, n: int) -> pd.DataFrame:
    """Class A mostly from collection 1 (dark, black border), class B mostly from collection 2 (grey border)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(2 * n):
        collection = 1 if (i < n) == (i % 10 != 0) else 2  # 90% of A in collection 1, 90% of B in collection 2
        image = rng.integers(60, 200, size=(48, 48)).astype(np.uint8)
        image[:6], image[-6:], image[:, :6], image[:, -6:] = (0, 0, 0, 0) if collection == 1 else (120,) * 4
        label = "A" if i < n else "B"
        path = folder / label / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        rows.append({"path": str(path), "label": label, "patient_id": f"p{i}", "domain": f"site{collection}"})
    return pd.DataFrame(rows)


def test_check_reports_importances_and_collections_inferred_or_from_the_domain_column(tmp_path: Path) -> None:
    frame = _two_collection_images(tmp_path, 40)
    inferred, _ = check_frame(frame.drop(columns="domain"), progress=False)
    assert inferred.shortcut_auroc > 0.8
    assert next(iter(inferred.shortcut_properties)) == "borders and background"
    assert inferred.collections_from == "inferred from image properties" and len(inferred.collections) == 2
    assert sorted(c["images"] for c in inferred.collections) == [40, 40]
    assert sum("the label follows the collection" in w for w in inferred.warnings) == 2
    assert inferred.shortcut_findings()[-1] == "2 collection(s) whose labels differ"
    inferred.warnings = []  # the findings come from the collections, not from the warnings' text
    assert inferred.shortcut_found and inferred.shortcut_findings()[-1] == "2 collection(s) whose labels differ"
    text = format_report(inferred)
    assert "carried by" in text and "borders and background" in text and "collections (inferred" in text
    labelled, _ = check_frame(frame, progress=False)
    assert labelled.collections_from == "manifest column domain"
    assert {c["name"]: c["labels"] for c in labelled.collections} == {"site1": {"A": 36, "B": 4},
                                                                      "site2": {"A": 4, "B": 36}}


@pytest.mark.skipif(not SHARED_BRAIN.is_dir(), reason="needs ../shared/data/brain_mri")
def test_brain_mri_collections_follow_the_tumour_label(tmp_path: Path) -> None:
    """The shared brain set stitches collections whose labels differ: the check must say so, and name properties."""
    rows = [{"path": str(p), "label": p.parent.name, "patient_id": p.stem}
            for c in sorted(SHARED_BRAIN.iterdir()) for p in sorted(c.iterdir())[::4]]  # every 4th image: 1,427
    report, _ = check_frame(pd.DataFrame(rows), progress=False)
    assert report.shortcut_auroc > 0.8 and report.shortcut_properties
    assert len(report.collections) >= 2
    notumor_share = [c["labels"].get("notumor", 0) / c["images"] for c in report.collections]
    assert max(notumor_share) - min(notumor_share) > 0.25, report.collections  # measured: 0.54 against 0.20
    assert any("the label follows the collection" in w for w in report.warnings)


def test_feature_probe_sees_collection_information_beyond_the_label() -> None:
    """Features that carry the collection give ~1.0 within each class; features that carry only the label, ~0.5."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["tumour", "normal"], 200)
    collections = np.tile(np.repeat(["a", "b"], 100), 2)
    label_only = rng.normal(size=(400, 8)) + (labels == "tumour")[:, None] * 2.0
    with_collection = label_only.copy()
    with_collection[:, 0] += (collections == "b") * 3.0
    assert feature_collection_probe(with_collection, labels, collections) > 0.95
    assert abs(feature_collection_probe(label_only, labels, collections) - 0.5) < 0.1
    assert feature_collection_probe(label_only, labels, ["a"] * 400) is None  # one collection: nothing to tell


def test_a_fixed_number_of_collections_is_cut_when_asked() -> None:
    """``count`` overrides the silhouette's choice, even on one homogeneous set; numbered by size."""
    inferred = infer_collections(_table(300, seed=4), count=3)
    sizes = np.bincount(inferred)
    assert len(sizes) == 3 and list(sizes) == sorted(sizes, reverse=True)
