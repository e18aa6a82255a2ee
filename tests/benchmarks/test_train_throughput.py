"""The throughput benchmark runs on a tiny generated set and writes training and feature-extraction rows."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.benchmarks import load_benchmark


def _tiny_set(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
        for i in range(12):
            image = rng.integers(0, 255, size=(40, 48)).astype(np.uint8)
            Image.fromarray(image).save(root / label / f"person{i + (100 if label == 'NORMAL' else 0)}_x.png")
    return root


def test_smoke_run_writes_training_and_feature_extraction_rows(tmp_path: Path) -> None:
    module = load_benchmark("train_throughput")
    module.main(["--data", str(_tiny_set(tmp_path / "data")), "--image-size", "32", "--batch-size", "4",
                 "--configs", "auto", "--steps", "2", "--encode-batch-size", "8", "--results-dir", str(tmp_path),
                 "--out-name", "smoke"])
    results = json.loads((tmp_path / "smoke.json").read_text())
    assert [(r["config"], r["batch_size"]) for r in results["rows"]] == [("auto", 4)]
    assert all(r["in_memory_img_s"] > 0 and 0 < r["ratio_to_best_in_memory"] for r in results["rows"])
    encoding = results["encoding"]
    assert [r["features"] for r in encoding] == ["float32", "bfloat16"] and all(r["img_s"] > 0 for r in encoding)
    assert sum(r["auto_chooses_it"] for r in encoding) == 1  # auto picks exactly one of the two
    text = (tmp_path / "smoke.md").read_text()
    assert "Feature extraction" in text and "| 32 | bfloat16 | 8 |" in text


def test_recipe_row_trains_with_the_chest_experiments_augmentation(tmp_path: Path) -> None:
    module = load_benchmark("train_throughput")
    augment = module.experiment_augmentation()
    assert augment["acquisition_per_batch"] is True and augment["gamma"] > 0  # the default of +experiment=chest_xray
    args = argparse.Namespace(data=str(_tiny_set(tmp_path / "data")), max_images=800)
    data = module.training_data(args, 32, augment)
    assert data.augment.acquisition_per_batch and data.augment.detector_noise == augment["detector_noise"]
    module.main(["--data", str(tmp_path / "data"), "--image-size", "32", "--batch-size", "4", "--configs",
                 module.RECIPE, "--steps", "2", "--encode-batch-size", "0", "--results-dir", str(tmp_path),
                 "--out-name", "recipe"])
    rows = json.loads((tmp_path / "recipe.json").read_text())["rows"]
    assert [r["config"] for r in rows] == [module.RECIPE] and rows[0]["pipeline_img_s"] > 0
