from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from medtl.data.counterfactual import MatchHistogram, RandCounterfactualHistogramd, quantile_curve
from medtl.data.pipelines import RadiographPipeline
from medtl.models.registry import WeightsInfo


def _collection_image(rng: np.random.Generator, bright: bool) -> np.ndarray:
    """``(1, 32, 32)`` in [0, 1]: a disc on a background; the 'bright' collection's contrast curve lifts every grey."""
    yy, xx = np.mgrid[0:32, 0:32]
    image = 0.3 + 0.4 * ((yy - 16) ** 2 + (xx - 16) ** 2 < 60) + rng.normal(0, 0.05, (32, 32))
    image = image.clip(0, 1) ** (0.5 if bright else 2.0)
    return image[None].astype(np.float32)


def test_matching_gives_the_reference_quantiles_and_keeps_the_order_of_brightness() -> None:
    rng = np.random.default_rng(0)
    image, other = _collection_image(rng, bright=False), _collection_image(rng, bright=True)
    matched = MatchHistogram(quantile_curve(other))(image)
    assert matched.shape == image.shape and matched.dtype == np.float32
    np.testing.assert_allclose(quantile_curve(matched), quantile_curve(other), atol=0.02)
    order = np.argsort(image.ravel(), kind="stable")
    assert np.all(np.diff(matched.ravel()[order]) >= -1e-6)  # monotone: the disc stays brighter than its background
    as_tensor = MatchHistogram(quantile_curve(other))(torch.as_tensor(image))
    assert isinstance(as_tensor, torch.Tensor) and np.allclose(as_tensor.numpy(), matched)


def test_counterfactual_histograms_stop_the_histogram_telling_the_label() -> None:
    """Label 1 comes from the bright collection and label 0 from the dark one: the mean grey level tells the label
    (AUROC 1.0). After the transform (prob 0.5) an image's histogram is its own or the other class's, and the
    mean grey level says much less."""
    rng = np.random.default_rng(0)
    transform = RandCounterfactualHistogramd("image", prob=0.5, bank_size=16)
    transform.set_random_state(0)
    labels = rng.integers(0, 2, 400)
    before, after = [], []
    for label in labels:
        image = _collection_image(rng, bright=bool(label))
        out = transform({"image": image, "label": int(label)})
        before.append(image.mean())
        after.append(out["image"].mean())
    assert roc_auc_score(labels, before) == 1.0
    assert roc_auc_score(labels, after) < 0.8
    assert all(len(bank) == 16 for bank in transform.banks.values()) and sum(transform.seen.values()) == 400


def test_unlabelled_images_and_the_first_class_seen_are_left_alone() -> None:
    rng = np.random.default_rng(1)
    transform = RandCounterfactualHistogramd("image", prob=1.0)
    image = _collection_image(rng, bright=True)
    assert transform({"image": image, "label": -1})["image"] is image and not transform.banks
    assert transform({"image": image, "label": 0})["image"] is image  # no other class yet to borrow from
    moved = transform({"image": _collection_image(rng, bright=False), "label": 1})["image"]
    np.testing.assert_allclose(quantile_curve(moved), quantile_curve(image), atol=0.02)
    with pytest.raises(ValueError, match="bank_size=0 must be at least 1"):
        RandCounterfactualHistogramd("image", bank_size=0)


def test_the_radiograph_pipeline_applies_it_only_when_asked(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:48, 0:48]
    paths = []
    for label, gamma in ((0, 2.0), (1, 0.5)):
        image = ((0.2 + 0.6 * ((yy - 24) ** 2 + (xx - 24) ** 2 < 150)) ** gamma * 255).astype(np.uint8)
        paths.append(str(tmp_path / f"{label}.png"))
        Image.fromarray(image).save(paths[-1])
    weights = WeightsInfo(source="test")
    quiet = {"rotate_deg": 0.0, "scale": 0.0, "translate": 0.0, "noise_std": 0.0, "prob": 1.0}
    for probability, changes in ((0.0, False), (1.0, True)):
        pipeline = RadiographPipeline(image_size=32, intensity={"lower_percentile": 0.0, "upper_percentile": 100.0},
                                      augment={**quiet, "counterfactual_histogram": probability})
        compose = pipeline.train_transforms(weights)
        compose.set_random_state(0)
        first = compose({"image": paths[0], "path": paths[0], "label": 0})["image"]
        second = compose({"image": paths[1], "path": paths[1], "label": 1})["image"]
        plain = pipeline.eval_transforms(weights)({"image": paths[1], "path": paths[1], "label": 1})["image"]
        assert torch.allclose(torch.as_tensor(second), torch.as_tensor(plain), atol=1e-5) is not changes
        if changes:  # image 1 now has image 0's grey levels
            np.testing.assert_allclose(quantile_curve(second), quantile_curve(first), atol=0.05)


def test_the_reservoirs_survive_a_saved_training_state(tmp_path: Path) -> None:
    """A transform restored from a state saved mid-stream (RNG and reservoirs) goes on exactly as the original."""
    from medtl.engine.state import TrainingState

    rng = np.random.default_rng(2)
    images = [(_collection_image(rng, bright=bool(i % 2)), i % 2) for i in range(40)]
    original = RandCounterfactualHistogramd("image", prob=0.5, bank_size=8)
    original.set_random_state(0)
    for image, label in images[:20]:
        original({"image": image, "label": label})
    torch.save(TrainingState.capture_rng([original]), tmp_path / "rng.pt")
    restored = RandCounterfactualHistogramd("image", prob=0.5, bank_size=8)
    TrainingState.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True), [restored])
    assert restored.seen == original.seen == {0: 10, 1: 10}
    for image, label in images[20:]:
        np.testing.assert_array_equal(restored({"image": image, "label": label})["image"],
                                      original({"image": image, "label": label})["image"])
