from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtl.data.check import NEAR_DUPLICATE_BITS, check_frame, main, near_hash_pairs
from medtl.data.manifest import read_manifest, write_manifest


def image_set(folder: Path, n: int, shape_of: dict[str, tuple[int, int]], seed: int = 0) -> pd.DataFrame:
    """``n`` random-texture PNGs per class, one patient each; class ``c`` images have shape ``shape_of[c]``."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, shape in shape_of.items():
        for i in range(n):
            path = folder / label / f"{label}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, size=shape, dtype=np.uint8)).save(path)
            rows.append({"path": str(path), "label": label, "patient_id": f"{label}{i}",
                         "split": "val" if i % 4 == 0 else "train"})
    return pd.DataFrame(rows)


def test_clean_demo_data_passes(demo_manifest: Path) -> None:
    frame = read_manifest(demo_manifest).assign(split="train")
    frame.loc[frame.index % 5 == 0, "split"] = "val"
    frame["split"] = frame.groupby("patient_id")["split"].transform("first")
    report, facts = check_frame(frame, progress=False)
    assert report.ok, report.problems
    assert report.unreadable == [] and report.exact_duplicates == []
    assert set(report.photometric) == {"MONOCHROME1", "MONOCHROME2"}
    assert report.counts["images.train.NORMAL"] + report.counts["images.val.NORMAL"] == (frame["label"] == "NORMAL").sum()
    assert all(f.readable and f.height == 96 for f in facts)
    assert "PatientID" not in json.dumps([f.tags for f in facts]) and "DEMO-" not in report.to_json()


def test_duplicate_across_splits_and_unreadable_file_are_problems(tmp_path: Path) -> None:
    frame = image_set(tmp_path, 8, {"A": (32, 32), "B": (32, 32)})
    copy = tmp_path / "B" / "copy_of_A1.png"
    shutil.copy(frame.at[1, "path"], copy)  # A_1 is train; the copy goes to val under another patient
    broken = tmp_path / "B" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    extra = pd.DataFrame([{"path": str(copy), "label": "B", "patient_id": "Bx", "split": "val"},
                          {"path": str(broken), "label": "B", "patient_id": "By", "split": "train"}])
    report, _ = check_frame(pd.concat([frame, extra], ignore_index=True), probe=False, progress=False)
    assert not report.ok
    assert [sorted(g) for g in report.exact_duplicates] == [sorted([frame.at[1, "path"], str(copy)])]
    assert any("duplicate images in splits ['train', 'val']" in leak for leak in report.leaks)
    assert report.unreadable[0]["path"] == str(broken) and "broken.png" in report.unreadable[0]["reason"]


def test_near_duplicates_are_found(tmp_path: Path) -> None:
    frame = image_set(tmp_path, 6, {"A": (64, 64), "B": (64, 64)})
    original = np.asarray(Image.open(frame.at[0, "path"]), dtype=np.int16)
    near = tmp_path / "A" / "near.png"
    Image.fromarray(np.clip(original + 3, 0, 255).astype(np.uint8)).save(near)  # brighter copy
    extra = pd.DataFrame([{"path": str(near), "label": "A", "patient_id": "A0", "split": "val"}])
    report, _ = check_frame(pd.concat([frame, extra], ignore_index=True), probe=False, progress=False)
    assert [frame.at[0, "path"], str(near)] in report.near_duplicates


def test_shortcut_probe_flags_size_that_gives_the_label_away(tmp_path: Path) -> None:
    shortcut, _ = check_frame(image_set(tmp_path / "s", 30, {"A": (40, 40), "B": (40, 56)}), progress=False)
    fair, _ = check_frame(image_set(tmp_path / "f", 30, {"A": (40, 40), "B": (40, 40)}), progress=False)
    assert shortcut.shortcut_auroc > 0.95 and shortcut.warnings and shortcut.ok  # a warning, not a failure
    assert fair.shortcut_auroc < 0.75 and not fair.warnings


def test_cli_exit_status_and_json(tmp_path: Path) -> None:
    frame = image_set(tmp_path, 6, {"A": (32, 32), "B": (32, 32)})
    manifest = write_manifest(frame, tmp_path / "m.csv")
    with pytest.raises(SystemExit) as ok:
        main([str(manifest), f"--out={tmp_path / 'r.json'}"])
    assert ok.value.code == 0 and json.loads((tmp_path / "r.json").read_text())["problems"] == []
    frame.loc[0, "split"] = "val"
    frame.loc[1, "patient_id"] = frame.loc[0, "patient_id"]  # one patient in train and val
    with pytest.raises(SystemExit) as failed:
        main([str(write_manifest(frame, tmp_path / "bad.csv"))])
    assert failed.value.code == 1


def test_repeated_rows_conflicting_labels_and_cross_patient_copies_are_reported(tmp_path: Path) -> None:
    frame = image_set(tmp_path, 6, {"A": (40, 40), "B": (40, 40)}).drop(columns="split")
    repeated = frame.iloc[[0]]  # the same row twice
    relabelled = frame.iloc[[1]].assign(label="B")  # one file under two labels
    copy = tmp_path / "copy_of_b0.png"
    shutil.copy(frame.loc[frame["label"] == "B", "path"].iloc[0], copy)
    copied = pd.DataFrame([{"path": str(copy), "label": "A", "patient_id": "other"}])  # same pixels, other label
    report, _ = check_frame(pd.concat([frame, repeated, relabelled, copied], ignore_index=True), probe=False,
                            progress=False)
    assert not report.ok
    assert any("is listed 2 times" in p and frame.at[0, "path"] in p for p in report.problems)
    assert any("is listed under 2 labels ['A', 'B']" in p and frame.at[1, "path"] in p for p in report.problems)
    assert any(p.startswith("identical images under labels ['A', 'B']") for p in report.problems)
    assert any("a patient-level split could put them on both sides (no split column)" in w for w in report.warnings)
    assert report.inputs["inputs.used"] == len(frame) + 1  # distinct files read: each once


def test_shape_shortcut_of_volumes_is_flagged(tmp_path: Path) -> None:
    """Two classes of the same content stored at different shapes and spacings: the probe sees it."""
    import nibabel as nib

    from medtl.data.pipelines import VolumePipeline

    rng, rows = np.random.default_rng(0), []
    for subject in range(12):
        for label, shape, zoom in (("T1", (20, 24, 18), 2.0), ("FLAIR", (24, 20, 14), 2.5)):
            data = rng.gamma(2.0, 50.0, shape).astype(np.float32)
            path = tmp_path / label / f"s{subject}_{label}.nii.gz"
            path.parent.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.diag([zoom, zoom, zoom, 1.0])), str(path))
            rows.append({"path": str(path), "label": label, "patient_id": f"s{subject}"})
    report, facts = check_frame(pd.DataFrame(rows), progress=False, pipeline=VolumePipeline(shape=(16, 16, 16)))
    assert report.shortcut_auroc is not None and report.shortcut_auroc > 0.9
    assert any("shape, spacing, orientation" in w for w in report.warnings)
    assert report.sizes == {"20x24x18": 12, "24x20x14": 12}
    assert facts[0].features["spacing_x"] == 2.0 and facts[0].tags["orientation"] == "RAS"


def brute_force_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int]]:
    """Every pair compared: what the data check did before multi-index hashing."""
    return [(a, int(b)) for a in range(len(hashes) - 1)
            for b in np.flatnonzero(np.bitwise_count(hashes[a + 1:] ^ hashes[a]).sum(axis=1) <= max_distance) + a + 1]


def test_multi_index_hashing_finds_exactly_the_brute_force_pairs() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 256, size=(3000, 32), dtype=np.uint8)  # 256-bit hashes
    for source in rng.choice(3000, size=60, replace=False):  # plant copies at distance 0..12 bits
        copy = np.unpackbits(hashes[source])
        copy[rng.choice(256, size=int(rng.integers(0, 13)), replace=False)] ^= 1
        hashes = np.vstack([hashes, np.packbits(copy)])
    hashes[5] = hashes[4]  # an identical pair, and a cluster of three within 8 bits of each other
    hashes[10:13] = hashes[9]
    hashes[11, 0] ^= 0b111
    expected = brute_force_pairs(hashes, NEAR_DUPLICATE_BITS)
    found = near_hash_pairs(hashes, NEAR_DUPLICATE_BITS)
    assert found == expected
    assert len(expected) > 40 and (4, 5) in found and (10, 11) in found and (11, 12) in found


@pytest.mark.integration
@pytest.mark.parametrize("data_set", ["chest_xray_kermany", "brain_mri"])
def test_near_duplicates_of_the_shared_sets_match_the_brute_force_search(data_set: str) -> None:
    from tests.conftest import SHARED_DATA

    root = SHARED_DATA / data_set / "train"
    if not root.is_dir():
        pytest.skip(f"../shared/data/{data_set} absent")
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))  # all of them
    frame = pd.DataFrame({"path": paths, "label": [Path(p).parent.name for p in paths],
                          "patient_id": [Path(p).stem for p in paths], "split": "train"})
    report, facts = check_frame(frame, probe=False, progress=False)
    hashes = np.array([np.frombuffer(bytes.fromhex(f.dhash), np.uint8) for f in facts])
    expected = [[paths[a], paths[b]] for a, b in brute_force_pairs(hashes, NEAR_DUPLICATE_BITS)
                if facts[a].pixel_hash != facts[b].pixel_hash]
    assert report.near_duplicates == expected
    assert len(paths) > 5000 and (data_set != "brain_mri" or len(expected) > 100)  # the brain set has many
