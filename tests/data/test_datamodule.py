from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medtl.data import ImageClassificationData
from medtl.data import readers
from medtl.errors import MedtlError
from medtl.models.registry import WeightsInfo

WEIGHTS = WeightsInfo(source="test")


def make_data(root: Path, cache_dir: Path) -> ImageClassificationData:
    data = ImageClassificationData(root=str(root), image_size=32, cache="disk", cache_dir=str(cache_dir),
                                   val_fraction=0.25, batch_size=4)
    data.setup()
    return data


def val_images(data: ImageClassificationData) -> list[np.ndarray]:
    _, val_loader = data.loaders(WEIGHTS)
    return [np.asarray(item["image"]) for item in val_loader.dataset]


def test_disk_cache_is_reused_and_invalidated_per_file(tmp_path: Path, write_png, monkeypatch: pytest.MonkeyPatch) -> None:
    for label in ("A", "B"):
        for i in range(8):
            write_png(tmp_path / "data" / label / f"{label}{i}.png", seed=i + (50 if label == "B" else 0))
    calls: list[str] = []
    original = readers.LoadRadiograph.__call__

    def counting(self, path):  # type: ignore[no-untyped-def]
        calls.append(path)
        return original(self, path)

    monkeypatch.setattr(readers.LoadRadiograph, "__call__", counting)
    first = val_images(make_data(tmp_path / "data", tmp_path / "cache"))
    decoded_first = len(calls)
    assert decoded_first == len(first) > 0
    assert len(list((tmp_path / "cache").glob("*.pt"))) >= len(first)

    calls.clear()
    data = make_data(tmp_path / "data", tmp_path / "cache")
    second = val_images(data)
    assert calls == []  # the second run decodes nothing
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)

    changed = data.items("val")[0]["path"]
    os.utime(changed, ns=(1, 1))  # a changed file (mtime) is decoded again, and only it
    calls.clear()
    val_images(make_data(tmp_path / "data", tmp_path / "cache"))
    assert calls == [changed]

    calls.clear()
    resized = make_data(tmp_path / "data", tmp_path / "cache")
    resized.pipeline.image_size = 48  # a preprocessing setting changed: everything is decoded again
    images = val_images(resized)
    assert len(calls) == len(images) and images[0].shape == (1, 48, 48)
    assert images[0].dtype == np.float16  # what the disk cache keeps


def test_unknown_cache_mode_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(MedtlError, match="data.cache='ram'"):
        ImageClassificationData(root=str(tmp_path), cache="ram")


def test_train_fraction_shrinks_training_only_and_is_seeded(demo_manifest: Path) -> None:
    def frame(fraction: float, seed: int = 0):  # type: ignore[no-untyped-def]
        data = ImageClassificationData(manifest=str(demo_manifest), train_fraction=fraction, train_subset_seed=seed,
                                       positive_class="PNEUMONIA", check=False)
        return data.setup()

    full, tenth = frame(1.0), frame(0.25)
    assert tenth[tenth["split"] == "val"].equals(full[full["split"] == "val"])
    n_train = (full["split"] == "train").sum()
    assert abs((tenth["split"] == "train").sum() - 0.25 * n_train) <= 3
    assert set(tenth.loc[tenth["split"] == "train", "label"]) == {"NORMAL", "PNEUMONIA"}
    assert tenth.equals(frame(0.25)) and not tenth.equals(frame(0.25, seed=1))


def test_disk_cache_keeps_training_and_evaluation_entries_of_one_file_apart(tmp_path: Path, write_png) -> None:
    """A file in the training split of one run and the validation split of the next (another seed) must come out
    normalised for evaluation, not as the un-normalised deterministic part the training transforms cached."""
    for label in ("A", "B"):
        for i in range(8):
            write_png(tmp_path / "data" / label / f"{label}{i}.png", seed=i + (50 if label == "B" else 0))
    data = make_data(tmp_path / "data", tmp_path / "cache")
    rows = data.frame.assign(split="train")
    trained = data.dataset("train", data.transform(WEIGHTS, augment=True), WEIGHTS, rows)
    _ = [trained[i] for i in range(len(trained))]  # fills the cache with training entries
    evaluated = data.dataset("train", data.transform(WEIGHTS, augment=False), WEIGHTS, rows)
    first = np.asarray(evaluated[0]["image"], dtype=np.float32)
    assert first.min() < -0.5  # normalised with mean 0.5, std 0.5: [0, 1] -> [-1, 1]
